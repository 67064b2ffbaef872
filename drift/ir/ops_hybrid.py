"""The ops hybrid execution adds: an FFN's cold neurons, computed where their weights live
(`ffn_cold`, and `ffn_cold_gated` below, whose gate was computed on the GPU).

    y = ffn_cold(x, gate, up, down [, pred_a, pred_b])
        attrs: act (swiglu, geglu), threshold, down_rows, margin

x (S, D); gate and up (F', D) hold the cold neurons' rows; down holds their down columns
transposed, (F', D), a neuron's whole down contribution one row (`down_rows`, what skipping
needs), or as the file stores them, (D, F') (a layer wholly on the CPU, dense).

With a predictor (pred_a (F', r), pred_b (r, D): a rank-r factorization of gate), neuron j of a
token is computed only where also |act(pred_a_j . (pred_b x))| > margin * threshold: the
CPU then reads the gate rows of those candidates only, not all F' (PowerInfer's predictor, as
a low-rank gate; a neuron the predictor misses is dropped). Neuron j contributes
act(gate_j . x) * (up_j . x) * down_t[j] when |act(gate_j . x)| > threshold, nothing otherwise
(CATS: a calibrated magnitude threshold, since SwiGLU is not exactly sparse); threshold 0 keeps
every neuron, and then y is the dense FFN restricted to these neurons. The split pass
(`drift/hybrid/split.py`) writes it next to the GPU's hot part; no GPU backend runs it: the
hybrid runtime calls the CPU kernel for it (`drift/backends/cpu/native.py`), and the numpy
backend runs this reference.
"""

from __future__ import annotations

import numpy as np

from drift.ir.ops import Cost, _matmul_t, gelu_tanh, register, silu

ACTS = {"swiglu": silu, "geglu": gelu_tanh}


def _cost(inputs, outputs, products: int) -> Cost:
    """`products` (S, D) x (D, F') products over the cold neurons (up is inputs[2]), every
    input read once."""
    x, up = inputs[0], inputs[2]
    S = int(np.prod(x.shape[:-1]))
    return Cost(2 * products * S * up.shape[0] * up.shape[1], tuple(t.nbytes for t in inputs),
                tuple(t.nbytes for t in outputs))


def _down(h, down, attrs):
    """h (S, F') through the cold neurons' down columns, held as rows (F', D) or as the file
    stores them (D, F')."""
    if not attrs.get("down_rows", True):
        return _matmul_t(h, down)
    if hasattr(down, "rows"):  # kept quantized (the numpy backend past its budget)
        down = down.rows(np.arange(down.shape[0]))
    return h @ np.asarray(down)


@register("ffn_cold")
class FFNCold:
    @staticmethod
    def infer(inputs, attrs):
        x, gate, up, down = inputs[:4]
        assert len(inputs) in (4, 6), "ffn_cold: x, gate, up, down [, pred_a, pred_b]"
        down_shape = down.shape if attrs.get("down_rows", True) else down.shape[::-1]
        assert gate.shape == up.shape == down_shape and gate.shape[1] == x.shape[-1], (
            f"ffn_cold: x {x.shape}, gate {gate.shape}, up {up.shape}, down {down.shape}")
        assert attrs["act"] in ACTS, f"ffn_cold: act {attrs['act']!r}"
        return [(x.shape, x.dtype)]

    @staticmethod
    def reference(inputs, attrs):
        x, gate, up, down = inputs[:4]
        act, t = ACTS[attrs["act"]], attrs["threshold"]
        a = act(_matmul_t(x, gate))
        h = a * _matmul_t(x, up)
        if t > 0:
            keep = np.abs(a) > t
            if len(inputs) == 6:
                pred_a, pred_b = (np.asarray(w) for w in inputs[4:])
                keep &= np.abs(act((x @ pred_b.T) @ pred_a.T)) > attrs.get("margin", 0.5) * t
            h = np.where(keep, h, 0)
        return [_down(h, down, attrs).astype(x.dtype, copy=False)]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        return _cost(inputs, outputs, products=3)  # gate, up, down: every neuron (dense bound)


@register("ffn_cold_gated")
class FFNColdGated:
    """y = ffn_cold_gated(x, g, up, down); attrs: act, threshold, down_rows

    ffn_cold with the gate computed elsewhere: g (S, F') holds the cold neurons' gate
    pre-activations (gate_j . x), computed where the gate rows live (hybrid execution keeps
    every gate row on the GPU when the budget allows: the gate is then an exact predictor of
    which neurons the CPU must compute, and the CPU reads the up and down rows of those
    alone). Neuron j contributes act(g_j) * (up_j . x) * down_t[j] when |act(g_j)| > threshold
    (every neuron when threshold is 0)."""

    @staticmethod
    def infer(inputs, attrs):
        x, g, up, down = inputs
        down_shape = down.shape if attrs.get("down_rows", True) else down.shape[::-1]
        assert up.shape == down_shape and up.shape[1] == x.shape[-1], (
            f"ffn_cold_gated: x {x.shape}, up {up.shape}, down {down.shape}")
        assert g.shape == x.shape[:-1] + (up.shape[0],), (
            f"ffn_cold_gated: g {g.shape} for x {x.shape} and {up.shape[0]} neurons")
        assert attrs["act"] in ACTS, f"ffn_cold_gated: act {attrs['act']!r}"
        return [(x.shape, x.dtype)]

    @staticmethod
    def reference(inputs, attrs):
        x, g, up, down = inputs
        a = ACTS[attrs["act"]](np.asarray(g, dtype=np.float32))
        h = a * _matmul_t(x, up)
        if attrs["threshold"] > 0:
            h = np.where(np.abs(a) > attrs["threshold"], h, 0)
        return [_down(h, down, attrs).astype(x.dtype, copy=False)]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        return _cost(inputs, outputs, products=2)  # up, down
