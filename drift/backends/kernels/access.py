"""Accessors: how a template reads and writes a logical tensor.

A template never indexes a buffer itself. It asks the tensor's `Accessor` for element
(i, j, ...) and gets back an expression, built from the tensor's storage's `index_expr`
(coordinate translation, `drift/passes/storage.py`): which physical object, which offset in
it. A `MultiObject` tensor becomes a choice between its objects, a physical object larger
than one binding (a big weight plane) a choice between its chunks, an object bound at an
offset the API cannot bind at a shift added to every index. Quantized weights expose their
block planes to the dequantizers of `quant.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drift.backends.kernels.renderer import Param, Renderer, c_index
from drift.passes.storage import Q8Blocks, QuantBlockPlanes, Storage, StridedBuffer



@dataclass(frozen=True)
class Chunk:
    """One binding of (part of) a physical object: `place` is the backend's (buffer, byte
    offset, bytes), `shift` the units between the binding's start and the object's."""

    param: Param
    place: Any
    shift: int


def _x4(p: Param) -> Param:
    """Byte binding `p` seen as 16-byte words (bound a second time at the same place)."""
    return Param(f"{p.name}x4", "u32x4", False, view_of=p.name)


@dataclass(frozen=True)
class Obj:
    """A physical object: one binding, or several of `chunk` units each (units are elements
    of f32/i32 objects, bytes of byte objects)."""

    chunks: tuple[Chunk, ...]
    chunk: int  # units per chunk (only read when there are several)

    @property
    def kind(self) -> str:
        return self.chunks[0].param.kind

    def _pick(self, r: Renderer, unit: str, read) -> str:
        if len(self.chunks) == 1:
            c = self.chunks[0]
            return read(c.param, f"{c.shift} + ({unit})" if c.shift else unit)
        # the last chunk is the default: a chain of choices on the unit's chunk number
        expr = read(self.chunks[-1].param, f"({unit}) - {self.chunk * (len(self.chunks) - 1)}")
        for k in range(len(self.chunks) - 2, -1, -1):
            here = read(self.chunks[k].param, f"({unit}) - {self.chunk * k}" if k else unit)
            expr = r.select(f"({unit}) < {self.chunk * (k + 1)}", here, expr)
        return expr

    def load(self, r: Renderer, index: str) -> str:
        return self._pick(r, index, r.load)

    def u8(self, r: Renderer, offset: str) -> str:
        return self._pick(r, offset, r.load_u8)

    def f16(self, r: Renderer, offset: str) -> str:
        return self._pick(r, offset, r.load_f16)

    def store_u32(self, r: Renderer, offset: str, value: str) -> str:
        """Store a word at byte `offset` (a multiple of 4) of a byte object in one binding."""
        assert len(self.chunks) == 1
        c = self.chunks[0]
        return r.store_u32(c.param, f"{c.shift} + ({offset})" if c.shift else offset, value)

    def u32(self, r: Renderer, offset: str) -> str:
        """The word at byte `offset` (a multiple of 4: chunks are cut at multiples of 256)."""
        return self._pick(r, offset, r.load_u32)

    def wide(self) -> bool:
        """Whether `u32x4` may read this byte object: every chunk bound at its start (no
        shift) and cut at a multiple of 16 bytes, so no aligned 16 bytes straddle two."""
        return (self.kind == "u8" and all(c.shift == 0 for c in self.chunks)
                and (len(self.chunks) == 1 or self.chunk % 16 == 0))

    def u32x4_params(self) -> list[Param]:
        """The views `u32x4` reads through: each chunk's binding seen as 16-byte words."""
        return [_x4(c.param) for c in self.chunks]

    def u32x4(self, r: Renderer, offset: str) -> str:
        """The four words at byte `offset` (a multiple of 16) as one u32x4: one 16-byte load
        (`wide()` must hold; the kernel binds `u32x4_params()`)."""
        return self._pick(r, offset, lambda p, at: r.load(_x4(p), f"({at}) / 16"))

    def store(self, r: Renderer, index: str, value: str) -> str:
        if len(self.chunks) == 1:
            c = self.chunks[0]
            return r.store(c.param, f"{c.shift} + ({index})" if c.shift else index, value)
        parts = []
        for k, c in enumerate(self.chunks):
            cond = f"({index}) < {self.chunk * (k + 1)}" if k < len(self.chunks) - 1 else ""
            st = r.store(c.param, f"({index}) - {self.chunk * k}", value)
            head = ("if" if k == 0 else "else if") + f" ({cond})" if cond else "else"
            parts.append(f"{head} {{ {st} }}")
        return " ".join(parts)

    @property
    def params(self) -> list[Param]:
        return [c.param for c in self.chunks]


@dataclass(frozen=True)
class Accessor:
    """A logical tensor of `shape` in `storage`, its physical objects bound as `objs`."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    storage: Storage
    objs: tuple[Obj, ...]

    @property
    def params(self) -> list[Param]:
        return [p for o in self.objs for p in o.params]

    def _where(self, coords) -> dict[str, str]:
        coords = [c if c.isidentifier() or c.isdigit() else f"({c})" for c in coords]
        return {k: c_index(v) for k, v in self.storage.index_expr(coords).items()}

    def load(self, r: Renderer, *coords: str) -> str:
        """Element `coords` as f32 (i32 tensors: as u32)."""
        w = self._where(coords)
        if isinstance(self.storage, Q8Blocks):  # int8 blocks: the value they represent
            levels = r.i8(self.plane('xq').u8(r, w['xq']))
            if self.storage.levels == 2:
                levels = f"{r.f(254)} * {levels} + {r.i8(self.plane('xr').u8(r, w['xr']))}"
            return f"({self.plane('scale').load(r, w['scale'])} * ({levels}))"
        if self.dtype == "f16":  # a plain f16 weight: halves in a byte object
            reads = [o.f16(r, f"2 * ({w['offset']})") for o in self.objs]
        else:
            reads = [o.load(r, w["offset"]) for o in self.objs]
        if self.dtype == "i32":
            reads = [r.cast("u32", x) for x in reads]
        return self._choose(r, w["object"], reads)

    def store(self, r: Renderer, value: str, *coords: str) -> str:
        w = self._where(coords)
        if len(self.objs) == 1:
            return self.objs[0].store(r, w["offset"], value)
        parts = []
        for k, o in enumerate(self.objs):
            head = "if" if k == 0 else "else if"
            parts.append(f"{head} (({w['object']}) == {k}) {{ {o.store(r, w['offset'], value)} }}")
        return " ".join(parts)

    def _choose(self, r: Renderer, obj: str, reads: list[str]) -> str:
        expr = reads[-1]
        for k in range(len(reads) - 2, -1, -1):
            expr = r.select(f"({obj}) == {k}", reads[k], expr)
        return expr

    # -- four elements at once: an f32 tensor in one binding, rows a multiple of 4 apart
    def vec4_param(self) -> Param | None:
        """The binding of this tensor seen as `f32x4` (the same place bound a second time),
        where element (..., 4i) starts a vector: None where it does not (several objects or
        chunks, a shift or a row stride that is not a multiple of 4, another type)."""
        st = self.storage
        if (self.dtype != "f32" or len(self.objs) != 1 or len(self.objs[0].chunks) != 1
                or not isinstance(st, StridedBuffer)):
            return None
        strides, c = st.element_strides, self.objs[0].chunks[0]
        if strides[-1] != 1 or any(s % 4 for s in strides[:-1]) or c.shift % 4:
            return None
        return Param(f"{c.param.name}x4", "f32x4", c.param.writable, view_of=c.param.name)

    def load4(self, r: Renderer, *coords: str) -> str:
        """Elements coords .. coords + (0, ..., 3) as an f32x4: the last coordinate a multiple
        of 4, `vec4_param()` not None."""
        p = self.vec4_param()
        assert p is not None
        shift = self.objs[0].chunks[0].shift
        at = self._where(coords)["offset"]
        return r.load(p, f"({shift} + {at}) / 4" if shift else f"({at}) / 4")

    # -- quantized weights: the planes of a QuantBlockPlanes storage, by field name
    def plane(self, field: str) -> Obj:
        """A plane of a quantized weight (QuantBlockPlanes' fields) or of an int8 activation
        (Q8Blocks: its `planes`, the levels indexed by element, scale and sums by block)."""
        if isinstance(self.storage, Q8Blocks):
            return self.objs[self.storage.planes.index(field)]
        assert isinstance(self.storage, QuantBlockPlanes)
        names = [f[0] for f in self.storage.fields]
        return self.objs[names.index(field)]

    def block_at(self, r: Renderer, *coords: str) -> dict[str, str]:
        """Byte offsets of element `coords`' block in every plane (a weight's (row, col)), and
        'element'; of an int8 activation (Q8Blocks), its levels' offsets and its block's."""
        return self._where(coords)
