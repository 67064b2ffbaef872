"""GGUF weight formats in numpy: `dequantize` for every SUPPORTED type, `quantize` for some.

This module is the executable specification the GPU dequantizing kernels are written from
and tested against. Its results equal gguf-py's `gguf.quants.dequantize` bit for bit: the
same float32 operations in the same order. numpy never fuses a multiply and an add, so a
kernel that wants bit equality must not contract `d * q - m` into an FMA either.

Conventions for the layout comments below:
- A block holds `elements` weights in `bytes` bytes (`block_shape`); a row of K weights is
  K / elements consecutive blocks. Multi-byte fields are little-endian.
- `f16` is an IEEE half converted to float32 before any arithmetic; all arithmetic is float32.
- "bits [b, b+w) of byte x" is (x >> b) & (2**w - 1); a nibble is 4 bits.
- `e` is the index of a weight inside its block.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from drift.errors import InvalidArgumentError, ModelFileError, UnsupportedError

SUPPORTED: frozenset[Q] = frozenset(
    [Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]
    + [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]
)

# Weights per numpy pass: bounds the temporaries (a few times the output) on tensors of
# hundreds of millions of weights, and keeps each pass's working set near the caches.
_CHUNK_ELEMENTS = 1 << 20

Blocks = np.ndarray  # (n_blocks, bytes_per_block) uint8
Values = np.ndarray  # (n_blocks, elements_per_block) float32


def block_shape(qtype: Q) -> tuple[int, int]:
    """(elements_per_block, bytes_per_block). Known for every type gguf-py names, supported or
    not, so that a file's tensors can be sized before anything asks to decode them."""
    return GGML_QUANT_SIZES[qtype]


# The GGML block layout of each quant type, written once: its fields in file order, as
# (name, byte offset, bytes, kind); "scale" fields are per-block factors and offsets, "quant"
# fields the packed weights. The dequantizers below, the storages of drift/passes/storage.py
# and the Triton backend's on-device conversion all slice blocks through it (`field`).
BLOCK_FIELDS: dict[str, tuple[tuple[str, int, int, str], ...]] = {
    "Q4_0": (("d", 0, 2, "scale"), ("qs", 2, 16, "quant")),
    "Q4_1": (("d", 0, 2, "scale"), ("m", 2, 2, "scale"), ("qs", 4, 16, "quant")),
    "Q5_0": (("d", 0, 2, "scale"), ("qh", 2, 4, "quant"), ("qs", 6, 16, "quant")),
    "Q5_1": (("d", 0, 2, "scale"), ("m", 2, 2, "scale"), ("qh", 4, 4, "quant"),
             ("qs", 8, 16, "quant")),
    "Q8_0": (("d", 0, 2, "scale"), ("qs", 2, 32, "quant")),
    "Q2_K": (("scales", 0, 16, "scale"), ("qs", 16, 64, "quant"), ("d", 80, 2, "scale"),
             ("dmin", 82, 2, "scale")),
    "Q3_K": (("hmask", 0, 32, "quant"), ("qs", 32, 64, "quant"), ("scales", 96, 12, "scale"),
             ("d", 108, 2, "scale")),
    "Q4_K": (("d", 0, 2, "scale"), ("dmin", 2, 2, "scale"), ("scales", 4, 12, "scale"),
             ("qs", 16, 128, "quant")),
    "Q5_K": (("d", 0, 2, "scale"), ("dmin", 2, 2, "scale"), ("scales", 4, 12, "scale"),
             ("qh", 16, 32, "quant"), ("qs", 48, 128, "quant")),
    "Q6_K": (("ql", 0, 128, "quant"), ("qh", 128, 64, "quant"), ("scales", 192, 16, "scale"),
             ("d", 208, 2, "scale")),
}
_FIELD_AT = {(q, name): (off, size) for q, fs in BLOCK_FIELDS.items() for name, off, size, _ in fs}


def field(b, qtype: str, name: str):
    """Field `name` of every block: b[..., off:off + size] of (..., bytes per block) blocks
    (numpy or torch)."""
    off, size = _FIELD_AT[(qtype, name)]
    return b[..., off : off + size]


def _check_fields() -> None:
    """Each type's fields are listed in file order and cover its block exactly."""
    for qtype, fields in BLOCK_FIELDS.items():
        at = 0
        for _, off, size, _ in fields:
            assert off == at, f"{qtype}: fields out of order"
            at += size
        assert at == GGML_QUANT_SIZES[Q[qtype]][1], f"{qtype}: fields do not cover the block"


_check_fields()


def _names(types: frozenset[Q] | set[Q]) -> str:
    return ", ".join(t.name for t in sorted(types))


def check_supported(qtype: Q, tensor_name: str | None = None) -> None:
    if qtype not in SUPPORTED:
        where = f"tensor {tensor_name}: " if tensor_name else ""
        raise UnsupportedError(
            f"{where}quant type {qtype.name} is not supported (supported: {_names(SUPPORTED)})"
        )


# ---------------------------------------------------------------------------------------------
# Bit helpers shared by the block decoders.


def _f16(b: Blocks, qtype: str, name: str) -> np.ndarray:
    """The f16 field `name` of every block, as float32 (n, 1)."""
    return field(b, qtype, name).view(np.float16).astype(np.float32)


def _split(x: np.ndarray, width: int) -> np.ndarray:
    """(..., m) bytes -> (..., 8 // width, m): piece j of byte i is bits [width*j, width*(j+1))."""
    shifts = np.arange(0, 8, width, dtype=np.uint8).reshape(-1, 1)
    return (x[..., None, :] >> shifts) & np.uint8((1 << width) - 1)


def _pack(pieces: np.ndarray, width: int) -> np.ndarray:
    """Inverse of `_split`: (..., 8 // width, m) small ints -> (..., m) bytes."""
    shifts = np.arange(0, 8, width, dtype=np.uint8).reshape(-1, 1)
    return np.bitwise_or.reduce(pieces.astype(np.uint8) << shifts, axis=-2)


def _round_away(x: np.ndarray) -> np.ndarray:
    """Round half away from zero, exactly (ggml's roundf). floor(|x| + 0.5) is not exact: for
    0.49999997 the sum rounds up to 1.0 in float32."""
    a = np.abs(x)
    f = np.floor(a)
    return np.sign(x) * (f + np.floor(2 * (a - f)))


# ---------------------------------------------------------------------------------------------
# Dequantizers: (n, bytes) uint8 -> (n, elements) float32, one per type.


def _dq_f32(b: Blocks) -> Values:
    # F32 (1 weight, 4 bytes): the float32 itself.
    return b.view(np.float32)


def _dq_f16(b: Blocks) -> Values:
    # F16 (1 weight, 2 bytes): an IEEE half.
    return b.view(np.float16).astype(np.float32)


def _dq_bf16(b: Blocks) -> Values:
    # BF16 (1 weight, 2 bytes): the top 16 bits of a float32; the low 16 bits are zero.
    return (b.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _dq_q4_0(b: Blocks) -> Values:
    # Q4_0 (32 weights, 18 bytes): [0:2] d f16 | [2:18] qs, 16 bytes.
    # q[e] = nibble (e // 16) of qs[e % 16]   (e < 16: low nibbles, e >= 16: high nibbles)
    # w[e] = d * (q[e] - 8)
    q = _split(field(b, "Q4_0", "qs"), 4).reshape(-1, 32)
    return _f16(b, "Q4_0", "d") * (q.astype(np.float32) - 8)


def _dq_q4_1(b: Blocks) -> Values:
    # Q4_1 (32 weights, 20 bytes): [0:2] d f16 | [2:4] m f16 | [4:20] qs, 16 bytes.
    # q[e] = nibble (e // 16) of qs[e % 16];  w[e] = (d * q[e]) + m
    q = _split(field(b, "Q4_1", "qs"), 4).reshape(-1, 32)
    return _f16(b, "Q4_1", "d") * q.astype(np.float32) + _f16(b, "Q4_1", "m")


def _q5(b: Blocks, qtype: str) -> np.ndarray:
    # Shared by Q5_0 / Q5_1: 4 bytes qh (a little-endian uint32: bit e is bit 4 of q[e]), then
    # 16 bytes qs holding the low 4 bits as in Q4_0.
    low = _split(field(b, qtype, "qs"), 4).reshape(-1, 32)
    high = np.unpackbits(field(b, qtype, "qh"), axis=-1, bitorder="little")
    return low | (high << 4)


def _dq_q5_0(b: Blocks) -> Values:
    # Q5_0 (32 weights, 22 bytes): [0:2] d f16 | [2:6] qh | [6:22] qs.
    # q[e] = (nibble (e // 16) of qs[e % 16]) | (bit e of qh) << 4;  w[e] = d * (q[e] - 16)
    return _f16(b, "Q5_0", "d") * (_q5(b, "Q5_0").astype(np.float32) - 16)


def _dq_q5_1(b: Blocks) -> Values:
    # Q5_1 (32 weights, 24 bytes): [0:2] d f16 | [2:4] m f16 | [4:8] qh | [8:24] qs.
    # q[e] as in Q5_0;  w[e] = (d * q[e]) + m
    return _f16(b, "Q5_1", "d") * _q5(b, "Q5_1").astype(np.float32) + _f16(b, "Q5_1", "m")


def _dq_q8_0(b: Blocks) -> Values:
    # Q8_0 (32 weights, 34 bytes): [0:2] d f16 | [2:34] qs, int8.  w[e] = qs[e] * d
    return field(b, "Q8_0", "qs").view(np.int8).astype(np.float32) * _f16(b, "Q8_0", "d")


def _dq_q2_k(b: Blocks) -> Values:
    # Q2_K (256 weights, 84 bytes): [0:16] scales | [16:80] qs | [80:82] d f16 | [82:84] dmin f16.
    # 16 sub-blocks of 16 weights; sub-block s = e // 16 has scale nibble 0 of scales[s] and
    # min nibble 1 of scales[s].
    # e = h*128 + j*32 + l (h < 2, j < 4, l < 32): q[e] = bits [2j, 2j+2) of qs[h*32 + l]
    # w[e] = (d * scale[s]) * q[e] - (dmin * min[s])
    sc = field(b, "Q2_K", "scales")
    dl = (_f16(b, "Q2_K", "d") * (sc & 0xF).astype(np.float32))[:, :, None]  # (n, 16, 1)
    ml = (_f16(b, "Q2_K", "dmin") * (sc >> 4).astype(np.float32))[:, :, None]
    qs = field(b, "Q2_K", "qs")
    q = _split(qs.reshape(-1, 2, 32), 2).reshape(-1, 16, 16).astype(np.float32)
    return (dl * q - ml).reshape(-1, 256)


def _dq_q3_k(b: Blocks) -> Values:
    # Q3_K (256 weights, 110 bytes): [0:32] hmask | [32:96] qs | [96:108] scales | [108:110] d.
    # 16 sub-blocks of 16 weights with 6-bit scales packed in the 12 scale bytes sc:
    #   scale[s] = (low | high << 4) - 32, low = nibble (s // 8) of sc[s % 8],
    #                                      high = bits [2*(s // 4), +2) of sc[8 + s % 4]
    # e = h*128 + j*32 + l (h < 2, j < 4, l < 32): low2 = bits [2j, 2j+2) of qs[h*32 + l]
    # hbit = bit (e // 32) of hmask[e % 32];  q[e] = low2 - (0 if hbit else 4)
    # w[e] = (d * scale[e // 16]) * q[e]
    sc = field(b, "Q3_K", "scales")
    low = _split(sc[:, 0:8], 4).reshape(-1, 16)
    high = _split(sc[:, 8:12], 2).reshape(-1, 16)
    scale = ((low | (high << 4)).astype(np.int8) - 32).astype(np.float32)
    dl = (_f16(b, "Q3_K", "d") * scale)[:, :, None]  # (n, 16, 1)
    qs = field(b, "Q3_K", "qs")
    low2 = _split(qs.reshape(-1, 2, 32), 2).reshape(-1, 16, 16).astype(np.int8)
    hbit = _split(field(b, "Q3_K", "hmask"), 1).reshape(-1, 16, 16).astype(np.int8)
    q = (low2 - ((1 - hbit) << 2)).astype(np.float32)
    return (dl * q).reshape(-1, 256)


def _k_scale_min(sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Q4_K / Q5_K: 8 six-bit scales and 8 six-bit mins in 12 bytes sc. For j < 4:
    #   scale[j]   = sc[j] & 63                      min[j]   = sc[j+4] & 63
    #   scale[j+4] = (sc[j+8] & 15) | (sc[j] >> 6) << 4
    #   min[j+4]   = (sc[j+8] >> 4) | (sc[j+4] >> 6) << 4
    d, m, md = sc[:, 0:4], sc[:, 4:8], sc[:, 8:12]
    scale = np.concatenate([d & 63, (md & 15) | ((d >> 6) << 4)], axis=-1)
    mins = np.concatenate([m & 63, (md >> 4) | ((m >> 6) << 4)], axis=-1)
    return scale.astype(np.float32), mins.astype(np.float32)


def _dq_q4_k(b: Blocks) -> Values:
    # Q4_K (256 weights, 144 bytes): [0:2] d f16 | [2:4] dmin f16 | [4:16] scales (see
    # _k_scale_min) | [16:144] qs. 8 sub-blocks of 32 weights, s = e // 32.
    # e = c*64 + k*32 + l (c < 4, k < 2, l < 32): q[e] = nibble k of qs[c*32 + l]
    # w[e] = (d * scale[s]) * q[e] - (dmin * min[s])
    scale, mins = _k_scale_min(field(b, "Q4_K", "scales"))
    dl = (_f16(b, "Q4_K", "d") * scale)[:, :, None]  # (n, 8, 1)
    ml = (_f16(b, "Q4_K", "dmin") * mins)[:, :, None]
    qs = field(b, "Q4_K", "qs")
    q = _split(qs.reshape(-1, 4, 32), 4).reshape(-1, 8, 32).astype(np.float32)
    return (dl * q - ml).reshape(-1, 256)


def _dq_q5_k(b: Blocks) -> Values:
    # Q5_K (256 weights, 176 bytes): [0:2] d | [2:4] dmin | [4:16] scales | [16:48] qh |
    # [48:176] qs. As Q4_K, plus a fifth bit: q[e] |= (bit (e // 32) of qh[e % 32]) << 4.
    scale, mins = _k_scale_min(field(b, "Q5_K", "scales"))
    dl = (_f16(b, "Q5_K", "d") * scale)[:, :, None]  # (n, 8, 1)
    ml = (_f16(b, "Q5_K", "dmin") * mins)[:, :, None]
    low = _split(field(b, "Q5_K", "qs").reshape(-1, 4, 32), 4).reshape(-1, 8, 32)
    high = _split(field(b, "Q5_K", "qh"), 1)  # (n, 8, 32)
    q = (low | (high << 4)).astype(np.float32)
    return (dl * q - ml).reshape(-1, 256)


def _dq_q6_k(b: Blocks) -> Values:
    # Q6_K (256 weights, 210 bytes): [0:128] ql | [128:192] qh | [192:208] scales, int8 |
    # [208:210] d f16. 16 sub-blocks of 16 weights, s = e // 16.
    # e = h*128 + r (h < 2, r < 128):
    #   low4  = nibble (r // 64) of ql[h*64 + r % 64]
    #   high2 = bits [2*(r // 32), +2) of qh[h*32 + r % 32]
    #   q[e] = (low4 | high2 << 4) - 32;  w[e] = (d * scales[s]) * q[e]
    sc = field(b, "Q6_K", "scales").view(np.int8).astype(np.float32)
    dl = (_f16(b, "Q6_K", "d") * sc)[:, :, None]
    low = _split(field(b, "Q6_K", "ql").reshape(-1, 2, 64), 4).reshape(-1, 256)
    high = _split(field(b, "Q6_K", "qh").reshape(-1, 2, 32), 2).reshape(-1, 256)
    q = ((low | (high << 4)).astype(np.int8) - 32).astype(np.float32)
    return (dl * q.reshape(-1, 16, 16)).reshape(-1, 256)


_DEQUANT: dict[Q, Callable[[Blocks], Values]] = {
    Q.F32: _dq_f32,
    Q.F16: _dq_f16,
    Q.BF16: _dq_bf16,
    Q.Q4_0: _dq_q4_0,
    Q.Q4_1: _dq_q4_1,
    Q.Q5_0: _dq_q5_0,
    Q.Q5_1: _dq_q5_1,
    Q.Q8_0: _dq_q8_0,
    Q.Q2_K: _dq_q2_k,
    Q.Q3_K: _dq_q3_k,
    Q.Q4_K: _dq_q4_k,
    Q.Q5_K: _dq_q5_k,
    Q.Q6_K: _dq_q6_k,
}
assert set(_DEQUANT) == SUPPORTED


def _blockwise(
    fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, elements: int, width: int, dtype: type
) -> np.ndarray:
    """fn over the blocks x (n, ...) -> (n, width), about _CHUNK_ELEMENTS weights per pass."""
    out = np.empty((len(x), width), dtype=dtype)
    step = max(1, _CHUNK_ELEMENTS // elements)
    for start in range(0, len(x), step):
        out[start : start + step] = fn(x[start : start + step])
    return out


def dequantize(
    raw: np.ndarray, qtype: Q, shape: tuple[int, ...], tensor_name: str | None = None
) -> np.ndarray:
    """The weights stored in `raw` (any array holding the tensor's bytes, in order) as a new
    float32 array of `shape`."""
    check_supported(qtype, tensor_name)
    elements, nbytes = block_shape(qtype)
    n = int(np.prod(shape))
    what = f"tensor {tensor_name}" if tensor_name else "tensor"
    if shape and shape[-1] % elements:
        raise ModelFileError(
            f"{what}: row of {shape[-1]} weights is not a whole number of {qtype.name} "
            f"blocks ({elements} weights each)"
        )
    data = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
    if data.size != n // elements * nbytes:
        raise ModelFileError(
            f"{what}: {data.size} bytes, but {qtype.name} {tuple(shape)} takes "
            f"{n // elements * nbytes}"
        )
    blocks = data.reshape(-1, nbytes)
    return _blockwise(_DEQUANT[qtype], blocks, elements, elements, np.float32).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Quantizers: (n, elements) float32 -> (n, bytes) uint8. The non-K types repeat gguf-py's
# arithmetic operation for operation (equal bytes); the K types are drift's own simple
# reference (gguf-py has none, and ggml's iterative search is not needed for random-weight
# models): per-sub-block min/max (Q4_K) or signed absmax (Q6_K) scales, quantized to 6 / 8 bits
# of a per-block f16 scale by rounding up, so that no weight falls outside its sub-block's range.


def _to_f16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).view(np.uint8)


def _safe_inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, 0, 1 / d)


def _q_f32(x: np.ndarray) -> Blocks:
    return x.view(np.uint8)


def _q_f16(x: np.ndarray) -> Blocks:
    return _to_f16_bytes(x)


def _q_bf16(x: np.ndarray) -> Blocks:
    # ggml_compute_fp32_to_bf16: NaN stays NaN (forced quiet); otherwise round to nearest even.
    n = x.view(np.uint32)
    nan = (n & 0x7FFFFFFF) > 0x7F800000
    n = np.where(nan, (n & np.uint32(0xFFFF0000)) | np.uint32(64 << 16), n)
    n = (n.astype(np.uint64) + (0x7FFF + ((n >> 16) & 1))) >> 16
    return n.astype(np.uint16).view(np.uint8)


def _absmax_signed(x: np.ndarray) -> np.ndarray:
    """The value of largest magnitude in each row, with its sign, (n, 1)."""
    return np.take_along_axis(x, np.abs(x).argmax(axis=-1, keepdims=True), axis=-1)


def _nibbles_q4(q: np.ndarray) -> np.ndarray:
    """32 values < 16 -> 16 bytes: q[e] in nibble (e // 16) of byte e % 16."""
    return q[:, :16] | (q[:, 16:] << np.uint8(4))


def _q_q4_0(x: np.ndarray) -> Blocks:
    d = _absmax_signed(x) / -8
    q = np.trunc(x * _safe_inverse(d) + np.float32(8.5), dtype=np.float32)
    q = q.astype(np.uint8).clip(0, 15)
    return np.concatenate([_to_f16_bytes(d), _nibbles_q4(q)], axis=-1)


def _q_q4_1(x: np.ndarray) -> Blocks:
    hi, lo = x.max(axis=-1, keepdims=True), x.min(axis=-1, keepdims=True)
    d = (hi - lo) / 15
    q = np.trunc((x - lo) * _safe_inverse(d) + np.float32(0.5), dtype=np.float32)
    q = q.astype(np.uint8).clip(0, 15)
    return np.concatenate([_to_f16_bytes(d), _to_f16_bytes(lo), _nibbles_q4(q)], axis=-1)


def _pack_q5(q: np.ndarray) -> np.ndarray:
    """32 values < 32 -> qh (4 bytes) then qs (16 bytes), the Q5_0 / Q5_1 layout."""
    qh = np.packbits(q >> np.uint8(4), axis=-1, bitorder="little")
    return np.concatenate([qh, _nibbles_q4(q & np.uint8(15))], axis=-1)


def _q_q5_0(x: np.ndarray) -> Blocks:
    d = _absmax_signed(x) / -16
    q = np.trunc(x * _safe_inverse(d) + np.float32(16.5), dtype=np.float32)
    q = q.astype(np.uint8).clip(0, 31)
    return np.concatenate([_to_f16_bytes(d), _pack_q5(q)], axis=-1)


def _q_q5_1(x: np.ndarray) -> Blocks:
    hi, lo = x.max(axis=-1, keepdims=True), x.min(axis=-1, keepdims=True)
    d = (hi - lo) / 31
    q = np.trunc((x - lo) * _safe_inverse(d) + np.float32(0.5), dtype=np.float32)
    q = q.astype(np.uint8).clip(0, 31)
    return np.concatenate([_to_f16_bytes(d), _to_f16_bytes(lo), _pack_q5(q)], axis=-1)


def _q_q8_0(x: np.ndarray) -> Blocks:
    d = np.abs(x).max(axis=-1, keepdims=True) / 127
    q = _round_away(x * _safe_inverse(d)).astype(np.int8).view(np.uint8)
    return np.concatenate([_to_f16_bytes(d), q], axis=-1)


def _ceil_ratio(num: np.ndarray, den: np.ndarray, top: int) -> np.ndarray:
    """ceil(num / den) clipped to [0, top] with 0 where den is 0: a quantized scale at least
    as large as the one asked for, so the weights it covers are not clipped."""
    return np.clip(np.ceil(num * _safe_inverse(den)), 0, top)


def _q_q4_k(x: np.ndarray) -> Blocks:
    n = len(x)
    sub = x.reshape(n, 8, 32)
    # Sub-block s covers [-min_s, -min_s + 15 * scale_s]; min_s >= 0 as ggml stores it.
    want_min = np.maximum(0, -sub.min(axis=-1))  # (n, 8)
    dmin = (want_min.max(axis=-1, keepdims=True) / 63).astype(np.float16).astype(np.float32)
    mins = _ceil_ratio(want_min, dmin, 63)
    offset = dmin * mins  # (n, 8)
    want_scale = (sub.max(axis=-1) + offset) / 15
    d = (want_scale.max(axis=-1, keepdims=True) / 63).astype(np.float16).astype(np.float32)
    scales = _ceil_ratio(want_scale, d, 63)
    step = (d * scales)[:, :, None]
    q = np.clip(_round_away((sub + offset[:, :, None]) * _safe_inverse(step)), 0, 15)
    q = q.astype(np.uint8)  # (n, 8, 32): e = c*64 + k*32 + l -> nibble k of qs[c*32 + l]
    qs = _pack(q.reshape(n, 4, 2, 32), 4).reshape(n, 128)
    sc, mn = scales.astype(np.uint8), mins.astype(np.uint8)
    packed = np.concatenate(
        [
            sc[:, :4] | ((sc[:, 4:] >> 4) << 6),
            mn[:, :4] | ((mn[:, 4:] >> 4) << 6),
            (sc[:, 4:] & 15) | ((mn[:, 4:] & 15) << 4),
        ],
        axis=-1,
    )
    return np.concatenate([_to_f16_bytes(d), _to_f16_bytes(dmin), packed, qs], axis=-1)


def _q_q6_k(x: np.ndarray) -> Blocks:
    n = len(x)
    sub = x.reshape(n, 16, 16)
    # As ggml: the weight of largest magnitude maps to -32, the end of the range that has room.
    want = _absmax_signed(sub)[..., 0] / -32  # (n, 16), signed
    # The largest |scale| maps to 127 (not ggml's -128), so rounding the others away from zero
    # never leaves the int8 range: no scale comes out smaller than asked (but for d's f16 rounding).
    d = (np.abs(want).max(axis=-1, keepdims=True) / 127).astype(np.float16).astype(np.float32)
    ratio = want * _safe_inverse(d)
    scales = np.clip(np.sign(ratio) * np.ceil(np.abs(ratio)), -127, 127)
    step = (d * scales)[:, :, None]
    q = np.clip(_round_away(sub * _safe_inverse(step)), -32, 31) + 32
    q = q.astype(np.uint8).reshape(n, 2, 128)  # e = h*128 + r
    ql = _pack((q & 15).reshape(n, 2, 2, 64), 4).reshape(n, 128)
    qh = _pack((q >> 4).reshape(n, 2, 4, 32), 2).reshape(n, 64)
    sc = scales.astype(np.int8).view(np.uint8)
    return np.concatenate([ql, qh, sc, _to_f16_bytes(d)], axis=-1)


_QUANT: dict[Q, Callable[[np.ndarray], Blocks]] = {
    Q.F32: _q_f32,
    Q.F16: _q_f16,
    Q.BF16: _q_bf16,
    Q.Q4_0: _q_q4_0,
    Q.Q4_1: _q_q4_1,
    Q.Q5_0: _q_q5_0,
    Q.Q5_1: _q_q5_1,
    Q.Q8_0: _q_q8_0,
    Q.Q4_K: _q_q4_k,
    Q.Q6_K: _q_q6_k,
}
QUANTIZABLE: frozenset[Q] = frozenset(_QUANT)


def quantize(x: np.ndarray, qtype: Q) -> np.ndarray:
    """float32 weights (..., K) -> their stored bytes (..., K // elements * bytes), uint8."""
    if qtype not in _QUANT:
        raise UnsupportedError(
            f"quantizing to {qtype.name} is not supported (supported: {_names(QUANTIZABLE)})"
        )
    elements, nbytes = block_shape(qtype)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0 or x.shape[-1] % elements:
        raise InvalidArgumentError(
            f"cannot quantize shape {x.shape} to {qtype.name}: the last dimension must be a "
            f"multiple of {elements}"
        )
    blocks = np.ascontiguousarray(x).reshape(-1, elements)
    out = _blockwise(_QUANT[qtype], blocks, elements, nbytes, np.uint8)
    return out.reshape(*x.shape[:-1], x.shape[-1] // elements * nbytes)
