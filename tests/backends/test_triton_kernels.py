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


K_QUANTS = (Q.Q4_K, Q.Q5_K, Q.Q6_K)
QTYPES = [Q.F32, Q.F16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K]


def random_blocks(qtype: Q, N: int, K: int, seed: int) -> np.ndarray:
    """Random stored blocks of a type drift does not quantize to (Q5_K): random quants,
    scales and mins, with the f16 super-block factors d and dmin drawn small and positive."""
    elements, nbytes = quants.block_shape(qtype)
    r = rng(seed)
    raw = r.integers(0, 256, (N, K // elements, nbytes), dtype=np.uint8)
    d_dmin = r.uniform(0.002, 0.02, (N, K // elements, 2)).astype(np.float16)
    raw[:, :, 0:4] = d_dmin.view(np.uint8).reshape(N, K // elements, 4)
    return raw.reshape(N, -1)


def make_weight(qtype: Q, N: int, K: int, seed: int):
    if qtype in quants.QUANTIZABLE or qtype in (Q.F32, Q.F16):
        w = (rng(seed).standard_normal((N, K)) * 0.5).astype(np.float32)
        raw = quants.quantize(w, qtype)
    else:
        raw = random_blocks(qtype, N, K, seed)
    deq = quants.dequantize(raw, qtype, (N, K))
    return convert(t(raw.reshape(N, -1)), qtype, (N, K)), deq


def shape_for(qtype: Q, N: int) -> tuple[int, int]:
    # K not a multiple of the tile: 160 / 352 for 32-blocks, 768 for 256-blocks.
    k = 768 if qtype in K_QUANTS else (352 if N % 2 else 160)
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
    qx = launch.QuantizedX.alloc(H * Dh, DEV) if S == 1 else None  # decode: quantized output too
    launch.attention(t(q), t(k), t(v), t(pos), out, attrs, TU, qx=qx)
    ref = run_reference("attention", [q, k, v, pos], attrs)[0]
    close(out, ref, 3e-3)  # q and p go through fp16 tensor cores
    if qx is not None and launch.attention_quantizes(Dh):
        xq = 254 * qx.xq.cpu().numpy().astype(np.float64) + qx.xr.cpu().numpy()
        deq = (qx.xd.cpu().numpy()[:, None] * xq.reshape(-1, 32)).reshape(out.shape)
        close(torch.from_numpy(deq), out.cpu().numpy(), 1e-4)


@pytest.mark.parametrize("x2", [False, True], ids=["x1", "x2"])
@pytest.mark.parametrize("qtype", [q for q in QTYPES if q not in (Q.F32, Q.F16)],
                         ids=lambda q: q.name)
def test_gemv_int8_x(qtype, x2):
    """The dp4a GEMV (x quantized to int8 blocks of 32) against the float reference: the
    error is x's rounding, ~1/254 of each block's largest element."""
    N = 37 if qtype not in K_QUANTS else 21
    K = 768 if qtype in K_QUANTS else 352
    w, deq = make_weight(qtype, N, K, seed=11)
    x = rng(12).standard_normal((1, K)).astype(np.float32)
    tu = replace(TU, qgemv_bn=8, qgemv_bw=16, x2=x2)
    qx = launch.QuantizedX.alloc(K, DEV)
    launch.quantize_x(t(x), qx, tu)
    # the quantized blocks themselves: |x - dx * xq| <= dx / 2
    xq = qx.xq.cpu().numpy().astype(np.float64).reshape(-1, 32)
    xd = qx.xd.cpu().numpy().astype(np.float64)
    if x2:
        xq = 254 * xq + qx.xr.cpu().numpy().astype(np.float64).reshape(-1, 32)
    assert np.all(np.abs(x.reshape(-1, 32) - xd[:, None] * xq) <= xd[:, None] * 0.5 + 1e-6)
    assert np.allclose(qx.xs.cpu().numpy(), xd * xq.sum(1), rtol=1e-5, atol=1e-6)
    out = poisoned((1, N))
    launch.gemv_q8x(qx, w, out, tu)
    ref = run_reference("matmul", [x, Dense(deq)], {})[0]
    close(out, ref, 1e-4 if x2 and qtype not in K_QUANTS else 1e-2)
    # exact against the same int8 x: the kernel adds no error of its own
    xr = (xd[:, None] * xq).reshape(1, K)
    close(out, xr @ deq.T.astype(np.float64), 3e-3 if qtype in K_QUANTS else 1e-5)


def test_quantize_x_zero_block():
    x = rng(13).standard_normal(96).astype(np.float32)
    x[32:64] = 0.0
    qx = launch.QuantizedX.alloc(96, DEV)
    launch.quantize_x(t(x), qx, TU)
    assert qx.xd.cpu().numpy()[1] == 0 and not qx.xq.cpu().numpy()[32:64].any()


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q5_0],
                         ids=lambda q: q.name)
def test_matmul_dequant_dense(qtype):
    """Prefill through the fp16 scratch: dequantize, then the dense tile GEMM."""
    N, K = shape_for(qtype, 67)
    w, deq = make_weight(qtype, N, K, seed=21)
    x = rng(22).standard_normal((19, K)).astype(np.float32)
    scratch = torch.full((N * K + 5,), float("nan"), dtype=torch.float16, device=DEV)
    wd = launch.dequant(w, scratch, replace(TU, dequant_bn=4, dequant_bb=64))  # partial tiles
    close(wd, deq, 1e-3)
    out = poisoned((19, N))
    launch.matmul(t(x), w, out, replace(TU, dense_min_m=2, dense_bm=16, dense_bn=32,
                                        dense_bk=32), scratch=scratch)
    close(out, run_reference("matmul", [x, Dense(deq)], {})[0], 3e-3)


@pytest.mark.parametrize("mode", ["norm", "add_norm", "add_norm_unit_offset"])
def test_norm_quant(mode):
    """The decode row kernel: [residual add +] rms_norm, with x quantized for the GEMVs."""
    D = 352
    r = rng(31)
    a = r.standard_normal(D).astype(np.float32)
    b = r.standard_normal(D).astype(np.float32) if mode != "norm" else None
    w = r.standard_normal(D).astype(np.float32)
    uo = mode.endswith("unit_offset")
    s = poisoned((D,)) if b is not None else None
    out = poisoned((D,))
    qx = launch.QuantizedX.alloc(D, DEV)
    # blocks of 64: the row loop runs several times and ends on a partial block
    launch.norm_quant(t(a), t(b) if b is not None else None, t(w), s, out, qx, 1e-5, uo,
                      replace(TU, norm_block=64))
    x = a + b if b is not None else a
    ref = run_reference("rms_norm", [x, w], {"eps": 1e-5, "unit_offset": uo})[0]
    close(out, ref, 1e-5)
    if s is not None:
        close(s, x, 1e-7)
    xq = 254 * qx.xq.cpu().numpy().astype(np.float64) + qx.xr.cpu().numpy()
    deq = (qx.xd.cpu().numpy()[:, None] * xq.reshape(-1, 32)).reshape(-1)
    close(torch.from_numpy(deq), ref, 1e-4)


@pytest.mark.parametrize("op", ["swiglu", "geglu"])
def test_swiglu_quant(op):
    D = 32 * 37
    r = rng(32)
    g = (r.standard_normal(D) * 2).astype(np.float32)
    u = r.standard_normal(D).astype(np.float32)
    out = poisoned((D,))
    qx = launch.QuantizedX.alloc(D, DEV)
    launch.swiglu_quant(t(g), t(u), out, qx, op == "geglu", TU)
    ref = run_reference(op, [g, u], {})[0]
    close(out, ref, 1e-5)
    xq = 254 * qx.xq.cpu().numpy().astype(np.float64) + qx.xr.cpu().numpy()
    close(torch.from_numpy((qx.xd.cpu().numpy()[:, None] * xq.reshape(-1, 32)).reshape(-1)),
          ref, 1e-4)


@pytest.mark.parametrize("mode,n_dims,factors", [("norm", 16, False), ("neox", 12, True)])
def test_rope_kv_decode(mode, n_dims, factors):
    """Decode's fused rope(q), rope(k) -> K cache, v -> V cache against the references."""
    r = rng(41)
    H, Hkv, Dh, C, p = 6, 2, 16, 9, 5
    q = r.standard_normal((1, H, Dh)).astype(np.float32)
    k = r.standard_normal((1, Hkv, Dh)).astype(np.float32)
    v = r.standard_normal((1, Hkv, Dh)).astype(np.float32)
    f = (1.0 + r.random(n_dims // 2)).astype(np.float32) if factors else None
    pos = np.array([p], dtype=np.int32)
    attrs = {"mode": mode, "n_dims": n_dims, "theta": 10000.0, "freq_scale": 0.5}
    kc = torch.zeros((C, Hkv, Dh), dtype=torch.float16, device=DEV)
    vc = torch.zeros_like(kc)
    qo = poisoned((1, H, Dh))
    launch.rope_kv_decode(t(q), t(k), t(v), t(pos), t(f) if factors else None, qo, kc, vc,
                          attrs, TU)
    args = [pos] + ([f] if factors else [])
    close(qo, run_reference("rope", [q] + args, attrs)[0], 1e-5)
    close(kc[p:p + 1], run_reference("rope", [k] + args, attrs)[0], 1e-3)
    close(vc[p:p + 1], v, 1e-3)
    assert not kc[:p].any() and not vc[p + 1:].any()


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q4_K", "Q8_0", "Q5_0", "Q5_K", "Q6_K"])
def test_conversion_is_the_kernel_planes_storage(qtype):
    """The on-device conversion at load (torch) is a fast path of the `KernelPlanes` storage's
    numpy reference: the same planes, bit for bit, and the kernel constants the storage
    declares."""
    from tests.passes.test_storage import _random_blocks

    from drift.passes.storage import KernelPlanes, kernel_planes_of

    rng = np.random.default_rng()
    E = quants.block_shape(Q[qtype])[0]
    shape = (int(rng.integers(3, 9)), E * int(rng.integers(1, 4)))
    raw = _random_blocks(qtype, shape, rng)
    w = convert(torch.from_numpy(raw).to(DEV), Q[qtype], shape)
    ref = kernel_planes_of(raw, qtype, shape)
    got = [t for t in (w.q, w.scales, w.mins) if t is not None]
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        g = g.cpu().numpy()
        assert g.shape == r.shape and g.dtype.itemsize == r.dtype.itemsize
        np.testing.assert_array_equal(g.view(r.dtype), r)
    assert w.meta() == KernelPlanes(shape, qtype).kernel_meta()
