"""OpenCL C: the renderer table for OpenCL (pyopencl: NVIDIA, AMD, Intel, Adreno, Mali, PoCL)."""

from __future__ import annotations

from typing import ClassVar

from drift.backends.kernels.renderer import KernelSource, Param, Renderer

_ELEM = {"f32": "float", "i32": "int", "u8": "uchar", "f32x4": "float4", "u32x4": "uint4"}

# Subgroup shuffles, by what the device reports: the Khronos extension, or (NVIDIA's driver,
# which has none) the PTX instruction through inline assembly (cl_nv_* devices compile PTX)
SHUFFLES = {
    "khr": ("#pragma OPENCL EXTENSION cl_khr_subgroup_shuffle : enable\n",
            "sub_group_shuffle_xor({x}, {mask})"),
    "ptx": ("inline float shuffle_xor_f32(float x, uint mask) {\n"
            "    float y;\n"
            '    asm volatile("shfl.sync.bfly.b32 %0, %1, %2, 0x1f, 0xffffffff;" '
            ': "=f"(y) : "f"(x), "r"(mask));\n'
            "    return y;\n}\n",
            "shuffle_xor_f32({x}, {mask})"),
}

# int8 dot products, by what the device reports: the Khronos extension; NVIDIA's dp4a
# through PTX (its driver has no extension); or "bytes", the same sum in plain C, for
# devices with neither when a test asks for the int8 kernels anyway (PoCL)
DOT4_I8 = {
    "khr": ("#pragma OPENCL EXTENSION cl_khr_integer_dot_product : enable\n",
            "dot_4x8packed_ss_int({a}, {b})"),
    "ptx": ("inline int dot4_i8(uint a, uint b) {\n"
            "    int d, z = 0;\n"
            '    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(z));\n'
            "    return d;\n}\n",
            "dot4_i8({a}, {b})"),
    "bytes": ("inline int dot4_i8(uint a, uint b) {\n"
              "    return (int)(char)a * (int)(char)b + (int)(char)(a >> 8) * (int)(char)(b >> 8)"
              " + (int)(char)(a >> 16) * (int)(char)(b >> 16)"
              " + (int)(char)(a >> 24) * (int)(char)(b >> 24);\n}\n",
              "dot4_i8({a}, {b})"),
}

# Two f32 as a u32 of halves: PTX's cvt where `warp_mma` is PTX's (sm_80 and later), else
# vstore_half2 (core OpenCL: no cl_khr_fp16 needed to store halves)
PACK_HALF2 = {
    "ptx": ("inline uint pack_half2(float lo, float hi) {\n"
            "    uint d;\n"
            '    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));\n'
            "    return d;\n}\n"),
    "": ("inline uint pack_half2(float lo, float hi) {\n"
         "    uint d;\n"
         "    vstore_half2((float2)(lo, hi), 0, (half*)&d);\n"
         "    return d;\n}\n"),
}


class OpenCLRenderer(Renderer):
    name = "opencl"
    types: ClassVar[dict[str, str]] = {"f32": "float", "u32": "uint", "i32": "int",
                                       "f32x4": "float4", "u32x4": "uint4", "bool": "bool"}
    functions: ClassVar[dict[str, str]] = {"abs": "fabs"}  # C's abs is for integers
    tanh_clamp = 0.0
    helpers_take_buffers = True  # OpenCL functions see no kernel arguments: pass them
    shuffles = ""  # a key of SHUFFLES, set by the runtime from the device's extensions

    def var(self, name, ty, init):
        return f"{self.types[ty]} {name} = {init};"

    def let(self, name, ty, init):
        return f"const {self.types[ty]} {name} = {init};"

    def array(self, name, ty, n):
        return f"{self.types[ty]} {name}[{n}] = {{0}};"

    def cast(self, ty, x):
        return f"(({self.types[ty]})({x}))"

    def f(self, x):
        return repr(float(x)) + "f"

    def select(self, cond, a, b):
        return f"(({cond}) ? ({a}) : ({b}))"

    def for_(self, var, start, stop, step="1"):
        return f"for (uint {var} = {start}; {var} < {stop}; {var} += {step}) {{"

    def local_id(self):
        return "(uint)get_local_id(0)"

    def group_id(self, axis):
        return f"(uint)get_group_id({axis})"

    def barrier(self):
        return "barrier(CLK_LOCAL_MEM_FENCE);"

    def shuffle_xor(self, x, mask):
        return SHUFFLES[self.shuffles][1].format(x=x, mask=mask)

    def dot4_i8(self, a, b):
        # (a graph given int8 x where int8 is off still runs: the byte-by-byte sum)
        return DOT4_I8[self.int8 or "bytes"][1].format(a=a, b=b)

    def warp_mma(self, acc, a_at, b_at, halves=False):
        if self.mma != "ptx":
            return super().warp_mma(acc, a_at, b_at, halves)
        # the fragments of mma.m16n8k8 on tf32 and of mma.m16n8k16 on f16 (PTX ISA, "Matrix
        # Fragments for mma.m16n8k8 / m16n8k16"), whose registers hold the same (row, unit)
        # of A and (unit, column) of B: tf32 operands as their f32 bits (tf32-rounded where
        # they were staged), f16 ones as the u32 of two halves they are staged as
        a = [a_at("mg", "mt"), a_at("mg + 8", "mt"), a_at("mg", "mt + 4"),
             a_at("mg + 8", "mt + 4")]
        b = [b_at("mt", "mg"), b_at("mt + 4", "mg")]
        outs = ", ".join(f'"=f"({c})' for c in acc)
        bits = "{}" if halves else "as_uint({})"
        ins = ", ".join([f'"r"({bits.format(v)})' for v in a + b] + [f'"f"({c})' for c in acc])
        shape = ("m16n8k16.row.col.f32.f16.f16.f32" if halves else
                 "m16n8k8.row.col.f32.tf32.tf32.f32")
        return [f'asm volatile("mma.sync.aligned.{shape} '
                '{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};" '
                f": {outs} : {ins});"]

    def pack_half2(self, lo, hi):
        return f"pack_half2({lo}, {hi})"

    def unpack_half(self, word, hi):
        return f"vload_half({hi}, (__local const half*)&({word}))"

    def store_u32(self, p: Param, offset, value):
        return f"*(__global uint*)({p.name} + ({offset})) = {value};"

    def vec4(self, *xs):
        return f"((float4)({', '.join(xs)}))"

    def lane(self, vec, i, ty="f32"):  # OpenCL C has no run-time vector index
        return f"((__local {self.types[ty]}*)&{vec})[{i}]"

    def uniform_let(self, name, ty, shared):
        return f"barrier(CLK_LOCAL_MEM_FENCE); const {self.types[ty]} {name} = {shared};"

    def load_u8(self, p: Param, offset):
        return f"((uint){p.name}[{offset}])"

    def load_f16(self, p: Param, offset):
        # vload_half needs no cl_khr_fp16: halves are converted on load
        return f"vload_half(({offset}) / 2, (__global const half*){p.name})"

    def load_u32(self, p: Param, offset):
        return f"(*(__global const uint*)({p.name} + ({offset})))"

    def bitcast_f32(self, x):
        return f"as_float({x})"

    def bitcast_u32(self, x):
        return f"as_uint({x})"

    def i8(self, byte):
        return f"((float)(char)({byte}))"

    def _param(self, p: Param) -> str:
        const = "" if p.writable else "const "
        return f"__global {const}{_ELEM[p.kind]}* {p.name}"

    def render(self, k: KernelSource) -> str:
        out = [SHUFFLES[self.shuffles][0]] if k.subgroups else []
        if k.int8:
            out.append(DOT4_I8[self.int8 or "bytes"][0])
        if k.halves:
            out.append(PACK_HALF2[self.mma])
        for h in k.helpers:
            args = [self._param(p) for p in h.buffers]
            args += [f"{self.types[t]} {a}" for a, t in h.args]
            out.append(f"{self.types[h.ret]} {h.name}({', '.join(args)}) {{\n    {h.body}\n}}")
        params = ", ".join(self._param(p) for p in k.params)
        shared = "".join(f"\n    __local {self.types[ty]} {name}{f'[{n}]' if n else ''};"
                         for name, ty, n in k.shared)
        out.append(f"__kernel __attribute__((reqd_work_group_size({k.workgroup}, 1, 1)))\n"
                   f"void main_k({params}) {{{shared}\n    {k.body}\n}}")
        return "\n".join(out) + "\n"
