"""Loaders shared by the tokenizer and chat tests, cached for the whole session: reading the
Gemma file's 262k-token vocabulary and building transformers' tokenizer from it are the slow
parts, and both test modules need them."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from drift.formats.gguf import open_gguf
from drift.tokenizer import Tokenizer


@functools.cache
def gguf_metadata(path: Path) -> dict[str, Any]:
    return open_gguf(path).metadata


@functools.cache
def transformers_tokenizer(path: Path) -> Any:
    """transformers' tokenizer built from the same GGUF: the reference drift is held to."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@functools.cache
def drift_tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_gguf(gguf_metadata(path))
