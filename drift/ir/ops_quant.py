"""Activations quantized for int8 dot products, and the ops that produce them.

A backend whose device multiplies int8 vectors fast (dp4a, `dot4I8Packed`,
`cl_khr_integer_dot_product`) runs a decode GEMV on x quantized to int8 blocks, not on f32 x:
the quantize pass (`drift/passes/quantize_activations.py`) inserts `quantize_q8` in front of
each matmul that can read it, and the fusion passes fold the quantization into the op that
produced x (a norm, the gated activation, attention's merge), so x is never written as f32.

The logical tensor is x as the quantized blocks represent it: dtype "q8x", values on the
block's grid, in float32. Its storage (`Q8Blocks` in `drift/passes/storage.py`) holds the
physical planes: per block of 32, two int8 levels xq and xr with x ~ d/254 * (254 xq + xr)
(one level alone is ~2^-8 of the block's largest element: 1.4e-2 on the logits of a small
Gemma, two are ~2^-15), the scale d/254 and the scaled sum of the levels (for weights with a
per-block minimum). `quantize_blocks` is that arithmetic in float32, step for step as the
kernels do it; a matmul on a q8x input is a plain matmul on these values.

Prefill's int8 GEMM reads x in one level (dtype q8x1, `quantize_q8` with `levels=1`): x ~ d q
per block, d = amax / 127, its sum d * sum(q): one dot product a word of weights instead of
two, as llama.cpp's MMQ reads its q8_1 blocks (x on a grid of 1/254 of its block's largest
element; the GEMM's products are summed in f32 over K, like the f16 paths' roundings).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from drift.ir.ops import REGISTRY, Cost, register
from drift.ir.tensor import nbytes_of

QBLOCK = 32  # elements per quantized block of x
Q8 = "q8x"
Q8_1 = "q8x1"  # one level


def _round_away(v: np.ndarray) -> np.ndarray:
    """Round half away from zero, in float32 (the kernels add +-0.5 and truncate)."""
    return np.trunc(v + np.where(v >= 0, np.float32(0.5), np.float32(-0.5))).astype(np.float32)


def _first_level(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x's blocks of 32: each block's amax / 127 (K'/32,), x in units of it, and that rounded
    (the first level), (K'/32, 32) in float32."""
    b = np.asarray(x, dtype=np.float32).reshape(-1, QBLOCK)
    amax = np.abs(b).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / np.maximum(amax, np.float32(1e-30)),
                       np.float32(0)).astype(np.float32)
    v = b * inv[:, None]
    return d, v, _round_away(v)


def quantize_planes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x (..., K), K a multiple of 32 -> (xq, xr) int8 (K',), scale and scaled sum f32
    (K'/32,), over the flattened x. An all-zero block gets scale 0."""
    d, v, q = _first_level(x)
    r = (v - q) * np.float32(254)
    q2 = _round_away(r)
    scale = (d / np.float32(254)).astype(np.float32)
    levels = q * 254 + q2
    return (q.astype(np.int8).reshape(-1), q2.astype(np.int8).reshape(-1), scale,
            (scale * levels.sum(axis=1)).astype(np.float32))


def dequantize_planes(xq: np.ndarray, xr: np.ndarray, scale: np.ndarray) -> np.ndarray:
    levels = xq.astype(np.float32).reshape(-1, QBLOCK) * 254 + xr.reshape(-1, QBLOCK)
    return (scale[:, None] * levels).reshape(-1)


def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """x as its q8x blocks represent it (same shape, float32)."""
    xq, xr, scale, _ = quantize_planes(x)
    return dequantize_planes(xq, xr, scale).reshape(np.shape(x))


def quantize_planes_1(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (..., K), K a multiple of 32 -> one level: xq int8 (K',), scale d = amax / 127 and
    sum d * sum(xq) f32 (K'/32,), over the flattened x (`quantize_planes`' first level)."""
    d, _, q = _first_level(x)
    return q.astype(np.int8).reshape(-1), d, (d * q.sum(axis=1)).astype(np.float32)


def dequantize_planes_1(xq: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (scale[:, None] * xq.astype(np.float32).reshape(-1, QBLOCK)).reshape(-1)


def quantize_blocks_1(x: np.ndarray) -> np.ndarray:
    """x as its q8x1 blocks represent it (same shape, float32)."""
    xq, scale, _ = quantize_planes_1(x)
    return dequantize_planes_1(xq, scale).reshape(np.shape(x))


def _ref(op: str, inputs: Sequence[Any], attrs: dict) -> np.ndarray:
    return REGISTRY[op].reference(inputs, attrs)[0]


def _q8_cost(inputs, outputs, flops: int) -> Cost:
    return Cost(int(flops), tuple(t.nbytes for t in inputs), tuple(t.nbytes for t in outputs))


@register("quantize_q8")
class QuantizeQ8:
    """x (..., K) f32 -> the same values as q8x blocks (K a multiple of 32); attrs: levels
    (2, the default: q8x; 1: q8x1, prefill's int8 GEMM)."""

    @staticmethod
    def infer(inputs, attrs):
        (x,) = inputs
        assert x.shape[-1] % QBLOCK == 0, f"quantize_q8: last axis {x.shape[-1]} % 32"
        assert attrs.get("levels", 2) in (1, 2), f"quantize_q8: levels {attrs.get('levels')}"
        return [(x.shape, Q8_1 if attrs.get("levels", 2) == 1 else Q8)]

    @staticmethod
    def reference(inputs, attrs):
        if attrs.get("levels", 2) == 1:
            return [quantize_blocks_1(inputs[0])]
        return [quantize_blocks(inputs[0])]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        return _q8_cost(inputs, outputs, 4 * inputs[0].numel)


@register("rms_norm_q8", fused=True)
class RMSNormQ8:
    """rms_norm(x, w) as q8x blocks: the norm's kernel quantizes the row it wrote.
    attrs: as rms_norm."""

    @staticmethod
    def infer(inputs, attrs):
        x, w = inputs
        assert w.shape == x.shape[-1:] and x.shape[-1] % QBLOCK == 0
        return [(x.shape, Q8)]

    @staticmethod
    def reference(inputs, attrs):
        return [quantize_blocks(_ref("rms_norm", inputs, attrs))]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        return _q8_cost(inputs, outputs, 8 * inputs[0].numel)


@register("add_rms_norm_q8", fused=True)
class AddRMSNormQ8:
    """(a + b, rms_norm(a + b, w) as q8x): the residual stream, and the next block's input
    quantized for its GEMVs, in one pass over the row. attrs: as rms_norm."""

    @staticmethod
    def infer(inputs, attrs):
        a, b, w = inputs
        assert a.shape == b.shape and w.shape == a.shape[-1:] and a.shape[-1] % QBLOCK == 0
        return [(a.shape, a.dtype), (a.shape, Q8)]

    @staticmethod
    def reference(inputs, attrs):
        a, b, w = inputs
        s = _ref("add", [a, b], {})
        return [s, quantize_blocks(_ref("rms_norm", [s, w], attrs))]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        return _q8_cost(inputs, outputs, 9 * inputs[0].numel)


@register("gated_act_q8", fused=True)
class GatedActQ8:
    """act(gate, up) as q8x blocks (the down projection's input). attrs: act (swiglu, geglu)."""

    @staticmethod
    def infer(inputs, attrs):
        g, u = inputs
        assert g.shape == u.shape and g.shape[-1] % QBLOCK == 0
        assert attrs["act"] in ("swiglu", "geglu")
        return [(g.shape, Q8)]

    @staticmethod
    def reference(inputs, attrs):
        return [quantize_blocks(_ref(attrs["act"], inputs, {}))]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        return _q8_cost(inputs, outputs, 13 * inputs[0].numel)


@register("attention_q8", fused=True)
class AttentionQ8:
    """attention(q, k_cache, v_cache, pos) reshaped to (S, H*Dv) and quantized to q8x blocks
    in the kernel that merges the split-K partials: the output projection's input.
    attrs: as attention."""

    @staticmethod
    def infer(inputs, attrs):
        (shape, _), = REGISTRY["attention"].infer(inputs, attrs)
        S, H, Dv = shape
        assert H * Dv % QBLOCK == 0
        return [((S, H * Dv), Q8)]

    @staticmethod
    def reference(inputs, attrs):
        a = _ref("attention", inputs, attrs)
        return [quantize_blocks(a.reshape(a.shape[0], -1))]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        c = REGISTRY["attention"].cost(inputs, outputs, attrs, kv_len)
        return Cost(c.flops + 4 * outputs[0].numel, c.reads,
                    (nbytes_of(Q8, outputs[0].shape),))
