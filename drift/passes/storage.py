"""Tensor virtualization: how one logical tensor is realised by physical objects.

A `TensorSpec` says what a tensor is (shape, dtype); a `Storage` says where its elements are:
which physical objects (buffers, images, planes) hold it, how large each is, and where
logical element (i, j, ...) lives in them (coordinate translation). Kernels are written once
against logical coordinates; a backend expands each access through the storage it was given:

    to_physical(x) / write(objs, x)   logical array -> physical objects
    from_physical(objs)               physical objects -> logical array (a view when it can)
    locate(coords)                    logical coordinates (numpy arrays) -> (object, offset)
    index_expr(["n", "h", "w", "c"])  the same translation as source text, for code generators

`index_expr` emits integer expressions in Python syntax (`//`, `%`, `*`, `+`) over the
coordinate names given; Triton takes them as they are, and a C-like renderer (WGSL, OpenCL)
only has to turn `//` into `/` (all operands are non-negative). Offsets are in elements of
the object (bytes for quantized planes).

Storages are frozen dataclasses: two tensors with equal storages have the same physical
layout, which is what an in-place elementwise op needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from typing import ClassVar

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from drift.formats.quants import BLOCK_FIELDS
from drift.ir.ops_quant import (Q8_1, QBLOCK, dequantize_planes, dequantize_planes_1,
                               quantize_planes, quantize_planes_1)
from drift.ir.tensor import NUMPY_DTYPES, PLAIN_DTYPES, is_quantized

# byte planes of the storages below, besides the plain element types
_RAW_DTYPES = {"u8": ("uint8", 1), "i8": ("int8", 1)}


def np_dtype(dtype: str) -> np.dtype:
    if dtype in _RAW_DTYPES:
        return np.dtype(_RAW_DTYPES[dtype][0])
    if dtype not in NUMPY_DTYPES:
        raise TypeError(f"no numpy element type for {dtype!r}")
    return np.dtype(NUMPY_DTYPES[dtype])


def itemsize(dtype: str) -> int:
    return _RAW_DTYPES[dtype][1] if dtype in _RAW_DTYPES else PLAIN_DTYPES[dtype]


def align_up(n: int, a: int) -> int:
    return -(-n // a) * a


def row_major(shape: Sequence[int]) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


def flat_expr(coords: Sequence[str], dims: Sequence[int]) -> str:
    """Row-major flat index of coords over dims, Horner form: ((c0*d1 + c1)*d2 + c2)."""
    expr = coords[0] if coords else "0"
    for c, d in zip(coords[1:], dims[1:]):
        expr = f"({expr}) * {d} + {c}"
    return expr


@dataclass(frozen=True)
class PhysicalObject:
    shape: tuple[int, ...]
    dtype: str  # an IR element type, or "u8" for bytes
    offset: int  # bytes from the start of the tensor's block

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * itemsize(self.dtype)


class Storage(ABC):
    """Base of the storages. Subclasses are frozen dataclasses with `shape` and `dtype`."""

    shape: tuple[int, ...]
    dtype: str
    align: int
    linear: ClassVar[bool] = False  # one row-major object: a view of it is a view of the tensor

    @abstractmethod
    def objects(self) -> tuple[PhysicalObject, ...]: ...

    @abstractmethod
    def write(self, objs: Sequence[np.ndarray], x: np.ndarray) -> None: ...

    @abstractmethod
    def from_physical(self, objs: Sequence[np.ndarray]) -> np.ndarray: ...

    @abstractmethod
    def locate(self, coords: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def index_expr(self, coords: Sequence[str]) -> dict[str, str]: ...

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's block: every object, each at an aligned offset."""
        last = self.objects()[-1]
        return align_up(last.offset + last.nbytes, self.align)

    def bind(self, block: np.ndarray) -> list[np.ndarray]:
        """The physical objects as views of `block` (uint8, at least `nbytes`)."""
        out = []
        for o in self.objects():
            raw = block[o.offset : o.offset + o.nbytes]
            out.append(raw.view(np_dtype(o.dtype)).reshape(o.shape))
        return out

    def to_physical(self, x: np.ndarray) -> list[np.ndarray]:
        objs = self.bind(np.zeros(self.nbytes, dtype=np.uint8))
        self.write(objs, x)
        return objs

    def _objects_at(self, shapes: Sequence[tuple[int, ...]], dtype: str
                    ) -> tuple[PhysicalObject, ...]:
        objs, at = [], 0
        for shape in shapes:
            objs.append(PhysicalObject(tuple(shape), dtype, at))
            at = align_up(at + objs[-1].nbytes, self.align)
        return tuple(objs)


# ---------------------------------------------------------------------------------------------
# plain element types


@dataclass(frozen=True)
class StridedBuffer(Storage):
    """One buffer, element (i, j, ...) at sum(i_k * strides[k]): row-major by default; a
    larger stride on an axis pads it (a row pitch)."""

    shape: tuple[int, ...]
    dtype: str
    strides: tuple[int, ...] | None = None  # in elements; None: row-major
    align: int = 64

    @property
    def element_strides(self) -> tuple[int, ...]:
        return self.strides if self.strides is not None else row_major(self.shape)

    @property
    def linear(self) -> bool:  # type: ignore[override]
        return self.element_strides == row_major(self.shape)

    @classmethod
    def pitched(cls, shape: tuple[int, ...], dtype: str, row_align: int, align: int = 64):
        """Rows (the last axis) padded to a multiple of `row_align` elements."""
        pitch = align_up(shape[-1], row_align)
        strides = row_major(shape[:-1] + (pitch,))
        return cls(tuple(shape), dtype, strides, align)

    def span(self) -> int:
        if 0 in self.shape:
            return 0
        return 1 + sum((d - 1) * s for d, s in zip(self.shape, self.element_strides))

    def objects(self):
        return self._objects_at([(self.span(),)], self.dtype)

    def from_physical(self, objs):
        (buf,) = objs
        if self.linear:
            return buf[: prod(self.shape)].reshape(self.shape)
        b = buf.itemsize
        return np.lib.stride_tricks.as_strided(
            buf, self.shape, tuple(s * b for s in self.element_strides))

    def write(self, objs, x):
        self.from_physical(objs)[...] = x

    def locate(self, coords):
        off = sum(np.asarray(c, dtype=np.int64) * s for c, s in zip(coords, self.element_strides))
        return np.zeros_like(off), off

    def index_expr(self, coords):
        terms = [f"{c} * {s}" if s != 1 else f"{c}" for c, s in zip(coords, self.element_strides)]
        return {"object": "0", "offset": " + ".join(terms) or "0"}

    def __str__(self) -> str:
        return "strided" if self.linear else f"strided{self.element_strides}"


@dataclass(frozen=True)
class ChannelSlices4(Storage):
    """The channel axis (last) cut into slices of 4, slices outermost (PHWC4): logical
    (*lead, C) is physical (ceil(C/4), *lead, 4), the padding channels zero.

    What GPU images hold (one texel = 4 channels) and what a kernel that computes 4 output
    channels per thread reads in one vector load; a channel count that is not a multiple of
    4 costs the padding (3 RGB channels take 4).
    """

    shape: tuple[int, ...]
    dtype: str
    align: int = 64

    @property
    def slices(self) -> int:
        return -(-self.shape[-1] // 4)

    def objects(self):
        return self._objects_at([(self.slices, *self.shape[:-1], 4)], self.dtype)

    def from_physical(self, objs):
        (obj,) = objs  # (S, *lead, 4)
        lead, C = self.shape[:-1], self.shape[-1]
        x = np.moveaxis(obj, 0, -2).reshape(*lead, self.slices * 4)  # a copy: slices move in
        return x[..., :C]

    def write(self, objs, x):
        (obj,) = objs
        lead, C, S = self.shape[:-1], self.shape[-1], self.slices
        if C != 4 * S:  # the last slice's padding lanes hold zeros
            padded = np.zeros((*lead, 4 * S), dtype=obj.dtype)
            padded[..., :C] = x
            x = padded
        np.moveaxis(obj, 0, -2)[...] = np.asarray(x).reshape(*lead, S, 4)

    def locate(self, coords):
        *lead, c = (np.asarray(k, dtype=np.int64) for k in coords)
        inner = np.zeros_like(c)
        for k, d in zip(lead, self.shape[:-1]):
            inner = inner * d + k
        n_lead = prod(self.shape[:-1])
        return np.zeros_like(c), ((c // 4) * n_lead + inner) * 4 + c % 4

    def index_expr(self, coords):
        *lead, c = coords
        inner = flat_expr(lead, self.shape[:-1])
        n_lead = prod(self.shape[:-1])
        return {"object": "0", "offset": f"(({c}) // 4 * {n_lead} + {inner}) * 4 + ({c}) % 4"}

    def __str__(self) -> str:
        return f"phwc4[{self.slices}x4]"


@dataclass(frozen=True)
class MultiObject(Storage):
    """One logical tensor spread over several objects: the row-major elements cut into
    chunks of `chunk` elements, object k holding chunk k. What a device whose objects have a
    size limit (an image's width, a buffer binding's range) needs for a large tensor."""

    shape: tuple[int, ...]
    dtype: str
    chunk: int  # elements per object
    align: int = 64

    @property
    def count(self) -> int:
        return max(1, -(-prod(self.shape) // self.chunk))

    def objects(self):
        n = prod(self.shape)
        sizes = [min(self.chunk, n - k * self.chunk) for k in range(self.count)]
        return self._objects_at([(s,) for s in sizes], self.dtype)

    def from_physical(self, objs):
        return np.concatenate([o.reshape(-1) for o in objs]).reshape(self.shape)

    def write(self, objs, x):
        flat = np.ascontiguousarray(x).reshape(-1)
        for k, o in enumerate(objs):
            o[...] = flat[k * self.chunk : k * self.chunk + o.size]

    def locate(self, coords):
        flat = np.zeros_like(np.asarray(coords[0], dtype=np.int64))
        for k, d in zip(coords, self.shape):
            flat = flat * d + np.asarray(k, dtype=np.int64)
        return flat // self.chunk, flat % self.chunk

    def index_expr(self, coords):
        flat = flat_expr(coords, self.shape)
        return {"object": f"({flat}) // {self.chunk}", "offset": f"({flat}) % {self.chunk}"}

    def __str__(self) -> str:
        return f"multi[{self.count}x{self.chunk}]"


@dataclass(frozen=True)
class Q8Blocks(Storage):
    """An activation quantized for int8 dot products (`drift/ir/ops_quant.py`): the flattened
    elements in blocks of 32, as planes (`planes`). dtype q8x: xq and xr, int8 (numel,), the
    two levels; scale, f32 (numel/32,); sums, f32 (numel/32,), scale * the block's sum of
    levels; logical element e is scale[e // 32] * (254 xq[e] + xr[e]). dtype q8x1 (one
    level): xq, scale and sums, element e is scale[e // 32] * xq[e]."""

    shape: tuple[int, ...]
    dtype: str
    align: int = 64

    @property
    def blocks(self) -> int:
        return prod(self.shape) // QBLOCK

    @property
    def levels(self) -> int:
        return 1 if self.dtype == Q8_1 else 2

    @property
    def planes(self) -> tuple[str, ...]:
        """The objects' names, in order."""
        return ("xq", "scale", "sums") if self.levels == 1 else ("xq", "xr", "scale", "sums")

    def objects(self):
        n, nb = prod(self.shape), self.blocks
        objs, at = [], 0
        kinds = [((n,), "i8")] * self.levels + [((nb,), "f32"), ((nb,), "f32")]
        for shape, dt in kinds:
            objs.append(PhysicalObject(shape, dt, at))
            at = align_up(at + objs[-1].nbytes, self.align)
        return tuple(objs)

    def write(self, objs, x):
        planes = quantize_planes_1(x) if self.levels == 1 else quantize_planes(x)
        for obj, plane in zip(objs, planes):
            obj[...] = plane

    def from_physical(self, objs):
        if self.levels == 1:
            xq, scale, _ = objs
            return dequantize_planes_1(xq, scale).reshape(self.shape)
        xq, xr, scale, _ = objs
        return dequantize_planes(xq, xr, scale).reshape(self.shape)

    def locate(self, coords):
        flat = np.zeros_like(np.asarray(coords[0], dtype=np.int64))
        for k, d in zip(coords, self.shape):
            flat = flat * d + np.asarray(k, dtype=np.int64)
        return np.zeros_like(flat), flat

    def index_expr(self, coords):
        flat = flat_expr(coords, self.shape)
        out = {"object": "0", "offset": flat, "xq": flat, "scale": f"({flat}) // {QBLOCK}"}
        if self.levels == 2:
            out["xr"] = flat
        return out

    def __str__(self) -> str:
        return f"q8blocks{'' if self.levels == 2 else '1'}[{self.blocks}x{QBLOCK}]"


# ---------------------------------------------------------------------------------------------
# quantized weights

# Fields of each block in file order (name, byte offset, bytes, kind): the one table of GGML
# block layouts, in drift/formats/quants.py.
def block_size(qtype: str) -> tuple[int, int]:
    """(weights per block, bytes per block)."""
    return GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]


@dataclass(frozen=True)
class QuantBlocks(Storage):
    """A quantized (N, K) weight as the GGUF file stores it: each row K / E blocks of B
    interleaved bytes (scales next to their quants). Offsets are in bytes."""

    shape: tuple[int, int]
    dtype: str  # the quant type name
    align: int = 64

    def objects(self):
        E, B = block_size(self.dtype)
        return self._objects_at([(self.shape[0], self.shape[1] // E * B)], "u8")

    def from_physical(self, objs):
        return objs[0]

    def write(self, objs, x):
        objs[0][...] = np.asarray(x).view(np.uint8).reshape(objs[0].shape)

    def locate(self, coords):
        r, c = (np.asarray(k, dtype=np.int64) for k in coords)
        E, B = block_size(self.dtype)
        return np.zeros_like(r), (r * (self.shape[1] // E) + c // E) * B

    def index_expr(self, coords):
        r, c = coords
        E, B = block_size(self.dtype)
        return {"object": "0", "offset": f"(({r}) * {self.shape[1] // E} + ({c}) // {E}) * {B}",
                "element": f"({c}) % {E}"}

    def __str__(self) -> str:
        return f"blocks[{self.dtype}]"


@dataclass(frozen=True)
class QuantBlockPlanes(Storage):
    """A quantized (N, K) weight split into one plane per block field (scales apart from
    quants) and tiled by `tile_rows` rows: plane f is (ceil(N/R), K/E, R, bytes_f), so R
    threads working on R adjacent rows read block b's field from R consecutive slots (one
    coalesced load), and a kernel reading only scales touches only the scale planes.

    Physical objects are the planes, in BLOCK_FIELDS order; offsets are in bytes. The raw
    GGUF blocks go in (`to_physical`) and come back out (`from_physical`) unchanged.
    """

    shape: tuple[int, int]
    dtype: str  # the quant type name
    tile_rows: int = 16
    align: int = 64

    @property
    def fields(self) -> tuple[tuple[str, int, int, str], ...]:
        return BLOCK_FIELDS[self.dtype]

    @property
    def tiles(self) -> int:
        return -(-self.shape[0] // self.tile_rows)

    @property
    def blocks_per_row(self) -> int:
        return self.shape[1] // block_size(self.dtype)[0]

    def objects(self):
        R, nb = self.tile_rows, self.blocks_per_row
        return self._objects_at([(self.tiles, nb, R, size) for _, _, size, _ in self.fields],
                                "u8")

    def write(self, objs, x):
        # each field moved as one `size`-byte item (a void dtype), not byte by byte: numpy's
        # copy of (..., size) uint8 slices ran at ~0.7 GB/s, most of loading an 8B model
        R, nb, N = self.tile_rows, self.blocks_per_row, self.shape[0]
        B = block_size(self.dtype)[1]
        full, rest = divmod(N, R)
        blocks = np.asarray(x).view(np.uint8).reshape(N, nb, B)
        for obj, (_, off, size, _) in zip(objs, self.fields):
            item = np.dtype(f"V{size}")
            field = blocks[:, :, off : off + size].view(item)[..., 0]  # (N, nb)
            plane = obj.view(item)[..., 0].transpose(0, 2, 1)  # (T, R, nb)
            plane[:full] = field[: full * R].reshape(full, R, nb)
            if rest:  # the last tile's rows past N are zero
                plane[full, :rest] = field[full * R :]
                plane[full, rest:] = np.zeros((), item)

    def rows(self, objs: Sequence[np.ndarray], r0: int, r1: int) -> np.ndarray:
        """GGUF blocks of rows r0..r1, (r1 - r0, K/E * B) uint8, from the planes' tiles only."""
        R = self.tile_rows
        t0, t1 = r0 // R, -(-r1 // R)
        parts = [obj[t0:t1] for obj in objs]  # (t, nb, R, size) each
        tiled = np.concatenate(parts, axis=-1)  # fields in file order: offsets are increasing
        blocks = tiled.transpose(0, 2, 1, 3).reshape((t1 - t0) * R, -1)
        return blocks[r0 - t0 * R : r1 - t0 * R]

    def gather_rows(self, objs: Sequence[np.ndarray], ids: np.ndarray) -> np.ndarray:
        """GGUF blocks of the rows `ids` (an embedding lookup), (len(ids), K/E * B) uint8."""
        ids = np.asarray(ids, dtype=np.int64)
        R = self.tile_rows
        parts = [obj[ids // R, :, ids % R, :] for obj in objs]  # (n, nb, size) each
        return np.concatenate(parts, axis=-1).reshape(len(ids), -1)

    def from_physical(self, objs):
        return self.rows(objs, 0, self.shape[0])

    def locate(self, coords):
        """Byte offset, in every plane, of the block holding element (r, c); as `index_expr`."""
        r, c = (np.asarray(k, dtype=np.int64) for k in coords)
        E = block_size(self.dtype)[0]
        R, nb = self.tile_rows, self.blocks_per_row
        slot = ((r // R) * nb + c // E) * R + r % R
        return np.zeros_like(r), slot

    def index_expr(self, coords):
        r, c = coords
        E = block_size(self.dtype)[0]
        R, nb = self.tile_rows, self.blocks_per_row
        slot = f"((({r}) // {R}) * {nb} + ({c}) // {E}) * {R} + ({r}) % {R}"
        exprs = {name: f"({slot}) * {size}" for name, _, size, _ in self.fields}
        exprs["element"] = f"({c}) % {E}"
        # Where the element's bits are inside its block, for the types whose layout is flat:
        # Q4_0/Q4_1 keep element e in byte e % 16 of qs, low nibble for e < 16 (qs_shift);
        # Q8_0 keeps it in byte e.
        if self.dtype in ("Q4_0", "Q4_1"):
            exprs["qs_byte"] = f"({c}) % {E} % 16"
            exprs["qs_shift"] = f"({c}) % {E} // 16 * 4"
        elif self.dtype == "Q8_0":
            exprs["qs_byte"] = f"({c}) % {E}"
        return exprs

    def __str__(self) -> str:
        names = ",".join(f[0] for f in self.fields)
        return f"planes[{self.dtype} {names} /{self.tile_rows}]"




# The layout of each quant type in the GPU kernels' planes (KernelPlanes): kind 1, 4-bit quants
# as the file packs them; kind 2, quants widened to int8 (Q5/Q6: 1.6x, 1.45x, 1.23x their
# bytes). G: weights per scale; P: bytes per nibble run (a run of P bytes holds 2P weights, low
# nibbles first); OFF: subtracted from a nibble; mins: a per-group additive term.
#            kind  G   P   OFF  mins
KERNEL_LAYOUTS = {
    "Q4_0": (1, 32, 16, 8, False),
    "Q4_1": (1, 32, 16, 0, True),
    "Q4_K": (1, 32, 32, 0, True),
    "Q8_0": (2, 32, 16, 0, False),
    "Q5_0": (2, 32, 16, 0, False),
    "Q5_K": (2, 32, 16, 0, True),
    "Q6_K": (2, 16, 16, 0, False),
}


def _k_scales_mins(b: np.ndarray, qtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K: per 32-weight group d*scale_j and -(dmin*min_j), (N, nb*8) f16."""
    from drift.formats.quants import _k_scale_min, field

    N, nb, _ = b.shape
    scale, mins = _k_scale_min(field(b, qtype, "scales").reshape(N * nb, 12))
    d = field(b, qtype, "d").reshape(-1, 2).view(np.float16).astype(np.float32)
    dmin = field(b, qtype, "dmin").reshape(-1, 2).view(np.float16).astype(np.float32)
    return ((d * scale).astype(np.float16).reshape(N, nb * 8),
            (-(dmin * mins)).astype(np.float16).reshape(N, nb * 8))


def kernel_planes_of(raw: np.ndarray, qtype: str, shape: tuple[int, int]) -> list[np.ndarray]:
    """GGUF blocks (N, row bytes) -> [quants, scales(, mins)]: the numpy reference of the
    conversion a GPU backend runs at load (the Triton backend's `weights.convert` is its fast
    path, tested against this)."""
    from drift.formats.quants import field

    N, K = shape
    E, B = block_size(qtype)
    b = np.ascontiguousarray(raw, dtype=np.uint8).reshape(N, K // E, B)
    nb = K // E

    def f16(name: str) -> np.ndarray:
        return np.ascontiguousarray(field(b, qtype, name)).view(np.float16).reshape(N, nb)

    if qtype in ("Q4_0", "Q4_1"):
        q = field(b, qtype, "qs").reshape(N, K // 2)
        return [q, f16("d")] + ([f16("m")] if qtype == "Q4_1" else [])
    if qtype in ("Q4_K", "Q5_K"):
        scales, mins = _k_scales_mins(b, qtype)
        if qtype == "Q4_K":
            return [field(b, qtype, "qs").reshape(N, K // 2), scales, mins]
        # e = c*64 + h*32 + l: low4 = nibble h of qs[c*32 + l], bit 4 = bit (2c + h) of qh[l]
        qs = field(b, qtype, "qs").reshape(N, nb, 4, 32).astype(np.int16)
        qh = field(b, qtype, "qh").astype(np.int16)
        e = np.arange(256)
        c, h, lane = e // 64, (e // 32) % 2, e % 32
        q = ((qs[:, :, c, lane] >> (4 * h)) & 15) | (((qh[:, :, lane] >> (2 * c + h)) & 1) << 4)
        return [q.astype(np.int8).reshape(N, K), scales, mins]
    if qtype == "Q8_0":
        return [field(b, qtype, "qs").view(np.int8).reshape(N, K), f16("d")]
    if qtype == "Q5_0":
        qs = field(b, qtype, "qs")
        low = np.concatenate([qs & 15, qs >> 4], -1).astype(np.int16)  # (N, nb, 32)
        qh = field(b, qtype, "qh").astype(np.int16)
        e = np.arange(32)
        q = (low | (((qh[:, :, e // 8] >> (e % 8)) & 1) << 4)) - 16
        return [q.astype(np.int8).reshape(N, K), f16("d")]
    assert qtype == "Q6_K", qtype
    # e = h*128 + r: low4 = nibble (r // 64) of ql[h*64 + r % 64]; high2 = bits
    # [2*(r // 32), +2) of qh[h*32 + r % 32]; q = (low4 | high2 << 4) - 32
    ql = field(b, qtype, "ql").reshape(N, nb, 2, 64).astype(np.int16)
    qh = field(b, qtype, "qh").reshape(N, nb, 2, 32).astype(np.int16)
    r = np.arange(128)
    q = (((ql[:, :, :, r % 64] >> (4 * (r // 64))) & 15)
         | (((qh[:, :, :, r % 32] >> (2 * (r // 32))) & 3) << 4)) - 32
    sc = field(b, qtype, "scales").view(np.int8).astype(np.float32)  # (N, nb, 16)
    d = np.ascontiguousarray(field(b, qtype, "d")).view(np.float16).astype(np.float32)
    return [q.astype(np.int8).reshape(N, K), (d * sc).astype(np.float16).reshape(N, nb * 16)]


@dataclass(frozen=True)
class KernelPlanes(Storage):
    """A quantized (N, K) weight as the GPU kernels read it: the quants of each row in one
    plane (kind 1: the file's 4-bit bytes, (N, K/2); kind 2: int8, (N, K)), apart from one f16
    scale per group of G weights (N, K/G) and, for types with a minimum, one f16 additive term
    per group (N, K/G). Weight (r, c) = scale[r, c // G] * q(r, c) [+ min[r, c // G]], where a
    kind-1 q(r, c) is nibble (c % 2P >= P) of byte (c // 2P) * P + c % P, less OFF.

    `to_physical` takes the raw GGUF blocks (`kernel_planes_of`, the reference of the load-time
    conversion); `from_physical` gives the weight's values (the K-quants' scale products are
    rounded to f16, relative error <= 2^-11). `kernel_meta` is what a kernel template is
    specialized on (KIND, G, P, OFF, HAS_MIN)."""

    shape: tuple[int, int]
    dtype: str  # the quant type name
    align: int = 64

    @property
    def layout(self) -> tuple[int, int, int, int, bool]:
        return KERNEL_LAYOUTS[self.dtype]

    def kernel_meta(self) -> dict:
        kind, g, p, off, mins = self.layout
        return {"KIND": kind, "P": p, "G": g, "OFF": off, "HAS_MIN": mins}

    def objects(self):
        kind, g, _, _, mins = self.layout
        N, K = self.shape
        shapes = [((N, K // 2), "u8") if kind == 1 else ((N, K), "i8"), ((N, K // g), "f16")]
        if mins:
            shapes.append(((N, K // g), "f16"))
        objs, at = [], 0
        for shp, dt in shapes:
            objs.append(PhysicalObject(shp, dt, at))
            at = align_up(at + objs[-1].nbytes, self.align)
        return tuple(objs)

    def write(self, objs, x):
        for obj, plane in zip(objs, kernel_planes_of(np.asarray(x), self.dtype, self.shape)):
            obj[...] = plane.reshape(obj.shape).view(obj.dtype)

    def from_physical(self, objs):
        kind, g, p, off, mins = self.layout
        N, K = self.shape
        if kind == 1:
            runs = objs[0].reshape(N, K // (2 * p), p)
            q = np.concatenate([runs & 15, runs >> 4], axis=-1).reshape(N, K).astype(np.float32)
            q -= off
        else:
            q = objs[0].astype(np.float32)
        w = q.reshape(N, K // g, g) * objs[1].astype(np.float32)[:, :, None]
        if mins:
            w = w + objs[2].astype(np.float32)[:, :, None]
        return w.reshape(N, K)

    def locate(self, coords):
        r, c = (np.asarray(k, dtype=np.int64) for k in coords)
        kind, _, p, _, _ = self.layout
        K = self.shape[1]
        if kind == 1:
            return np.zeros_like(r), r * (K // 2) + (c // (2 * p)) * p + c % p
        return np.zeros_like(r), r * K + c

    def index_expr(self, coords):
        r, c = coords
        kind, g, p, off, _ = self.layout
        K = self.shape[1]
        if kind == 1:
            q = f"({r}) * {K // 2} + ({c}) // {2 * p} * {p} + ({c}) % {p}"
            out = {"object": "0", "offset": q, "q_shift": f"({c}) % {2 * p} // {p} * 4",
                   "q_bias": str(off)}
        else:
            out = {"object": "0", "offset": f"({r}) * {K} + ({c})"}
        out["scale"] = f"({r}) * {K // g} + ({c}) // {g}"
        return out

    def __str__(self) -> str:
        kind, g, _, _, mins = self.layout
        q = "nibbles" if kind == 1 else "int8"
        return f"kernel[{self.dtype} {q} + f16 scales{' + mins' if mins else ''} /{g}]"


def weight_storage(shape: tuple[int, ...], dtype: str, planes: bool, tile_rows: int = 16,
                   align: int = 64, kernel_planes: bool = False) -> Storage:
    """The storage of a weight: the GPU kernels' planes, tiled block planes or GGUF blocks
    when quantized, a buffer otherwise."""
    if is_quantized(dtype) and len(shape) == 2:
        if kernel_planes and dtype in KERNEL_LAYOUTS:
            return KernelPlanes(tuple(shape), dtype, align)
        if planes and dtype in BLOCK_FIELDS:
            return QuantBlockPlanes(tuple(shape), dtype, tile_rows, align)
        return QuantBlocks(tuple(shape), dtype, align)
    return StridedBuffer(tuple(shape), dtype, None, align)
