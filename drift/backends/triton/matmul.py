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
