"""Fused ops: what the fusion passes (`drift/passes/fuse_*.py`) rewrite chains of ops into.

Each is defined like any other op (shape inference, numpy reference, cost), so the numpy
backend runs fused graphs and analysis counts what a fused kernel really moves: an input read
once rather than once per consumer, no intermediate written and read back. Every reference is
the composition of the registry's own references, so a fused graph computes what the unfused
one did by construction; the fusion tests check it on real models.

Softmax needs no fusion: `attention` (and `mha`) already hold it inside, so the (S, T) scores
never exist as a tensor of the graph.

Horizontal fusions (`stacked_matmul`, `ffn_gate_up`) take their weights as separate inputs; the
backend concatenates them once at load (the numpy backend lays the parts out as adjacent rows
of one array, and the reference then runs one matmul over them). The graph keeps the parts'
names, so weights are still found by their GGUF names.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod
from typing import Any

import numpy as np

from drift.ir.ops import REGISTRY, Cost, _act_dtype, _io_cost, _matmul_t, cost_of, register
from drift.ir.tensor import Role, TensorSpec, nbytes_of

# ---------------------------------------------------------------------------------------------
# helpers


class RowPart:
    """Rows r0:r1 of a matrix a backend concatenated at load: one part of a horizontal fusion's
    weights. The whole is an array or a matrix held another way that offers `matmul_t`, `rows`
    and row slices (the numpy backend's kept-quantized weights). Like those, a part offers
    `matmul_t` and `rows`; references that see adjacent parts of one matrix run one matmul
    over them (`matmul_parts`)."""

    __slots__ = ("whole", "r0", "r1", "shape")

    def __init__(self, whole: Any, r0: int, r1: int):
        self.whole, self.r0, self.r1 = whole, r0, r1
        self.shape = (r1 - r0, whole.shape[1])

    def array(self) -> Any:
        return self.whole[self.r0 : self.r1]

    def matmul_t(self, x: np.ndarray) -> np.ndarray:
        return _matmul_t(x, self.array())

    def rows(self, ids: np.ndarray) -> np.ndarray:
        part, ids = self.array(), np.asarray(ids, dtype=np.int64)
        return part.rows(ids) if hasattr(part, "rows") else part[ids]


def stacked_rows(ws: Sequence[Any]) -> np.ndarray | None:
    """One (sum N_i, K) view over weights that lie as adjacent rows of one array, else None.

    The numpy backend concatenates the parts of a horizontal fusion once at load and hands each
    part as a view of the whole; this finds the whole again, so one matmul reads x once.
    """
    if not all(isinstance(w, np.ndarray) and w.ndim == 2 and w.flags.c_contiguous for w in ws):
        return None
    k, dtype = ws[0].shape[1], ws[0].dtype
    addr = ws[0].ctypes.data
    for w in ws:
        if w.shape[1] != k or w.dtype != dtype or w.ctypes.data != addr:
            return None
        addr += w.nbytes
    rows = sum(w.shape[0] for w in ws)
    return np.lib.stride_tricks.as_strided(ws[0], (rows, k), ws[0].strides, writeable=False)


def _adjacent_parts(ws: Sequence[Any]) -> np.ndarray | None:
    """The rows a list of RowParts covers, if they are adjacent parts of one matrix."""
    first = ws[0]
    if not isinstance(first, RowPart):
        return None
    at = first.r0
    for w in ws:
        if not isinstance(w, RowPart) or w.whole is not first.whole or w.r0 != at:
            return None
        at = w.r1
    return first.whole[first.r0 : at]


def matmul_parts(x: np.ndarray, ws: Sequence[Any]) -> list[np.ndarray]:
    """[x @ w.T for w in ws], as one matmul when the parts are rows of one array."""
    whole = _adjacent_parts(ws)
    if whole is None:
        whole = stacked_rows(ws)
    if whole is None:
        return [_matmul_t(x, w).astype(x.dtype, copy=False) for w in ws]
    y = _matmul_t(x, whole).astype(x.dtype, copy=False)  # (S, sum N)
    out, at = [], 0
    for w in ws:
        out.append(y[..., at : at + w.shape[0]])
        at += w.shape[0]
    return out


def _spec(shape: tuple[int, ...], dtype: str, name: str = "_") -> TensorSpec:
    return TensorSpec(name, tuple(shape), dtype, Role.ACTIVATION)


def _ref(op: str, inputs: Sequence[Any], attrs: dict) -> np.ndarray:
    return REGISTRY[op].reference(inputs, attrs)[0]


# ---------------------------------------------------------------------------------------------
# chains of elementwise ops, optionally after one anchor op (a matmul, a conv, a norm)


def program_steps(attrs: dict) -> list[tuple[str, tuple[str, ...], dict]]:
    """The steps of a fused_elementwise program: (op, argument refs, attrs).

    Argument refs are "x<i>" (the fused node's input i) or "t<j>" (the result of step j); the
    last step's result is the output. Attrs are stored as sorted item tuples to stay hashable.
    """
    return [(op, tuple(args), dict(items)) for op, args, items in attrs["program"]]


def make_program(steps: Sequence[tuple[str, Sequence[str], dict]]) -> tuple:
    return tuple((op, tuple(args), tuple(sorted(a.items()))) for op, args, a in steps)


def _run_program(attrs: dict, inputs: Sequence[Any], fn):
    env: dict[str, Any] = {f"x{i}": v for i, v in enumerate(inputs)}
    result = None
    for j, (op, args, a) in enumerate(program_steps(attrs)):
        result = fn(op, [env[r] for r in args], a)
        env[f"t{j}"] = result
    return result


@register("fused_elementwise", fused=True)
class FusedElementwise:
    """A chain of elementwise ops run as one kernel: intermediates stay in registers.

    Step 0 may be an anchor that is not elementwise (matmul, conv2d, group_norm ...): the
    chain is then its epilogue (bias, activation, residual add), applied as each output
    element is produced. attrs: program (see `program_steps`).
    """

    @staticmethod
    def infer(inputs, attrs):
        def step(op, args, a):
            shape, dtype = REGISTRY[op].infer(args, a)[0]
            return _spec(shape, dtype)

        out = _run_program(attrs, inputs, step)
        return [(out.shape, out.dtype)]

    @staticmethod
    def reference(inputs, attrs):
        return [_run_program(attrs, inputs, lambda op, args, a: _ref(op, args, a))]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        flops = 0
        reads = [t.nbytes for t in inputs]  # each input read once, intermediates never
        specs: dict[str, TensorSpec] = {f"x{i}": t for i, t in enumerate(inputs)}
        for j, (op, args, a) in enumerate(program_steps(attrs)):
            ins = [specs[r] for r in args]
            shape, dtype = REGISTRY[op].infer(ins, a)[0]
            out = _spec(shape, dtype)
            c = cost_of(op, ins, [out], a, kv_len)
            flops += c.flops
            if j == 0 and not REGISTRY[op].elementwise:  # an anchor reads as it would alone
                for r, b in zip(args, c.reads):
                    if r.startswith("x"):
                        reads[int(r[1:])] = b
            specs[f"t{j}"] = out
        return Cost(int(flops), tuple(reads), (outputs[0].nbytes,))


# ---------------------------------------------------------------------------------------------
# residual add + RMSNorm


@register("add_rms_norm", fused=True)
class AddRMSNorm:
    """(a + b, rms_norm(a + b, w)): the residual stream and the next block's normed input in
    one pass over the row. attrs: eps, unit_offset (as rms_norm)."""

    @staticmethod
    def infer(inputs, attrs):
        a, b, w = inputs
        assert a.shape == b.shape and w.shape == a.shape[-1:]
        return [(a.shape, _act_dtype(a)), (a.shape, _act_dtype(a))]

    @staticmethod
    def reference(inputs, attrs):
        a, b, w = inputs
        s = _ref("add", [a, b], {})
        return [s, _ref("rms_norm", [s, w], attrs)]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        return _io_cost(inputs, outputs, 5 * inputs[0].numel)


# ---------------------------------------------------------------------------------------------
# horizontal matmuls: one read of x for several weights


@register("stacked_matmul", fused=True, adjacent_outputs=True)
class StackedMatMul:
    """x (S, K) against n weights W_i (N_i, K) of one type -> y_i (S, N_i): one matmul over
    the weights laid out as adjacent rows of one matrix at load (Q/K/V; gate/up where the
    activation is not fused in). The outputs are adjacent in memory too (the memory plan keeps
    them in one buffer), so at decode one GEMV writes all of them. attrs: n, bias (n bias
    inputs follow the weights: Qwen2)."""

    @staticmethod
    def infer(inputs, attrs):
        n = attrs["n"]
        x, ws = inputs[0], inputs[1 : 1 + n]
        assert n >= 2 and all(w.shape[1] == x.shape[-1] for w in ws)
        assert len({w.dtype for w in ws}) == 1, "stacked weights share one type"
        if attrs.get("bias"):
            assert [b.shape for b in inputs[1 + n : 1 + 2 * n]] == [(w.shape[0],) for w in ws]
        else:
            assert len(inputs) == 1 + n
        return [(x.shape[:-1] + (w.shape[0],), _act_dtype(x)) for w in ws]

    @staticmethod
    def reference(inputs, attrs):
        n = attrs["n"]
        x, ws = inputs[0], inputs[1 : 1 + n]
        outs = matmul_parts(x, ws)
        if attrs.get("bias"):
            outs = [_ref("add", [o, b], {}) for o, b in zip(outs, inputs[1 + n : 1 + 2 * n])]
        return outs

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        n = attrs["n"]
        x = inputs[0]
        flops = sum(2 * prod(x.shape[:-1]) * w.shape[0] * w.shape[1] for w in inputs[1 : 1 + n])
        if attrs.get("bias"):
            flops += sum(o.numel for o in outputs)
        return _io_cost(inputs, outputs, flops)


GATED_ACTS = ("swiglu", "geglu", "geglu_erf")


@register("ffn_gate_up", fused=True)
class FFNGateUp:
    """act(x @ Wg.T [+ bg], x @ Wu.T [+ bu]) -> (S, F): the gated FFN's first half as one
    kernel that reads x once and never writes the (S, 2F) projections. attrs: act (swiglu,
    geglu, geglu_erf), bias."""

    @staticmethod
    def infer(inputs, attrs):
        x, wg, wu = inputs[:3]
        assert wg.shape == wu.shape and wg.shape[1] == x.shape[-1]
        assert attrs["act"] in GATED_ACTS
        assert len(inputs) == (5 if attrs.get("bias") else 3)
        return [(x.shape[:-1] + (wg.shape[0],), _act_dtype(x))]

    @staticmethod
    def reference(inputs, attrs):
        x, wg, wu = inputs[:3]
        gate, up = matmul_parts(x, [wg, wu])
        if attrs.get("bias"):
            gate, up = _ref("add", [gate, inputs[3]], {}), _ref("add", [up, inputs[4]], {})
        return [_ref(attrs["act"], [gate, up], {})]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        x, wg = inputs[:2]
        out = outputs[0]
        flops = 2 * 2 * prod(x.shape[:-1]) * wg.shape[0] * wg.shape[1]
        flops += cost_of(attrs["act"], [out, out], [out], {}, kv_len).flops  # the same as unfused
        if attrs.get("bias"):
            flops += 2 * out.numel
        return _io_cost(inputs, outputs, flops)


# ---------------------------------------------------------------------------------------------
# RoPE with the layout change into attention's layout


def _rope_inputs(x: Any, inputs: Sequence[Any], attrs: dict) -> tuple[Any, list[Any]]:
    """Split (pos, [norm weight], [freq factors]) after x; returns (norm weight, rope args)."""
    pos, rest = inputs[0], list(inputs[1:])
    norm_w = rest.pop(0) if attrs.get("qk_norm") else None
    return norm_w, [x, pos, *rest]


def _rope_attrs(attrs: dict) -> dict:
    return {k: attrs[k] for k in ("mode", "n_dims", "theta", "freq_scale") if k in attrs}


def _rope_heads_ref(x: np.ndarray, rest: Sequence[Any], attrs: dict) -> np.ndarray:
    S = x.shape[0]
    heads = x.reshape(S, attrs["heads"], -1)  # (S, H*Dh) -> (S, H, Dh), a view
    norm_w, args = _rope_inputs(heads, rest, attrs)
    if norm_w is not None:  # Gemma 3's QK-norm sits between the reshape and the rotation
        args[0] = _ref("rms_norm", [heads, norm_w], {"eps": attrs["eps"]})
    return _ref("rope", args, _rope_attrs(attrs))


def _rope_heads_infer(x: TensorSpec, rest: Sequence[TensorSpec], attrs: dict):
    S, HD = x.shape
    H = attrs["heads"]
    assert len(x.shape) == 2 and HD % H == 0
    heads = _spec((S, H, HD // H), x.dtype)
    norm_w, args = _rope_inputs(heads, rest, attrs)
    if norm_w is not None:
        assert norm_w.shape == (HD // H,)
    return REGISTRY["rope"].infer(args, _rope_attrs(attrs))[0]


def _rope_flops(x: TensorSpec, attrs: dict) -> int:
    return 6 * x.shape[0] * attrs["heads"] * attrs["n_dims"] // 2 + 4 * x.numel * bool(
        attrs.get("qk_norm"))


@register("rope_heads", fused=True)
class RoPEHeads:
    """x (S, H*Dh) as the projection wrote it -> rotated (S, H, Dh) in attention's layout, with
    Gemma 3's QK-norm when `qk_norm`. Inputs: x, positions, [norm weight], [freq factors].
    attrs: heads, eps (with qk_norm), and rope's mode, n_dims, theta, freq_scale. MHA, GQA
    and MQA differ only in `heads` (H for queries, Hkv for keys)."""

    @staticmethod
    def infer(inputs, attrs):
        return [_rope_heads_infer(inputs[0], inputs[1:], attrs)]

    @staticmethod
    def reference(inputs, attrs):
        return [_rope_heads_ref(inputs[0], inputs[1:], attrs)]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        return _io_cost(inputs, outputs, _rope_flops(inputs[0], attrs))


@register("rope_kv_write", writes_state=True, fused=True)
class RoPEKVWrite:
    """Keys (S, Hkv*Dh) rotated and written straight into the cache (C, Hkv, Dh) at their
    positions: the rotated keys never exist outside the cache. Inputs: cache, x, positions,
    [norm weight], [freq factors]; attrs as rope_heads."""

    @staticmethod
    def infer(inputs, attrs):
        cache, x = inputs[:2]
        shape, _ = _rope_heads_infer(x, inputs[2:], attrs)
        assert cache.shape[1:] == shape[1:], f"cache {cache.shape} vs keys {shape}"
        return [(cache.shape, cache.dtype)]

    @staticmethod
    def reference(inputs, attrs):
        cache, x, pos = inputs[:3]
        k = _rope_heads_ref(x, inputs[2:], attrs)
        return REGISTRY["kv_write"].reference([cache, k, pos], {})

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        cache, x = inputs[:2]
        rows = nbytes_of(cache.dtype, (x.numel,))
        reads = (0,) + tuple(t.nbytes for t in inputs[1:])
        return Cost(_rope_flops(x, attrs), reads, (rows,))


@register("rope_qkv_write", writes_state=True, fused=True)
class RoPEQKVWrite:
    """One decode step's RoPE and cache writes in one kernel: q (S, H, Dh) rotated, keys
    (S, Hkv, Dh) rotated into k_cache and values (S, Hkv, Dv) into v_cache at their positions.
    Inputs: k_cache, v_cache, q, k, v, positions, [freq factors]; outputs: k_cache', v_cache'
    (both caches updated in place), q rotated. attrs: as rope."""

    @staticmethod
    def infer(inputs, attrs):
        kc, vc, q, k, v, pos = inputs[:6]
        rest = list(inputs[6:])
        (qs, qd), = REGISTRY["rope"].infer([q, pos, *rest], attrs)
        REGISTRY["rope"].infer([k, pos, *rest], attrs)
        assert kc.shape[1:] == k.shape[1:] and vc.shape[1:] == v.shape[1:]
        return [(kc.shape, kc.dtype), (vc.shape, vc.dtype), (qs, qd)]

    @staticmethod
    def reference(inputs, attrs):
        kc, vc, q, k, v, pos = inputs[:6]
        rest = list(inputs[6:])
        qr = _ref("rope", [q, pos, *rest], attrs)
        kr = _ref("rope", [k, pos, *rest], attrs)
        kc = _ref("kv_write", [kc, kr, pos], {})
        vc = _ref("kv_write", [vc, v, pos], {})
        return [kc, vc, qr]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        kc, vc, q, k, v = inputs[:5]
        flops = 3 * (q.numel + k.numel)
        reads = (0, 0) + tuple(t.nbytes for t in inputs[2:])
        writes = (nbytes_of(kc.dtype, (k.numel,)), nbytes_of(vc.dtype, (v.numel,)),
                  outputs[2].nbytes)
        return Cost(flops, reads, writes)


# ---------------------------------------------------------------------------------------------
# final norm + LM head


@register("rms_norm_matmul", fused=True)
class RMSNormMatMul:
    """rms_norm(x, w_norm) @ w.T: the final norm folded into the LM head, whose kernel
    normalises each row of x as it loads it. attrs: eps, unit_offset."""

    @staticmethod
    def infer(inputs, attrs):
        x, wn, w = inputs
        assert wn.shape == x.shape[-1:] and w.shape[1] == x.shape[-1]
        return [(x.shape[:-1] + (w.shape[0],), _act_dtype(x))]

    @staticmethod
    def reference(inputs, attrs):
        x, wn, w = inputs
        return [_ref("matmul", [_ref("rms_norm", [x, wn], attrs), w], {})]

    @staticmethod
    def cost(inputs, outputs, attrs, kv_len):
        x, _, w = inputs
        return _io_cost(inputs, outputs, 2 * prod(x.shape[:-1]) * w.shape[0] * w.shape[1]
                        + 4 * x.numel)
