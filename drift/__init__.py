"""drift: run large generative models on the GPU you already have."""
__version__ = "0.1.0"
