"""The generation loop on a scripted engine: stop tokens, stop strings held back across
pieces, max tokens, the context limit, UTF-8 split across tokens."""

from __future__ import annotations

import codecs

import numpy as np
import pytest

from drift.errors import ContextOverflowError
from drift.runtime.generate import GenerationStats, stream
from drift.runtime.sampler import GREEDY


class ScriptedEngine:
    """Emits a fixed token sequence greedily: the logits peak at the next scripted token."""

    class config:
        ctx_train = 64

    def __init__(self, script: list[int], vocab: int = 300, ctx: int = 64):
        self.script, self.vocab, self.ctx = script, vocab, ctx
        self.cached_tokens: list[int] = []
        self.step = 0

    def _logits(self) -> np.ndarray:
        out = np.zeros(self.vocab)
        out[self.script[min(self.step, len(self.script) - 1)]] = 1.0
        self.step += 1
        return out

    class backend:  # a backend that leaves sampling to the host
        @staticmethod
        def sampler(config):
            return None

    def prefill(self, tokens, to_host=True):
        self.cached_tokens = list(tokens)
        return self._logits()

    def forward(self, tokens, start, to_host=True):
        self.cached_tokens = self.cached_tokens[:start] + list(tokens)
        return self._logits()


class ByteTokenizer:
    """Token i < 256 is byte i, decoded incrementally as UTF-8."""

    class _Stream:
        def __init__(self):
            self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

        def feed(self, token_id):
            return self.decoder.decode(bytes([token_id])) if token_id < 256 else ""

        def flush(self):
            return self.decoder.decode(b"", final=True)

    def stream(self):
        return self._Stream()


def run(script, prompt=(1, 2), **kw):
    stats = GenerationStats()
    pieces = list(stream(ScriptedEngine(script, ctx=kw.pop("ctx", 64)), ByteTokenizer(),
                         list(prompt), GREEDY, stats=stats, **kw))
    return pieces, stats


def test_stop_token_ends_without_being_emitted():
    pieces, stats = run([ord("h"), ord("i"), 299, ord("x")], stop_ids={299})
    assert "".join(pieces) == "hi" and stats.finish_reason == "stop"
    assert stats.generated_tokens == 2


def test_stop_string_is_cut_and_its_prefix_held_back():
    text = "abc<|end|>zzz"
    pieces, stats = run([ord(c) for c in text], stop=["<|end|>"], max_tokens=50)
    assert "".join(pieces) == "abc" and stats.finish_reason == "stop"
    assert all("<" not in p for p in pieces)


def test_held_back_prefix_released_when_not_a_stop():
    text = "a<b c"
    pieces, _ = run([ord(c) for c in text], stop=["<|end|>"], max_tokens=len(text))
    assert "".join(pieces) == text


def test_max_tokens_gives_length():
    pieces, stats = run([ord("a")] * 100, max_tokens=5)
    assert "".join(pieces) == "aaaaa" and stats.finish_reason == "length"


def test_utf8_split_across_tokens_never_emits_half_a_character():
    script = list("é€😀".encode())
    pieces, _ = run(script, max_tokens=len(script))
    assert "".join(pieces) == "é€😀"
    assert all("\ufffd" not in p for p in pieces)


def test_generation_stops_when_context_is_full():
    pieces, stats = run([ord("a")] * 100, prompt=range(1, 9), ctx=12, max_tokens=100)
    assert stats.finish_reason == "context" and len(pieces[0] if len(pieces) == 1 else "".join(pieces)) == 4


def test_prompt_longer_than_context_raises():
    with pytest.raises(ContextOverflowError, match="context holds 8"):
        run([1], prompt=range(1, 20), ctx=8)
