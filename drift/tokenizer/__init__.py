"""Text in and out of a model: tokenizers and chat templates rebuilt from GGUF metadata."""

from drift.tokenizer.chat import ChatTemplate
from drift.tokenizer.gguf_tokenizer import IncrementalDecoder, Tokenizer

__all__ = ["ChatTemplate", "IncrementalDecoder", "Tokenizer"]
