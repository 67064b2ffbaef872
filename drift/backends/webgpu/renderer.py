"""WGSL: the renderer table for WebGPU (wgpu-py: Vulkan, Metal, D3D12)."""

from __future__ import annotations

from typing import ClassVar

from drift.backends.kernels.renderer import KernelSource, Param, Renderer

_ELEM = {"f32": "f32", "i32": "i32", "u8": "u32", "f32x4": "vec4<f32>",  # bytes: in u32 words
         "u32x4": "vec4<u32>"}


class WGSLRenderer(Renderer):
    name = "wgsl"
    types: ClassVar[dict[str, str]] = {"f32": "f32", "u32": "u32", "i32": "i32",
                                       "f32x4": "vec4<f32>", "u32x4": "vec4<u32>", "bool": "bool",
                                       "f16x2": "vec2<f16>", "f16x2x4": "mat4x2<f16>"}
    functions: ClassVar[dict[str, str]] = {"rsqrt": "inverseSqrt"}
    # Vulkan/Metal drivers may compute tanh as (e^2x - 1) / (e^2x + 1): NaN past x ~ 44
    tanh_clamp = 15.0
    helpers_take_buffers = False  # helpers read bindings as module globals

    def var(self, name, ty, init):
        return f"var {name}: {self.types[ty]} = {init};"

    def let(self, name, ty, init):
        return f"let {name}: {self.types[ty]} = {init};"

    def array(self, name, ty, n):
        return f"var {name}: array<{self.types[ty]}, {n}>;"  # zero-initialised

    def cast(self, ty, x):
        return f"{self.types[ty]}({x})"

    def f(self, x):
        return repr(float(x))

    def select(self, cond, a, b):
        return f"select({b}, {a}, {cond})"

    def for_(self, var, start, stop, step="1"):
        return f"for (var {var}: u32 = {start}; {var} < {stop}; {var} = {var} + {step}) {{"

    def local_id(self):
        return "lid3.x"

    def group_id(self, axis):
        return f"wid3.{'xyz'[axis]}"

    def barrier(self):
        return "workgroupBarrier();"

    def shuffle_xor(self, x, mask):
        return f"subgroupShuffleXor({x}, {mask})"

    def vec4(self, *xs):
        return f"vec4<f32>({', '.join(xs)})"

    def lane(self, vec, i, ty="f32"):
        return f"{vec}[{i}]"  # a vector reference indexed: a reference to its element

    # (naga 0.32 cannot bitcast between u32 and vec2<f16>: halves are held as such, and
    # four pairs as mat4x2<f16>, whose columns are the pairs)
    def half2(self, lo, hi):
        return f"vec2<f16>(vec2<f32>({lo}, {hi}))"

    def halves4(self, *pairs):
        return f"mat4x2<f16>({', '.join(pairs)})"

    def uniform_let(self, name, ty, shared):
        return f"let {name}: {self.types[ty]} = workgroupUniformLoad(&{shared});"

    def load_u8(self, p: Param, offset):
        return f"(({p.name}[({offset}) / 4] >> ((({offset}) % 4) * 8)) & 255)"

    def load_f16(self, p: Param, offset):
        return f"unpack2x16float({p.name}[({offset}) / 4])[(({offset}) / 2) % 2]"

    def load_u32(self, p: Param, offset):
        return f"{p.name}[({offset}) / 4]"

    def dot4_i8(self, a, b):
        return f"dot4I8Packed({a}, {b})"  # naga lowers it to OpSDot, or to byte arithmetic

    def pack_half2(self, lo, hi):
        return f"pack2x16float(vec2<f32>({lo}, {hi}))"

    def unpack_half(self, word, hi):
        return f"unpack2x16float({word}).{'xy'[hi]}"

    def store_u32(self, p: Param, offset, value):
        return f"{p.name}[({offset}) / 4] = {value};"

    def bitcast_f32(self, x):
        return f"bitcast<f32>({x})"

    def bitcast_u32(self, x):
        return f"bitcast<u32>({x})"

    def i8(self, byte):
        return f"f32(bitcast<i32>(({byte}) << 24) >> 24)"

    def render(self, k: KernelSource) -> str:
        # (naga takes subgroup builtins without `enable subgroups;`, refuses it)
        out = ["enable f16;"] if k.f16 else []
        for i, p in enumerate(k.params):
            access = "read_write" if p.writable else "read"
            out.append(f"@group(0) @binding({i}) var<storage, {access}> {p.name}: "
                       f"array<{_ELEM[p.kind]}>;")
        for name, ty, n in k.shared:
            t = self.types[ty]
            out.append(f"var<workgroup> {name}: {f'array<{t}, {n}>' if n else t};")
        for h in k.helpers:
            args = ", ".join(f"{a}: {self.types[t]}" for a, t in h.args)
            out.append(f"fn {h.name}({args}) -> {self.types[h.ret]} {{\n    {h.body}\n}}")
        out.append(f"@compute @workgroup_size({k.workgroup})\nfn main("
                   "@builtin(local_invocation_id) lid3: vec3<u32>, "
                   "@builtin(workgroup_id) wid3: vec3<u32>) {\n    " + k.body + "\n}")
        return "\n".join(out) + "\n"
