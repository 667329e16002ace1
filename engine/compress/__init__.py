"""Compression techniques (one module each), the pipeline that applies a Recipe, and the storage codec."""
