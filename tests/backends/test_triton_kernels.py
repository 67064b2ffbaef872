"""Triton kernels against the numpy references of the op registry, on small awkward shapes.

Without a GPU they run under Triton's interpreter on CPU tensors (TRITON_INTERPRET=1,
DRIFT_TRITON_CPU=1, set here before triton is imported); with DRIFT_TEST_GPU=1 on a CUDA
machine the same tests run the compiled kernels.
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

if os.environ.get("DRIFT_TEST_GPU") != "1":
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated, at import

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from gguf import GGMLQuantizationType as Q

from drift.backends.triton import launch
from drift.backends.triton.device import read_device, tune
from drift.backends.triton.weights import convert
from drift.formats import quants
from drift.ir.ops import run_reference

DEV, INFO = read_device()
# Small tiles, so that every loop runs several iterations and ends on a partial tile.
TU = replace(tune(INFO), gemv_bn=4, gemv_bk=64, gemm_bm=16, gemm_bn=16, gemm_bk=32, attn_bm=16,
             attn_bn=16, attn_bt=16, row_block=64)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(DEV)


def poisoned(shape, dtype=torch.float32) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=DEV)


def close(out: torch.Tensor, ref: np.ndarray, tol: float) -> None:
    got = out.float().cpu().numpy().astype(np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape
    assert np.isfinite(got).all(), "unwritten or non-finite output"
    err = np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30)
    assert err < tol, f"relative error {err:.2e} >= {tol}"


class Dense:
    """A dequantized weight as the references take it."""

    def __init__(self, w: np.ndarray):
        self.w = w

    def matmul_t(self, x):
        return x @ self.w.T

    def rows(self, ids):
        return self.w[ids]


K_QUANTS = (Q.Q4_K, Q.Q6_K)
QTYPES = [Q.F32, Q.F16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q8_0, Q.Q4_K, Q.Q6_K]


def make_weight(qtype: Q, N: int, K: int, seed: int):
    w = (rng(seed).standard_normal((N, K)) * 0.5).astype(np.float32)
    raw = quants.quantize(w, qtype)
    deq = quants.dequantize(raw, qtype, (N, K))
    return convert(t(raw.reshape(N, -1)), qtype, (N, K)), deq


def shape_for(qtype: Q, N: int) -> tuple[int, int]:
    # K not a multiple of the tile: 160 / 352 for 32-blocks, 768 for 256-blocks.
    k = 768 if qtype in (Q.Q4_K, Q.Q6_K) else (352 if N % 2 else 160)
    return N, k


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("M", [1, 5, 33])
def test_matmul(qtype, M):
    N, K = shape_for(qtype, 96 if M != 5 else 67)
    w, deq = make_weight(qtype, N, K, seed=M)
    x = rng(M + 100).standard_normal((M, K)).astype(np.float32)
    out = poisoned((M, N))
    launch.matmul(t(x), w, out, TU)
    ref = run_reference("matmul", [x, Dense(deq)], {})[0]
    # prefill tiles go through fp16 tensor cores; K-quants keep d*scale as f16 products
    close(out, ref, 3e-3 if M > 1 or qtype in K_QUANTS else 1e-5)


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
def test_embedding(qtype):
    N, K = shape_for(qtype, 96)
    w, deq = make_weight(qtype, N, K, seed=7)
    ids = np.array([3, 0, 95, 3, 41], dtype=np.int32)
    out = poisoned((len(ids), K))
    launch.embedding(w, t(ids), out, TU)
    ref = run_reference("embedding", [Dense(deq), ids], {})[0]
    close(out, ref, 2e-3 if qtype in K_QUANTS else 1e-6)


@pytest.mark.parametrize("op", ["add", "mul", "scale", "silu", "gelu", "swiglu", "geglu",
                                "softcap"])
def test_elementwise(op):
    r = rng(3)
    a = (r.standard_normal((7, 300)) * 3).astype(np.float32)
    b = r.standard_normal((7, 300)).astype(np.float32)
    attrs = {"value": 0.37, "cap": 2.5}
    if op == "add":
        b = r.standard_normal((300,)).astype(np.float32)  # a broadcast bias
    inputs = [a, b] if op in ("add", "mul", "swiglu", "geglu") else [a]
    out = poisoned(a.shape)
    value = attrs["cap"] if op == "softcap" else attrs["value"]
    launch.elementwise(op, t(a), t(inputs[1]) if len(inputs) == 2 else None, out, TU, value)
    close(out, run_reference(op, inputs, attrs)[0], 1e-5)


@pytest.mark.parametrize("unit_offset", [False, True])
def test_rms_norm(unit_offset):
    r = rng(4)
    x = r.standard_normal((5, 3, 80)).astype(np.float32)
    w = r.standard_normal(80).astype(np.float32)
    out = poisoned(x.shape)
    launch.rms_norm(t(x), t(w), out, 1e-5, unit_offset, TU)
    ref = run_reference("rms_norm", [x, w], {"eps": 1e-5, "unit_offset": unit_offset})[0]
    close(out, ref, 1e-5)


@pytest.mark.parametrize("mode,n_dims,factors", [("norm", 64, False), ("neox", 48, False),
                                                 ("norm", 64, True), ("neox", 64, True)])
def test_rope(mode, n_dims, factors):
    r = rng(5)
    S, H, Dh = 6, 3, 64
    x = r.standard_normal((S, H, Dh)).astype(np.float32)
    pos = np.array([0, 1, 7, 100, 513, 2047], dtype=np.int32)
    f = (1 + r.random(n_dims // 2) * 8).astype(np.float32) if factors else None
    attrs = {"mode": mode, "n_dims": n_dims, "theta": 500000.0, "freq_scale": 0.5}
    out = poisoned(x.shape)
    launch.rope(t(x), t(pos), t(f) if factors else None, out, attrs, TU)
    ref = run_reference("rope", [x, pos] + ([f] if factors else []), attrs)[0]
    close(out, ref, 1e-5)


def test_kv_write():
    r = rng(6)
    cache = r.standard_normal((20, 3, 40)).astype(np.float16)
    x = r.standard_normal((4, 3, 40)).astype(np.float32)
    pos = np.array([5, 6, 7, 19], dtype=np.int32)
    tc = t(cache)
    launch.kv_write(tc, t(x), t(pos), TU)
    ref = run_reference("kv_write", [cache.copy(), x, pos], {})[0]
    assert np.array_equal(tc.cpu().numpy(), ref)


@pytest.mark.parametrize("S,H,Hkv,Dh,window,softcap", [
    (1, 8, 2, 64, 0, 0.0),      # decode, GQA 4
    (1, 6, 6, 80, 0, 30.0),     # decode, MHA, odd head width, softcap
    (1, 4, 1, 32, 37, 0.0),     # decode, MQA, sliding window
    (19, 4, 2, 64, 0, 0.0),     # prefill, GQA
    (37, 2, 1, 80, 11, 50.0),   # prefill, window + softcap, odd head width
])
def test_attention(S, H, Hkv, Dh, window, softcap):
    r = rng(S * 10 + H)
    C = 160
    start = 90 if S == 1 else 3  # decode deep in the cache; prefill after a short prefix
    pos = np.arange(start, start + S, dtype=np.int32)
    q = r.standard_normal((S, H, Dh)).astype(np.float32)
    k = r.standard_normal((C, Hkv, Dh)).astype(np.float16)
    v = r.standard_normal((C, Hkv, Dh)).astype(np.float16)
    attrs = {"scale": 1 / np.sqrt(Dh), "window": window, "softcap": softcap}
    out = poisoned(q.shape)
    launch.attention(t(q), t(k), t(v), t(pos), out, attrs, TU)
    ref = run_reference("attention", [q, k, v, pos], attrs)[0]
    close(out, ref, 3e-3)  # q and p go through fp16 tensor cores
