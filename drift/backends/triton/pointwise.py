"""Row-wise and elementwise kernels: rms_norm, rope, kv_write and the elementwise ops.

All are memory-bound and small next to the matrix work: each reads its inputs once and writes
its output once (the bytes in the op registry's cost), so on the H100 their floor is those
bytes / 3.0 TB/s; at decode they cost a launch each (~2-4 us), which the CUDA graph hides.
Activations are fp32; the KV cache is fp16.
"""

from __future__ import annotations

import triton
import triton.language as tl

from drift.backends.triton.matmul import quantize_blocks

# elementwise op codes (constexpr OP)
EW_OPS = {"add": 0, "mul": 1, "scale": 2, "silu": 3, "gelu": 4, "swiglu": 5, "geglu": 6,
          "softcap": 7}


@triton.jit
def _tanh(x):
    # tanh through exp: saturates cleanly (exp overflow -> +-1), no libdevice needed.
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _gelu(x):
    return 0.5 * x * (1.0 + _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


@triton.jit
def elementwise_kernel(a_ptr, b_ptr, out_ptr, n, nb, value, OP: tl.constexpr,
                       BLOCK: tl.constexpr):
    """out = op(a[, b]); b broadcasts by wrapping (a bias (N,) over (S, N)). FLOPs ~n, bytes
    4n per operand."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if OP == 0 or OP == 1 or OP == 5 or OP == 6:
        b = tl.load(b_ptr + offs % nb, mask=mask, other=0.0).to(tl.float32)
    if OP == 0:
        y = a + b
    elif OP == 1:
        y = a * b
    elif OP == 2:
        y = a * value
    elif OP == 3:
        y = a / (1.0 + tl.exp(-a))
    elif OP == 4:
        y = _gelu(a)
    elif OP == 5:
        y = a / (1.0 + tl.exp(-a)) * b
    elif OP == 6:
        y = _gelu(a) * b
    else:
        y = _tanh(a / value) * value
    tl.store(out_ptr + offs, y, mask=mask)


@triton.jit
def rms_norm_kernel(x_ptr, w_ptr, out_ptr, D, eps, UNIT_OFFSET: tl.constexpr,
                    BLOCK: tl.constexpr):
    """One program per row of D: two passes over the row (the second from L1/L2)."""
    row = tl.program_id(0).to(tl.int64)
    base = x_ptr + row * D
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK):
        d = d0 + tl.arange(0, BLOCK)
        x = tl.load(base + d, mask=d < D, other=0.0).to(tl.float32)
        acc += x * x
    inv = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / D + eps)
    for d0 in range(0, D, BLOCK):
        d = d0 + tl.arange(0, BLOCK)
        m = d < D
        x = tl.load(base + d, mask=m, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + d, mask=m, other=0.0).to(tl.float32)
        if UNIT_OFFSET:
            w = w + 1.0
        tl.store(out_ptr + row * D + d, x * inv * w, mask=m)


@triton.jit
def _rope_head(x_ptr, out_ptr, pos, f_ptr, Dh, n_dims, log2_theta, NEOX: tl.constexpr,
               HAS_FACTORS: tl.constexpr, BH: tl.constexpr, BD: tl.constexpr):
    """Rotate one head x (Dh,) at position pos (already times freq_scale) into out, stored
    as out's element type (fp32 activations or the fp16 cache). Angles in fp32
    (pos * theta^(-2i/n) [/ factor_i]) as llama.cpp does."""
    half = n_dims // 2
    i = tl.arange(0, BH)
    im = i < half
    inv = tl.exp2(-(2.0 * i.to(tl.float32) / n_dims) * log2_theta)
    if HAS_FACTORS:
        inv = inv / tl.load(f_ptr + i, mask=im, other=1.0).to(tl.float32)
    ang = pos * inv
    c = tl.cos(ang)
    sn = tl.sin(ang)
    if NEOX:
        ia = i
        ib = i + half
    else:
        ia = 2 * i
        ib = 2 * i + 1
    a = tl.load(x_ptr + ia, mask=im, other=0.0).to(tl.float32)
    b = tl.load(x_ptr + ib, mask=im, other=0.0).to(tl.float32)
    ty = out_ptr.dtype.element_ty
    tl.store(out_ptr + ia, (a * c - b * sn).to(ty), mask=im)
    tl.store(out_ptr + ib, (a * sn + b * c).to(ty), mask=im)
    d = tl.arange(0, BD)
    rest = (d >= n_dims) & (d < Dh)
    tl.store(out_ptr + d, tl.load(x_ptr + d, mask=rest, other=0.0).to(ty), mask=rest)


@triton.jit
def rope_kernel(x_ptr, pos_ptr, f_ptr, out_ptr, H, Dh, n_dims, log2_theta, freq_scale,
                NEOX: tl.constexpr, HAS_FACTORS: tl.constexpr, BH: tl.constexpr,
                BD: tl.constexpr):
    """One program per (token, head): rotate the first n_dims of the head, copy the rest."""
    pid = tl.program_id(0)
    s = pid // H
    base = pid.to(tl.int64) * Dh
    pos = tl.load(pos_ptr + s).to(tl.float32) * freq_scale
    _rope_head(x_ptr + base, out_ptr + base, pos, f_ptr, Dh, n_dims, log2_theta, NEOX,
               HAS_FACTORS, BH, BD)


@triton.jit
def rope_kv_decode_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, f_ptr, qo_ptr, kc_ptr, vc_ptr, H, Hkv,
                          Dh, Dv, n_dims, log2_theta, freq_scale, NEOX: tl.constexpr,
                          HAS_FACTORS: tl.constexpr, BH: tl.constexpr, BD: tl.constexpr,
                          BDV: tl.constexpr):
    """Decode (one token): rope(q) -> qo, rope(k) -> the K cache row, v -> the V cache row, in
    one launch instead of four (rope q, rope k, kv_write k, kv_write v: ~3 us each in the
    CUDA graph, ~10 us a layer on the 8B model). Programs [0, H) rotate query heads,
    [H, H + Hkv) key heads, the last Hkv copy value heads."""
    p = tl.program_id(0)
    row = tl.load(pos_ptr).to(tl.int64)
    pos = row.to(tl.float32) * freq_scale
    if p < H:
        _rope_head(q_ptr + p * Dh, qo_ptr + p * Dh, pos, f_ptr, Dh, n_dims, log2_theta, NEOX,
                   HAS_FACTORS, BH, BD)
    elif p < H + Hkv:
        h = p - H
        _rope_head(k_ptr + h * Dh, kc_ptr + (row * Hkv + h) * Dh, pos, f_ptr, Dh, n_dims,
                   log2_theta, NEOX, HAS_FACTORS, BH, BD)
    else:
        h = p - H - Hkv
        d = tl.arange(0, BDV)
        m = d < Dv
        x = tl.load(v_ptr + h * Dv + d, mask=m, other=0.0)
        tl.store(vc_ptr + (row * Hkv + h) * Dv + d, x.to(vc_ptr.dtype.element_ty), mask=m)


@triton.jit
def kv_write_kernel(x_ptr, pos_ptr, cache_ptr, R, BLOCK: tl.constexpr):
    """cache[pos[s]] = x[s] as fp16, one program per token; R = Hkv * Dh."""
    s = tl.program_id(0)
    p = tl.load(pos_ptr + s).to(tl.int64)
    for r0 in range(0, R, BLOCK):
        r = r0 + tl.arange(0, BLOCK)
        m = r < R
        x = tl.load(x_ptr + s.to(tl.int64) * R + r, mask=m, other=0.0)
        tl.store(cache_ptr + p * R + r, x.to(cache_ptr.dtype.element_ty), mask=m)


# ---------------------------------------------------------------------------------------------
# Decode row kernels fused with the int8 quantization of x for the GEMVs that read their
# output (see gemv_q8x_kernel). At batch 1 each of these rows is a few KB: the kernels cost
# their launch (~2 us in a CUDA graph), so one launch instead of two or three is the gain:
#   MODE 0  out = rms_norm(a) * w                 (a layer's first norm)
#   MODE 1  sum = a + b; out = rms_norm(sum) * w  (residual add + the next norm)
# Both need the whole row for the norm: one program, the row in BLOCK chunks. swiglu_quant
# below has no reduction and runs on many programs.


@triton.jit
def norm_quant_kernel(a_ptr, b_ptr, w_ptr, sum_ptr, out_ptr, xq_ptr, xr_ptr, xd_ptr, xs_ptr,
                      D, eps, MODE: tl.constexpr, UNIT_OFFSET: tl.constexpr,
                      QUANT: tl.constexpr, X2: tl.constexpr, BLOCK: tl.constexpr):
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK):
        d = d0 + tl.arange(0, BLOCK)
        m = d < D
        x = tl.load(a_ptr + d, mask=m, other=0.0).to(tl.float32)
        if MODE == 1:
            x += tl.load(b_ptr + d, mask=m, other=0.0).to(tl.float32)
            tl.store(sum_ptr + d, x, mask=m)
        acc += x * x
    inv = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / D + eps)
    NB: tl.constexpr = BLOCK // 32
    if MODE == 1:
        # the sum is read back, not recomputed: the memory plan may write it over a or b (in
        # place), and every thread's stores must land before any thread reads them
        tl.debug_barrier()
    for d0 in range(0, D, BLOCK):
        d = d0 + tl.arange(0, BLOCK)
        m = d < D
        if MODE == 1:
            x = tl.load(sum_ptr + d, mask=m, other=0.0).to(tl.float32)
        else:
            x = tl.load(a_ptr + d, mask=m, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + d, mask=m, other=0.0).to(tl.float32)
        if UNIT_OFFSET:
            w = w + 1.0
        y = x * inv * w
        tl.store(out_ptr + d, y, mask=m)
        if QUANT:
            b = d0 // 32 + tl.arange(0, NB)
            quantize_blocks(tl.reshape(y, (NB, 32)), b, b < D // 32, xq_ptr, xr_ptr, xd_ptr,
                            xs_ptr, X2)


@triton.jit
def swiglu_quant_kernel(g_ptr, u_ptr, out_ptr, xq_ptr, xr_ptr, xd_ptr, xs_ptr, D,
                        GELU: tl.constexpr, X2: tl.constexpr, BLOCK: tl.constexpr):
    """out = act(gate) * up and its int8 blocks; BLOCK (a multiple of 32) per program."""
    d = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = d < D
    g = tl.load(g_ptr + d, mask=m, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + d, mask=m, other=0.0).to(tl.float32)
    if GELU:
        y = _gelu(g) * u
    else:
        y = g / (1.0 + tl.exp(-g)) * u
    tl.store(out_ptr + d, y, mask=m)
    NB: tl.constexpr = BLOCK // 32
    b = tl.program_id(0) * NB + tl.arange(0, NB)
    quantize_blocks(tl.reshape(y, (NB, 32)), b, b < D // 32, xq_ptr, xr_ptr, xd_ptr, xs_ptr, X2)
