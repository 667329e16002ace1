"""Runtimes a compressed model can be measured and shipped in, beside eager PyTorch."""
