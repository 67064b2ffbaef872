"""The op registry: each op defined once, with its shape inference, numpy reference and cost.

The numpy references are the executable specification every backend is tested against, and
the costs are what `analysis/` sums: no second model of the network exists anywhere.

Conventions (shape comments name the axes):
    S  tokens in this call          D  model width            H / Hkv  query / KV heads
    Dh head width                   C  KV-cache capacity      T  keys attended (kv_len)
    K  matmul input width           N  matmul output width    V  vocabulary

Weights reach a reference either as float arrays or as objects with `.rows(ids)` and
`.matmul_t(x)` (the CPU backend's lazily dequantized matrices), so references never force a
float copy of a large quantized weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any, Callable, Sequence

import numpy as np

from drift.ir.tensor import TensorSpec, nbytes_of

Shape = tuple[int, ...]
Inferred = list[tuple[Shape, str]]


@dataclass(frozen=True)
class Cost:
    flops: int
    reads: tuple[int, ...]  # bytes read, one entry per input
    writes: tuple[int, ...]  # bytes written, one entry per output

    @property
    def bytes(self) -> int:
        return sum(self.reads) + sum(self.writes)


@dataclass(frozen=True)
class OpDef:
    name: str
    infer: Callable[[Sequence[TensorSpec], dict], Inferred]
    reference: Callable[[Sequence[Any], dict], list[np.ndarray]]
    # cost(inputs, outputs, attrs, kv_len): kv_len is the number of keys attended, for ops
    # whose work depends on how full the cache is.
    cost: Callable[[Sequence[TensorSpec], Sequence[TensorSpec], dict, int], Cost]
    writes_state: bool = False  # output 0 is input 0 updated in place (KV cache)
    elementwise: bool = False  # out[i] depends only on in[i] (fusion may chain these)
    view: bool = False  # the output is the input's memory at an offset: no kernel runs
    fused: bool = False  # made by a fusion pass; a backend runs it only if it says so
    adjacent_outputs: bool = False  # the outputs lie back to back in one buffer, in order


REGISTRY: dict[str, OpDef] = {}


def register(name: str, *, writes_state: bool = False, elementwise: bool = False,
             view: bool = False, fused: bool = False, adjacent_outputs: bool = False):
    def wrap(cls):
        REGISTRY[name] = OpDef(
            name, cls.infer, cls.reference, cls.cost, writes_state, elementwise, view, fused,
            adjacent_outputs,
        )
        return cls

    return wrap


def is_view(op: str) -> bool:
    """A view op (reshape, last_row): its output shares its input's memory, no kernel runs."""
    d = REGISTRY.get(op)
    return d is not None and d.view


def infer(op: str, inputs: Sequence[TensorSpec], attrs: dict) -> Inferred:
    if op not in REGISTRY:
        raise KeyError(f"unknown op {op!r}")
    return REGISTRY[op].infer(inputs, attrs)


def run_reference(op: str, inputs: Sequence[Any], attrs: dict) -> list[np.ndarray]:
    return REGISTRY[op].reference(inputs, attrs)


def cost_of(op: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], attrs: dict,
            kv_len: int = 0) -> Cost:
    return REGISTRY[op].cost(inputs, outputs, attrs, kv_len)


# ---------------------------------------------------------------------------------------------
# helpers shared by the definitions


def _act_dtype(*specs: TensorSpec) -> str:
    """Activations keep the dtype of the first non-weight float input."""
    for s in specs:
        if s.dtype in ("f32", "f16", "bf16", "f64"):
            return s.dtype
    return "f32"


def _io_cost(inputs, outputs, flops: int) -> Cost:
    return Cost(int(flops), tuple(t.nbytes for t in inputs), tuple(t.nbytes for t in outputs))


def _rows(w: Any, ids: np.ndarray) -> np.ndarray:
    return w.rows(ids) if hasattr(w, "rows") else np.asarray(w[ids], dtype=np.float32)


def _matmul_t(x: np.ndarray, w: Any) -> np.ndarray:
    """x @ w.T for a (N, K) weight that may be stored quantized."""
    return w.matmul_t(x) if hasattr(w, "matmul_t") else x @ np.asarray(w).T


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _unary(name: str, fn: Callable[[np.ndarray, dict], np.ndarray], flops_per_elem: int) -> None:
    """Register an elementwise op of one input."""

    class _Op:
        @staticmethod
        def infer(inputs, attrs):
            return [(inputs[0].shape, _act_dtype(inputs[0]))]

        @staticmethod
        def reference(inputs, attrs):
            x = inputs[0]
            return [fn(x, attrs).astype(x.dtype, copy=False)]

        @staticmethod
        def cost(inputs, outputs, attrs, kv_len):
            return _io_cost(inputs, outputs, flops_per_elem * inputs[0].numel)

    register(name, elementwise=True)(_Op)


def _binary(name: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray], flops_per_elem: int):
    """Register an elementwise op of two inputs; the second may broadcast (a bias, a row)."""

    class _Op:
        @staticmethod
        def infer(inputs, attrs):
            a, b = inputs
            shape = np.broadcast_shapes(a.shape, b.shape)
            assert shape == a.shape, f"{name}: {b.shape} must broadcast into {a.shape}"
            return [(a.shape, _act_dtype(a, b))]

        @staticmethod
        def reference(inputs, attrs):
            a, b = inputs
            return [fn(a, np.asarray(b, dtype=a.dtype)).astype(a.dtype, copy=False)]

        @staticmethod
        def cost(inputs, outputs, attrs, kv_len):
            return _io_cost(inputs, outputs, flops_per_elem * outputs[0].numel)

    register(name, elementwise=True)(_Op)


def _gated(name: str, activation: Callable[[np.ndarray], np.ndarray], flops_per_elem: int):
    """Register a gated activation of two inputs of one shape: activation(gate) * up."""

    class _Op:
        @staticmethod
        def infer(inputs, attrs):
            gate, up = inputs
            assert gate.shape == up.shape, f"{name}: gate {gate.shape} and up {up.shape}"
            return [(gate.shape, _act_dtype(gate))]

        @staticmethod
        def reference(inputs, attrs):
            gate, up = inputs
            return [(activation(gate) * up).astype(gate.dtype, copy=False)]

        @staticmethod
        def cost(inputs, outputs, attrs, kv_len):
            return _io_cost(inputs, outputs, flops_per_elem * outputs[0].numel)

    register(name, elementwise=True)(_Op)


# ---------------------------------------------------------------------------------------------
# elementwise


_binary("add", np.add, 1)
_binary("mul", np.multiply, 1)
_unary("scale", lambda x, a: x * np.asarray(a["value"], dtype=x.dtype), 1)
_unary("silu", lambda x, a: silu(x), 4)
_unary("gelu", lambda x, a: gelu_tanh(x), 8)
_unary("softcap", lambda x, a: np.tanh(x / a["cap"]) * a["cap"], 3)


_gated("swiglu", silu, 5)  # silu(gate) * up: the gated FFN of Llama, Qwen, Mistral
_gated("geglu", gelu_tanh, 9)  # gelu_tanh(gate) * up: the gated FFN of Gemma


# ---------------------------------------------------------------------------------------------
# layout


@register("reshape", view=True)
class Reshape:
    """A view with another shape over the same elements: (S, H*Dh) <-> (S, H, Dh)."""

    @staticmethod
    def infer(inputs, attrs):
        shape = tuple(attrs["shape"])
        assert prod(shape) == inputs[0].numel, f"reshape {inputs[0].shape} -> {shape}"
        return [(shape, inputs[0].dtype)]

    @staticmethod
    def reference(inputs, attrs):
        return [inputs[0].reshape(attrs["shape"])]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        return Cost(0, (0,), (0,))  # a view: nothing moves


@register("last_row", view=True)
class LastRow:
    """x[-1:], (S, N) -> (1, N): generation needs the logits of the last position only."""

    @staticmethod
    def infer(inputs, attrs):
        return [((1,) + inputs[0].shape[1:], inputs[0].dtype)]

    @staticmethod
    def reference(inputs, attrs):
        return [inputs[0][-1:]]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        return Cost(0, (outputs[0].nbytes,), (0,))  # a view of the last row


# ---------------------------------------------------------------------------------------------
# model ops


@register("embedding")
class Embedding:
    """Rows of the token table: table (V, D), ids (S,) -> (S, D)."""

    @staticmethod
    def infer(inputs, attrs):
        table, ids = inputs
        assert len(table.shape) == 2 and len(ids.shape) == 1 and ids.dtype == "i32"
        return [((ids.shape[0], table.shape[1]), attrs.get("dtype", "f32"))]

    @staticmethod
    def reference(inputs, attrs):
        table, ids = inputs
        return [_rows(table, np.asarray(ids, dtype=np.int64)).astype(np.float32, copy=False)]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        table, ids = inputs
        rows_read = nbytes_of(table.dtype, (ids.shape[0], table.shape[1]))  # only looked-up rows
        return Cost(0, (rows_read, ids.nbytes), (outputs[0].nbytes,))


@register("rms_norm")
class RMSNorm:
    """x / sqrt(mean(x^2) + eps) * w over the last axis; `unit_offset` uses (1 + w) as Gemma's
    checkpoints do (GGUF files store Gemma's weights with the 1 already added)."""

    @staticmethod
    def infer(inputs, attrs):
        x, w = inputs
        assert w.shape == x.shape[-1:], f"rms_norm weight {w.shape} vs input {x.shape}"
        return [(x.shape, _act_dtype(x))]

    @staticmethod
    def reference(inputs, attrs):
        x, w = inputs
        x64 = x.astype(np.float64)
        inv = 1.0 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + attrs["eps"])
        w = np.asarray(w, dtype=np.float64)
        if attrs.get("unit_offset"):
            w = 1.0 + w
        return [(x64 * inv * w).astype(x.dtype)]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        return _io_cost(inputs, outputs, 4 * inputs[0].numel)


@register("matmul")
class MatMul:
    """x (S, K) @ w.T, w (N, K) stored in any GGUF type -> (S, N)."""

    @staticmethod
    def infer(inputs, attrs):
        x, w = inputs
        assert x.shape[-1] == w.shape[1], f"matmul {x.shape} @ {w.shape}.T"
        return [(x.shape[:-1] + (w.shape[0],), _act_dtype(x))]

    @staticmethod
    def reference(inputs, attrs):
        x, w = inputs
        return [_matmul_t(x, w).astype(x.dtype, copy=False)]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        x, w = inputs
        return _io_cost(inputs, outputs, 2 * prod(x.shape[:-1]) * w.shape[0] * w.shape[1])


def rope_angles(positions: np.ndarray, attrs: dict, freq_factors: np.ndarray | None) -> np.ndarray:
    """Rotation angles (S, n_dims/2), float64: pos * base^(-2i/n_dims) [/ factor_i]."""
    n_dims = attrs["n_dims"]
    inv_freq = attrs["theta"] ** (-np.arange(0, n_dims, 2, dtype=np.float64) / n_dims)
    if freq_factors is not None:  # Llama 3 and LongRoPE: per-frequency divisors from the file
        inv_freq = inv_freq / np.asarray(freq_factors, dtype=np.float64)
    pos = np.asarray(positions, dtype=np.float64) * attrs.get("freq_scale", 1.0)
    return pos[:, None] * inv_freq[None, :]


@register("rope")
class RoPE:
    """Rotary position embedding of x (S, H, Dh) at positions (S,).

    mode "norm" rotates adjacent pairs (x[2i], x[2i+1]): Llama's GGUF layout, whose Q/K rows
    the converter permuted. mode "neox" rotates (x[i], x[i + n/2]): Qwen, Gemma, GPT-NeoX.
    Only the first n_dims of each head rotate. An optional third input holds per-frequency
    factors (the `rope_freqs.weight` tensor Llama 3 files carry).
    """

    @staticmethod
    def infer(inputs, attrs):
        x, pos = inputs[:2]
        assert len(x.shape) == 3 and pos.shape == (x.shape[0],) and pos.dtype == "i32"
        assert attrs["n_dims"] <= x.shape[2] and attrs["n_dims"] % 2 == 0
        assert attrs["mode"] in ("norm", "neox")
        if len(inputs) == 3:
            assert inputs[2].shape == (attrs["n_dims"] // 2,)
        return [(x.shape, _act_dtype(x))]

    @staticmethod
    def reference(inputs, attrs):
        x, pos = inputs[:2]
        factors = inputs[2] if len(inputs) == 3 else None
        n = attrs["n_dims"]
        ang = rope_angles(pos, attrs, factors)[:, None, :]  # (S, 1, n/2)
        cos, sin = np.cos(ang), np.sin(ang)
        out = x.astype(np.float64)  # a copy
        rot = out[..., :n]
        if attrs["mode"] == "norm":
            a, b = rot[..., 0::2].copy(), rot[..., 1::2].copy()
            rot[..., 0::2] = a * cos - b * sin
            rot[..., 1::2] = a * sin + b * cos
        else:
            a, b = rot[..., : n // 2].copy(), rot[..., n // 2 :].copy()
            rot[..., : n // 2] = a * cos - b * sin
            rot[..., n // 2 :] = a * sin + b * cos
        return [out.astype(x.dtype)]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        x = inputs[0]
        return _io_cost(inputs, outputs, 6 * x.shape[0] * x.shape[1] * attrs["n_dims"] // 2)


@register("kv_write", writes_state=True)
class KVWrite:
    """cache (C, Hkv, Dh) with rows `positions` replaced by x (S, Hkv, Dh); updates in place."""

    @staticmethod
    def infer(inputs, attrs):
        cache, x, pos = inputs
        assert cache.shape[1:] == x.shape[1:] and pos.shape == (x.shape[0],)
        return [(cache.shape, cache.dtype)]

    @staticmethod
    def reference(inputs, attrs):
        cache, x, pos = inputs
        cache[np.asarray(pos, dtype=np.int64)] = x.astype(cache.dtype, copy=False)
        return [cache]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        cache, x, pos = inputs
        rows = nbytes_of(cache.dtype, x.shape)
        return Cost(0, (0, x.nbytes, pos.nbytes), (rows,))


def attention_mask(q_pos: np.ndarray, n_keys: int, window: int) -> np.ndarray:
    """(S, T) bool, True where query i may see key j: causal, and inside the sliding window."""
    k_pos = np.arange(n_keys)[None, :]
    q_pos = np.asarray(q_pos, dtype=np.int64)[:, None]
    mask = k_pos <= q_pos
    if window:
        mask &= q_pos - k_pos < window
    return mask


def attended_pairs(n_queries: int, kv_len: int, window: int) -> int:
    """(query, key) pairs a causal (windowed) attention computes when the last n_queries of
    kv_len positions attend: the exact count, so prefill is not charged the masked half."""
    total = 0
    for p in range(kv_len - n_queries, kv_len):
        total += min(p + 1, window) if window else p + 1
    return total


@register("attention")
class Attention:
    """softmax(q k^T * scale [softcapped], causal/windowed mask) v with grouped KV heads.

    q (S, H, Dh) at positions (S,); k_cache (C, Hkv, Dh) and v_cache (C, Hkv, Dv) hold keys for
    positions 0..max(positions). H is a multiple of Hkv (GQA; MQA when Hkv = 1).
    """

    @staticmethod
    def infer(inputs, attrs):
        q, k, v, pos = inputs
        assert q.shape[1] % k.shape[1] == 0, "query heads must be a multiple of KV heads"
        assert k.shape[:2] == v.shape[:2] and q.shape[2] == k.shape[2]
        assert pos.shape == (q.shape[0],)
        return [((q.shape[0], q.shape[1], v.shape[2]), _act_dtype(q))]

    @staticmethod
    def reference(inputs, attrs):
        q, k_cache, v_cache, pos = inputs
        S, H, Dh = q.shape
        Hkv = k_cache.shape[1]
        T = int(np.max(pos)) + 1
        k = k_cache[:T].astype(np.float32)  # (T, Hkv, Dh)
        v = v_cache[:T].astype(np.float32)  # (T, Hkv, Dv)
        qg = q.astype(np.float32).reshape(S, Hkv, H // Hkv, Dh)  # (S, Hkv, G, Dh)
        scores = np.einsum("skgd,tkd->kgst", qg, k) * attrs["scale"]  # (Hkv, G, S, T)
        if attrs.get("softcap"):
            scores = np.tanh(scores / attrs["softcap"]) * attrs["softcap"]
        mask = attention_mask(pos, T, attrs.get("window", 0))
        scores = np.where(mask, scores, -np.inf)
        scores = scores - scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=-1, keepdims=True)
        out = np.einsum("kgst,tkd->skgd", p, v)  # (S, Hkv, G, Dv)
        return [out.reshape(S, H, v.shape[2]).astype(q.dtype, copy=False)]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        q, k, v, pos = inputs
        S, H, Dh = q.shape
        T = kv_len or S
        window = attrs.get("window", 0)
        pairs = attended_pairs(S, T, window)  # per head
        flops = H * pairs * (2 * Dh + 2 * v.shape[2] + 5)  # QK^T, PV, scale/max/exp/sum/div
        keys = min(T, window + S - 1) if window else T  # cache rows that must be read
        reads = (q.nbytes, nbytes_of(k.dtype, (keys,) + k.shape[1:]),
                 nbytes_of(v.dtype, (keys,) + v.shape[1:]), pos.nbytes)
        return Cost(flops, reads, (outputs[0].nbytes,))
