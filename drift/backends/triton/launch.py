"""Launchers: one function per IR op, over torch tensors already on the device.

Each takes its output buffer (preallocated by the program, so addresses stay fixed for CUDA
graph replay) and the `Tuning` of the device; tests call them directly against the numpy
references of `drift.ir.ops`.
"""

from __future__ import annotations

import math
import os

import torch
import triton

from drift.backends.triton.attention import (
    attn_decode_kernel,
    attn_merge_kernel,
    attn_prefill_kernel,
)
from drift.backends.triton.device import Tuning, patch_interpreter
from drift.backends.triton.matmul import embedding_kernel, gemm_kernel, gemv_kernel
from drift.backends.triton.pointwise import (
    EW_OPS,
    elementwise_kernel,
    kv_write_kernel,
    rms_norm_kernel,
    rope_kernel,
)
from drift.backends.triton.weights import QWeight

if os.environ.get("TRITON_INTERPRET") == "1":
    patch_interpreter()

_p2 = triton.next_power_of_2


def matmul(x: torch.Tensor, w: QWeight, out: torch.Tensor, tu: Tuning) -> None:
    """out (M, N) = x (M, K) @ W^T; GEMV when M == 1, tensor-core GEMM otherwise."""
    M = x.numel() // w.shape[1]
    N, K = w.shape
    q, s, m = w.args()
    if M == 1:
        bn = tu.gemv_rows(N)
        if w.kind == 1:
            bk = max(tu.gemv_bk // 2, w.pair)
        else:
            bk = max(tu.gemv_bk, w.group)
        gemv_kernel[(triton.cdiv(N, bn),)](x, q, s, m, out, N, K, *w.strides(), **w.meta(),
                                           BN=bn, BK=bk, num_warps=tu.gemv_warps_for(K))
        return
    bm, bn, warps = tu.gemm_tiles(M, N)
    bk = tu.gemm_bk  # a 4-bit plane: bytes, so two tl.dot of gemm_bk each per step
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
    gemm_kernel[grid](x, q, s, m, out, M, N, K, *w.strides(), **w.meta(), BM=bm, BN=bn, BK=bk,
                      num_warps=warps, num_stages=tu.gemm_stages)


def embedding(table: QWeight, ids: torch.Tensor, out: torch.Tensor, tu: Tuning) -> None:
    q, s, m = table.args()
    bk = min(_p2(table.shape[1]), 1024)
    embedding_kernel[(ids.numel(),)](ids, q, s, m, out, table.shape[1], **table.meta(), BK=bk)


def elementwise(op: str, a: torch.Tensor, b: torch.Tensor | None, out: torch.Tensor,
                tu: Tuning, value: float = 0.0) -> None:
    n = a.numel()
    nb = b.numel() if b is not None else 1
    blk = tu.row_block
    elementwise_kernel[(triton.cdiv(n, blk),)](a, b if b is not None else a, out, n, nb,
                                               float(value), OP=EW_OPS[op], BLOCK=blk)


def rms_norm(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, eps: float, unit_offset: bool,
             tu: Tuning) -> None:
    D = w.numel()
    rows = x.numel() // D
    blk = min(_p2(D), tu.row_block)
    rms_norm_kernel[(rows,)](x, w, out, D, float(eps), UNIT_OFFSET=bool(unit_offset), BLOCK=blk)


def rope(x: torch.Tensor, pos: torch.Tensor, factors: torch.Tensor | None, out: torch.Tensor,
         attrs: dict, tu: Tuning) -> None:
    S, H, Dh = x.shape
    n = attrs["n_dims"]
    rope_kernel[(S * H,)](x, pos, factors if factors is not None else x, out, H, Dh, n,
                          math.log2(attrs["theta"]), float(attrs.get("freq_scale", 1.0)),
                          NEOX=attrs["mode"] == "neox", HAS_FACTORS=factors is not None,
                          BH=_p2(max(n // 2, 1)), BD=_p2(Dh))


def kv_write(cache: torch.Tensor, x: torch.Tensor, pos: torch.Tensor, tu: Tuning) -> None:
    S = pos.numel()
    R = x.numel() // S
    kv_write_kernel[(S,)](x, pos, cache, R, BLOCK=min(_p2(R), tu.row_block))


class DecodeScratch:
    """Partials of split-K decode attention: (H, NSPLIT) maxima and sums, (H, NSPLIT, Dv)."""

    def __init__(self, H: int, Hkv: int, Dv: int, ctx: int, tu: Tuning, device):
        chunk = max(tu.attn_bt, _p2(triton.cdiv(ctx * Hkv, tu.decode_programs)))
        self.chunk = chunk
        self.nsplit = triton.cdiv(ctx, chunk)
        self.m = torch.empty(H * self.nsplit, device=device, dtype=torch.float32)
        self.l = torch.empty_like(self.m)
        self.acc = torch.empty(H * self.nsplit * Dv, device=device, dtype=torch.float32)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
              out: torch.Tensor, attrs: dict, tu: Tuning,
              scratch: DecodeScratch | None = None) -> None:
    S, H, Dh = q.shape
    C, Hkv, _ = k.shape
    Dv = v.shape[2]
    softcap = float(attrs.get("softcap") or 0.0)
    window = int(attrs.get("window") or 0)
    scale = float(attrs["scale"])
    if S == 1:
        sc = scratch or DecodeScratch(H, Hkv, Dv, C, tu, q.device)
        G = H // Hkv
        attn_decode_kernel[(Hkv, sc.nsplit)](
            q, k, v, pos, sc.m, sc.l, sc.acc, Hkv, Dh, Dv, scale, softcap, window, sc.chunk,
            sc.nsplit, G=G, GP=max(16, _p2(G)), BD=max(16, _p2(Dh)), BDV=max(16, _p2(Dv)),
            BT=tu.attn_bt, HAS_SOFTCAP=softcap > 0, HAS_WINDOW=window > 0,
            num_warps=tu.attn_warps)
        attn_merge_kernel[(H,)](sc.m, sc.l, sc.acc, out, Dv, sc.nsplit,
                                BS=max(2, _p2(sc.nsplit)), BDV=_p2(Dv))
        return
    grid = (triton.cdiv(S, tu.attn_bm), H)
    attn_prefill_kernel[grid](
        q, k, v, pos, out, S, H, Hkv, Dh, Dv, scale, softcap, window,
        BM=tu.attn_bm, BN=tu.attn_bn, BD=max(16, _p2(Dh)), BDV=max(16, _p2(Dv)),
        HAS_SOFTCAP=softcap > 0, HAS_WINDOW=window > 0, num_warps=tu.attn_warps)
