"""Launchers: one function per IR op, over torch tensors already on the device.

Each takes its output buffer (preallocated by the program, so addresses stay fixed for CUDA
graph replay) and the `Tuning` of the device; tests call them directly against the numpy
references of `drift.ir.ops`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton

from drift.backends.triton.attention import (
    attn_decode_kernel,
    attn_merge_kernel,
    attn_prefill_kernel,
)
from drift.backends.triton.device import Tuning, patch_interpreter
from drift.backends.triton.matmul import (
    XBLOCK,
    dequant_kernel,
    embedding_kernel,
    gemm_kernel,
    gemv_kernel,
    gemv_q8x_kernel,
    quantize_x_kernel,
)
from drift.backends.triton.pointwise import (
    EW_OPS,
    elementwise_kernel,
    kv_write_kernel,
    norm_quant_kernel,
    rms_norm_kernel,
    rope_kernel,
    rope_kv_decode_kernel,
    swiglu_quant_kernel,
)
from drift.backends.triton.weights import QWeight

if os.environ.get("TRITON_INTERPRET") == "1":
    patch_interpreter()

_p2 = triton.next_power_of_2


@dataclass
class QuantizedX:
    """x (K,) as int8 blocks of 32: the two levels xq and xr (the remainder, X2), the scales
    xd and xd * the block's sum of levels xs: the planes of a q8x tensor (drift/passes/
    storage.py `Q8Blocks`), which the quantizing kernels write and `gemv_q8x` reads. A program
    binds them as views of its arena; `alloc` makes stand-alone ones (the sweep, tests)."""

    xq: torch.Tensor
    xr: torch.Tensor
    xd: torch.Tensor
    xs: torch.Tensor

    @classmethod
    def alloc(cls, K: int, device) -> QuantizedX:
        xd = torch.empty(K // XBLOCK, dtype=torch.float32, device=device)
        return cls(torch.empty(K, dtype=torch.int8, device=device),
                   torch.empty(K, dtype=torch.int8, device=device), xd, torch.empty_like(xd))


def int_gemv_ok(x_numel: int, w: QWeight) -> bool:
    """The int8-x GEMV applies to quantized weights whose rows are whole x blocks."""
    K = w.shape[1]
    return x_numel == K and w.kind in (1, 2) and K % XBLOCK == 0 and w.group in (16, 32)


def quantize_x(x: torch.Tensor, qx: QuantizedX, tu: Tuning) -> None:
    nb = x.numel() // XBLOCK
    quantize_x_kernel[(triton.cdiv(nb, tu.qx_blocks),)](x, qx.xq, qx.xr, qx.xd, qx.xs, nb,
                                                        X2=tu.x2, BB=tu.qx_blocks)


def gemv_q8x(qx: QuantizedX, w: QWeight, out: torch.Tensor, tu: Tuning) -> None:
    """out (1, N) = W . x, x already quantized into qx (see `gemv_q8x_kernel`)."""
    N, K = w.shape
    q, s, m = w.args()
    kw = K // 8 if w.kind == 1 else K // 4
    bn, bw, warps, stages = tu.qgemv(N, K, w.qtype)
    gemv_q8x_kernel[(triton.cdiv(N, bn),)](
        qx.xq.view(torch.int32), qx.xr.view(torch.int32), qx.xd, qx.xs, q.view(torch.int32),
        s, m, out, N, kw,
        w.strides()[1], **w.meta(), BN=bn, BW=max(bw, w.pair // 4 if w.kind == 1 else w.group // 4),
        ASM=os.environ.get("TRITON_INTERPRET") != "1", X2=tu.x2, num_warps=warps,
        num_stages=stages)


def dequant(w: QWeight, out: torch.Tensor, tu: Tuning) -> torch.Tensor:
    """W as fp16 (N, K) in the first N*K elements of `out` (the scratch); returns that view."""
    N, K = w.shape
    q, s, m = w.args()
    dst = out[: N * K].view(N, K)
    kb = K // 2 if w.kind == 1 else K
    unit = w.pair if w.kind == 1 else w.group  # BB is whole runs / groups
    dbn, dbb = tu.table.get(f"dequant {w.qtype} {N} {K}", (tu.dequant_bn, tu.dequant_bb))
    bb = max(unit, min(dbb, _p2(kb)))
    dequant_kernel[(triton.cdiv(N, dbn), triton.cdiv(kb, bb))](
        q, s, m, dst, N, K, kb, w.strides()[1], **w.meta(), BN=dbn, BB=bb, num_warps=4)
    return dst


def matmul(x: torch.Tensor, w: QWeight, out: torch.Tensor, tu: Tuning,
           scratch: torch.Tensor | None = None) -> None:
    """out (M, N) = x (M, K) @ W^T; GEMV when M == 1, tensor-core GEMM otherwise. Given a
    scratch (fp16, >= N*K) and M >= tu.dense_min_m, a quantized W is dequantized into the
    scratch and the dense fp16 GEMM runs on it (`dequant_kernel`); otherwise the GEMM
    dequantizes its tiles in registers."""
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
    if scratch is not None and w.kind != 0 and M >= tu.dense_min_m:
        wd = dequant(w, scratch, tu)
        bm, bn, bk, warps, stages = tu.dense_tiles(M, N, K, w.qtype)
        grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
        gemm_kernel[grid](x, wd, wd, wd, out, M, N, K, K, 1, KIND=0, P=16, G=32, OFF=0,
                          HAS_MIN=False, BM=bm, BN=bn, BK=bk, num_warps=warps,
                          num_stages=stages)
        return
    bm, bn, warps = tu.gemm_tiles(M, N)
    bk = tu.gemm_bk  # a 4-bit plane: bytes, so two tl.dot of gemm_bk each per step
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
    gemm_kernel[grid](x, q, s, m, out, M, N, K, *w.strides(), **w.meta(), BM=bm, BN=bn, BK=bk,
                      num_warps=warps, num_stages=tu.gemm_stages)


def norm_quant(a: torch.Tensor, b: torch.Tensor | None, w: torch.Tensor, sum_out, out,
               qx: QuantizedX | None, eps: float, unit_offset: bool, tu: Tuning) -> None:
    """One row: [sum = a + b;] out = rms_norm(sum or a) * w [and out quantized into qx]."""
    D = w.numel()
    # without quantization the block pointers are never dereferenced (QUANT is constexpr)
    planes = (qx.xq, qx.xr, qx.xd, qx.xs) if qx is not None else (out,) * 4
    blk = min(_p2(D), tu.norm_block)
    norm_quant_kernel[(1,)](a, b if b is not None else a, w, sum_out if sum_out is not None else out,
                            out, *planes, D, float(eps), MODE=int(b is not None),
                            UNIT_OFFSET=bool(unit_offset), QUANT=qx is not None, X2=tu.x2,
                            BLOCK=blk, num_warps=tu.norm_warps)


def swiglu_quant(g: torch.Tensor, u: torch.Tensor, out: torch.Tensor, qx: QuantizedX,
                 gelu: bool, tu: Tuning) -> None:
    D = g.numel()
    blk = tu.row_block
    swiglu_quant_kernel[(triton.cdiv(D, blk),)](g, u, out, qx.xq, qx.xr, qx.xd, qx.xs, D,
                                                GELU=gelu, X2=tu.x2, BLOCK=blk)


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


def rope_kv_decode(q, k, v, pos, factors, q_out, k_cache, v_cache, attrs: dict,
                   tu: Tuning) -> None:
    """One token: q_out = rope(q); k_cache[pos] = rope(k); v_cache[pos] = v."""
    _, H, Dh = q.shape
    Hkv = k.shape[-2]
    Dv = v.shape[-1]
    n = attrs["n_dims"]
    rope_kv_decode_kernel[(H + 2 * Hkv,)](
        q, k, v, pos, factors if factors is not None else q, q_out, k_cache, v_cache, H, Hkv,
        Dh, Dv, n, math.log2(attrs["theta"]), float(attrs.get("freq_scale", 1.0)),
        NEOX=attrs["mode"] == "neox", HAS_FACTORS=factors is not None,
        BH=_p2(max(n // 2, 1)), BD=_p2(Dh), BDV=_p2(Dv))


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


def attention_quantizes(Dv: int) -> bool:
    """Whether decode attention can also write its output as int8 blocks (whole heads of
    32-element blocks in one merge program)."""
    return Dv % 32 == 0 and _p2(Dv) == Dv


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
              out: torch.Tensor, attrs: dict, tu: Tuning,
              scratch: DecodeScratch | None = None, qx: QuantizedX | None = None) -> None:
    """qx (decode, Dv a power of two >= 32): the output also quantized for the next GEMV."""
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
        quant = qx is not None and attention_quantizes(Dv)
        bufs = (qx.xq, qx.xr, qx.xd, qx.xs) if quant else (out,) * 4
        attn_merge_kernel[(H,)](sc.m, sc.l, sc.acc, out, Dv, sc.nsplit, *bufs,
                                BS=max(2, _p2(sc.nsplit)), BDV=_p2(Dv), QUANT=quant, X2=tu.x2)
        return
    grid = (triton.cdiv(S, tu.attn_bm), H)
    attn_prefill_kernel[grid](
        q, k, v, pos, out, S, H, Hkv, Dh, Dv, scale, softcap, window,
        BM=tu.attn_bm, BN=tu.attn_bn, BD=max(16, _p2(Dh)), BDV=max(16, _p2(Dv)),
        HAS_SOFTCAP=softcap > 0, HAS_WINDOW=window > 0, num_warps=tu.attn_warps)
