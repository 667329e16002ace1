"""Compression trade-off engine: apply a Recipe to a model and measure what it really costs and gains."""
__version__ = "0.5.0"
