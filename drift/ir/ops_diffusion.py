"""Ops of diffusion models (Stable Diffusion's CLIP text encoder, UNet and VAE decoder).

Images are channels-last, (N, H, W, C), as ML Drift's logical BHWC tensors: a token sequence
over an image is then a reshape, (N, H, W, C) -> (N, H*W, C), never a transpose, and the
channel axis is the one the PHWC4 storage slices by four. Convolution weights keep the
checkpoints' layout, (Cout, Cin, KH, KW), so they load unchanged.

Every reference computes in float32 (or float64 for statistics) and returns the input's
dtype, like the LLM ops; each is tested against torch.nn.functional.
"""

from __future__ import annotations

import math
from math import prod

import numpy as np

from drift.ir.ops import Cost, _act_dtype, _gated, _io_cost, _unary, register

try:  # exact erf; scipy comes with transformers, but the package does not require it
    from scipy.special import erf as _erf
except ImportError:  # pragma: no cover
    _erf = np.frompyfunc(math.erf, 1, 1)


def gelu_erf(x: np.ndarray) -> np.ndarray:
    """The exact GELU, x * Phi(x): diffusers' GEGLU and GELU (torch's default)."""
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + np.asarray(_erf(x64 / math.sqrt(2.0)), dtype=np.float64)))


def quick_gelu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(1.702 x): the activation of OpenAI's CLIP (Stable Diffusion's text encoder)."""
    x64 = x.astype(np.float64)
    return x64 / (1.0 + np.exp(-1.702 * x64))


_unary("gelu_erf", lambda x, a: gelu_erf(x), 10)
_unary("quick_gelu", lambda x, a: quick_gelu(x), 5)


# gelu_erf(gate) * up: diffusers' GEGLU, whose projection's second half is the gate
_gated("geglu_erf", gelu_erf, 11)


# ---------------------------------------------------------------------------------------------
# normalisation


@register("layer_norm")
class LayerNorm:
    """(x - mean) / sqrt(var + eps) * w + b over the last axis (CLIP, transformer blocks)."""

    @staticmethod
    def infer(inputs, attrs):
        x, w, b = inputs
        assert w.shape == b.shape == x.shape[-1:]
        return [(x.shape, _act_dtype(x))]

    @staticmethod
    def reference(inputs, attrs):
        x, w, b = inputs
        x64 = x.astype(np.float64)
        mean = x64.mean(axis=-1, keepdims=True)
        var = ((x64 - mean) ** 2).mean(axis=-1, keepdims=True)
        y = (x64 - mean) / np.sqrt(var + attrs["eps"])
        return [(y * np.asarray(w, np.float64) + np.asarray(b, np.float64)).astype(x.dtype)]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        return _io_cost(inputs, outputs, 8 * inputs[0].numel)


@register("group_norm")
class GroupNorm:
    """Channels-last group norm: x (N, ..., C) normalised over (spatial, C / groups) per sample
    and group, then * gamma + beta. attrs: groups, eps."""

    @staticmethod
    def infer(inputs, attrs):
        x, g, b = inputs
        C = x.shape[-1]
        assert g.shape == b.shape == (C,) and C % attrs["groups"] == 0
        return [(x.shape, _act_dtype(x))]

    @staticmethod
    def reference(inputs, attrs):
        x, g, b = inputs
        N, C, G = x.shape[0], x.shape[-1], attrs["groups"]
        xg = x.astype(np.float64).reshape(N, -1, G, C // G)  # (N, HW, G, C/G)
        mean = xg.mean(axis=(1, 3), keepdims=True)
        var = ((xg - mean) ** 2).mean(axis=(1, 3), keepdims=True)
        y = ((xg - mean) / np.sqrt(var + attrs["eps"])).reshape(x.shape)
        return [(y * np.asarray(g, np.float64) + np.asarray(b, np.float64)).astype(x.dtype)]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        return _io_cost(inputs, outputs, 8 * inputs[0].numel)


# ---------------------------------------------------------------------------------------------
# convolution and resampling


def conv_out_size(n: int, k: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - k) // stride + 1


@register("conv2d")
class Conv2D:
    """x (N, H, W, Cin) * w (Cout, Cin, KH, KW) [+ b (Cout,)] -> (N, Ho, Wo, Cout).
    attrs: stride, padding (both sides, both axes)."""

    @staticmethod
    def infer(inputs, attrs):
        x, w = inputs[:2]
        N, H, W, C = x.shape
        Co, Ci, KH, KW = w.shape
        assert Ci == C, f"conv2d: input has {C} channels, weight expects {Ci}"
        if len(inputs) == 3:
            assert inputs[2].shape == (Co,)
        s, p = attrs.get("stride", 1), attrs.get("padding", 0)
        return [((N, conv_out_size(H, KH, s, p), conv_out_size(W, KW, s, p), Co),
                 _act_dtype(x))]

    @staticmethod
    def reference(inputs, attrs):
        x, w = inputs[:2]
        s, p = attrs.get("stride", 1), attrs.get("padding", 0)
        Co, Ci, KH, KW = w.shape
        xf = x.astype(np.float32)
        wf = np.asarray(w, dtype=np.float32)
        if KH == KW == 1 and s == 1 and p == 0:  # a 1x1 conv is a matmul over channels
            out = xf @ wf.reshape(Co, Ci).T
        else:
            if p:
                xf = np.pad(xf, ((0, 0), (p, p), (p, p), (0, 0)))
            win = np.lib.stride_tricks.sliding_window_view(xf, (KH, KW), axis=(1, 2))
            win = win[:, ::s, ::s]  # (N, Ho, Wo, Cin, KH, KW)
            out = np.tensordot(win, wf, axes=([3, 4, 5], [1, 2, 3]))  # (N, Ho, Wo, Cout)
        if len(inputs) == 3:
            out = out + np.asarray(inputs[2], dtype=np.float32)
        return [out.astype(x.dtype, copy=False)]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        w = inputs[1]
        Co, Ci, KH, KW = w.shape
        return _io_cost(inputs, outputs, 2 * prod(outputs[0].shape[:3]) * Co * Ci * KH * KW)


@register("upsample_nearest")
class UpsampleNearest:
    """(N, H, W, C) -> (N, sH, sW, C), each pixel repeated: attrs scale (an integer)."""

    @staticmethod
    def infer(inputs, attrs):
        N, H, W, C = inputs[0].shape
        s = attrs.get("scale", 2)
        return [((N, H * s, W * s, C), inputs[0].dtype)]

    @staticmethod
    def reference(inputs, attrs):
        s = attrs.get("scale", 2)
        return [np.repeat(np.repeat(inputs[0], s, axis=1), s, axis=2)]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        return _io_cost(inputs, outputs, 0)


@register("concat")
class Concat:
    """Inputs joined along `axis` (the UNet's skip connections: along channels)."""

    @staticmethod
    def infer(inputs, attrs):
        axis = attrs.get("axis", -1) % len(inputs[0].shape)
        first = inputs[0].shape
        for t in inputs[1:]:
            assert t.shape[:axis] + t.shape[axis + 1:] == first[:axis] + first[axis + 1:]
        shape = list(first)
        shape[axis] = sum(t.shape[axis] for t in inputs)
        return [(tuple(shape), inputs[0].dtype)]

    @staticmethod
    def reference(inputs, attrs):
        return [np.concatenate(inputs, axis=attrs.get("axis", -1))]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        return _io_cost(inputs, outputs, 0)


# ---------------------------------------------------------------------------------------------
# attention without a cache, and the timestep embedding


@register("mha")
class MultiHeadAttention:
    """softmax(q k^T * scale [causal]) v per head, without a KV cache: q (B, Lq, H, Dh),
    k (B, Lk, H, Dh), v (B, Lk, H, Dv) -> (B, Lq, H, Dv). Self-attention (Lq = Lk) and
    cross-attention (k, v from the text) alike; the softmax lives inside, so the scores are
    never a tensor of the graph. attrs: scale, causal."""

    @staticmethod
    def infer(inputs, attrs):
        q, k, v = inputs
        assert q.shape[0] == k.shape[0] == v.shape[0] and k.shape[:3] == v.shape[:3]
        assert q.shape[2] == k.shape[2] and q.shape[3] == k.shape[3]
        if attrs.get("causal"):
            assert q.shape[1] == k.shape[1]
        return [(q.shape[:3] + (v.shape[3],), _act_dtype(q))]

    @staticmethod
    def reference(inputs, attrs):
        q, k, v = (np.asarray(t, dtype=np.float32) for t in inputs)
        scores = np.einsum("bqhd,bkhd->bhqk", q, k) * attrs["scale"]  # (B, H, Lq, Lk)
        if attrs.get("causal"):
            Lq = q.shape[1]
            scores = np.where(np.tri(Lq, dtype=bool), scores, -np.inf)
        scores = scores - scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=-1, keepdims=True)
        out = np.einsum("bhqk,bkhd->bqhd", p, v)  # (B, Lq, H, Dv)
        return [out.astype(inputs[0].dtype, copy=False)]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        q, k, v = inputs
        B, Lq, H, Dh = q.shape
        Lk = k.shape[1]
        pairs = Lq * (Lq + 1) // 2 if attrs.get("causal") else Lq * Lk
        return _io_cost(inputs, outputs, B * H * pairs * (2 * Dh + 2 * v.shape[3] + 5))


@register("timestep_embedding")
class TimestepEmbedding:
    """Sinusoidal embedding of diffusion timesteps t (B,) -> (B, dim), as diffusers'
    get_timestep_embedding. attrs: dim, flip_sin_to_cos, freq_shift, max_period, dtype."""

    @staticmethod
    def infer(inputs, attrs):
        (t,) = inputs
        assert len(t.shape) == 1 and attrs["dim"] % 2 == 0
        return [((t.shape[0], attrs["dim"]), attrs.get("dtype", "f32"))]

    @staticmethod
    def reference(inputs, attrs):
        t = np.asarray(inputs[0], dtype=np.float64)
        half = attrs["dim"] // 2
        exponent = -math.log(attrs.get("max_period", 10000)) * np.arange(half) / (
            half - attrs.get("freq_shift", 0))
        emb = t[:, None] * np.exp(exponent)[None, :]  # (B, dim/2)
        sin, cos = np.sin(emb), np.cos(emb)
        out = np.concatenate([cos, sin] if attrs.get("flip_sin_to_cos") else [sin, cos], -1)
        return [out.astype({"f16": np.float16}.get(attrs.get("dtype"), np.float32))]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        return Cost(4 * outputs[0].numel, (inputs[0].nbytes,), (outputs[0].nbytes,))



# ---------------------------------------------------------------------------------------------
# attention as two ops, its matrix materialized: what `mha` does in one kernel, kept to measure
# what the (B, H, Lq, Lk) attention matrix costs when an engine writes it (the memory report)


@register("attn_probs")
class AttentionProbs:
    """q (B, Lq, H, D), k (B, Lk, H, D) -> softmax(q k^T * scale) (B, H, Lq, Lk), causal when
    asked: the attention matrix, written once (the softmax applied as the scores are made).
    attrs: scale, causal."""

    @staticmethod
    def infer(inputs, attrs):
        q, k = inputs
        assert q.shape[0] == k.shape[0] and q.shape[2:] == k.shape[2:]
        return [((q.shape[0], q.shape[2], q.shape[1], k.shape[1]), _act_dtype(q))]

    @staticmethod
    def reference(inputs, attrs):
        q, k = (np.asarray(t, dtype=np.float32) for t in inputs)
        s = np.einsum("bqhd,bkhd->bhqk", q, k) * attrs["scale"]
        if attrs.get("causal"):
            s = np.where(np.tri(q.shape[1], k.shape[1], dtype=bool), s, -np.inf)
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        return [(e / e.sum(axis=-1, keepdims=True)).astype(inputs[0].dtype, copy=False)]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        return _io_cost(inputs, outputs, outputs[0].numel * (2 * inputs[0].shape[3] + 5))


@register("attn_values")
class AttentionValues:
    """p (B, H, Lq, Lk), v (B, Lk, H, Dv) -> p v (B, Lq, H, Dv)."""

    @staticmethod
    def infer(inputs, attrs):
        p, v = inputs
        assert p.shape[0] == v.shape[0] and p.shape[1] == v.shape[2] and p.shape[3] == v.shape[1]
        return [((p.shape[0], p.shape[2], p.shape[1], v.shape[3]), _act_dtype(p))]

    @staticmethod
    def reference(inputs, attrs):
        p, v = (np.asarray(t, dtype=np.float32) for t in inputs)
        return [np.einsum("bhqk,bkhd->bqhd", p, v).astype(inputs[0].dtype, copy=False)]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        return _io_cost(inputs, outputs, 2 * inputs[0].numel * inputs[1].shape[3])
