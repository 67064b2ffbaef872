"""Quantized matrix kernels: GEMV for decode, GEMM for prefill, and the embedding row gather.

A weight W (N, K) arrives converted into planes (see `weights.py`); the kernels are templates
over the plane kind, specialized by constexpr parameters:

    KIND 0  float plane (N, K) f32 / f16 / bf16
    KIND 1  4-bit: packed bytes (N, K/2) in GGML's own in-block order, where byte j of a run
            of P bytes holds element (j // P)*2P + j%P in its low nibble and that + P in its
            high nibble (Q4_0 / Q4_1: P = 16, Q4_K: P = 32); q = nibble - OFF
    KIND 2  8-bit: int8 plane (N, K) in natural order (Q8_0; Q5_0 and Q6_K widened to it)
    scales  f16 (N, K/G), one per group of G elements;  mins f16 (N, K/G) when HAS_MIN
    w = s[g] * q (+ m[g])

The 4-bit kernels never reorder the weights: they gather x in the weights' order instead
(x is tiny and cached), so the converted nibble plane is the file's bytes minus the scales.
Everything accumulates in fp32; prefill tiles are dequantized to fp16 in registers for tl.dot.
"""

from __future__ import annotations

import triton
import triton.language as tl

MAGIC = tl.constexpr(0x4B000000)  # the bits of 2.0**23: OR a small integer into its mantissa


@triton.jit
def _small_int_to_f32(q):
    """An int32 tensor of values in [0, 2**23) as float32 without I2F (a quarter-rate unit on
    NVIDIA): (2**23 | q) read as a float is 2**23 + q exactly; one full-rate FADD removes it."""
    return (q | MAGIC).to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def _int8_to_f32(q):
    """int8 -> float32 the same way: q + 128 in [0, 256) under the magic exponent."""
    return ((q.to(tl.int32) + 128) | MAGIC).to(tl.float32, bitcast=True) - 8388736.0


# ---------------------------------------------------------------------------------------------
# GEMV: y (N,) = W (N, K) . x (K,), the decode matmul.
# FLOPs 2NK; bytes = the weight planes (Q4_0: 0.5625 B/weight) + 4K + 4N. Memory-bound: on the
# H100 (3.0 TB/s measured copy) an 8B Q4_0 token reads ~4.36 GB, floor ~1.45 ms/token.


@triton.jit
def gemv_kernel(
    x_ptr, q_ptr, s_ptr, m_ptr, y_ptr, N, K, KB, NG,
    KIND: tl.constexpr, P: tl.constexpr, G: tl.constexpr, OFF: tl.constexpr,
    HAS_MIN: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """Tiles are 3-D (rows, groups, elements of a group): each thread reads whole groups
    (16-byte vector loads of a Q4_0 block's nibbles), reduces them in registers, scales
    the group sums; the cross-thread reduction runs once, after the K loop."""
    pid = tl.program_id(0)
    rows = pid * BN + tl.arange(0, BN)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    if KIND == 0:
        acc0 = tl.zeros((BN, BK), dtype=tl.float32)
        for k0 in range(0, K, BK):
            k = k0 + tl.arange(0, BK)
            kmask = k < K
            w = tl.load(q_ptr + rows64[:, None] * K + k[None, :],
                        mask=rmask[:, None] & kmask[None, :], other=0.0).to(tl.float32)
            x = tl.load(x_ptr + k, mask=kmask, other=0.0).to(tl.float32)
            acc0 += w * x[None, :]
        acc = tl.sum(acc0, axis=1)
    elif KIND == 1:
        NC: tl.constexpr = BK // P  # runs of P bytes per tile
        c = tl.arange(0, NC)
        j = tl.arange(0, P)
        acc2 = tl.zeros((BN, NC), dtype=tl.float32)
        for b0 in range(0, KB, BK):
            cb = b0 // P + c  # (NC,) run index in the row
            cm = cb < KB // P
            q = tl.load(q_ptr + rows64[:, None, None] * KB + (cb[:, None] * P + j[None, :])[None],
                        mask=rmask[:, None, None] & cm[None, :, None], other=0)  # (BN, NC, P)
            e = cb[:, None] * (2 * P) + j[None, :]  # (NC, P) element of the low nibble
            xlo = tl.load(x_ptr + e, mask=cm[:, None], other=0.0).to(tl.float32)
            xhi = tl.load(x_ptr + e + P, mask=cm[:, None], other=0.0).to(tl.float32)
            qi = q.to(tl.int32)
            plo = tl.sum(_small_int_to_f32(qi & 15) * xlo[None], axis=2)  # (BN, NC)
            phi = tl.sum(_small_int_to_f32(qi >> 4) * xhi[None], axis=2)
            xslo = tl.sum(xlo, axis=1)  # (NC,)
            xshi = tl.sum(xhi, axis=1)
            if OFF != 0:  # sum((q - OFF) x) = sum(q x) - OFF sum(x)
                plo -= OFF * xslo[None, :]
                phi -= OFF * xshi[None, :]
            glo = (cb * (2 * P)) // G
            ghi = (cb * (2 * P) + P) // G
            gm = rmask[:, None] & cm[None, :]
            sbase = s_ptr + rows64[:, None] * NG
            slo = tl.load(sbase + glo[None, :], mask=gm, other=0.0).to(tl.float32)
            shi = tl.load(sbase + ghi[None, :], mask=gm, other=0.0).to(tl.float32)
            acc2 += plo * slo + phi * shi
            if HAS_MIN:
                mbase = m_ptr + rows64[:, None] * NG
                mlo = tl.load(mbase + glo[None, :], mask=gm, other=0.0).to(tl.float32)
                mhi = tl.load(mbase + ghi[None, :], mask=gm, other=0.0).to(tl.float32)
                acc2 += mlo * xslo[None, :] + mhi * xshi[None, :]
        acc = tl.sum(acc2, axis=1)
    else:
        NC2: tl.constexpr = BK // G
        c2 = tl.arange(0, NC2)
        j2 = tl.arange(0, G)
        acc2 = tl.zeros((BN, NC2), dtype=tl.float32)
        for k0 in range(0, K, BK):
            g = k0 // G + c2  # (NC2,)
            gmk = g < NG
            k = g[:, None] * G + j2[None, :]  # (NC2, G)
            q = tl.load(q_ptr + rows64[:, None, None] * K + k[None],
                        mask=rmask[:, None, None] & gmk[None, :, None], other=0)
            x = tl.load(x_ptr + k, mask=gmk[:, None], other=0.0).to(tl.float32)
            qf = _int8_to_f32(q)
            p = tl.sum(qf * x[None], axis=2)  # (BN, NC2)
            gm = rmask[:, None] & gmk[None, :]
            s = tl.load(s_ptr + rows64[:, None] * NG + g[None, :], mask=gm,
                        other=0.0).to(tl.float32)
            acc2 += p * s
            if HAS_MIN:
                m = tl.load(m_ptr + rows64[:, None] * NG + g[None, :], mask=gm,
                            other=0.0).to(tl.float32)
                acc2 += m * tl.sum(x, axis=1)[None, :]
        acc = tl.sum(acc2, axis=1)
    tl.store(y_ptr + rows, acc, mask=rmask)


# ---------------------------------------------------------------------------------------------
# GEMM: y (M, N) = x (M, K) @ W (N, K)^T, the prefill matmul. FLOPs 2MNK; at M = 512 the
# weights are re-read M/BM times from L2, so it is compute-bound: on the H100 the fp16
# tensor-core floor (~680 TFLOP/s measured cuBLAS) is 0.1 ms for 4096x14336x512.


@triton.jit
def gemm_kernel(
    x_ptr, q_ptr, s_ptr, m_ptr, y_ptr, M, N, K, KB, NG,
    KIND: tl.constexpr, P: tl.constexpr, G: tl.constexpr, OFF: tl.constexpr,
    HAS_MIN: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    mmask = rm < M
    rmask = rn < N
    rn64 = rn.to(tl.int64)
    rm64 = rm.to(tl.int64)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    if KIND == 1:
        NC: tl.constexpr = BK // P
        c = tl.arange(0, NC)
        j = tl.arange(0, P)
        for b0 in range(0, KB, BK):  # BK counts bytes: 2*BK weights per step, two dots
            cb = b0 // P + c
            cm = cb < KB // P
            e = cb[:, None] * (2 * P) + j[None, :]  # (NC, P)
            xm = mmask[:, None, None] & cm[None, :, None]
            xrow = x_ptr + rm64[:, None, None] * K
            xlo = tl.reshape(tl.load(xrow + e[None], mask=xm, other=0.0), (BM, BK))
            xhi = tl.reshape(tl.load(xrow + e[None] + P, mask=xm, other=0.0), (BM, BK))
            wm3 = rmask[:, None, None] & cm[None, :, None]
            q = tl.load(q_ptr + rn64[:, None, None] * KB + (cb[:, None] * P + j[None, :])[None],
                        mask=wm3, other=0)  # (BN, NC, P)
            gm = rmask[:, None] & cm[None, :]
            glo = (cb * (2 * P)) // G
            ghi = (cb * (2 * P) + P) // G
            slo = tl.load(s_ptr + rn64[:, None] * NG + glo[None, :], mask=gm, other=0.0)
            shi = tl.load(s_ptr + rn64[:, None] * NG + ghi[None, :], mask=gm, other=0.0)
            qi = q.to(tl.int32)
            wlo = (_small_int_to_f32(qi & 15) - OFF) * slo.to(tl.float32)[:, :, None]
            whi = (_small_int_to_f32(qi >> 4) - OFF) * shi.to(tl.float32)[:, :, None]
            if HAS_MIN:
                wlo += tl.load(m_ptr + rn64[:, None] * NG + glo[None, :], mask=gm,
                               other=0.0).to(tl.float32)[:, :, None]
                whi += tl.load(m_ptr + rn64[:, None] * NG + ghi[None, :], mask=gm,
                               other=0.0).to(tl.float32)[:, :, None]
            wlo = tl.reshape(wlo.to(tl.float16), (BN, BK))
            whi = tl.reshape(whi.to(tl.float16), (BN, BK))
            acc += tl.dot(xlo.to(tl.float16), tl.trans(wlo))
            acc += tl.dot(xhi.to(tl.float16), tl.trans(whi))
    elif KIND == 2:
        NC2: tl.constexpr = BK // G
        c2 = tl.arange(0, NC2)
        j2 = tl.arange(0, G)
        for k0 in range(0, K, BK):
            g = k0 // G + c2
            gmk = g < NG
            k = k0 + tl.arange(0, BK)
            kmask = k < K
            x = tl.load(x_ptr + rm64[:, None] * K + k[None, :],
                        mask=mmask[:, None] & kmask[None, :], other=0.0)
            k3 = g[:, None] * G + j2[None, :]
            q = tl.load(q_ptr + rn64[:, None, None] * K + k3[None],
                        mask=rmask[:, None, None] & gmk[None, :, None], other=0)
            gm = rmask[:, None] & gmk[None, :]
            sc = tl.load(s_ptr + rn64[:, None] * NG + g[None, :], mask=gm, other=0.0)
            w = _int8_to_f32(q) * sc.to(tl.float32)[:, :, None]
            if HAS_MIN:
                w += tl.load(m_ptr + rn64[:, None] * NG + g[None, :], mask=gm,
                             other=0.0).to(tl.float32)[:, :, None]
            w = tl.reshape(w.to(tl.float16), (BN, BK))
            acc += tl.dot(x.to(tl.float16), tl.trans(w))
    else:
        for k0 in range(0, K, BK):
            k = k0 + tl.arange(0, BK)
            kmask = k < K
            x = tl.load(x_ptr + rm64[:, None] * K + k[None, :],
                        mask=mmask[:, None] & kmask[None, :], other=0.0)
            w = tl.load(q_ptr + rn64[:, None] * K + k[None, :],
                        mask=rmask[:, None] & kmask[None, :], other=0.0)
            acc += tl.dot(x.to(tl.float16), tl.trans(w.to(tl.float16)))
    tl.store(y_ptr + rm64[:, None] * N + rn[None, :], acc,
             mask=mmask[:, None] & rmask[None, :])


# ---------------------------------------------------------------------------------------------
# Embedding: out (S, D) = W[ids] dequantized. Bytes: S rows of the table + 4SD; trivial.


@triton.jit
def embedding_kernel(
    ids_ptr, q_ptr, s_ptr, m_ptr, out_ptr, K,
    KIND: tl.constexpr, P: tl.constexpr, G: tl.constexpr, OFF: tl.constexpr,
    HAS_MIN: tl.constexpr, BK: tl.constexpr,
):
    i = tl.program_id(0)
    row = tl.load(ids_ptr + i).to(tl.int64)
    NG = K // G
    obase = out_ptr + i.to(tl.int64) * K
    if KIND == 1:
        KB = K // 2
        for b0 in range(0, KB, BK):
            kb = b0 + tl.arange(0, BK)
            kmask = kb < KB
            q = tl.load(q_ptr + row * KB + kb, mask=kmask, other=0)
            e = (kb // P) * (2 * P) + kb % P
            slo = tl.load(s_ptr + row * NG + e // G, mask=kmask, other=0.0).to(tl.float32)
            shi = tl.load(s_ptr + row * NG + (e + P) // G, mask=kmask, other=0.0).to(tl.float32)
            wlo = ((q & 15).to(tl.float32) - OFF) * slo
            whi = ((q >> 4).to(tl.float32) - OFF) * shi
            if HAS_MIN:
                wlo += tl.load(m_ptr + row * NG + e // G, mask=kmask, other=0.0).to(tl.float32)
                whi += tl.load(m_ptr + row * NG + (e + P) // G, mask=kmask,
                               other=0.0).to(tl.float32)
            tl.store(obase + e, wlo, mask=kmask)
            tl.store(obase + e + P, whi, mask=kmask)
    else:
        for k0 in range(0, K, BK):
            k = k0 + tl.arange(0, BK)
            kmask = k < K
            if KIND == 0:
                w = tl.load(q_ptr + row * K + k, mask=kmask, other=0.0).to(tl.float32)
            else:
                w = tl.load(q_ptr + row * K + k, mask=kmask, other=0).to(tl.float32)
                w = w * tl.load(s_ptr + row * NG + k // G, mask=kmask, other=0.0).to(tl.float32)
                if HAS_MIN:
                    w += tl.load(m_ptr + row * NG + k // G, mask=kmask, other=0.0).to(tl.float32)
            tl.store(obase + k, w, mask=kmask)


# ---------------------------------------------------------------------------------------------
# GEMV with x quantized to int8: the decode matmul on integer dot products (dp4a).
#
# Why: the float GEMV above tops out near 1.2 TB/s on the H100 although the copy ceiling is
# 3.0 TB/s. It is bound by instruction issue, not memory: per 16 bytes of Q4_0 (32 weights) a
# thread unpacks 32 nibbles, converts 32 ints to float and loads 32 fp32 x values from L1,
# ~200 instructions; 3 TB/s would need ~37 T thread-instructions/s against ~30 T the chip
# issues. With x quantized once per call to int8 in blocks of 32 (scale dx; as llama.cpp's
# q8_1), 4 weights cost one dp4a: per 16 bytes of Q4_0 it is 8 mask/shift ops, 8 dp4a and
# 2 x loads (~25 instructions), so memory becomes the bound again.
#
# Sum over a group of the weights' scale s (and min m) and x's block:
#   sum_k (s*(q_k - OFF) + m) * x_k  ~=  s * (dx * sum_k q_k xq_k - OFF * xs) + m * xs
# with xs = dx * sum_k xq_k (precomputed per x block). x's blocks are 32 long and the weight
# groups are 32 (Q4_*, Q8_0, Q5_0) or 16 (Q6_K, no min, no offset) long and aligned, so a
# group lies inside one x block. x's rounding (<= dx/2 per element, relative ~1/254 of the
# block's largest) is the only new error; the accumulation is exact in int32.

XBLOCK = 32  # x elements per int8 block


@triton.jit
def quantize_x_kernel(x_ptr, xq_ptr, xr_ptr, xd_ptr, xs_ptr, NB, X2: tl.constexpr,
                      BB: tl.constexpr):
    """x (K,) f32 -> xq (K,) int8, xd (K/32,) scales, xs (K/32,) = the block's sum as the
    kernel sees it; one program per BB blocks. Rounds half away from zero; an all-zero block
    gets dx = 0. X2: a second int8 xr holds the remainder x - dx*xq in steps of dx/254, and
    xd = dx/254, so that x ~= xd * (254 xq + xr) to ~2^-15 of the block's largest element
    (one int8 level alone is ~2^-8: 1.4e-2 of logits on a tiny Gemma 2, over 1e-2)."""
    b = tl.program_id(0) * BB + tl.arange(0, BB)
    bm = b < NB
    e = b[:, None] * 32 + tl.arange(0, 32)[None, :]
    x = tl.load(x_ptr + e, mask=bm[:, None], other=0.0).to(tl.float32)
    quantize_blocks(x, b, bm, xq_ptr, xr_ptr, xd_ptr, xs_ptr, X2)


@triton.jit
def quantize_blocks(x, b, bm, xq_ptr, xr_ptr, xd_ptr, xs_ptr, X2: tl.constexpr):
    """Quantize x (NB, 32) f32, the blocks b (NB,) of a vector (bm: which exist), into the
    int8-x buffers; shared by quantize_x_kernel and the fused row kernels of pointwise.py."""
    e = b[:, None] * 32 + tl.arange(0, 32)[None, :]
    amax = tl.max(tl.abs(x), axis=1)
    d = amax / 127.0
    inv = tl.where(amax > 0, 127.0 / tl.maximum(amax, 1e-30), 0.0)
    v = x * inv[:, None]
    q = (v + tl.where(v >= 0, 0.5, -0.5)).to(tl.int32)  # the cast truncates toward zero
    tl.store(xq_ptr + e, q.to(tl.int8), mask=bm[:, None])
    if X2:
        r = (v - q.to(tl.float32)) * 254.0  # |r| <= 127
        q2 = (r + tl.where(r >= 0, 0.5, -0.5)).to(tl.int32)
        tl.store(xr_ptr + e, q2.to(tl.int8), mask=bm[:, None])
        d = d / 254.0
        q = q * 254 + q2
    tl.store(xd_ptr + b, d, mask=bm)
    tl.store(xs_ptr + b, d * tl.sum(q, axis=1).to(tl.float32), mask=bm)


@triton.jit
def _dp4a(a, b, c, ASM: tl.constexpr):
    """c + the dot product of the four signed bytes of a and of b (int32 tensors)."""
    if ASM:
        return tl.inline_asm_elementwise("dp4a.s32.s32 $0, $1, $2, $3;", "=r,r,r,r",
                                         [a, b, c], dtype=tl.int32, is_pure=True, pack=1)
    else:  # the interpreter has no inline asm: the same sum, byte by byte
        r = c
        for i in tl.static_range(4):
            r += ((a << (24 - 8 * i)) >> 24) * ((b << (24 - 8 * i)) >> 24)
        return r


@triton.jit
def gemv_q8x_kernel(
    xq_ptr, xr_ptr, xd_ptr, xs_ptr, q_ptr, s_ptr, m_ptr, y_ptr, N, KW, NG,
    KIND: tl.constexpr, P: tl.constexpr, G: tl.constexpr, OFF: tl.constexpr,
    HAS_MIN: tl.constexpr, BN: tl.constexpr, BW: tl.constexpr, ASM: tl.constexpr,
    X2: tl.constexpr,
):
    """y (N,) = W . x with x as int8 blocks. The q plane and xq are read as int32 words
    (KW words a row); BW words of each of BN rows per step."""
    pid = tl.program_id(0)
    rows = pid * BN + tl.arange(0, BN)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    if KIND == 1:
        # a run of P bytes = P/4 words; its low nibbles are elements [2P c, 2P c + P) and its
        # high nibbles the next P, so word t pairs with x words P/2 c + t and P/2 c + P/4 + t
        PW: tl.constexpr = P // 4
        NR: tl.constexpr = BW // PW
        c = tl.arange(0, NR)
        t = tl.arange(0, PW)
        acc2 = tl.zeros((BN, NR), dtype=tl.float32)
        NRUN = KW // PW
        for r0 in range(0, NRUN, NR):
            cr = r0 + c
            cm = cr < NRUN
            w = tl.load(q_ptr + rows64[:, None, None] * KW + (cr[:, None] * PW + t[None, :])[None],
                        mask=rmask[:, None, None] & cm[None, :, None], other=0)
            xw = cr[:, None] * (P // 2) + t[None, :]
            xlo = tl.load(xq_ptr + xw, mask=cm[:, None], other=0)
            xhi = tl.load(xq_ptr + xw + PW, mask=cm[:, None], other=0)
            if X2:
                rlo = tl.load(xr_ptr + xw, mask=cm[:, None], other=0)
                rhi = tl.load(xr_ptr + xw + PW, mask=cm[:, None], other=0)
            lo = w & 0x0F0F0F0F
            hi = (w >> 4) & 0x0F0F0F0F
            elo = cr * (2 * P)  # first element of the low / high half
            gm = rmask[:, None] & cm[None, :]
            sbase = s_ptr + rows64[:, None] * NG
            mbase = m_ptr + rows64[:, None] * NG
            if 2 * P == 32 and G == 32:
                # Q4_0 / Q4_1: a run is one group and one x block; the offset and the min
                # multiply the whole block's sum xs
                pi = _dp4a(hi, xhi[None], _dp4a(lo, xlo[None], tl.zeros_like(w), ASM), ASM)
                if X2:
                    pi = pi * 254 + _dp4a(hi, rhi[None], _dp4a(lo, rlo[None], tl.zeros_like(w),
                                                                ASM), ASM)
                p = tl.sum(pi, axis=2).to(tl.float32)  # (BN, NR)
                dx = tl.load(xd_ptr + cr, mask=cm, other=0.0)
                sw = tl.load(sbase + cr[None, :], mask=gm, other=0.0).to(tl.float32)
                v = p * dx[None, :]
                if OFF != 0 or HAS_MIN:
                    xs = tl.load(xs_ptr + cr, mask=cm, other=0.0)
                    if OFF != 0:
                        v -= OFF * xs[None, :]
                acc2 += sw * v
                if HAS_MIN:
                    mw = tl.load(mbase + cr[None, :], mask=gm, other=0.0).to(tl.float32)
                    acc2 += mw * xs[None, :]
            else:
                # Q4_K: P = 32, so each half of a run is its own group and x block
                zero = tl.zeros_like(w)
                ilo = _dp4a(lo, xlo[None], zero, ASM)
                ihi = _dp4a(hi, xhi[None], zero, ASM)
                if X2:
                    ilo = ilo * 254 + _dp4a(lo, rlo[None], zero, ASM)
                    ihi = ihi * 254 + _dp4a(hi, rhi[None], zero, ASM)
                plo = tl.sum(ilo, axis=2).to(tl.float32)
                phi = tl.sum(ihi, axis=2).to(tl.float32)
                ehi = elo + P
                dlo = tl.load(xd_ptr + elo // 32, mask=cm, other=0.0)
                dhi = tl.load(xd_ptr + ehi // 32, mask=cm, other=0.0)
                slo = tl.load(sbase + (elo // G)[None, :], mask=gm, other=0.0).to(tl.float32)
                shi = tl.load(sbase + (ehi // G)[None, :], mask=gm, other=0.0).to(tl.float32)
                vlo = plo * dlo[None, :]
                vhi = phi * dhi[None, :]
                if OFF != 0 or HAS_MIN:
                    xslo = tl.load(xs_ptr + elo // 32, mask=cm, other=0.0)
                    xshi = tl.load(xs_ptr + ehi // 32, mask=cm, other=0.0)
                    if OFF != 0:
                        vlo -= OFF * xslo[None, :]
                        vhi -= OFF * xshi[None, :]
                acc2 += slo * vlo + shi * vhi
                if HAS_MIN:
                    mlo = tl.load(mbase + (elo // G)[None, :], mask=gm, other=0.0).to(tl.float32)
                    mhi = tl.load(mbase + (ehi // G)[None, :], mask=gm, other=0.0).to(tl.float32)
                    acc2 += mlo * xslo[None, :] + mhi * xshi[None, :]
        acc = tl.sum(acc2, axis=1)
    else:
        # int8 plane: a group of G elements is G/4 words
        GW: tl.constexpr = G // 4
        NC: tl.constexpr = BW // GW
        c2 = tl.arange(0, NC)
        t2 = tl.arange(0, GW)
        acc2 = tl.zeros((BN, NC), dtype=tl.float32)
        for g0 in range(0, NG, NC):
            g = g0 + c2
            gmk = g < NG
            wi = g[:, None] * GW + t2[None, :]  # (NC, GW) word index
            w = tl.load(q_ptr + rows64[:, None, None] * KW + wi[None],
                        mask=rmask[:, None, None] & gmk[None, :, None], other=0)
            xw = tl.load(xq_ptr + wi, mask=gmk[:, None], other=0)
            pi = _dp4a(w, xw[None], tl.zeros_like(w), ASM)
            if X2:
                pi = pi * 254 + _dp4a(w, tl.load(xr_ptr + wi, mask=gmk[:, None], other=0)[None],
                                      tl.zeros_like(w), ASM)
            p = tl.sum(pi, axis=2).to(tl.float32)
            e = g * G
            dx = tl.load(xd_ptr + e // 32, mask=gmk, other=0.0)
            gm = rmask[:, None] & gmk[None, :]
            s = tl.load(s_ptr + rows64[:, None] * NG + g[None, :], mask=gm,
                        other=0.0).to(tl.float32)
            acc2 += s * (p * dx[None, :])
            if HAS_MIN:
                xs = tl.load(xs_ptr + e // 32, mask=gmk, other=0.0)
                m = tl.load(m_ptr + rows64[:, None] * NG + g[None, :], mask=gm,
                            other=0.0).to(tl.float32)
                acc2 += m * xs[None, :]
        acc = tl.sum(acc2, axis=1)
    tl.store(y_ptr + rows, acc, mask=rmask)


# ---------------------------------------------------------------------------------------------
# Dequantize a weight into a bounded fp16 scratch, for the dense prefill GEMM.
#
# Why: the GEMM above dequantizes every weight tile once per BM rows of x, in registers, and
# reaches ~144 TFLOP/s on the H100 at 512 x 14336 x 4096, a quarter of a dense fp16 GEMM.
# Dequantizing the weight once (read 0.56 B + write 2 B a weight: ~50 us for 14336 x 4096 at
# 3 TB/s) and then running the dense tile GEMM (KIND 0 above) costs less at M >= ~128. The
# scratch is one buffer the size of the largest prefill weight (117 MiB fp16 for the 8B
# FFN), reused by every matmul: never a persistent float copy of the model.


@triton.jit
def dequant_kernel(
    q_ptr, s_ptr, m_ptr, out_ptr, N, K, KB, NG,
    KIND: tl.constexpr, P: tl.constexpr, G: tl.constexpr, OFF: tl.constexpr,
    HAS_MIN: tl.constexpr, BN: tl.constexpr, BB: tl.constexpr,
):
    """out (N, K) fp16 = W. Grid (N/BN, cdiv(KB, BB)): BB bytes (KIND 1) or elements (KIND 2)
    of BN rows per program. Tiles are 3-D (rows, runs or groups, elements) so that each
    scale is loaded once per group and broadcast (a first version gathered one scale per
    element: 64 2-byte loads a thread, 1.0 TB/s); the two nibble halves of a run are
    interleaved back into element order in registers (join + permute), so the fp16 stores
    are whole contiguous rows of the tile."""
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    if KIND == 1:
        NR: tl.constexpr = BB // P
        c = tl.program_id(1) * NR + tl.arange(0, NR)  # run index in the row
        cm = c < KB // P
        j = tl.arange(0, P)
        m3 = rmask[:, None, None] & cm[None, :, None]
        q = tl.load(q_ptr + rows64[:, None, None] * KB + (c[:, None] * P + j[None, :])[None],
                    mask=m3, other=0).to(tl.int32)  # (BN, NR, P)
        m2 = rmask[:, None] & cm[None, :]
        sb = s_ptr + rows64[:, None] * NG
        glo = (c * (2 * P)) // G
        ghi = (c * (2 * P) + P) // G
        slo = tl.load(sb + glo[None, :], mask=m2, other=0.0).to(tl.float32)[:, :, None]
        shi = tl.load(sb + ghi[None, :], mask=m2, other=0.0).to(tl.float32)[:, :, None]
        wlo = (_small_int_to_f32(q & 15) - OFF) * slo
        whi = (_small_int_to_f32(q >> 4) - OFF) * shi
        if HAS_MIN:
            mb = m_ptr + rows64[:, None] * NG
            wlo += tl.load(mb + glo[None, :], mask=m2, other=0.0).to(tl.float32)[:, :, None]
            whi += tl.load(mb + ghi[None, :], mask=m2, other=0.0).to(tl.float32)[:, :, None]
        w = tl.permute(tl.join(wlo.to(tl.float16), whi.to(tl.float16)), (0, 1, 3, 2))
        w = tl.reshape(w, (BN, NR * 2 * P))  # (row, element): low half then high half
        e = tl.program_id(1) * (NR * 2 * P) + tl.arange(0, NR * 2 * P)
        tl.store(out_ptr + rows64[:, None] * K + e[None, :], w,
                 mask=rmask[:, None] & (e < K)[None, :])
    else:
        NC: tl.constexpr = BB // G
        g = tl.program_id(1) * NC + tl.arange(0, NC)
        gm = g < NG
        e3 = g[:, None] * G + tl.arange(0, G)[None, :]  # (NC, G)
        m3 = rmask[:, None, None] & gm[None, :, None]
        q = tl.load(q_ptr + rows64[:, None, None] * K + e3[None], mask=m3, other=0)
        m2 = rmask[:, None] & gm[None, :]
        w = _int8_to_f32(q) * tl.load(s_ptr + rows64[:, None] * NG + g[None, :], mask=m2,
                                      other=0.0).to(tl.float32)[:, :, None]
        if HAS_MIN:
            w += tl.load(m_ptr + rows64[:, None] * NG + g[None, :], mask=m2,
                         other=0.0).to(tl.float32)[:, :, None]
        tl.store(out_ptr + rows64[:, None, None] * K + e3[None], w.to(tl.float16), mask=m3)
