"""Sliding-window perplexity, as Hugging Face defines it for fixed-length models.

The text's token ids are cut into windows of `ctx` tokens, the window start advancing by
`stride`; each window is run from position 0 on its own (no context from before it), and only
the tokens the previous window did not score contribute their negative log-likelihood, each
conditioned on the tokens of its window before it. Every token but the first is scored exactly
once; with stride == ctx the windows are disjoint, with a smaller stride each scored token sees
at least ctx - stride tokens of context. (The Hugging Face guide's loop weights each window's
mean loss by its target count minus one; this sums the per-token NLLs exactly.)

    ppl = exp(sum of scored NLLs / tokens scored)

Each window runs through the Engine: the unscored head as a prefill (the last position's
logits only), the scored part with every position's logits (`Engine.forward(...,
all_logits=True)`), in chunks of the prefill chunk size. The window's last token is never run:
nothing after it is scored in that window.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from drift.errors import InvalidArgumentError


@dataclass(frozen=True)
class PerplexityResult:
    nll_sum: float  # natural log
    n_scored: int
    n_windows: int

    @property
    def nll_per_token(self) -> float:
        return self.nll_sum / self.n_scored

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_per_token)


def windows(n_tokens: int, ctx: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_scored) of each window over `n_tokens` ids: the last n_scored tokens of
    ids[begin:end] are scored in it."""
    check_window(ctx, stride)
    if n_tokens < 2:
        raise InvalidArgumentError(f"the text is {n_tokens} token(s); perplexity needs >= 2")
    out = []
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + ctx, n_tokens)
        scored = end - prev_end - (1 if begin == 0 else 0)  # the first token has no prediction
        out.append((begin, end, scored))
        prev_end = end
        if end == n_tokens:
            break
    return out


def check_window(ctx: int, stride: int) -> None:
    if ctx < 2:
        raise InvalidArgumentError(f"--ctx must be >= 2 for perplexity, got {ctx}")
    if not 1 <= stride <= ctx:
        raise InvalidArgumentError(f"--stride must be in [1, --ctx={ctx}], got {stride}")


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=-1))
    return lse - x[np.arange(len(targets)), targets]


def perplexity(engine, ids: list[int], ctx: int, stride: int,
               progress: Callable[[int, int], None] | None = None) -> PerplexityResult:
    """Sliding-window perplexity of `ids` on `engine` (whose context must hold `ctx`).
    `progress(scored_so_far, total_to_score)` is called after each window."""
    from drift.runtime.engine import PREFILL_CHUNK

    if ctx > engine.ctx:
        raise InvalidArgumentError(f"window of {ctx} tokens beyond the engine's context "
                                   f"{engine.ctx}")
    spans = windows(len(ids), ctx, stride)
    total = sum(s for _, _, s in spans)
    nll_sum, done = 0.0, 0
    for begin, end, scored in spans:
        window = ids[begin:end]
        n = len(window)
        first = n - scored - 1  # logits at local positions first .. n-2 predict the scored ones
        if first > 0:
            engine.prefill(window[:first])
        for s in range(first, n - 1, PREFILL_CHUNK):
            chunk = window[s : min(s + PREFILL_CHUNK, n - 1)]
            logits = engine.forward(chunk, s, all_logits=True)
            targets = np.asarray(window[s + 1 : s + 1 + len(chunk)])
            nll_sum += float(token_nll(logits, targets).sum())
        done += scored
        if progress:
            progress(done, total)
    return PerplexityResult(nll_sum, total, len(spans))
