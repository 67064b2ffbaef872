"""Row-wise and elementwise kernels: rms_norm, rope, kv_write and the elementwise ops.

All are memory-bound and small next to the matrix work: each reads its inputs once and writes
its output once (the bytes in the op registry's cost), so on the H100 their floor is those
bytes / 3.0 TB/s; at decode they cost a launch each (~2-4 us), which the CUDA graph hides.
Activations are fp32; the KV cache is fp16.
"""

from __future__ import annotations

import triton
import triton.language as tl

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
def rope_kernel(x_ptr, pos_ptr, f_ptr, out_ptr, H, Dh, n_dims, log2_theta, freq_scale,
                NEOX: tl.constexpr, HAS_FACTORS: tl.constexpr, BH: tl.constexpr,
                BD: tl.constexpr):
    """One program per (token, head): rotate the first n_dims of the head, copy the rest.
    Angles in fp32 (pos * theta^(-2i/n) [/ factor_i]) as llama.cpp does."""
    pid = tl.program_id(0)
    s = pid // H
    base = pid.to(tl.int64) * Dh
    pos = tl.load(pos_ptr + s).to(tl.float32) * freq_scale
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
    a = tl.load(x_ptr + base + ia, mask=im, other=0.0).to(tl.float32)
    b = tl.load(x_ptr + base + ib, mask=im, other=0.0).to(tl.float32)
    tl.store(out_ptr + base + ia, a * c - b * sn, mask=im)
    tl.store(out_ptr + base + ib, a * sn + b * c, mask=im)
    d = tl.arange(0, BD)
    rest = (d >= n_dims) & (d < Dh)
    tl.store(out_ptr + base + d, tl.load(x_ptr + base + d, mask=rest, other=0.0), mask=rest)


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
