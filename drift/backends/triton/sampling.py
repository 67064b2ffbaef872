"""Sampling on the GPU: the next token from the logits without bringing them to the host.

The chain is the host sampler's (`drift/runtime/sampler.py`, llama.cpp's order): repetition
penalty, top-k, top-p and min-p on the distribution at temperature 1, temperature, a draw.
Only the chosen id (4 bytes) crosses to the host, the one synchronisation streaming needs
anyway; copying 128k float logits and sorting them in numpy cost more than a decode kernel.

Three small kernels:

    penalty    the recent ids' logits divided (positive) or multiplied (negative), in place
    partial    each program takes BLOCK logits and keeps its KC best as packed int64 keys
    select     one program: the KC best of all partials, sorted; the top-k / top-p / min-p
               cut; greedy takes the first, otherwise a Gumbel-max draw among the survivors

Why keys: a value and its id sort together as one int64, (order-preserving bits of the
float) << 32 | (2**32 - 1 - id), so equal logits keep the smaller id first, as the host's
stable argsort does. Why Gumbel-max: argmax(logit / T + G) with G ~ Gumbel(0, 1) draws from
softmax(logit / T) over the survivors exactly, with no normalisation or cumulative search.
Why KC partial winners are enough: the global k best lie among each block's k best, so the
cut is exact for top-k <= KC. With top-k off (0) or above KC the whole vocabulary could
survive top-p; the backend leaves those settings to the host sampler (`TritonBackend.sampler`).

Cost at V = 128256, BLOCK 4096, KC 64: one pass over 513 KB of logits (0.2 us of bandwidth)
in 32 programs, then a sort of 2048 keys in one program: a few microseconds each, launch
bound, against ~0.2 ms for the host path (copy, float64 cast, argsort).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import triton
import triton.language as tl

from drift.runtime.sampler import SamplerConfig

KC = 64  # candidates kept per block, and the largest top-k sampled on the device
BLOCK = 4096  # logits per partial program


@triton.jit
def _float_to_ordered(v):
    """float32 -> int32 with the same order (negative floats: flip all but the sign bit)."""
    b = v.to(tl.int32, bitcast=True)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


@triton.jit
def _ordered_to_float(o):
    return (o ^ ((o >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


@triton.jit
def penalty_kernel(logits_ptr, ids_ptr, n, penalty, BLOCK_N: tl.constexpr):
    """logits[id] /= penalty where positive, *= penalty where negative, for n distinct ids."""
    r = tl.arange(0, BLOCK_N)
    m = r < n
    ids = tl.load(ids_ptr + r, mask=m, other=0)
    v = tl.load(logits_ptr + ids, mask=m, other=0.0)
    v = tl.where(v > 0, v / penalty, v * penalty)
    tl.store(logits_ptr + ids, v, mask=m)


@triton.jit
def partial_kernel(logits_ptr, keys_ptr, V, BLOCK_V: tl.constexpr, K: tl.constexpr):
    pid = tl.program_id(0)
    idx = pid * BLOCK_V + tl.arange(0, BLOCK_V)
    v = tl.load(logits_ptr + idx, mask=idx < V, other=float("-inf"))
    key = (_float_to_ordered(v).to(tl.int64) << 32) + (4294967295 - idx.to(tl.int64))
    best = tl.topk(key, K)  # (K,), descending
    tl.store(keys_ptr + pid * K + tl.arange(0, K), best)


@triton.jit
def select_kernel(keys_ptr, out_ptr, kept_ptr, n_keys, V, top_k, top_p, min_p, inv_temp, seed, offset,
                  GREEDY: tl.constexpr, NP: tl.constexpr, K: tl.constexpr):
    r = tl.arange(0, NP)
    keys = tl.load(keys_ptr + r, mask=r < n_keys, other=-9223372036854775807 - 1)
    best = tl.topk(keys, K)  # the K largest logits of the vocabulary, best first
    idx = 4294967295 - (best & 4294967295)
    v = _ordered_to_float((best >> 32).to(tl.int32))
    rank = tl.arange(0, K)
    keep = (rank < top_k) & (idx < V)
    # top-p and min-p on the distribution at temperature 1 over the top-k survivors
    v0 = tl.max(tl.where(keep, v, float("-inf")), axis=0)
    p = tl.where(keep, tl.exp(v - v0), 0.0)
    p = p / tl.sum(p, axis=0)
    cum = tl.cumsum(p, axis=0)
    n_below = tl.sum((keep & (cum < top_p)).to(tl.int32), axis=0)  # searchsorted, side=left
    keep = keep & (rank <= n_below)
    keep = keep & ((p >= min_p * tl.max(p, axis=0)) | (rank == 0))
    if GREEDY:
        choice = tl.sum(tl.where(rank == 0, idx, 0), axis=0)
    else:
        u = tl.rand(seed, offset + rank)
        gumbel = -tl.log(-tl.log(u))
        score = tl.where(keep, v * inv_temp + gumbel, float("-inf"))
        win = tl.argmax(score, axis=0)
        choice = tl.sum(tl.where(rank == win, idx, 0), axis=0)
    # The best logit is NaN when any is (NaN keys sort above +inf), -inf when all are: then no
    # token can be drawn, and -1 tells the host so (runtime/generate.py raises).
    v_best = tl.sum(tl.where(rank == 0, v, 0.0), axis=0)
    finite = (v_best == v_best) & (tl.abs(v_best) < float("inf"))
    choice = tl.where(finite, choice, -1)
    tl.store(out_ptr, choice.to(tl.int32))
    tl.store(kept_ptr + rank, tl.where(keep, idx, -1).to(tl.int32))  # the survivors, for tests


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class DeviceSampler:
    """Callable like `Sampler`: (logits on the device, history) -> token id. After a call,
    `survivors()` lists the ids that passed the top-k / top-p / min-p cut, best first."""

    def __init__(self, config: SamplerConfig, device: torch.device, block: int = BLOCK):
        assert self.covers(config), "the host samples with top-k off or above KC"
        self.config = config
        self.device = device
        seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(4), "little")
        self.seed = seed % 2**31
        self.draws = 0
        self.block = block
        self.out = torch.zeros(1, dtype=torch.int32, device=device)
        self.kept = torch.zeros(KC, dtype=torch.int32, device=device)
        self.keys: torch.Tensor | None = None

    @staticmethod
    def covers(config: SamplerConfig) -> bool:
        return config.greedy or 0 < config.top_k <= KC

    def __call__(self, logits: torch.Tensor, history: Sequence[int] = ()) -> int:
        c = self.config
        logits = logits.reshape(-1).float()
        if c.repeat_penalty != 1.0 and history and c.repeat_last_n:
            logits = logits.clone()  # the program's output buffer stays as computed
            ids = np.unique(np.asarray(history[-c.repeat_last_n:], dtype=np.int32))
            penalty_kernel[(1,)](logits, torch.from_numpy(ids).to(self.device), len(ids),
                                 float(c.repeat_penalty), BLOCK_N=_next_pow2(len(ids)))
        V = logits.numel()
        n_blocks = triton.cdiv(V, self.block)
        if self.keys is None or self.keys.numel() != n_blocks * KC:
            self.keys = torch.empty(n_blocks * KC, dtype=torch.int64, device=self.device)
        partial_kernel[(n_blocks,)](logits, self.keys, V, BLOCK_V=self.block, K=KC, num_warps=8)
        select_kernel[(1,)](
            self.keys, self.out, self.kept, n_blocks * KC, V, 1 if c.greedy else c.top_k,
            float(c.top_p) if c.top_p < 1.0 else 2.0,  # 1: off (no float cumsum cut)
            float(c.min_p), 1.0 / c.temperature if c.temperature else 0.0,
            self.seed, self.draws * KC, GREEDY=c.greedy, NP=_next_pow2(n_blocks * KC), K=KC,
            num_warps=4)
        self.draws += 1
        return int(self.out.item())

    def survivors(self) -> list[int]:
        return [int(i) for i in self.kept.cpu().numpy() if i >= 0]
