"""Attention over the fp16 KV cache (C, Hkv, Dh): flash-decoding for one query token, and a
causal / sliding-window flash attention for prefill. Softcap, GQA (H a multiple of Hkv).

Decode: FLOPs 4*H*T*Dh, bytes 2*T*Hkv*Dh*2 (K and V once each): memory-bound; the query
heads of one KV head are processed together so the cache is read once (GQA), and the keys
are split in chunks over programs (split-K) so a short context still fills the GPU; a second
kernel merges the chunks' (max, sum, acc). Positions are read on the device, so the launch
grid is fixed by the context size and the step can be captured in a CUDA graph.
Prefill: FLOPs ~ 2*H*S^2*Dh (causal half of 4*H*S^2*Dh), compute-bound on the tensor cores.
"""

from __future__ import annotations

import triton
import triton.language as tl

from drift.backends.triton.matmul import quantize_blocks

NEG = tl.constexpr(-1.0e30)  # "minus infinity" that keeps exp() and max() free of NaN


@triton.jit
def _softcap(s, cap):
    return (1.0 - 2.0 / (tl.exp(2.0 * s / cap) + 1.0)) * cap


@triton.jit
def attn_decode_kernel(
    q_ptr, k_ptr, v_ptr, pos_ptr, m_out, l_out, acc_out,
    Hkv, Dh, Dv, scale, softcap, window, CHUNK, NSPLIT,
    G: tl.constexpr, GP: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    BT: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_WINDOW: tl.constexpr,
):
    kvh = tl.program_id(0)
    split = tl.program_id(1)
    pos = tl.load(pos_ptr)
    T = pos + 1
    lo = split * CHUNK
    hi = tl.minimum(lo + CHUNK, T)
    if HAS_WINDOW:
        lo = tl.maximum(lo, pos - window + 1)
    g = tl.arange(0, GP)
    gm = g < G
    d = tl.arange(0, BD)
    dm = d < Dh
    dv = tl.arange(0, BDV)
    dvm = dv < Dv
    heads = kvh * G + g
    q = tl.load(q_ptr + heads[:, None] * Dh + d[None, :], mask=gm[:, None] & dm[None, :],
                other=0.0).to(tl.float32)
    q = (q * scale).to(tl.float16)
    m_i = tl.full((GP,), NEG, dtype=tl.float32)
    l_i = tl.zeros((GP,), dtype=tl.float32)
    acc = tl.zeros((GP, BDV), dtype=tl.float32)
    rk = Hkv * Dh
    rv = Hkv * Dv
    for t0 in range(lo, hi, BT):
        t = t0 + tl.arange(0, BT)
        tm = t < hi
        t64 = t.to(tl.int64)
        k = tl.load(k_ptr + t64[:, None] * rk + kvh * Dh + d[None, :],
                    mask=tm[:, None] & dm[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k))  # (GP, BT)
        if HAS_SOFTCAP:
            s = _softcap(s, softcap)
        s = tl.where(tm[None, :], s, NEG)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        p = tl.where(tm[None, :], p, 0.0)
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + t64[:, None] * rv + kvh * Dv + dv[None, :],
                    mask=tm[:, None] & dvm[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), v)
        m_i = m_new
    # partials: m, l (H, NSPLIT), acc (H, NSPLIT, Dv)
    idx = heads * NSPLIT + split
    tl.store(m_out + idx, m_i, mask=gm)
    tl.store(l_out + idx, l_i, mask=gm)
    tl.store(acc_out + idx[:, None] * Dv + dv[None, :], acc, mask=gm[:, None] & dvm[None, :])


@triton.jit
def attn_merge_kernel(m_in, l_in, acc_in, out_ptr, Dv, NSPLIT, xq_ptr, xr_ptr, xd_ptr, xs_ptr,
                      BS: tl.constexpr, BDV: tl.constexpr, QUANT: tl.constexpr,
                      X2: tl.constexpr):
    """out[h] = sum_j e^(m_j - M) acc_j / sum_j e^(m_j - M) l_j, one program per head.
    QUANT (BDV == Dv, a multiple of 32): also the int8 blocks of out for the output
    projection's GEMV, saving its quantize launch (~2 us a layer)."""
    h = tl.program_id(0)
    j = tl.arange(0, BS)
    jm = j < NSPLIT
    m = tl.load(m_in + h * NSPLIT + j, mask=jm, other=NEG)
    l = tl.load(l_in + h * NSPLIT + j, mask=jm, other=0.0)
    w = tl.exp(m - tl.max(m, axis=0))
    w = tl.where(jm, w, 0.0)
    dv = tl.arange(0, BDV)
    dvm = dv < Dv
    a = tl.load(acc_in + (h * NSPLIT + j)[:, None] * Dv + dv[None, :],
                mask=jm[:, None] & dvm[None, :], other=0.0)
    out = tl.sum(a * w[:, None], axis=0) / tl.sum(l * w, axis=0)
    tl.store(out_ptr + h * Dv + dv, out, mask=dvm)
    if QUANT:
        NB: tl.constexpr = BDV // 32
        b = h * NB + tl.arange(0, NB)
        quantize_blocks(tl.reshape(out, (NB, 32)), b, b >= 0, xq_ptr, xr_ptr, xd_ptr, xs_ptr,
                        X2)


@triton.jit
def attn_prefill_kernel(
    q_ptr, k_ptr, v_ptr, pos_ptr, out_ptr,
    S, H, Hkv, Dh, Dv, scale, softcap, window,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_WINDOW: tl.constexpr,
):
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    kvh = h // (H // Hkv)
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < S
    qpos = tl.load(pos_ptr + rows, mask=rmask, other=0)
    d = tl.arange(0, BD)
    dm = d < Dh
    dv = tl.arange(0, BDV)
    dvm = dv < Dv
    rows64 = rows.to(tl.int64)
    q = tl.load(q_ptr + (rows64[:, None] * H + h) * Dh + d[None, :],
                mask=rmask[:, None] & dm[None, :], other=0.0).to(tl.float32)
    q = (q * scale).to(tl.float16)
    hi = tl.max(tl.where(rmask, qpos, 0), axis=0) + 1
    lo = hi * 0
    if HAS_WINDOW:
        lo = tl.maximum(tl.min(tl.where(rmask, qpos, hi), axis=0) - window + 1, 0)
        lo = (lo // BN) * BN
    m_i = tl.full((BM,), NEG, dtype=tl.float32)
    l_i = tl.zeros((BM,), dtype=tl.float32)
    acc = tl.zeros((BM, BDV), dtype=tl.float32)
    rk = Hkv * Dh
    rv = Hkv * Dv
    for t0 in range(lo, hi, BN):
        t = t0 + tl.arange(0, BN)
        tm = t < hi
        t64 = t.to(tl.int64)
        k = tl.load(k_ptr + t64[:, None] * rk + kvh * Dh + d[None, :],
                    mask=tm[:, None] & dm[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k))  # (BM, BN)
        if HAS_SOFTCAP:
            s = _softcap(s, softcap)
        ok = (t[None, :] <= qpos[:, None]) & tm[None, :]
        if HAS_WINDOW:
            ok = ok & (qpos[:, None] - t[None, :] < window)
        s = tl.where(ok, s, NEG)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.where(ok, tl.exp(s - m_new[:, None]), 0.0)
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + t64[:, None] * rv + kvh * Dv + dv[None, :],
                    mask=tm[:, None] & dvm[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), v)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # padded rows saw no key
    tl.store(out_ptr + (rows64[:, None] * H + h) * Dv + dv[None, :], out,
             mask=rmask[:, None] & dvm[None, :])
