"""Choosing the next token from logits.

The chain follows llama.cpp's order: repetition penalty, top-k, top-p, min-p, temperature,
then a draw. Temperature 0 is greedy (argmax), with the penalty still applied. This is the
host-side specification; GPU backends may sample on the device with the same chain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from drift.errors import InvalidArgumentError, NumericalError


@dataclass(frozen=True)
class SamplerConfig:
    temperature: float = 0.8
    top_k: int = 40  # 0: off
    top_p: float = 0.95  # 1: off
    min_p: float = 0.05  # 0: off
    repeat_penalty: float = 1.0  # 1: off
    repeat_last_n: int = 64
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("temperature", "top_k", "top_p", "min_p", "repeat_penalty",
                     "repeat_last_n", "seed"):
            if isinstance(getattr(self, name), np.generic):  # plain Python values downstream
                object.__setattr__(self, name, getattr(self, name).item())
        for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
            _check_type(name, getattr(self, name), (int, float), "a number")
        for name in ("top_k", "repeat_last_n"):
            _check_type(name, getattr(self, name), (int,), "an integer")
        if self.seed is not None:
            _check_type("seed", self.seed, (int,), "an integer or None")
        checks = [
            (math.isfinite(self.temperature) and self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k >= 0, "top-k must be >= 0 (0 turns it off)"),
            (0.0 < self.top_p <= 1.0, "top-p must be in (0, 1]"),
            (0.0 <= self.min_p <= 1.0, "min-p must be in [0, 1]"),
            (math.isfinite(self.repeat_penalty) and self.repeat_penalty > 0,
             "repeat-penalty must be > 0 (1 turns it off)"),
            (self.repeat_last_n >= 0, "repeat-last-n must be >= 0"),
            (self.seed is None or 0 <= self.seed < 2**64, "seed must be in [0, 2^64)"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidArgumentError(f"invalid sampler setting: {message}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _check_type(name: str, value: object, types: tuple[type, ...], what: str) -> None:
    # bool is an int to Python, never a sampler value
    if isinstance(value, bool) or not isinstance(value, types):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r:.40}")


GREEDY = SamplerConfig(temperature=0.0)


class Sampler:
    def __init__(self, config: SamplerConfig):
        self.config = config
        self.rng = np.random.default_rng(config.seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        c = self.config
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        if c.repeat_penalty != 1.0 and history and c.repeat_last_n:
            logits = apply_repeat_penalty(logits, history[-c.repeat_last_n :], c.repeat_penalty)
        if c.greedy:
            best = int(np.argmax(logits))  # a NaN, where there is one
            check_finite(logits[best])
            return best
        check_finite(logits.max())
        if c.top_k in (0, len(logits)) and c.top_p >= 1.0 and c.min_p == 0.0:
            ids, kept = np.arange(len(logits)), logits  # nothing is cut: no order needed
        else:
            ids, kept = candidates(logits, c)
        return self.draw(ids, kept)

    def from_best(self, ids: np.ndarray, kept: np.ndarray) -> int:
        """What `__call__` does given the top-k (top_k below the vocabulary, no repetition
        penalty) computed elsewhere (a GPU backend's device top-k): `ids` and their logits
        `kept`, best first in `_best`'s order. The same checks, cut, draw and generator: the
        same token as `__call__` on the whole vector."""
        kept = np.asarray(kept, dtype=np.float64)
        check_finite(kept[0])  # the largest logit (NaN where any is: the device sorts it first)
        return self.draw(*_cut(np.asarray(ids), kept, self.config))

    def draw(self, ids: np.ndarray, kept: np.ndarray) -> int:
        """One of the candidates `ids` (logits `kept`), by the softmax at the temperature:
        the first whose cumulative probability exceeds one uniform of the generator (what
        `rng.choice(len(ids), p=probs)` does, spelled out: a device that draws for the host
        is given the same uniform, `TopKSampler.draw_writes`)."""
        return int(ids[pick_by_uniform(kept, self.config.temperature, self.rng.random())])


def pick_by_uniform(kept: np.ndarray, temperature: float, u: float) -> int:
    """The index drawn from softmax(kept / temperature) by the uniform `u` in [0, 1): the
    number of cumulative probabilities at or below it (numpy's `choice`, side "right")."""
    cdf = np.cumsum(np.exp((kept - kept.max()) / temperature))
    cdf /= cdf[-1]
    return int(cdf.searchsorted(u, side="right"))


def check_finite(best: float) -> None:
    """Stop on logits no token can be drawn from: the largest is NaN (any NaN is), +inf, or
    -inf (all are). One value is checked: the reduction the sampler does anyway."""
    if not math.isfinite(best):
        raise NumericalError(nonfinite_message(float(best)))


def nonfinite_message(best: float | None = None) -> str:
    what = ("NaN" if math.isnan(best) else "infinite") if best is not None else "NaN or infinite"
    return (f"the model computed {what} logits: its weights are corrupt or its activations "
            "overflowed; generation stopped")


def apply_repeat_penalty(logits: np.ndarray, recent: Sequence[int], penalty: float) -> np.ndarray:
    """llama.cpp's (and CTRL's) penalty: divide positive logits, multiply negative ones."""
    out = logits.copy()
    ids = np.unique(np.asarray(recent, dtype=np.int64))
    vals = out[ids]
    out[ids] = np.where(vals > 0, vals / penalty, vals * penalty)
    return out


def candidates(logits: np.ndarray, c: SamplerConfig) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and logits that survive top-k, top-p and min-p, best first (equal logits:
    the smaller id first). Only the best few are sorted: a full argsort of a 128k vocabulary
    costs more than a GPU decode step. With top-k off, the best `PRESELECT` are tried first
    and the whole vocabulary sorted only when the top-p / min-p cut falls beyond them."""
    n_vocab = len(logits)
    k = c.top_k if 0 < c.top_k < n_vocab else n_vocab
    if k < n_vocab:
        order = _best(logits, k)
        return _cut(order, logits[order], c)
    m = min(PRESELECT, n_vocab)
    order = _best(logits, m)
    ids, kept, n = _cut(order, logits[order], c, all_of=logits)
    if n < m or m == n_vocab:
        return ids, kept
    order = _best(logits, n_vocab)
    return _cut(order, logits[order], c)


PRESELECT = 1024


def _best(logits: np.ndarray, k: int) -> np.ndarray:
    """The ids of the k largest logits, best first, ties to the smaller id (what a stable
    argsort of -logits gives), without sorting the rest."""
    n = len(logits)
    if k < n:
        threshold = np.partition(logits, n - k)[n - k]  # the k-th largest value
        above = np.flatnonzero(logits > threshold)
        equal = np.flatnonzero(logits == threshold)[: k - len(above)]
        top = np.concatenate([above, equal])
    else:
        top = np.arange(n)
    return top[np.lexsort((top, -logits[top]))]


def _cut(order, kept, c: SamplerConfig, all_of=None):
    """Apply top-p and min-p to `order` (ids, best first) of logits `kept`; with `all_of`, the
    probabilities are normalised over the whole vocabulary (top-k off) and the count before
    the cut returned too, so that the caller can tell whether the cut fell inside `order`."""
    # top-p and min-p act on the distribution at temperature 1, as in llama.cpp
    probs = np.exp(kept - kept[0])
    total = np.exp(all_of - kept[0]).sum() if all_of is not None else probs.sum()
    probs /= total
    n = len(order)
    if c.top_p < 1.0:
        n = min(n, int(np.searchsorted(np.cumsum(probs), c.top_p) + 1))
    if c.min_p > 0.0:
        n = min(n, max(1, int(np.sum(probs >= c.min_p * probs[0]))))
    if all_of is not None:
        return order[:n], kept[:n], n
    return order[:n], kept[:n]
