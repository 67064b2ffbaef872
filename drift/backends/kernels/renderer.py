"""The renderer base: the small shared layer every kernel template is written against.

A template (`templates.py`) writes a kernel as statements in a neutral C-like dialect that
WGSL and OpenCL C share (`a + b`, `x[i]`, `if (c) { }`, assignments), and asks the renderer for
everything the two languages spell differently: declarations, casts, literals, math functions,
thread ids, workgroup memory, barriers, byte and half loads, helper functions that touch
buffers. A renderer is a table of those spellings plus `render`, which assembles the module
(bindings, workgroup memory, helpers, entry point). A backend quirk is an entry here
(`tanh_clamp`, `helpers_take_buffers`, `uniform_load`), never an `if` in a template.

Index arithmetic is unsigned 32-bit throughout (`u32`), so literals need no suffix in either
language; values are `f32`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

# Kinds of buffer a kernel binds: float32 elements, int32 elements, raw bytes (quant planes,
# f16 weights), which WGSL can only hold as u32 words, or float32 / u32 read four at a time
# (a second binding of an f32 or a byte buffer: `view_of`).
KINDS = ("f32", "i32", "u8", "f32x4", "u32x4")


@dataclass(frozen=True)
class Param:
    """One buffer argument of a kernel."""

    name: str
    kind: str  # one of KINDS
    writable: bool
    view_of: str = ""  # another param's binding, seen as this kind (bound to the same place)


@dataclass(frozen=True)
class Helper:
    """A function of the kernel's module: `args` are (name, type) scalars; `buffers` the
    params its body reads (a WGSL helper reads them as module globals, an OpenCL one takes
    them as pointer arguments)."""

    name: str
    ret: str
    args: tuple[tuple[str, str], ...]
    buffers: tuple[Param, ...]
    body: str


@dataclass
class KernelSource:
    name: str
    params: list[Param]
    workgroup: int
    body: str
    shared: list[tuple[str, str, int]] = field(default_factory=list)  # (name, type, length)
    helpers: list[Helper] = field(default_factory=list)
    subgroups: bool = False  # the body calls `Renderer.shuffle_xor`
    int8: bool = False  # the body calls `Renderer.dot4_i8`
    halves: bool = False  # the body calls `Renderer.pack_half2`
    f16: bool = False  # the body computes on halves (`Renderer.half2`: WGSL's `enable f16;`)


class Renderer:
    """The neutral dialect's spellings. Subclasses fill in the tables and `render`."""

    name = "base"
    types: ClassVar[dict[str, str]] = {}  # neutral scalar type -> the language's name
    functions: ClassVar[dict[str, str]] = {}  # neutral math function -> the language's name
    tanh_clamp = 0.0  # clamp tanh's argument to +-this (0: no clamp): a driver whose tanh
    # overflows to NaN for large arguments
    helpers_take_buffers = False  # helper functions get buffers as arguments (no globals)
    tiled_gemm = True  # prefill matmuls as the tiled GEMM (False: the block walk), per driver
    # Bytes of workgroup memory a kernel may declare (the runtime sets the device's; WebGPU
    # guarantees 16 KiB): the tiled GEMM takes no tile that needs more
    workgroup_storage = 16384
    # Lanes of a subgroup that `shuffle_xor` may exchange values across (a power of 2: the
    # smallest subgroup the device runs, checked by `gpu.probe_subgroups` when the runtime
    # starts); 0 where there are no subgroup shuffles (reductions through workgroup memory).
    subgroup_lanes = 0
    # How `warp_mma` is spelled on this device: "" sums each lane's elements itself (any
    # device: the semantics, what the tests run), "ptx" NVIDIA's tensor cores (OpenCL)
    mma = ""
    # The device computes on halves (`half2`, the "f16x2" type): WebGPU's `shader-f16`, set
    # by the runtime where it asks for the feature
    f16_math = False
    # Prefill's tiled GEMM on packed halves by default (`templates.GEMM_HALF` "auto"): where
    # the device has `f16_math` and is a GPU (a CPU driver's halves are converted floats)
    f16_gemm = False
    # How `dot4_i8` is spelled on this device: a key of the renderer's table, set by
    # `GPUBackend` from its runtime ("": the renderer's plain byte-by-byte sum); kernels call
    # it only where x is int8 (the quantize pass's, when int8 x is asked for)
    int8 = ""

    # -- declarations and expressions
    def var(self, name: str, ty: str, init: str) -> str:
        raise NotImplementedError

    def let(self, name: str, ty: str, init: str) -> str:
        raise NotImplementedError

    def array(self, name: str, ty: str, n: int) -> str:
        """A private array, zero-initialised."""
        raise NotImplementedError

    def cast(self, ty: str, x: str) -> str:
        raise NotImplementedError

    def f(self, x: float) -> str:
        """A float literal."""
        raise NotImplementedError

    def select(self, cond: str, a: str, b: str) -> str:
        """cond ? a : b (both sides may be evaluated)."""
        raise NotImplementedError

    def fn(self, name: str, *args: str) -> str:
        if name == "tanh" and self.tanh_clamp:
            c = self.f(self.tanh_clamp)
            return f"{self.functions.get('tanh', 'tanh')}(clamp({args[0]}, -{c}, {c}))"
        return f"{self.functions.get(name, name)}({', '.join(args)})"

    def for_(self, var: str, start: str, stop: str, step: str = "1") -> str:
        """The head of a counting loop `for var in range(start, stop, step)`, ending in `{`."""
        raise NotImplementedError

    # -- threads and workgroups
    def local_id(self) -> str:
        raise NotImplementedError

    def group_id(self, axis: int) -> str:
        raise NotImplementedError

    def barrier(self) -> str:
        raise NotImplementedError

    def shuffle_xor(self, x: str, mask: str) -> str:
        """f32 `x` of the lane whose subgroup index is this lane's xor `mask` (< lanes); every
        lane of the subgroup must reach it (uniform control flow)."""
        raise NotImplementedError

    def uniform_let(self, name: str, ty: str, shared: str) -> str:
        """`name` = a workgroup variable, after a barrier, as a value the language knows is
        uniform across the workgroup: what a loop bound around a barrier must be."""
        raise NotImplementedError

    # -- memory
    def load(self, p: Param, index: str) -> str:
        """Element `index` of an f32 or i32 buffer."""
        return f"{p.name}[{index}]"

    def store(self, p: Param, index: str, value: str) -> str:
        return f"{p.name}[{index}] = {value};"

    def load_u8(self, p: Param, offset: str) -> str:
        """Byte `offset` of a byte buffer, as u32."""
        raise NotImplementedError

    def load_f16(self, p: Param, offset: str) -> str:
        """The IEEE half at (even) byte `offset` of a byte buffer, as f32."""
        raise NotImplementedError

    def load_u32(self, p: Param, offset: str) -> str:
        """The little-endian u32 at byte `offset` (a multiple of 4) of a byte buffer."""
        raise NotImplementedError

    def vec4(self, *xs: str) -> str:
        """Four f32 as a vector (`f32x4`)."""
        raise NotImplementedError

    def lane(self, vec: str, i: str, ty: str = "f32") -> str:
        """Element `i` (a run-time u32 below 4) of the f32x4 (with `ty` "f16x2": the f16x2x4)
        of workgroup memory `vec` (an element `name[index]`), readable and assignable; a
        constant element of an f32x4 is `vec.x` .. `vec.w` in both languages."""
        raise NotImplementedError

    def half2(self, lo: str, hi: str) -> str:
        """f32 `lo` and `hi` rounded to halves as an "f16x2" value (`lo` its `.x`), on which
        `+`, `*` and `fma` compute in halves (`f16_math` devices only)."""
        raise NotImplementedError

    def halves4(self, *pairs: str) -> str:
        """Four f16x2 as one "f16x2x4" (16 bytes; pair j read as `lane(v, j, "f16x2")`)."""
        raise NotImplementedError

    def dot4(self, a: str, b: str) -> str:
        return f"dot({a}, {b})"

    def dot4_i8(self, a: str, b: str) -> str:
        """The dot product of the four signed bytes of u32 `a` and of u32 `b`, as i32 (the
        int8 GEMV's inner step: dp4a, `dot4I8Packed`, `dot_4x8packed_ss_int`)."""
        raise NotImplementedError

    def warp_mma(self, acc: list[str], a_at: Callable[[str, str], str],
                 b_at: Callable[[str, str], str], halves: bool = False) -> list[str]:
        """A subgroup of 32 lanes' 16 x 8 f32 tile += A (16 x 8 units of K, unit (row, k) read
        as `a_at(row, k)`) times B (8 x 8 units, (k, col) as `b_at(k, col)`), A and B in
        workgroup memory. A unit is one tf32-rounded f32 (PTX's mma.m16n8k8 on tf32), or with
        `halves` a u32 of two halves, K's lower index in its low bits (`pack_half2`: PTX's
        mma.m16n8k16 on f16, K 16). The lane whose index in the subgroup is 4 mg + mt (the
        caller defines mg and mt) holds the tile's elements (mg, 2 mt), (mg, 2 mt + 1),
        (mg + 8, 2 mt), (mg + 8, 2 mt + 1) in `acc` (the instructions' fragment). Spelled
        here as each lane's own sums: any device, no subgroup needed."""
        lines = []
        for i, name in enumerate(acc):
            row, col = ("mg" if i < 2 else "mg + 8"), f"2 * mt + {i % 2}"
            if halves:
                terms = " + ".join(
                    f"{self.unpack_half(a_at(row, str(k)), h)} * "
                    f"{self.unpack_half(b_at(str(k), col), h)}" for k in range(8) for h in (0, 1))
            else:
                terms = " + ".join(f"{a_at(row, str(k))} * {b_at(str(k), col)}"
                                   for k in range(8))
            lines.append(f"{name} = {name} + {terms};")
        return lines

    def pack_half2(self, lo: str, hi: str) -> str:
        """f32 `lo` and `hi` rounded to halves, as one u32 (`lo` in the low 16 bits)."""
        raise NotImplementedError

    def unpack_half(self, word: str, hi: int) -> str:
        """Half `hi` (0: the low bits) of u32 `word`, an element of workgroup memory, as f32."""
        raise NotImplementedError

    def store_u32(self, p: Param, offset: str, value: str) -> str:
        """Store u32 `value` at byte `offset` (a multiple of 4) of a byte buffer."""
        raise NotImplementedError

    def bitcast_f32(self, x: str) -> str:
        """The bits of u32 `x` as an f32."""
        raise NotImplementedError

    def bitcast_u32(self, x: str) -> str:
        """The bits of f32 `x` as a u32."""
        raise NotImplementedError

    def i8(self, byte: str) -> str:
        """A u32 holding a byte, read as a signed byte, as f32."""
        raise NotImplementedError

    # -- helpers
    def call(self, h: Helper, *args: str) -> str:
        bufs = [p.name for p in h.buffers] if self.helpers_take_buffers else []
        return f"{h.name}({', '.join(bufs + list(args))})"

    def render(self, k: KernelSource) -> str:
        raise NotImplementedError


def c_index(expr: str) -> str:
    """An `index_expr` (Python syntax) in C/WGSL syntax: its operands are non-negative, so
    floor division is plain division."""
    return expr.replace("//", "/")
