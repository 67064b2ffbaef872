"""Conformance: every op a decoder LLM runs, on every backend, against the numpy reference.

Each case is a graph of one node (two for the int8-x matmul: `quantize_q8` feeding it) built
with `GraphBuilder`; its weights are quantized with `drift.formats.quants` and written to a
small GGUF file, so every backend loads them the way it loads a model
(`load_weights(open_gguf(path), specs, weight_stacks(graph))`). The graph is lowered with the
backend's own capabilities but without fusion (`PassContext(caps, fuse=False)`), so the op
under test reaches the backend as built; the passes that still run (the int8-x quantization
on int8-dot backends, layout, memory plan) may add nodes but never remove the op (checked),
and the reference is the walk of the *lowered* graph through the registry's references, on
float64 inputs and the float64 values of the weights as the file holds them. Outputs and the
KV cache after the call are compared.

Inputs are fresh each run: the session seed is printed in every failure message
(`DRIFT_CONFORMANCE_SEED=<seed>` replays it, each case's stream depends only on that seed and
the case's name). Shapes are awkward on purpose: odd widths, N not a multiple of any tile,
K a multiple of the quant block only where the type requires it, chunked prefill (positions
not starting at 0), cache rows past the attended length filled with large garbage.

A backend joins by an entry in `CONFORMANCE_BACKENDS`. A case is skipped (with the reason)
where the backend says it has no kernel for the op (`supports`), cannot read the weight type
(`Capabilities.weight_types`, `int8_weights`), or runs the op at decode only
(`decode_fused_ops`).

Tolerances (`TOLERANCES`): the largest |got - ref| over max |ref|, per output and for the
cache, per op class and per backend; see the table for why each is what it is.
"""

from __future__ import annotations

import os
import secrets
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter

# Triton on the CPU (read when kernels are defined), as test_triton_kernels.py does. Not
# DRIFT_TRITON_CPU: set for the whole session it would make every `drift run` subprocess of
# the CLI tests pick the interpreter as its "best" device.
if os.environ.get("DRIFT_TEST_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

from drift.backends.base import Backend, weight_stacks
from drift.backends.cpu import CPUBackend
from drift.formats import quants
from drift.formats.gguf import open_gguf
from drift.ir import REGISTRY, Graph, GraphBuilder, Role, storage_name
from drift.ir.ops_fused import make_program
from drift.ir.tensor import NUMPY_DTYPES
from drift.passes import PassContext, run_pipeline
from drift.passes.storage import BLOCK_FIELDS
from drift.runtime.engine import gguf_dtype

SEED = int(os.environ.get("DRIFT_CONFORMANCE_SEED") or secrets.randbits(32))


# ---------------------------------------------------------------------------------------------
# backends


@dataclass(frozen=True)
class Entry:
    """How the suite makes a backend and reaches its KV cache (the interface has no call for
    it: a test reads and seeds the cache through these)."""

    make: Callable[[], Backend]
    read_state: Callable[[Backend, str], np.ndarray]
    write_state: Callable[[Backend, str, np.ndarray], None]
    kv_dtype: Callable[[], str]  # the cache's element type (the graphs are built with it)
    small: bool = False  # slow (an interpreter): the smaller shape of each case


def _cpu(**kw) -> Backend:
    return CPUBackend(**kw)  # it supports every op of the registry (each runs its reference)


def _np_state(b: Backend, name: str) -> np.ndarray:
    return np.array(b.state[name], copy=True)


def _np_write(b: Backend, name: str, value: np.ndarray) -> None:
    b.state[name][...] = value


def _triton() -> Backend:
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    from drift.backends.triton import TritonBackend

    if not (TritonBackend.available() or os.environ.get("TRITON_INTERPRET") == "1"):
        pytest.skip("triton: no GPU and not interpreting")
    return TritonBackend()


def _torch_state(b: Backend, name: str) -> np.ndarray:
    return b.state[name].detach().float().cpu().numpy()


def _torch_write(b: Backend, name: str, value: np.ndarray) -> None:
    import torch

    t = b.state[name]
    t.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(t.device, t.dtype))


def _triton_kv() -> str:
    from drift.backends.triton import TritonBackend

    return TritonBackend.kv_dtype


def _portable(name: str, f16_gemm: bool = False, int8_gemm: bool | None = None):
    """The webgpu / opencl backend (lavapipe and PoCL in CI), if its API and a driver exist.
    f16_gemm: prefill's GEMM on packed halves, as the runtime makes it the default on a GPU
    adapter with `shader-f16` (lavapipe has the feature but is a CPU adapter). int8_gemm:
    prefill's matmuls over the weight types it reads on the int8 GEMM (x quantized to
    one-level int8 blocks by the quantize pass)."""

    def make() -> Backend:
        from drift.backends import backend_class

        try:
            cls = backend_class(name)
        except ImportError as e:
            pytest.skip(f"{name}: {e}")
        if not cls.available():
            pytest.skip(f"{name}: no adapter or driver on this machine")
        b = cls(int8_gemm=int8_gemm)
        if f16_gemm:
            if not b.rt.renderer.f16_math:
                pytest.skip(f"{name}: this device does not compute on halves")
            b.rt.renderer.f16_gemm = True
        return b

    return make


def _gpu_state(b: Backend, name: str) -> np.ndarray:
    st, buf = b.state[name]
    (raw,) = b.rt.run([], [], [(buf, 0, st.nbytes)])
    return np.array(st.from_physical(st.bind(np.asarray(raw, dtype=np.uint8))), copy=True)


def _gpu_write(b: Backend, name: str, value: np.ndarray) -> None:
    st, buf = b.state[name]
    objs = st.to_physical(np.asarray(value))
    block = np.zeros(st.nbytes, dtype=np.uint8)
    for o, arr in zip(st.objects(), objs):
        block[o.offset : o.offset + o.nbytes] = np.ascontiguousarray(arr).view(np.uint8).ravel()
    b.rt.write(buf, 0, block)


CONFORMANCE_BACKENDS: dict[str, Entry] = {
    # weights dequantized to float32 at load (a small model)
    "cpu": Entry(_cpu, _np_state, _np_write, lambda: CPUBackend.kv_dtype),
    # weights kept quantized in tiled planes, dequantized slab by slab (a large model)
    "cpu-planes": Entry(lambda: _cpu(dequant_budget=0, native=False), _np_state, _np_write,
                        lambda: CPUBackend.kv_dtype),
    # kept quantized, Q4_0/Q4_1/Q8_0 through the compiled GEMV (native.py) where cc exists
    "cpu-native": Entry(lambda: _cpu(dequant_budget=0), _np_state, _np_write,
                        lambda: CPUBackend.kv_dtype),
    "triton": Entry(_triton, _torch_state, _torch_write, _triton_kv, small=True),
    "webgpu": Entry(_portable("webgpu"), _gpu_state, _gpu_write, lambda: "f32", small=True),
    "opencl": Entry(_portable("opencl"), _gpu_state, _gpu_write, lambda: "f32", small=True),
    # WebGPU as on a GPU with shader-f16: prefill matmuls on the GEMM on packed halves
    "webgpu-halves": Entry(_portable("webgpu", f16_gemm=True), _gpu_state, _gpu_write,
                           lambda: "f32", small=True),
    # ... and with prefill's matmuls on the int8 GEMM, on both APIs
    "webgpu-int8": Entry(_portable("webgpu", int8_gemm=True), _gpu_state, _gpu_write,
                         lambda: "f32", small=True),
    "opencl-int8": Entry(_portable("opencl", int8_gemm=True), _gpu_state, _gpu_write,
                         lambda: "f32", small=True),
}


# ---------------------------------------------------------------------------------------------
# tolerances: max |got - ref| / max |ref|

# The numpy backend computes in float32 (matmuls through BLAS) where the reference walk is
# float64: a few float32 ulps (1e-7 seen; more for the long dot products). q8x outputs (the
# int8 blocks of `quantize_q8` and the fused norm/act/attention variants): a value within a
# rounding of a level boundary may land on the next level, one step of the second level being
# 1/(127*254) = 3.1e-5 of its block's largest element; a wrong first level is 1/127.
TOLERANCES: dict[str, dict[str, float]] = {
    "cpu": {"default": 1e-6, "matmul": 2e-6, "kv": 1e-6, "q8": 1e-4},
    "cpu-planes": {"default": 1e-6, "matmul": 2e-6, "kv": 1e-6, "q8": 1e-4},
    # Triton: fp32 activations and accumulation; the prefill GEMM multiplies fp16 tiles on the
    # tensor cores (x and dequantized w rounded to fp16: ~2^-11 each, summed over K; 5e-4
    # seen); the KV cache is fp16 (`kv_dtype`), which the reference reads as well, so only the
    # rounding of what is written into it may differ; attention's tiles in fp16 (6e-4 seen);
    # RoPE angles in fp32 (position * frequency: the error grows with the position). K-quant
    # weights are converted at load into fp16 planes of d*scale_j and -dmin*min_j
    # (triton/weights.py), a rounding of 2^-11 per sub-block the file does not have: their
    # matmuls and embedding rows differ from the file's values by up to 1.3e-3 (seen),
    # where the other types' are exact.
    "triton": {"default": 1e-4, "matmul": 1e-4, "matmul_prefill": 2e-3, "attention": 2e-3,
               "rope": 1e-3, "kv": 1e-3, "q8": 2e-4,
               "Q4_K": 4e-3, "Q5_K": 4e-3, "Q6_K": 4e-3, "Q2_K": 4e-3, "Q3_K": 4e-3},
    # WebGPU / OpenCL: f32 everywhere (activations, KV cache, dequantized weights, the same
    # arithmetic as the reference in another summation order); transcendental functions of
    # the drivers (exp, tanh: WGSL's tanh is clamped by the renderer) are a few ulp off.
    "webgpu": {"default": 1e-5, "matmul": 2e-5, "attention": 2e-5, "rope": 1e-4, "kv": 1e-5,
               "q8": 1e-4},
    "opencl": {"default": 1e-5, "matmul": 2e-5, "attention": 2e-5, "rope": 1e-4, "kv": 1e-5,
               "q8": 1e-4},
    # ... with prefill's GEMM on packed halves: x and the dequantized weights rounded to
    # halves (2^-11 each) and summed in halves over 16 pairs a K step (6e-4 to 1e-3 seen in
    # test_gpu_apis.py), as the f16 tensor cores' 3e-3 bound
    "webgpu-halves": {"default": 1e-5, "matmul": 2e-5, "matmul_prefill": 3e-3,
                      "attention": 2e-5, "rope": 1e-4, "kv": 1e-5, "q8": 1e-4},
    # ... with the int8 GEMM: the reference evaluates the pass's graph, x in the same q8x1
    # blocks, so only the GEMM's f32 sums of exact integer products differ (9e-7 seen)
    "webgpu-int8": {"default": 1e-5, "matmul": 2e-5, "attention": 2e-5, "rope": 1e-4,
                    "kv": 1e-5, "q8": 1e-4},
    "opencl-int8": {"default": 1e-5, "matmul": 2e-5, "attention": 2e-5, "rope": 1e-4,
                    "kv": 1e-5, "q8": 1e-4},
}


def tolerance(backend: str, kind: str, prefill: bool = False, weight_type: str | None = None
              ) -> float:
    """The op class's tolerance on this backend (its prefill variant where it has one), or the
    weight type's where that is looser. A backend without a row takes Triton's."""
    table = TOLERANCES.get(backend, TOLERANCES["triton"])
    tol = table.get(f"{kind}_prefill" if prefill and f"{kind}_prefill" in table else kind,
                    table["default"])
    return max(tol, table.get(weight_type, 0.0)) if weight_type else tol


# ---------------------------------------------------------------------------------------------
# cases

WEIGHT_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K",
                "Q4_K", "Q5_K", "Q6_K"]
INT8_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]


def k_for(qtype: str, small: bool) -> int:
    """An input width for the type: awkward where any is allowed, whole blocks where not."""
    block = quants.block_shape(Q[qtype])[0]
    if block == 1:
        return 45 if small else 71
    return block * (2 if small or block == 256 else 3)


@dataclass
class Case:
    graph: Graph
    op: str  # the op under test: it must survive the lowering
    kind: str  # its tolerance class
    weights: dict[str, tuple[np.ndarray, str]] = field(default_factory=dict)  # f32 values, type
    feeds: dict[str, np.ndarray] = field(default_factory=dict)
    state: dict[str, np.ndarray] = field(default_factory=dict)  # initial cache contents
    prefill: bool = False
    weight_type: str | None = None  # the matmul weight type (skipped where it is not read)
    int8_x: bool = False  # reads q8x activations (an int8-x kernel)


class Maker:
    """Builds one case: a GraphBuilder plus the values of its inputs, weights and cache."""

    def __init__(self, name: str, rng: np.random.Generator, kv_dtype: str, S: int, **meta):
        self.b = GraphBuilder(name, n_tokens=S, stage="prefill" if S > 1 else "decode", **meta)
        self.rng, self.kv_dtype, self.S = rng, kv_dtype, S
        self.weights: dict[str, tuple[np.ndarray, str]] = {}
        self.feeds: dict[str, np.ndarray] = {}
        self.state: dict[str, np.ndarray] = {}

    def x(self, name: str, shape, scale: float = 1.0) -> str:
        self.feeds[name] = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        return self.b.input(name, tuple(shape), "f32")

    def ints(self, name: str, values) -> str:
        self.feeds[name] = np.asarray(values, dtype=np.int32)
        return self.b.input(name, (len(values),), "i32")

    def w(self, name: str, shape, qtype: str = "F32", scale: float = 0.2, offset: float = 0.0
          ) -> str:
        value = (self.rng.standard_normal(shape) * scale + offset).astype(np.float32)
        self.weights[name] = (value, qtype)
        # the IR names plain types in lower case, quant types by their GGML name (as the engine)
        return self.b.weight(name, tuple(shape), gguf_dtype(qtype))

    def norm_w(self, name: str, D: int) -> str:
        return self.w(name, (D,), "F32", 0.3, 1.0)

    def cache(self, name: str, shape, T: int) -> str:
        """A cache whose rows past T hold large garbage that no op may read."""
        value = self.rng.standard_normal(shape).astype(np.float32)
        value[T:] = 300.0 * self.rng.choice([-1.0, 1.0], size=value[T:].shape)
        self.state[name] = value.astype(NUMPY_DTYPES[self.kv_dtype])
        return self.b.state(name, tuple(shape), self.kv_dtype)

    def case(self, op: str, outs, kind: str, **kw) -> Case:
        for o in outs:
            self.b.output(o)
        return Case(self.b.finish(), op, kind, self.weights, self.feeds, self.state,
                    prefill=self.S > 1, **kw)


def positions(rng: np.random.Generator, S: int, start_max: int = 40) -> np.ndarray:
    start = int(rng.integers(0, start_max)) if S > 1 else int(rng.integers(100, 1000))
    return np.arange(start, start + S)


# Each builder: (rng, kv_dtype, small) -> Case. Registered under a readable id.
BUILDERS: dict[str, Callable[[np.random.Generator, str, bool], Case]] = {}


def case(name: str):
    def wrap(fn):
        BUILDERS[name] = fn
        return fn

    return wrap


def _embedding(qtype: str):
    def build(rng, kv, small):
        m = Maker(f"embedding.{qtype}", rng, kv, 7)
        D = k_for(qtype, small)
        V = 29
        table = m.w("token_embd.weight", (V, D), qtype, 1.0)
        ids = m.ints("tokens", list(rng.integers(0, V, 6)) + [V - 1])
        return m.case("embedding", [m.b.op("embedding", table, ids)], "default",
                      weight_type=qtype)

    return build


for _t in WEIGHT_TYPES:
    case(f"embedding-{_t}")(_embedding(_t))


def _rms_norm(S: int, unit_offset: bool, q8: bool = False):
    """rms_norm, or (q8) rms_norm_q8: the norm's row quantized to q8x blocks (K % 32 == 0)."""
    op = "rms_norm_q8" if q8 else "rms_norm"

    def build(rng, kv, small):
        m = Maker(op, rng, kv, S)
        K = 96 if q8 else 45
        x = m.x("x", (S, K), 3.0)
        w = m.w("w", (K,), "F32", 0.3, 0.0 if unit_offset else 1.0)
        y = m.b.op(op, x, w, eps=1e-5, unit_offset=unit_offset)
        return m.case(op, [y], "default", int8_x=q8)

    return build


case("rms_norm-prefill")(_rms_norm(7, False))
case("rms_norm-decode-unit_offset")(_rms_norm(1, True))


def _matmul(qtype: str, S: int):
    def build(rng, kv, small):
        m = Maker(f"matmul.{qtype}", rng, kv, S)
        K, N = k_for(qtype, small), 37
        x = m.x("x", (S, K))
        w = m.w("w", (N, K), qtype, 0.2)
        return m.case("matmul", [m.b.op("matmul", x, w)], "matmul", weight_type=qtype)

    return build


for _t in WEIGHT_TYPES:
    case(f"matmul-{_t}-prefill")(_matmul(_t, 7))
    case(f"matmul-{_t}-decode")(_matmul(_t, 1))


def _matmul_q8x(qtype: str):
    """The int8-x GEMV: a decode matmul reading x as q8x blocks (`quantize_q8` writes them)."""

    def build(rng, kv, small):
        m = Maker(f"matmul_q8x.{qtype}", rng, kv, 1)
        K, N = k_for(qtype, small), 37
        x = m.x("x", (1, K))
        w = m.w("w", (N, K), qtype, 0.2)
        y = m.b.op("matmul", m.b.op("quantize_q8", x), w)
        return m.case("matmul", [y], "matmul", weight_type=qtype, int8_x=True)

    return build


for _t in INT8_TYPES:
    case(f"matmul_q8x-{_t}")(_matmul_q8x(_t))


def _rope(mode: str, S: int, factors: bool, n_dims: int = 24, freq_scale: float = 1.0):
    def build(rng, kv, small):
        m = Maker("rope", rng, kv, S)
        x = m.x("x", (S, 3, 24))
        pos = m.ints("positions", positions(rng, S))
        args = [x, pos]
        if factors:
            args.append(m.w("rope_freqs.weight", (n_dims // 2,), "F32", 0.0, 1.0))
            m.weights["rope_freqs.weight"] = (
                rng.uniform(1.0, 8.0, n_dims // 2).astype(np.float32), "F32")
        attrs = dict(mode=mode, n_dims=n_dims, theta=10000.0 if mode == "norm" else 1e6)
        if freq_scale != 1.0:
            attrs["freq_scale"] = freq_scale
        return m.case("rope", [m.b.op("rope", *args, **attrs)], "rope")

    return build


case("rope-norm-prefill")(_rope("norm", 7, False))
case("rope-norm-decode-freqs")(_rope("norm", 1, True))
case("rope-norm-prefill-freqs-scaled")(_rope("norm", 7, True, freq_scale=0.25))
case("rope-neox-prefill-freqs")(_rope("neox", 7, True))
case("rope-neox-decode")(_rope("neox", 1, False))
case("rope-neox-prefill-partial")(_rope("neox", 7, False, n_dims=16))


def _kv_write(S: int):
    def build(rng, kv, small):
        m = Maker("kv_write", rng, kv, S)
        C, Hkv, Dh = 19, 2, 24
        cache = m.cache("k_cache.0", (C, Hkv, Dh), C)
        x = m.x("k", (S, Hkv, Dh))
        pos = m.ints("positions", sorted(rng.choice(C, S, replace=False)))
        m.b.op("kv_write", cache, x, pos)
        return m.case("kv_write", [], "kv")

    return build


case("kv_write-prefill")(_kv_write(7))
case("kv_write-decode")(_kv_write(1))


def _attention_setup(m: Maker, rng, S: int, H: int, Hkv: int, Dh: int, Dv: int, C: int = 19):
    """q, caches holding T = last position + 1 keys, positions: chunked prefill or decode."""
    if S > 1:
        start = int(rng.integers(0, C - S))
    else:
        start = int(rng.integers(C // 2, C))
    pos = np.arange(start, start + S)
    T = int(pos[-1]) + 1
    q = m.x("q", (S, H, Dh))
    kc = m.cache("k_cache.0", (C, Hkv, Dh), T)
    vc = m.cache("v_cache.0", (C, Hkv, Dv), T)
    return q, kc, vc, m.ints("positions", pos)


def _attention(S: int, H: int, Hkv: int, Dh: int = 24, Dv: int = 24, window: int = 0,
               softcap: float = 0.0, q8: bool = False):
    op = "attention_q8" if q8 else "attention"

    def build(rng, kv, small):
        m = Maker(op, rng, kv, S)
        q, kc, vc, pos = _attention_setup(m, rng, S, H, Hkv, Dh, Dv)
        attrs: dict[str, Any] = dict(scale=1.0 / np.sqrt(Dh))
        if window:
            attrs["window"] = window
        if softcap:  # scores large enough that the cap bends them
            attrs.update(softcap=softcap, scale=1.0)
        return m.case(op, [m.b.op(op, q, kc, vc, pos, **attrs)], "attention",
                      int8_x=q8)

    return build


case("attention-causal-prefill")(_attention(7, 2, 2))
case("attention-gqa-prefill")(_attention(7, 6, 2))
case("attention-window-prefill")(_attention(7, 4, 2, window=5))
case("attention-softcap-mqa-prefill")(_attention(7, 4, 1, softcap=2.0))
case("attention-causal-decode")(_attention(1, 2, 2))
case("attention-gqa-decode")(_attention(1, 6, 2))
case("attention-window-decode")(_attention(1, 4, 2, window=5))
case("attention-softcap-decode")(_attention(1, 4, 2, softcap=2.0))
case("attention-dv-decode")(_attention(1, 4, 2, Dh=24, Dv=16))


UNARY = {"scale": dict(value=0.37), "silu": {}, "gelu": {}, "softcap": dict(cap=1.5)}
BINARY = ("add", "mul", "swiglu", "geglu")


def _unary(op: str):
    def build(rng, kv, small):
        m = Maker(op, rng, kv, 7)
        return m.case(op, [m.b.op(op, m.x("x", (7, 45), 3.0), **UNARY[op])], "default")

    return build


def _binary(op: str, bias: bool = False):
    def build(rng, kv, small):
        m = Maker(op, rng, kv, 7)
        a = m.x("a", (7, 45), 3.0)
        b = m.w("bias", (45,), "F32", 1.0) if bias else m.x("b", (7, 45), 3.0)
        return m.case(op, [m.b.op(op, a, b)], "default")

    return build


for _op in UNARY:
    case(_op)(_unary(_op))
for _op in BINARY:
    case(_op)(_binary(_op))
case("add-bias")(_binary("add", bias=True))


# --- fused ops


def _add_rms_norm(S: int, unit_offset: bool, q8: bool = False):
    op = "add_rms_norm_q8" if q8 else "add_rms_norm"

    def build(rng, kv, small):
        m = Maker(op, rng, kv, S)
        D = 96 if q8 else 45
        a, b = m.x("a", (S, D), 2.0), m.x("b", (S, D), 2.0)
        w = m.w("w", (D,), "F32", 0.3, 0.0 if unit_offset else 1.0)
        outs = m.b.op_multi(op, a, b, w, eps=1e-6, unit_offset=unit_offset)
        return m.case(op, outs, "default", int8_x=q8)

    return build


case("add_rms_norm-prefill")(_add_rms_norm(7, False))
case("add_rms_norm-decode-unit_offset")(_add_rms_norm(1, True))
case("add_rms_norm_q8-decode")(_add_rms_norm(1, False, q8=True))


def _stacked(qtype: str, S: int, bias: bool):
    def build(rng, kv, small):
        m = Maker("stacked_matmul", rng, kv, S)
        K = k_for(qtype, small)
        x = m.x("x", (S, K))
        ns = (37, 13, 13)
        ws = [m.w(f"blk.0.attn_{p}.weight", (n, K), qtype) for p, n in zip("qkv", ns)]
        bs = [m.w(f"blk.0.attn_{p}.bias", (n,), "F32", 0.5) for p, n in zip("qkv", ns)] \
            if bias else []
        outs = m.b.op_multi("stacked_matmul", x, *ws, *bs, n=3, bias=bias)
        return m.case("stacked_matmul", outs, "matmul", weight_type=qtype)

    return build


for _t, _s, _b in [("F16", 7, True), ("Q8_0", 1, False), ("Q4_K", 1, True), ("Q6_K", 7, False),
                   ("Q4_0", 1, True), ("Q5_K", 7, True)]:
    case(f"stacked_matmul-{_t}-{'prefill' if _s > 1 else 'decode'}"
         f"{'-bias' if _b else ''}")(_stacked(_t, _s, _b))


def _gate_up(qtype: str, S: int, act: str, bias: bool):
    def build(rng, kv, small):
        m = Maker("ffn_gate_up", rng, kv, S)
        K, F = k_for(qtype, small), 37
        x = m.x("x", (S, K))
        wg = m.w("blk.0.ffn_gate.weight", (F, K), qtype, 0.3)
        wu = m.w("blk.0.ffn_up.weight", (F, K), qtype, 0.3)
        bs = [m.w(f"blk.0.ffn_{p}.bias", (F,), "F32", 0.5) for p in ("gate", "up")] \
            if bias else []
        y = m.b.op("ffn_gate_up", x, wg, wu, *bs, act=act, bias=bias)
        return m.case("ffn_gate_up", [y], "matmul", weight_type=qtype)

    return build


for _t, _s, _a, _b in [("Q4_0", 1, "swiglu", False), ("Q8_0", 7, "swiglu", True),
                       ("Q4_K", 7, "geglu", False), ("Q6_K", 1, "geglu", True),
                       ("F16", 1, "swiglu", False)]:
    case(f"ffn_gate_up-{_t}-{'prefill' if _s > 1 else 'decode'}-{_a}"
         f"{'-bias' if _b else ''}")(_gate_up(_t, _s, _a, _b))


def _rope_args(m: Maker, rng, S: int, Dh: int, mode: str, qk_norm: bool, factors: bool):
    pos = m.ints("positions", positions(rng, S))
    rest = []
    if qk_norm:
        rest.append(m.norm_w("blk.0.attn_k_norm.weight", Dh))
    if factors:
        rest.append(m.w("rope_freqs.weight", (Dh // 2,), "F32", 0.0, 1.0))
        m.weights["rope_freqs.weight"] = (rng.uniform(1.0, 8.0, Dh // 2).astype(np.float32),
                                          "F32")
    attrs: dict[str, Any] = dict(mode=mode, n_dims=Dh, theta=10000.0)
    if qk_norm:
        attrs.update(qk_norm=True, eps=1e-6)
    return pos, rest, attrs


def _rope_heads(S: int, mode: str, qk_norm: bool, factors: bool):
    def build(rng, kv, small):
        m = Maker("rope_heads", rng, kv, S)
        H, Dh = 3, 24
        x = m.x("q", (S, H * Dh))
        pos, rest, attrs = _rope_args(m, rng, S, Dh, mode, qk_norm, factors)
        y = m.b.op("rope_heads", x, pos, *rest, heads=H, **attrs)
        return m.case("rope_heads", [y], "rope")

    return build


case("rope_heads-norm-prefill-freqs")(_rope_heads(7, "norm", False, True))
case("rope_heads-neox-decode-qk_norm")(_rope_heads(1, "neox", True, False))
case("rope_heads-neox-prefill-qk_norm-freqs")(_rope_heads(7, "neox", True, True))


def _rope_kv_write(S: int, mode: str, qk_norm: bool, factors: bool):
    def build(rng, kv, small):
        m = Maker("rope_kv_write", rng, kv, S)
        C, Hkv, Dh = 1100, 2, 24  # positions run to 1000 at decode
        cache = m.cache("k_cache.0", (C, Hkv, Dh), C)
        x = m.x("k", (S, Hkv * Dh))
        pos, rest, attrs = _rope_args(m, rng, S, Dh, mode, qk_norm, factors)
        m.b.op("rope_kv_write", cache, x, pos, *rest, heads=Hkv, **attrs)
        return m.case("rope_kv_write", [], "kv")

    return build


case("rope_kv_write-norm-prefill")(_rope_kv_write(7, "norm", False, False))
case("rope_kv_write-neox-decode-qk_norm-freqs")(_rope_kv_write(1, "neox", True, True))


def _rope_qkv_write(S: int, mode: str, factors: bool):
    def build(rng, kv, small):
        m = Maker("rope_qkv_write", rng, kv, S)
        C, H, Hkv, Dh = 1100, 6, 2, 24
        kc = m.cache("k_cache.0", (C, Hkv, Dh), C)
        vc = m.cache("v_cache.0", (C, Hkv, Dh), C)
        q, k, v = m.x("q", (S, H, Dh)), m.x("k", (S, Hkv, Dh)), m.x("v", (S, Hkv, Dh))
        pos, rest, attrs = _rope_args(m, rng, S, Dh, mode, False, factors)
        outs = m.b.op_multi("rope_qkv_write", kc, vc, q, k, v, pos, *rest, **attrs)
        return m.case("rope_qkv_write", outs[2:], "rope")

    return build


case("rope_qkv_write-norm-decode-freqs")(_rope_qkv_write(1, "norm", True))
case("rope_qkv_write-neox-decode")(_rope_qkv_write(1, "neox", False))
case("rope_qkv_write-neox-prefill")(_rope_qkv_write(7, "neox", False))


def _rms_norm_matmul(qtype: str, S: int, unit_offset: bool):
    def build(rng, kv, small):
        m = Maker("rms_norm_matmul", rng, kv, S)
        K, N = k_for(qtype, small), 41
        x = m.x("x", (S, K), 3.0)
        wn = m.w("output_norm.weight", (K,), "F32", 0.3, 0.0 if unit_offset else 1.0)
        w = m.w("output.weight", (N, K), qtype)
        y = m.b.op("rms_norm_matmul", x, wn, w, eps=1e-5, unit_offset=unit_offset)
        return m.case("rms_norm_matmul", [y], "matmul", weight_type=qtype)

    return build


case("rms_norm_matmul-Q6_K-decode")(_rms_norm_matmul("Q6_K", 1, False))
case("rms_norm_matmul-Q8_0-prefill-unit_offset")(_rms_norm_matmul("Q8_0", 7, True))
case("rms_norm_matmul-F16-decode")(_rms_norm_matmul("F16", 1, False))


def _fused_chain(rng, kv, small):
    """A chain of elementwise ops: ((x0 + x1) * x2) -> silu -> scale."""
    m = Maker("fused_elementwise", rng, kv, 7)
    xs = [m.x(f"x{i}", (7, 45), 2.0) for i in range(3)]
    prog = make_program([("add", ("x0", "x1"), {}), ("mul", ("t0", "x2"), {}),
                         ("silu", ("t1",), {}), ("scale", ("t2",), {"value": 0.5})])
    return m.case("fused_elementwise", [m.b.op("fused_elementwise", *xs, program=prog)],
                  "default")


def _fused_epilogue(qtype: str, S: int):
    def build(rng, kv, small):
        """A matmul anchor with its epilogue: (x @ w.T + bias) -> gelu -> + residual."""
        m = Maker("fused_elementwise", rng, kv, S)
        K, N = k_for(qtype, small), 37
        x = m.x("x", (S, K))
        w = m.w("w", (N, K), qtype)
        bias = m.w("bias", (N,), "F32", 0.5)
        res = m.x("res", (S, N))
        prog = make_program([("matmul", ("x0", "x1"), {}), ("add", ("t0", "x2"), {}),
                             ("gelu", ("t1",), {}), ("add", ("t2", "x3"), {})])
        y = m.b.op("fused_elementwise", x, w, bias, res, program=prog)
        return m.case("fused_elementwise", [y], "matmul", weight_type=qtype)

    return build


case("fused_elementwise-chain")(_fused_chain)
case("fused_elementwise-matmul-Q4_0-decode")(_fused_epilogue("Q4_0", 1))
case("fused_elementwise-matmul-F32-prefill")(_fused_epilogue("F32", 7))


def _quantize_q8(S: int):
    def build(rng, kv, small):
        m = Maker("quantize_q8", rng, kv, S)
        x = m.x("x", (S, 96), 2.0)
        m.feeds["x"][0, 32:64] = 0.0  # an all-zero block: scale 0
        m.feeds["x"][-1, 64:96] *= 1e4  # a block of large values next to small ones
        return m.case("quantize_q8", [m.b.op("quantize_q8", x)], "default", int8_x=True)

    return build


case("quantize_q8-decode")(_quantize_q8(1))
case("quantize_q8-prefill")(_quantize_q8(7))


case("rms_norm_q8-decode")(_rms_norm(1, False, q8=True))
case("rms_norm_q8-decode-unit_offset")(_rms_norm(1, True, q8=True))


def _gated_act_q8(act: str):
    def build(rng, kv, small):
        m = Maker("gated_act_q8", rng, kv, 1)
        g, u = m.x("gate", (1, 96), 3.0), m.x("up", (1, 96), 3.0)
        return m.case("gated_act_q8", [m.b.op("gated_act_q8", g, u, act=act)], "default",
                      int8_x=True)

    return build


case("gated_act_q8-swiglu")(_gated_act_q8("swiglu"))
case("gated_act_q8-geglu")(_gated_act_q8("geglu"))
case("attention_q8-gqa-decode")(_attention(1, 4, 2, Dh=32, Dv=32, q8=True))
case("attention_q8-window-softcap-decode")(_attention(1, 4, 1, Dh=32, Dv=32, window=5,
                                                      softcap=2.0, q8=True))


# ---------------------------------------------------------------------------------------------
# weights file, reference walk, comparison


def _random_blocks(rng: np.random.Generator, qtype: str, shape) -> np.ndarray:
    """Blocks of a type `quants.quantize` does not write: random quants and scales, with sane
    f16 super-block factors (any bytes are a valid block otherwise)."""
    rows, cols = shape
    elements, size = quants.block_shape(Q[qtype])
    raw = rng.integers(0, 256, (rows, cols // elements, size), dtype=np.uint8)
    for name, off, nbytes, _ in BLOCK_FIELDS[qtype]:
        if name in ("d", "dmin"):
            d = rng.uniform(0.002, 0.01, raw.shape[:2]).astype(np.float16)
            raw[..., off : off + 2] = d[..., None].view(np.uint8).reshape(*d.shape, 2)
    return raw.reshape(rows, -1)


def write_weights(path: Path, c: Case, rng: np.random.Generator) -> None:
    w = GGUFWriter(path, "conformance")
    for name, (value, qtype) in c.weights.items():
        q = Q[qtype]
        if q == Q.F32:
            w.add_tensor(name, value.astype(np.float32))
        elif q == Q.F16:
            w.add_tensor(name, value.astype(np.float16))
        elif q in quants.QUANTIZABLE:
            w.add_tensor(name, quants.quantize(value, q), raw_dtype=q)
        else:
            w.add_tensor(name, _random_blocks(rng, qtype, value.shape), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def reference(graph: Graph, weights: dict[str, np.ndarray], feeds: dict[str, np.ndarray],
              state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The lowered graph through the registry's references: float64 activations and weights;
    the cache keeps its element type, so what is written into it rounds as it does there."""
    env: dict[str, Any] = dict(weights)
    for name, v in feeds.items():
        env[name] = v.astype(np.float64) if v.dtype.kind == "f" else v
    cache = {k: v.copy() for k, v in state.items()}
    for n in graph.nodes:
        args = [cache[storage_name(i)] if graph.tensors[i].role == Role.KV else env[i]
                for i in n.inputs]
        for out, value in zip(n.outputs, REGISTRY[n.op].reference(args, n.attrs), strict=True):
            if graph.tensors[out].role == Role.KV:
                cache[storage_name(out)] = value
            else:
                env[out] = value
    return {o: env[o] for o in graph.outputs}, cache


def max_rel_err(got: np.ndarray, want: np.ndarray) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def check(what: str, got, want, tol: float, replay: str) -> None:
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape} ({replay})"
    assert np.isfinite(got).all(), f"{what}: non-finite values ({replay})"
    err = max_rel_err(got, want)
    if err >= tol:
        where = np.unravel_index(np.argmax(np.abs(got.astype(np.float64) - want)), want.shape)
        raise AssertionError(f"{what}: max error {err:.2e} >= {tol:.0e} of max |ref|, worst at "
                             f"{tuple(int(i) for i in where)}: got {got[where]!r}, "
                             f"want {want[where]!r} ({replay})")


def _skip_reason(backend: Backend, c: Case) -> str | None:
    caps = backend.capabilities()
    for n in c.graph.nodes:
        if not backend.supports(n.op):
            return f"{backend.name} has no kernel for {n.op}"
        if c.prefill and n.op in caps.decode_fused_ops:
            return f"{backend.name} runs {n.op} at decode only"
    if c.weight_type and caps.weight_types and c.weight_type not in caps.weight_types:
        return f"{backend.name} does not read {c.weight_type} weights"
    if c.int8_x and c.weight_type and caps.int8_dot and c.weight_type not in caps.int8_weights:
        return f"{backend.name}'s int8-x GEMV does not read {c.weight_type}"
    return None


@pytest.mark.parametrize("case_id", sorted(BUILDERS))
@pytest.mark.parametrize("backend_name", list(CONFORMANCE_BACKENDS))
def test_conformance(backend_name: str, case_id: str, tmp_path: Path, request) -> None:
    entry = CONFORMANCE_BACKENDS[backend_name]
    backend = entry.make()
    rng = np.random.default_rng([SEED, zlib.crc32(case_id.encode())])
    c = BUILDERS[case_id](rng, entry.kv_dtype(), entry.small)
    replay = f"replay: DRIFT_CONFORMANCE_SEED={SEED} pytest '{request.node.nodeid}'"
    why = _skip_reason(backend, c)
    if why:
        pytest.skip(why)

    path = tmp_path / "weights.gguf"
    write_weights(path, c, rng)
    model = open_gguf(path)
    backend.load_weights(model, c.graph.by_role(Role.WEIGHT), weight_stacks(c.graph))
    # Capabilities after loading: the numpy backend's depend on how it kept the weights.
    compiled = run_pipeline(c.graph, PassContext(backend.capabilities(), fuse=False))
    g = compiled.graph
    assert c.op in [n.op for n in g.nodes], f"the passes rewrote {c.op}: {compiled.ctx.log}"
    backend.alloc_state([t for t in g.by_role(Role.KV) if t.name == storage_name(t.name)])
    for name, value in c.state.items():
        entry.write_state(backend, name, value)
    prog = backend.program(compiled)
    got = prog.run({k: v.copy() for k, v in c.feeds.items()})

    weights = {t.name: model.dequantize(t.name).astype(np.float64)
               for t in g.by_role(Role.WEIGHT)}
    want, want_state = reference(g, weights, c.feeds, c.state)
    tol = tolerance(backend_name, c.kind, c.prefill, c.weight_type)
    assert set(got) == set(want), f"outputs {sorted(got)} != {sorted(want)} ({replay})"
    for name in want:
        t = max(tol, tolerance(backend_name, "q8")) if g.tensors[name].dtype == "q8x" else tol
        check(f"{c.op} output {name}", got[name], want[name], t, replay)
    # a cache written by a RoPE kernel (rope_kv_write, rope_qkv_write) holds rotated keys:
    # RoPE's tolerance (lavapipe's cos/sin of angles near 1000 are ~1e-5 off)
    kv_tol = max(tolerance(backend_name, "kv"), tol if c.kind in ("kv", "rope") else 0.0)
    for name, value in want_state.items():
        check(f"{c.op} cache {name}", entry.read_state(backend, name), value, kv_tol, replay)
