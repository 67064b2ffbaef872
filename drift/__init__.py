"""drift: run large generative models on the GPU you already have."""

__version__ = "0.1.0"


def load(*args, **kwargs):
    """drift.load(model=None, device="auto", ctx=None) -> LLM; see drift.api."""
    from drift.api import load as _load

    return _load(*args, **kwargs)


__all__ = ["load", "__version__"]
