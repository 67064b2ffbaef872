"""Kernel templates: one per op, written once for every portable API.

A template takes the renderer, the node, and an `Accessor` per tensor the node touches, and
returns a `KernelSource` and its number of workgroups, or a list of them: launches that run
in turn (`kernel_for`; values pass between them through scratch memory, `SCRATCH`). It reads
and writes tensors only through the accessors (coordinate translation by the storages),
spells everything else through the renderer, and bakes shapes in as constants: kernels are
generated at run time for the graph at hand, and identical sources (the same op on every
layer) compile once.

    elementwise   one thread per element; a broadcast operand reads coordinate 0 on its
                  size-1 axes
    rms_norm      one workgroup per row: strided sum of squares, tree reduction (fused
                  with the residual add before it: add_rms_norm)
    matmul        decode: the GEMV over the weight's quant words (rows on lanes of a tile
                  of the planes); prefill: the tiled GEMM; else one workgroup per (columns,
                  tile of up to 8 rows) walking its blocks of K; ffn_gate_up: two weights,
                  the gated activation as epilogue (x read in one kernel, the projections
                  never stored)
    embedding     one thread per output element (quantized tables dequantize the row read)
    rope          one thread per rotated pair (and one per passed-through element)
    kv_write      one thread per element written
    attention     where the device has subgroup shuffles: one workgroup per (query, kv head)
                  for its G query heads, runs of lanes scoring a key each (a lane a 16-byte
                  slot of the rows), an online softmax per run, runs merged at the end; else
                  one workgroup per (query, head), a key a thread, a tile at a time; at
                  decode split-K: several workgroups per query, each a share of the keys
                  into a partial (scratch memory), then a launch that merges them
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from math import prod

from drift.backends.kernels.access import Accessor
from drift.backends.kernels.quant import WORDS, Dequant, Group, XBlock, block_offsets, dequant
from drift.backends.kernels.renderer import KernelSource, Param, Renderer
from drift.errors import UnsupportedError
from drift.ir import Node
from drift.ir.ops_quant import Q8, Q8_1, QBLOCK
from drift.passes.storage import block_size

WG = 64  # threads per workgroup
NORM_WG = 256  # threads of a norm's workgroup (one per row: decode has one row)
ARGMAX_WG, ARGMAX_PER_THREAD = 256, 16  # greedy sampling's first stage: 4096 values a group
MAX_GROUPS = 65535  # workgroups per dispatch axis (WebGPU's guaranteed limit)
MATMUL_ROWS = 8  # rows of x a block-walking matmul workgroup takes at once
GEMV_ROWS = 4  # rows of x up to which a matmul is a GEMV (decode), past which a tiled GEMM
GEMV_WORDS = 4  # quant words each GEMV thread reads at least (fewer threads per row below)
GEMV_ROW_TILE = 2  # weight rows each GEMV thread reads at the same words (x reused)
GEMV_UNROLL = 4  # words each GEMV thread reads per loop step (loads issued before use)
GEMV_VEC = 4  # words of a weight row a GEMV thread reads in one (16-byte) load where it can
GEMV_VEC_UNROLL = 2  # such loads per row each GEMV thread issues per loop step
# The GEMV with rows on lanes, for weights whose quant planes are tiled by T > 1 rows (the
# GPU backends tile them by GEMV_LANES): a workgroup of up to GEMV_WG threads, T (one a row
# of the tile) times the shares of K, each share at least GEMV_MIN_STEPS loads
GEMV_LANES, GEMV_WG, GEMV_MIN_STEPS = 8, 256, 4
# The f32 tiled GEMM's (rows of x, columns, K step, register tile rows, columns): the first
# of GEMM_TILES whose grid has GEMM_MIN_THREADS threads (1024 workgroups of 64), whose
# accumulators (RM x RN a weight: two for ffn_gate_up) number at most GEMM_MAX_ACC and
# whose workgroup memory fits the device's, else the last. A wider tile reads x less often,
# but on a small grid leaves the GPU's cores short of warps, and fused gate/up at 64
# accumulators a thread was slower end to end (session 21 on the H200). (32, 64) is for
# devices with under 21 KiB of workgroup memory (WebGPU guarantees 16), which (32, 128) needs.
# GEMM_TILE, where set, for every matmul
GEMM_TILES = ((32, 128, 32, 4, 8), (32, 64, 32, 4, 8), (32, 32, 32, 4, 4))
GEMM_MIN_THREADS, GEMM_MAX_ACC = 65536, 32
GEMM_TILE: tuple[int, int, int, int, int] | None = None
GEMM_PREFETCH = False  # the f32 GEMM's next step loaded into registers under this step's FMAs
GEMM_VEC4 = True  # the f32 GEMM's tiles in workgroup memory as f32x4: a quarter of the loads
# Prefill on packed halves (`_gemm_half`) where the device computes on them (`f16_math`):
# "auto" where the runtime finds that the default (`Renderer.f16_gemm`: a GPU, not a CPU
# driver), "always" (the tests, on lavapipe), "never"
GEMM_HALF = "auto"
# Its tiles, chosen as GEMM_TILES are: its products' registers are half-width and its staged
# tiles half the bytes, so it takes twice the accumulators on grids of half the threads
# (session 22 on the H200: 64 x 128 rows x columns at 64 a thread ran the 8B's large shapes
# 10-20 % faster than 32 x 128 at 32; fused gate/up on 64 x 64 at 2 x 32 took its pp512 from
# 2 718 to 2 990 tok/s)
GEMM_HALF_TILES = ((64, 128, 32, 8, 8), (64, 64, 32, 8, 4), (32, 128, 32, 4, 8),
                   (32, 64, 32, 4, 8), (32, 32, 32, 4, 4))
GEMM_HALF_MIN_THREADS, GEMM_HALF_MAX_ACC = 32768, 64
# its staged tiles in one buffer (two barriers a step) or two (one): two ran the 8B's pp512 at
# 1 844 against 2 975 tok/s (session 22 on the H200)
GEMM_HALF_BUFFERS = 1
# Prefill on int8 dot products (`_gemm_q8`: x quantized to one-level int8 blocks by the
# quantize pass, read with the weights' integer quants): "auto" on a GPU whose renderer has
# no matrix units (not a CPU driver: lavapipe, PoCL), "always" (the tests), "never". The
# default is "never" until measured on a GPU (session 23's device time ran out: a standalone
# probe of its structure through WebGPU on the H200, with naga's checks on, ran 4096 x 4096
# at 512 rows in 483-569 us against the half GEMM's 397; bench/webgpu_int8_gemm_probe.py)
GEMM_INT8 = "never"
# its (rows of x, columns, x blocks of 32 a step, register tile rows, columns): the first of
# GEMM_INT8_TILES whose grid has GEMM_INT8_MIN_THREADS threads and whose accumulators
# (RM x RN a weight) number at most GEMM_INT8_MAX_ACC, else the last; GEMM_INT8_TILE, where
# set, for every matmul
GEMM_INT8_TILES = ((64, 128, 1, 8, 8), (64, 64, 2, 8, 4), (32, 64, 1, 4, 8),
                   (32, 32, 1, 4, 4))
GEMM_INT8_MIN_THREADS, GEMM_INT8_MAX_ACC = 32768, 64
GEMM_INT8_TILE: tuple[int, int, int, int, int] | None = None
# Prefill on matrix units (`_gemm_mma`): "auto" where the renderer spells `warp_mma` for the
# device's own (NVIDIA's tensor cores), "always" (its plain spelling elsewhere: the tests),
# "never"
GEMM_MMA = "auto"
# (rows of x, columns, K step) of a workgroup, a subgroup of 32 lanes per 32 x 32 of it: the
# first of GEMM_MMA_TILES whose grid has GEMM_MMA_MIN_GROUPS workgroups (large tiles reuse
# more, but a grid under the GPU's cores leaves some idle: session 18's sweep on the H200's
# 132), else the last; GEMM_MMA_TILE, where set, for every matmul
GEMM_MMA_TILES = ((128, 128, 16), (128, 64, 32), (64, 64, 32))
GEMM_MMA_MIN_GROUPS = 128
GEMM_MMA_TILE: tuple[int, int, int] | None = None
GEMM_MMA_PREFETCH = True  # the next step's loads issued before this step's products
# What the matrix units multiply: "f16" (x and the weights staged as halves, two to a word:
# mma.m16n8k16, twice tf32's rate and half its workgroup memory) or "tf32" (f32 staged with
# 10 mantissa bits, as f16's, and f32's range: mma.m16n8k8)
GEMM_MMA_TYPE = "f16"
ATTN_TILE = 256  # keys scored per attention tile: one a thread of its workgroup
ATTN_SPLIT_TILE = 64  # the same in split-K (decode) attention, whose workgroups take few keys
ATTN_SPLIT_GROUPS = 1024  # workgroups split-K attention aims at: a large GPU's cores many
# times over (an H200's 132); `attention_splits`
ATTN_RUN_WG = 128  # threads of a workgroup of split attention by runs (`_attend_runs`)
ATTN_RUN_LANES = 8  # lanes that score a key together, at most (a run: one 16-byte slot each)
ATTN_RUN_KEYS = 2  # keys each run loads and scores per step (loads issued together)
ATTN_MERGE_BYTES = 12288  # workgroup memory the runs' merge may take (WebGPU guarantees 16 KiB)
ATTN_RUN_PREFILL = True  # attention of many rows (one split) by runs too, where they run
ATTN_COMBINE_WG = 128  # threads of the merge of the splits (one a split's m and l)
ATTN_COMBINE_LOADS = 4  # splits' partials each thread of the merge loads at once


class Builder:
    """Collects a kernel's params (deduplicated: two accessors of one binding share it) and
    workgroup memory."""

    def __init__(self, r: Renderer, name: str, wg: int = WG):
        self.r, self.name, self.wg = r, name, wg
        self.params: dict[str, Param] = {}
        self.shared: list[tuple[str, str, int]] = []
        self.subgroups = False  # shuffle_sum used
        self.int8 = False  # dot4_i8 used
        self.halves = False  # pack_half2 used
        self.f16 = False  # half2 used (halves computed on)

    def use(self, *accs: Accessor) -> None:
        for a in accs:
            for p in a.params:
                prev = self.params.setdefault(p.name, p)
                if p.writable and not prev.writable:
                    self.params[p.name] = p

    def weight(self, w: Accessor, row: str, col0: str) -> Dequant:
        """How to read the block of a weight starting at (row, col0), dequantizing where it
        is quantized (plain weights: runs of `block_elements`, one "sub-block")."""
        self.use(w)
        if w.dtype in ("f32", "f16"):
            return Dequant([], block_elements(w), lambda sb: [],
                           lambda sb, e: ([], w.load(self.r, row, f"{col0} + {e}")))
        return dequant(self.r, w, row, col0)

    def group(self, groups: int) -> list[str]:
        """The flat workgroup index `grp` (dispatches of more than MAX_GROUPS use 2 axes)."""
        r = self.r
        gx = min(groups, MAX_GROUPS)
        return [r.let("grp", "u32", f"{r.group_id(0)} + {r.group_id(1)} * {gx}"),
                f"if (grp >= {groups}) {{ return; }}", r.let("lid", "u32", r.local_id())]

    def reduce(self, values: list[str], op: str = "+", seg: int = 0) -> list[str]:
        """Tree reduction ("+" or "max") of each thread's `values[t]` over runs of `seg`
        adjacent threads (a power of 2; default the workgroup), into red[t * WG + the run's
        first thread], readable after the last barrier."""
        r, wg, rows = self.r, self.wg, len(values)
        seg = seg or wg
        if ("red", "f32", rows * wg) not in self.shared:
            self.shared.append(("red", "f32", rows * wg))
        lines = [f"red[{t * wg} + lid] = {v};" for t, v in enumerate(values)] + [r.barrier()]
        s = seg // 2
        while s >= 1:
            upd = []
            for t in range(rows):
                a, b = f"red[{t * wg} + lid]", f"red[{t * wg} + lid + {s}]"
                upd.append(f"{a} = {a} + {b};" if op == "+" else f"{a} = max({a}, {b});")
            cond = f"lid < {s}" if seg == wg else f"lid % {seg} < {s}"
            lines += [f"if ({cond}) {{ {' '.join(upd)} }}", r.barrier()]
            s //= 2
        return lines

    def shuffle_sum(self, values: list[str], lanes: int, op: str = "+") -> list[str]:
        """Each of `values` (f32 variables) summed (or "max") over runs of `lanes` adjacent
        threads (a power of 2, at most `Renderer.subgroup_lanes`) by a butterfly of subgroup
        shuffles: every thread of the run ends with the result, no workgroup memory, no
        barrier."""
        self.subgroups = True
        lines, m = [], lanes // 2
        while m >= 1:
            for v in values:
                other = self.r.shuffle_xor(v, f"{m}u")
                lines.append(f"{v} = {v} + {other};" if op == "+" else f"{v} = max({v}, {other});")
            m //= 2
        return lines

    def reduce_all(self, var: str, op: str = "+") -> list[str]:
        """f32 variable `var` reduced ("+" or "max") over the workgroup, the result in `var`
        of every thread: by shuffles within each subgroup run and one pass through workgroup
        memory where the device has them, else the tree (`reduce`). Starts with a barrier (a
        previous reduction's memory may still be read) and ends with one."""
        r, lanes = self.r, min(self.r.subgroup_lanes, self.wg)
        if not lanes:
            return [r.barrier(), *self.reduce([var], op), f"{var} = red[0];", r.barrier()]
        runs = self.wg // lanes
        if ("part", "f32", runs) not in self.shared:
            self.shared.append(("part", "f32", runs))
        lines = [r.barrier(), *self.shuffle_sum([var], lanes, op),
                 f"if (lid % {lanes} == 0) {{ part[lid / {lanes}] = {var}; }}", r.barrier()]
        parts = [f"part[{k}]" for k in range(runs)]
        total = " + ".join(parts) if op == "+" else _max_chain(parts)
        return lines + [f"{var} = {total};"]

    def finish(self, body: list[str], groups: int) -> tuple[KernelSource, int]:
        """The kernel, binding only the params its body names (a template may `use` a whole
        accessor and read some of its planes only, or only through a wide view of them)."""
        text = "\n    ".join(body)
        named = set(re.findall(r"\w+", text))
        params = [p for p in self.params.values() if p.name in named or not p.name.isidentifier()]
        return (KernelSource(self.name, params, self.wg, text, self.shared,
                             subgroups=self.subgroups, int8=self.int8, halves=self.halves,
                             f16=self.f16),
                groups)


def _max_chain(xs: list[str]) -> str:
    out = xs[0]
    for x in xs[1:]:
        out = f"max({out}, {x})"
    return out


def block_elements(w: Accessor) -> int:
    """Weights per block (plain weights: a run of 8 the matmul walks as one)."""
    return 8 if w.dtype in ("f32", "f16") else block_size(w.dtype)[0]


def coords_of(flat: str, shape: tuple[int, ...]) -> list[str]:
    """Row-major coordinates of a flat index over `shape`, as expressions."""
    out, stride = [], prod(shape)
    for k, d in enumerate(shape):
        stride //= d
        e = f"({flat}) / {stride}" if stride != 1 else f"({flat})"
        out.append(e if k == 0 else f"{e} % {d}")
    return out


def _threads(b: Builder, n: int) -> tuple[list[str], int]:
    """One thread per element of n: `i`."""
    groups = -(-n // b.wg)
    return b.group(groups) + [b.r.let("i", "u32", f"grp * {b.wg} + lid"),
                              f"if (i >= {n}) {{ return; }}"], groups


# ---------------------------------------------------------------------------------------------
# elementwise


def _silu(r: Renderer, x: str) -> str:
    return f"{x} / ({r.f(1.0)} + {r.fn('exp', '-' + x)})"


def _gelu(r: Renderer, x: str) -> str:
    inner = f"{r.f(math.sqrt(2.0 / math.pi))} * ({x} + {r.f(0.044715)} * {x} * {x} * {x})"
    return f"{r.f(0.5)} * {x} * ({r.f(1.0)} + {r.fn('tanh', inner)})"


def _softcap(r: Renderer, x: str, cap: float) -> str:
    return f"{r.fn('tanh', x + ' / ' + r.f(cap))} * {r.f(cap)}"


UNARY: dict[str, Callable[[Renderer, str, dict], str]] = {
    "scale": lambda r, x, a: f"{x} * {r.f(a['value'])}",
    "silu": lambda r, x, a: _silu(r, x),
    "gelu": lambda r, x, a: _gelu(r, x),
    "softcap": lambda r, x, a: _softcap(r, x, a["cap"]),
}
BINARY: dict[str, Callable[[Renderer, str, str], str]] = {
    "add": lambda r, x, y: f"{x} + {y}",
    "mul": lambda r, x, y: f"{x} * {y}",
    "swiglu": lambda r, g, u: f"{_silu(r, g)} * {u}",
    "geglu": lambda r, g, u: f"{_gelu(r, g)} * {u}",
}


def elementwise(r: Renderer, n: Node, acc: dict[str, Accessor]):
    out = acc[n.outputs[0]]
    b = Builder(r, n.op)
    ins = [acc[i] for i in n.inputs]
    b.use(out, *ins)
    body, groups = _threads(b, prod(out.shape))
    c = coords_of("i", out.shape)
    for k, x in enumerate(ins):
        lead = len(out.shape) - len(x.shape)  # broadcast: trailing axes line up
        xc = [c[lead + j] if d != 1 else "0" for j, d in enumerate(x.shape)]
        body.append(r.let(f"x{k}", "f32", x.load(r, *xc)))
    if n.op in UNARY:
        v = UNARY[n.op](r, "x0", n.attrs)
    else:
        v = BINARY[n.op](r, "x0", "x1")
    body.append(out.store(r, v, *c))
    return b.finish(body, groups)


# ---------------------------------------------------------------------------------------------
# model ops


def rms_norm(r: Renderer, n: Node, acc: dict[str, Accessor]):
    """rms_norm(x, w), or add_rms_norm(a, b, w) (the sum written too, over a or b in place).
    One workgroup of NORM_WG threads per row; each thread's elements (every NORM_WG-th) are
    loaded together into registers first, so the row is read once and no load waits behind
    a store that might alias it (in place), then its weights, then the sum of squares over
    the workgroup."""
    fused = n.op == "add_rms_norm"
    ins = [acc[i] for i in n.inputs]
    x, w, out = ins[0], ins[-1], acc[n.outputs[-1]]
    b = Builder(r, n.op, NORM_WG)
    b.use(*ins, *(acc[o] for o in n.outputs))
    D, rows = x.shape[-1], prod(x.shape[:-1])
    lead = coords_of("grp", x.shape[:-1])
    EPT = -(-D // b.wg)  # elements per thread

    def each(e: int, line: str) -> str:
        """`line` for this thread's element e (c{e}), guarded where the row ends early."""
        return line if (e + 1) * b.wg <= D else f"if (c{e} < {D}) {{ {line} }}"

    body = b.group(rows) + [r.var("ss", "f32", r.f(0.0))]
    for e in range(EPT):
        body += [r.let(f"c{e}", "u32", f"lid + {e * b.wg}"), r.var(f"v{e}", "f32", r.f(0.0))]
        value = x.load(r, *lead, f"c{e}")
        if fused:
            value += f" + {ins[1].load(r, *lead, f'c{e}')}"
        body.append(each(e, f"v{e} = {value};"))
    if fused:
        h = acc[n.outputs[0]]
        body += [each(e, h.store(r, f"v{e}", *lead, f"c{e}")) for e in range(EPT)]
    body.append("ss = " + " + ".join(f"v{e} * v{e}" for e in range(EPT)) + ";")
    # the weight loaded before the reduction, so that its loads overlap the barriers
    for e in range(EPT):
        wv = w.load(r, f"c{e}")
        if n.attrs.get("unit_offset"):
            wv = f"({r.f(1.0)} + {wv})"
        body += [r.var(f"w{e}", "f32", r.f(0.0)), each(e, f"w{e} = {wv};")]
    body += b.reduce_all("ss")
    body.append(r.let("inv", "f32", r.fn("rsqrt", f"ss / {r.f(D)} + {r.f(n.attrs['eps'])}")))
    for e in range(EPT):
        body.append(each(e, out.store(r, f"v{e} * inv * w{e}", *lead, f"c{e}")))
    return b.finish(body, rows)


def _k_loop(b: Builder, x: Accessor, w: Accessor, accs: str, T: int, S: int, TK: int) -> list[str]:
    """`accs[t] += w[col, k] * x[s0 + t, k]` over this thread's blocks of the row (every
    TK-th), the weight read once per element for the T rows."""
    r, K = b.r, x.shape[-1]
    E = block_elements(w)
    dq = b.weight(w, "col", "k0")
    body = [r.for_("blk", "kl", str(-(-K // E)), str(TK)),
            "    " + r.let("k0", "u32", f"blk * {E}")]
    body += ["    " + x for x in dq.block]
    body += ["    " + r.for_("sb", "0", str(E // dq.sub))]
    body += ["        " + x for x in dq.sub_lines("sb")]
    body += ["        " + r.for_("e", "0", str(dq.sub)),
             "            " + r.let("k", "u32", f"k0 + sb * {dq.sub} + e")]
    lines, value = dq.element("sb", "e")
    inner = [*lines, r.let("wv", "f32", value)]
    for t in range(T):  # rows past S (the last tile) read row S - 1 and are not stored
        row = f"min(s0 + {t}, {S - 1}u)" if S % T else f"s0 + {t}"
        xv = x.load(r, *coords_of(row, x.shape[:-1]), "k")
        inner.append(f"{accs}[{t}] = {accs}[{t}] + wv * {xv};")
    if K % E:  # plain weights only: the last run is cut short
        inner = [f"if (k < {K}) {{", *("    " + x for x in inner), "}"]
    return body + ["            " + x for x in inner] + ["        }", "    }", "}"]


def _matmul_blocks(r: Renderer, n: Node, x: Accessor, out: Accessor, ws: list[Accessor],
                   biases: list[Accessor]):
    """The block-walking matmul: what runs where neither the GEMV nor the GEMM does (plain
    weights, or types without a word reader, at a few rows)."""
    gated = n.op == "ffn_gate_up"
    b = Builder(r, f"{n.op}:blocks")
    b.use(x, out, *biases)
    K, N, S = x.shape[-1], ws[0].shape[0], prod(x.shape[:-1])
    NB = -(-K // block_elements(ws[0]))  # blocks of a row
    TK = min(b.wg, 1 << max(0, (NB - 1).bit_length()))  # threads per column: a power of 2
    CG = b.wg // TK  # columns per workgroup
    T = min(S, MATMUL_ROWS)
    col_groups = -(-N // CG)
    groups = col_groups * -(-S // T)
    body = b.group(groups) + [
        r.let("kl", "u32", f"lid % {TK}"),
        r.let("col", "u32", f"grp % {col_groups} * {CG} + lid / {TK}"),
        r.let("s0", "u32", f"grp / {col_groups} * {T}"),
        *(r.array(f"acc{i}", "f32", T) for i in range(len(ws))),
        f"if (col < {N}) {{",
    ]
    for i, w in enumerate(ws):
        body += ["    {", *("        " + x for x in _k_loop(b, x, w, f"acc{i}", T, S, TK)), "    }"]
    body.append("}")
    body += b.reduce([f"acc{i}[{t}]" for i in range(len(ws)) for t in range(T)], "+", TK)
    body.append(r.let("rows", "u32", f"{S} - s0"))
    for t in range(T):
        vals = [f"red[{(i * T + t) * b.wg} + lid]" for i in range(len(ws))]
        if biases:
            vals = [f"{v} + {bias.load(r, 'col')}" for v, bias in zip(vals, biases)]
        value = BINARY[n.attrs["act"]](r, "g", "u") if gated else vals[0]
        pre = f"{r.let('g', 'f32', vals[0])} {r.let('u', 'f32', vals[1])} " if gated else ""
        st = out.store(r, value, *coords_of(f"s0 + {t}", out.shape[:-1]), "col")
        # `t < rows`, not `s0 + t < S`: PoCL 3.1 (LLVM 15) drops every store of the kernel
        # guarded by the latter (seen with S = 11, T = 8)
        last = f" && {t} < rows" if S % T else ""
        body.append(f"if (col < {N} && kl == 0{last}) {{ {pre}{st} }}")
    return b.finish(body, groups)




def _epilogue(r: Renderer, n: Node, vals: list[str], biases: list[Accessor],
              col: str) -> tuple[str, str]:
    """(statements, value) stored for output column `col` from each weight's sum: the sum,
    or the gated activation of the two (plus their biases)."""
    if biases:
        vals = [f"{v} + {bias.load(r, col)}" for v, bias in zip(vals, biases)]
    if n.op != "ffn_gate_up":
        return "", vals[0]
    return (f"{r.let('g', 'f32', vals[0])} {r.let('u', 'f32', vals[1])} ",
            BINARY[n.attrs["act"]](r, "g", "u"))


def _gemv(r: Renderer, n: Node, x: Accessor, out: Accessor, ws: list[Accessor],
          biases: list[Accessor]):
    """Decode (a few rows of x), reading each weight row as the 32-bit words of its quant
    plane, GEMV_VEC words (16 bytes) a load where the plane allows (`_wide_words`), each
    word's weights multiplied into the S rows of x in f32 registers (one multiply-add per
    weight and row, the group's scale once: `quant.Words`; Q4_0's and Q6_K's offsets taken
    off in the conversion), x read four elements at a time where its binding allows. Two
    ways to map threads, by the planes' tile (`QuantBlockPlanes.tile_rows`):

    rows on lanes (tile T > 1, the GPU backends' GEMV_LANES): thread lid % T on row
        grp * T + lid % T, so consecutive threads read the consecutive 16-byte slots of one
        block of T rows and the same x (one broadcast load); the lid / T-th of up to
        GEMV_WG / T contiguous shares of the row's loads; the shares summed through
        workgroup memory. x is read once per T rows, and the workgroups are N / T (on the
        H200, tiles of 8 rows: 8B decode 230 tok/s against 158 for one row, 161 for 32;
        BENCHMARKS.md, "sixth run").
    a row's threads on consecutive words (tile 1): TPR consecutive threads on one row, each
        GEMV_ROW_TILE rows at the same words (x reused), GEMV_UNROLL (GEMV_VEC_UNROLL) loads
        in flight, the TPR parts summed by subgroup shuffles where the device has them (TPR
        at most `Renderer.subgroup_lanes`), else a segmented tree in workgroup memory. With
        16-byte loads a thread's x is a whole block, so a subgroup's x loads stride across
        32 blocks: the reason the tile exists.

    x as int8 blocks (dtype q8x, one row: the quantize pass's, where the device has int8 dot
    products): each run of four weights is one `dot4_i8` against the word of x's first level
    and one against its second, the group's sum `a * xd * (254 l1 + l2) + c * xs` (xd the x
    block's scale, xs its sum): per word of Q4_0 four dot products and three mask/shift ops
    instead of eight multiply-adds and sixteen integer ops. (Measured on the H200 with rows
    on lanes of 8 it is slower end to end than f32 x, 205 against 230 tok/s on the 8B: the
    quantize launches in front.)"""
    q8 = x.dtype == Q8
    K, N, S = x.shape[-1], ws[0].shape[0], prod(x.shape[:-1])
    assert not q8 or S == 1, "int8 x: one row"
    readers = [WORDS[w.dtype](r) for w in ws]
    W = max(K // block_size(w.dtype)[0] * rd.per_block for w, rd in zip(ws, readers))
    vecs = [GEMV_VEC if _wide_words(w, rd) else 1 for w, rd in zip(ws, readers)]  # words a load
    steps = [K // block_size(w.dtype)[0] * rd.per_block // V  # loads a row
             for w, rd, V in zip(ws, readers, vecs)]
    T = ws[0].storage.tile_rows
    on_lanes = T > 1 and all(w.storage.tile_rows == T for w in ws)
    if on_lanes:
        # rows on lanes: thread lid % T on row grp * T + lid % T (a tile: consecutive
        # threads read consecutive slots, x the same for all of them), the lid / T-th of
        # `split` contiguous shares of the row's steps
        R = 1
        split = max(1, GEMV_WG // T)
        while split > 1 and (any(st % split for st in steps)
                             or min(steps) // split < GEMV_MIN_STEPS):
            split //= 2
        b = Builder(r, f"{n.op}:gemv{'_q8' if q8 else ''}", T * split)
        RPW, TPR, groups = T, split, -(-N // T)
        mapping = [r.let("kl", "u32", f"lid / {T}"), r.let("c0", "u32", f"grp * {T} + lid % {T}")]
    else:
        b = Builder(r, f"{n.op}:gemv{'_q8' if q8 else ''}")
        R = max(1, min(GEMV_ROW_TILE, N // 64))  # rows per thread (small N: threads instead)
        # threads per row: a power of 2 leaving each thread at least GEMV_WORDS words
        TPR = min(b.wg, 1 << max(0, (W // GEMV_WORDS).bit_length() - 1))
        if r.subgroup_lanes:
            TPR = min(TPR, r.subgroup_lanes)  # a row's threads in one subgroup: shuffles
        RPW = b.wg // TPR * R  # rows per workgroup
        groups = -(-N // RPW)
        mapping = [r.let("kl", "u32", f"lid % {TPR}"),
                   r.let("c0", "u32", f"grp * {RPW} + lid / {TPR} * {R}")]
    b.int8 = q8
    b.use(x, out, *biases)
    x4 = x.vec4_param() if K % 4 == 0 and not q8 else None
    if x4 is not None:
        b.params[x4.name] = x4
    body = b.group(groups) + [
        *mapping,
        # rows past N read row N - 1 and store nothing: every thread reaches the reduction
        *(r.let(f"wr{ri}", "u32", f"min(c0 + {ri}, {N - 1}u)") for ri in range(R)),
        *(r.array(f"acc{i}", "f32", S * R) for i in range(len(ws))),
    ]
    xrow = [coords_of(str(t), x.shape[:-1]) for t in range(S)]

    def xrun(t: int, off: str) -> str:
        """x[t, k0 + off .. + 3] as an f32x4."""
        if x4 is not None:
            return x.load4(r, *xrow[t], f"k0 + {off}")
        return r.vec4(*(x.load(r, *xrow[t], f"k0 + {off} + {i}") for i in range(4)))

    one4 = r.vec4(*[r.f(1.0)] * 4)
    for i, (w, rd) in enumerate(zip(ws, readers)):
        b.use(w)
        E = block_size(w.dtype)[0]
        plane, V = w.plane(rd.plane), vecs[i]
        if V > 1:
            b.params.update((p.name, p) for p in plane.u32x4_params())
        # a step: V consecutive words of one block for each of the thread's rows, loaded
        # together, then each word's groups
        step = [r.let("wv", "u32", f"wi * {V}"), r.let("blk", "u32", f"wv / {rd.per_block}"),
                r.let("wj0", "u32", f"wv % {rd.per_block}"), r.let("k0", "u32", f"blk * {E}")]
        for ri in range(R):
            at = f"{w.block_at(r, f'wr{ri}', 'k0')[rd.plane]} + 4 * wj0"
            step.append(r.let(f"qv{ri}", "u32x4", plane.u32x4(r, at)) if V > 1
                        else r.let(f"qv{ri}", "u32", plane.u32(r, at)))
        for v in range(V):
            q = [f"qv{ri}.{'xyzw'[v]}" if V > 1 else f"qv{ri}" for ri in range(R)]
            word = [r.let("wj", "u32", f"wj0 + {v}" if V > 1 else "wj0"), *rd.at("wj")]
            _, o = block_offsets(r, w, "wr0", "k0")
            _, grps = rd.read(w, o, "wj", q[0])  # the element offsets: the same for every row
            for g, grp in enumerate(grps):
                if q8:
                    word += _x_int8(r, x, g, grp)
                    continue
                for c, run in enumerate(grp.runs()):
                    for t in range(S):
                        word.append(r.let(f"xv{g}_{c}_{t}", "f32x4", xrun(t, run[0][1])))
                if grp.c:
                    for t in range(S):
                        total = " + ".join(r.dot4(f"xv{g}_{c}_{t}", one4)
                                           for c in range(len(grp.runs())))
                        word.append(r.let(f"xs{g}_{t}", "f32", total))
            for ri in range(R):
                offs, o = block_offsets(r, w, f"wr{ri}", "k0")
                lines, grps = rd.read(w, o, "wj", q[ri])
                row = [*offs, *lines]
                for g, grp in enumerate(grps):
                    a = f"acc{i}[{ri}]"
                    if q8:  # the two levels' integer dot products, then the group's scales
                        levels = [" + ".join(r.dot4_i8(iv, f"x{lv}{g}_{c}")
                                             for c, iv in enumerate(grp.ints)) for lv in "qr"]
                        row.append(r.let(f"l{g}", "i32", f"254 * ({levels[0]}) + {levels[1]}"))
                        more = f" + ({grp.int_c}) * xs{g}" if grp.int_c else ""
                        row.append(f"{a} = {a} + ({grp.a}) * xd{g} * {r.cast('f32', f'l{g}')}"
                                   f"{more};")
                        continue
                    for c, run in enumerate(grp.runs()):
                        row.append(r.let(f"q{g}_{c}", "f32x4", r.vec4(*(qf for qf, _ in run))))
                    for t in range(S):
                        dot = " + ".join(r.dot4(f"q{g}_{c}", f"xv{g}_{c}_{t}")
                                         for c in range(len(grp.runs())))
                        more = f" + ({grp.c}) * xs{g}_{t}" if grp.c else ""
                        a = f"acc{i}[{t * R + ri}]"
                        row.append(f"{a} = {a} + ({grp.a}) * ({dot}){more};")
                word += ["{", *("    " + x for x in row), "}"]
            step += ["{", *("    " + x for x in word), "}"]
        n_steps = steps[i]
        unroll = GEMV_UNROLL if V == 1 else GEMV_VEC_UNROLL
        if on_lanes:  # this share: steps kl * per ..; each weight's steps divide by TPR
            per = n_steps // TPR
            assert per * TPR == n_steps, "the shares of a row's steps are not equal"
            loop = _word_loop(r, step, per, unroll, f"kl * {per}", 1)
        else:  # steps kl, kl + TPR, ..
            loop = _word_loop(r, step, n_steps // TPR, unroll, "kl", TPR,
                              n_steps if n_steps % TPR else 0)
        body += ["{", *("    " + x for x in loop), "}"]
    values = [f"acc{i}[{t * R + ri}]" for i in range(len(ws)) for t in range(S)
              for ri in range(R)]
    if on_lanes:  # the shares of each row summed through workgroup memory
        sums = values
        if TPR > 1:
            b.shared.append(("red", "f32", len(values) * b.wg))
            body += [f"red[{v * b.wg} + lid] = {val};" for v, val in enumerate(values)]
            body.append(r.barrier())
            sums = [" + ".join(f"red[{v * b.wg + k * RPW} + lid]" for k in range(TPR))
                    for v in range(len(values))]
    elif r.subgroup_lanes:
        body += b.shuffle_sum(values, TPR)
        sums = values
    else:
        body += b.reduce(values, "+", TPR)
        sums = [f"red[{v * b.wg} + lid]" for v in range(len(values))]
    for i_t in range(S * R):
        t, ri = divmod(i_t, R)
        vals = [sums[i * S * R + i_t] for i in range(len(ws))]
        col = f"min(c0 + {ri}, {N - 1}u)"  # clamped as well as guarded: see _gemm
        pre, value = _epilogue(r, n, vals, biases, col)
        st = out.store(r, value, *coords_of(str(t), out.shape[:-1]), col)
        body.append(f"if (c0 + {ri} < {N} && kl == 0) {{ {pre}{st} }}")
    return b.finish(body, groups)


ONES = "16843009u"  # 0x01010101: dot4_i8 against it sums a word's four bytes


def _x_int8(r: Renderer, x: Accessor, g: int, grp: Group) -> list[str]:
    """For weight group `g` of the word at `k0`: x's level words under each of its runs
    (xq{g}_{c}, xr{g}_{c}), the scale of the x block holding them (xd{g}) and, where the
    group has a `c`, the x sum it multiplies (xs{g}): the block's whole sum on the word that
    leads it (`Group.c_lead`), or this word's own."""
    assert grp.ints, "int8 x: the weight type has no int8 reading"
    offs = [run[0][1] for run in grp.runs()]
    lines = [r.let(f"x{lv}{g}_{c}", "u32", x.plane(f"x{lv}").u32(r, f"k0 + {off}"))
             for lv in "qr" for c, off in enumerate(offs)]
    block = f"(k0 + {offs[0]}) / {QBLOCK}"
    lines.append(r.let(f"xd{g}", "f32", x.plane("scale").load(r, block)))
    if grp.int_c and grp.c_lead:
        lines.append(r.let(f"xs{g}", "f32", r.select(grp.c_lead, x.plane("sums").load(r, block),
                                                      r.f(0.0))))
    elif grp.int_c:
        levels = [" + ".join(r.dot4_i8(ONES, f"x{lv}{g}_{c}") for c in range(len(offs)))
                  for lv in "qr"]
        lines.append(r.let(f"xs{g}", "f32", f"xd{g} * "
                           + r.cast("f32", f"254 * ({levels[0]}) + {levels[1]}")))
    return lines


def _wide_words(w: Accessor, rd) -> bool:
    """Whether the GEMV may read GEMV_VEC words of `w`'s quant plane in one load: whole
    16-byte runs inside one block, at 16-byte offsets of a binding."""
    size = next(sz for name, _, sz, _ in w.storage.fields if name == rd.plane)
    return rd.per_block % GEMV_VEC == 0 and size % 16 == 0 and w.plane(rd.plane).wide()


def _word_loop(r: Renderer, word: list[str], count: int, U: int, start: str, stride: int,
               ragged: int = 0) -> list[str]:
    """`word` (statements over step index `wi`) for wi = start + it * stride, it < count: a
    counted loop of U copies (each thread's loads of them issued together), the copies left
    over, and where `ragged`, one more guarded copy (wi < ragged)."""

    def copy(it: str, guard: bool = False) -> list[str]:
        inner = word if not guard else [f"if (wi < {ragged}) {{", *("    " + x for x in word), "}"]
        return ["{", "    " + r.let("wi", "u32", f"{start} + ({it}) * {stride}"),
                *("    " + x for x in inner), "}"]

    lines = []
    if count // U:
        lines.append(r.for_("it", "0", str(count // U)))
        for u in range(U):
            lines += ["    " + x for x in copy(f"it * {U} + {u}")]
        lines.append("}")
    for it in range(count // U * U, count):
        lines += copy(str(it))
    if ragged:
        lines += copy(str(count), guard=True)
    return lines


def gemm_tile(S: int, N: int, weights: int, storage: int = 1 << 30,
              halves: bool = False) -> tuple[int, int, int, int, int]:
    """The tiled GEMM's tile (f32, or with `halves` `_gemm_half`'s) for S rows of x, N
    columns and `weights` weights summed apart (two for ffn_gate_up) on a device of
    `storage` bytes of workgroup memory: GEMM_TILE where set, else the first of GEMM_TILES
    (GEMM_HALF_TILES) whose grid has GEMM_MIN_THREADS (GEMM_HALF_MIN_THREADS) threads, whose
    accumulators fit GEMM_MAX_ACC (GEMM_HALF_MAX_ACC) and whose staged tiles fit `storage`."""
    tiles, min_threads, max_acc = ((GEMM_HALF_TILES, GEMM_HALF_MIN_THREADS, GEMM_HALF_MAX_ACC)
                                   if halves else (GEMM_TILES, GEMM_MIN_THREADS, GEMM_MAX_ACC))
    return GEMM_TILE or _first_fit(tiles, S, N, weights, min_threads, max_acc, storage,
                                   lambda t: gemm_storage(t, weights, halves))


def _first_fit(tiles, S: int, N: int, weights: int, min_threads: int, max_acc: int,
               storage: int, storage_of: Callable[[tuple], int]) -> tuple:
    """The first of a tiled GEMM's `tiles` ((rows, columns, K step, register tile rows,
    columns)) whose grid over S x N has `min_threads` threads, whose accumulators (a register
    tile a weight) number at most `max_acc` and whose workgroup memory (`storage_of`) fits
    `storage`, else the last."""

    def fits(t):
        TM, TN, _, RM, RN = t
        threads = -(-S // TM) * -(-N // TN) * (TM // RM) * (TN // RN)
        return threads >= min_threads and RM * RN * weights <= max_acc and storage_of(t) <= storage

    return next(filter(fits, tiles), tiles[-1])


def gemm_storage(tile: tuple[int, int, int, int, int], weights: int, halves: bool = False) -> int:
    """Bytes of workgroup memory `_gemm` (or `_gemm_half`) declares at this tile."""
    return sum((16 if ty in ("f32x4", "f16x2x4") else 4) * count
               for _, ty, count in _gemm_shared(tile, weights, halves))


def _gemm_shared(tile: tuple[int, int, int, int, int], weights: int,
                 halves: bool = False) -> list[tuple[str, str, int]]:
    """`_gemm`'s workgroup arrays: x's staged tile (BK rows of TM) and each weight's (BK rows
    of TN, which holds the TM x TN output tile at the end), rows padded by one element (f32,
    or with GEMM_VEC4 f32x4 of four rows / columns): conflict-free reads. With `halves`
    `_gemm_half`'s: BK / 2 rows of f16x2x4 (four rows / columns at a pair of K), in each of
    GEMM_HALF_BUFFERS buffers, the output stored from registers."""
    TM, TN, BK, _, _ = tile
    if halves:
        nb = GEMM_HALF_BUFFERS
        return [("xs", "f16x2x4", nb * BK // 2 * (TM // 4 + 1)),
                *((f"ws{i}", "f16x2x4", nb * BK // 2 * (TN // 4 + 1)) for i in range(weights))]
    V, ty = (4, "f32x4") if GEMM_VEC4 else (1, "f32")
    return [("xs", ty, BK * (TM // V + 1)),
            *((f"ws{i}", ty, max(BK * (TN // V + 1), TM * TN // V)) for i in range(weights))]


def _gemm(r: Renderer, n: Node, x: Accessor, out: Accessor, ws: list[Accessor],
          biases: list[Accessor]):
    """Prefill: one workgroup per (TM rows of x) x (TN columns) tile. Each step of BK along K
    stages the tile's x and its dequantized weights in workgroup memory (each weight
    element dequantized once per TM rows), then every thread accumulates an RM x RN register
    tile from them (rows ty + RM-strided, columns tx + RN-strided: conflict-free reads). With
    GEMM_PREFETCH the next step's loads are issued before this step's products (`_k_steps`).
    With GEMM_VEC4 the tiles are held as f32x4 (four rows of x, four columns of weights) and
    a thread reads its RM rows and RN columns at a K in RM / 4 + RN / 4 loads, not RM + RN
    (runs of four rows and columns, ty- and tx-strided): a quarter of the workgroup-memory
    loads for the same products."""
    K, N, S = x.shape[-1], ws[0].shape[0], prod(x.shape[:-1])
    tile = gemm_tile(S, N, len(ws), r.workgroup_storage)
    TM, TN, BK, RM, RN = tile
    TX, TY = TN // RN, TM // RM  # threads along columns, along rows
    wg = TX * TY
    vec = GEMM_VEC4
    V = 4 if vec else 1  # f32 a workgroup-memory element
    assert RM % V == 0 and RN % V == 0, f"GEMM_VEC4 takes register tiles of fours: {tile}"
    b = Builder(r, f"{n.op}:gemm", wg)
    b.use(x, out, *biases)
    EPT = TN * BK // wg  # weight elements each thread dequantizes per step: a run of one column
    TPC = BK // EPT  # threads per column
    XPT = TM * BK // wg  # x elements each thread stages per step
    assert XPT % V == 0, f"GEMM_VEC4: each thread stages runs of four rows of x: {tile}"
    nt, steps = -(-N // TN), -(-K // BK)
    groups = nt * -(-S // TM)
    XS, WS = TM // V + 1, TN // V + 1  # padded rows of the staged tiles, in elements
    ty_ = "f32x4" if vec else "f32"
    b.shared += _gemm_shared(tile, len(ws))
    body = b.group(groups) + [
        r.let("n0", "u32", f"grp % {nt} * {TN}"), r.let("s0", "u32", f"grp / {nt} * {TM}"),
        r.let("tx", "u32", f"lid % {TX}"), r.let("ty", "u32", f"lid / {TX}"),
        r.let("wc", "u32", f"lid / {TPC}"),  # the column this thread dequantizes
        r.let("wr", "u32", f"min(n0 + wc, {N - 1}u)"),
        r.let("rows", "u32", f"{S} - s0"), r.let("cols", "u32", f"{N} - n0"),
        *(r.array(f"acc{i}", "f32", RM * RN) for i in range(len(ws))),
    ]

    def x_at(u: int) -> tuple[str, str]:  # (row, K in the step) of this thread's x element u
        if vec:  # runs of four rows at one K
            at = f"(lid + {u // V * wg})"
            return f"{at} / {BK} * {V} + {u % V}", f"{at} % {BK}"
        return f"(lid + {u * wg}) / {BK}", f"(lid + {u * wg}) % {BK}"

    def fetch(k0: str) -> list[str]:
        """The step at `k0`'s x (consecutive threads along K: coalesced) and this thread's
        dequantized weights into its registers xv{u} and wv{i}_{e}."""
        lines = []
        for u in range(XPT):
            m, kk = x_at(u)
            lines.append(f"xv{u} = {_x_value(r, x, S, K, BK, m, f'{k0} + {kk}')};")
        return lines + _stage_weights(b, ws, EPT, TPC, K, k0)

    stage = []
    for u in range(0, XPT, V):
        m, kk = x_at(u)
        if vec:
            stage.append(f"xs[({kk}) * {XS} + ({m}) / 4] = "
                         f"{r.vec4(*(f'xv{u + t}' for t in range(4)))};")
        else:
            stage.append(f"xs[({kk}) * {XS} + {m}] = xv{u};")
    for i in range(len(ws)):
        for e in range(EPT):
            at = f"(lid % {TPC} * {EPT} + {e}) * {WS}"
            if vec:  # one column: one element of an f32x4
                stage.append(f"{r.lane(f'ws{i}[{at} + wc / 4]', 'wc % 4')} = wv{i}_{e};")
            else:
                stage.append(f"ws{i}[{at} + wc] = wv{i}_{e};")
    body += [r.var(f"xv{u}", "f32", r.f(0.0)) for u in range(XPT)]
    body += [r.var(f"wv{i}_{e}", "f32", r.f(0.0)) for i in range(len(ws)) for e in range(EPT)]
    body += _k_steps(r, steps, BK, fetch, stage, GEMM_PREFETCH)
    body.append("    " + r.for_("kk", "0", str(BK)))
    # the register tile's element (a, c): row `row_of(a)` of the tile (column `col_of(c)`
    # unvectorized; with f32x4, run c // 4 of the thread's, tx-strided); `a_of(a)` /
    # `b_of(c)` its x and weight at this K, from the loads `a*` / `b{i}*`
    if vec:
        row_of = lambda a: f"(ty + {a // 4 * TY}) * 4 + {a % 4}"  # noqa: E731
        a_loads = [(f"a_{a}", f"xs[kk * {XS} + ty + {a * TY}]") for a in range(RM // 4)]
        a_of = lambda a: f"a_{a // 4}.{'xyzw'[a % 4]}"  # noqa: E731
        b_loads = [(f"b_{c}", f"kk * {WS} + tx + {c * TX}") for c in range(RN // 4)]
        b_of = lambda i, c: f"b{i}_{c // 4}.{'xyzw'[c % 4]}"  # noqa: E731
    else:
        row_of = lambda a: f"ty + {a * TY}"  # noqa: E731
        col_of = lambda c: f"tx + {c * TX}"  # noqa: E731
        a_loads = [(f"a_{a}", f"xs[kk * {XS} + ty + {a * TY}]") for a in range(RM)]
        a_of = lambda a: f"a_{a}"  # noqa: E731
        b_loads = [(f"b_{c}", f"kk * {WS} + tx + {c * TX}") for c in range(RN)]
        b_of = lambda i, c: f"b{i}_{c}"  # noqa: E731
    body += [f"        {r.let(name, ty_, at)}" for name, at in a_loads]
    for i in range(len(ws)):
        body += [f"        {r.let(f'b{i}_' + name[2:], ty_, f'ws{i}[{at}]')}"
                 for name, at in b_loads]
        body += [f"        acc{i}[{a * RN + c}] = acc{i}[{a * RN + c}] + {a_of(a)} * {b_of(i, c)};"
                 for a in range(RM) for c in range(RN)]
    body += ["    }", "    " + r.barrier(), "}"]
    # the tile out through workgroup memory, then stored by consecutive threads along N
    # (coalesced)
    for i in range(len(ws)):
        if vec:  # four columns of a row at once
            body += [f"ws{i}[({row_of(a)}) * {TN // 4} + tx + {c // 4 * TX}] = "
                     + r.vec4(*(f"acc{i}[{a * RN + c + t}]" for t in range(4))) + ";"
                     for a in range(RM) for c in range(0, RN, 4)]
        else:
            body += [f"ws{i}[({row_of(a)}) * {TN} + {col_of(c)}] = acc{i}[{a * RN + c}];"
                     for a in range(RM) for c in range(RN)]
    body += [r.barrier(), r.for_("o", "lid", str(TM * TN), str(wg)),
             "    " + r.let("om", "u32", f"o / {TN}"), "    " + r.let("oc", "u32", f"o % {TN}")]
    sums = [r.lane(f"ws{i}[o / 4]", "o % 4") if vec else f"ws{i}[o]" for i in range(len(ws))]
    pre, value = _epilogue(r, n, sums, biases, "n0 + oc")
    st = out.store(r, value, *coords_of("s0 + om", out.shape[:-1]), "n0 + oc")
    body += [f"    if (om < rows && oc < cols) {{ {pre}{st} }}", "}"]
    return b.finish(body, groups)


def _gemm_half(r: Renderer, n: Node, x: Accessor, out: Accessor, ws: list[Accessor],
               biases: list[Accessor]):
    """Prefill on packed halves (`f16_math` devices without reachable matrix units): `_gemm`'s
    tiles and register tile, its products two at a time. Each step stages x and the
    dequantized weights as halves paired along K (an f16x2 of K = 2j and 2j + 1), in runs of
    four rows of x / four columns of weights (f16x2x4: 16 bytes), and every thread sums its
    RM x RN products as f16x2 fmas (one instruction a pair: twice f32's rate, and half the
    workgroup-memory reads of `_gemm` per product), in halves over one step's BK / 2 pairs
    only: each step's sums are added into f32 accumulators, so a half sums at most BK / 2
    products. With GEMM_HALF_BUFFERS = 2 the staged tiles alternate between two buffers, one
    barrier a step (threads stage the next step while others still multiply this one). The
    epilogue stores from the registers (a row's four-column runs on consecutive threads)."""
    K, N, S = x.shape[-1], ws[0].shape[0], prod(x.shape[:-1])
    tile = gemm_tile(S, N, len(ws), r.workgroup_storage, halves=True)
    TM, TN, BK, RM, RN = tile
    TX, TY = TN // RN, TM // RM  # threads along columns, along rows
    wg = TX * TY
    KP = BK // 2  # pairs of K a step
    assert RM % 4 == 0 and RN % 4 == 0 and BK % 2 == 0, f"packed halves: {tile}"
    b = Builder(r, f"{n.op}:gemm_half", wg)
    b.use(x, out, *biases)
    b.f16 = True
    EPT = TN * BK // wg  # weight elements each thread dequantizes per step: a run of one column
    TPC = BK // EPT  # threads per column
    XPT = TM * KP // 4 // wg  # x units (four rows at a pair of K) each thread stages per step
    assert EPT % 2 == 0 and XPT * 4 * wg == TM * KP, f"packed halves: {tile}"
    nt, steps = -(-N // TN), -(-K // BK)
    groups = nt * -(-S // TM)
    XS, WS = TM // 4 + 1, TN // 4 + 1  # padded rows of the staged tiles, in runs of four
    assert GEMM_HALF_BUFFERS in (1, 2), f"GEMM_HALF_BUFFERS {GEMM_HALF_BUFFERS!r}"
    # with two buffers, step kb stages into buffer kb % 2 (the runs from `xo` / `wo` on)
    xo, wo = ((f"kb % 2 * {KP * XS} + ", f"kb % 2 * {KP * WS} + ") if GEMM_HALF_BUFFERS == 2
              else ("", ""))
    b.shared += _gemm_shared(tile, len(ws), halves=True)
    body = b.group(groups) + [
        r.let("n0", "u32", f"grp % {nt} * {TN}"), r.let("s0", "u32", f"grp / {nt} * {TM}"),
        r.let("tx", "u32", f"lid % {TX}"), r.let("ty", "u32", f"lid / {TX}"),
        r.let("wc", "u32", f"lid / {TPC}"),  # the column this thread dequantizes
        r.let("wr", "u32", f"min(n0 + wc, {N - 1}u)"),
        *(r.array(f"acc{i}", "f32", RM * RN) for i in range(len(ws))),
        *(r.array(f"p{i}", "f16x2", RM * RN) for i in range(len(ws))),
    ]

    def x_at(u: int) -> tuple[str, str]:  # (first of four rows, pair of K) of x unit u
        at = f"(lid + {u * wg})"
        return f"{at} / {KP} * 4", f"{at} % {KP}"

    def fetch(k0: str) -> list[str]:
        """The step at `k0`'s x (consecutive threads along K) and this thread's dequantized
        weights into its registers xv{u}_{t}_{h} (row t of unit u, K 2 j + h) and wv{i}_{e}."""
        lines = []
        for u in range(XPT):
            m, kp = x_at(u)
            lines += [f"xv{u}_{t}_{h} = "
                      f"{_x_value(r, x, S, K, BK, f'{m} + {t}', f'{k0} + ({kp}) * 2 + {h}')};"
                      for t in range(4) for h in range(2)]
        return lines + _stage_weights(b, ws, EPT, TPC, K, k0)

    stage = []
    for u in range(XPT):
        m, kp = x_at(u)
        pairs = [r.half2(f"xv{u}_{t}_0", f"xv{u}_{t}_1") for t in range(4)]
        stage.append(f"xs[{xo}({kp}) * {XS} + ({m}) / 4] = {r.halves4(*pairs)};")
    for i in range(len(ws)):
        for e in range(0, EPT, 2):
            at = f"(lid % {TPC} * {EPT // 2} + {e // 2}) * {WS}"
            stage.append(f"{r.lane(f'ws{i}[{wo}{at} + wc / 4]', 'wc % 4', 'f16x2')} = "
                         f"{r.half2(f'wv{i}_{e}', f'wv{i}_{e + 1}')};")
    body += [r.var(f"xv{u}_{t}_{h}", "f32", r.f(0.0))
             for u in range(XPT) for t in range(4) for h in range(2)]
    body += [r.var(f"wv{i}_{e}", "f32", r.f(0.0)) for i in range(len(ws)) for e in range(EPT)]
    body += _k_steps(r, steps, BK, fetch, stage, GEMM_PREFETCH)
    body.append("    " + r.for_("kp", "0", str(KP)))
    # register tile element (a, c): row (ty + a // 4 * TY) * 4 + a % 4 of the tile, column
    # (tx + c // 4 * TX) * 4 + c % 4, as `_gemm`'s f32x4 runs
    body += [f"        {r.let(f'a_{j}', 'f16x2x4', f'xs[{xo}kp * {XS} + ty + {j * TY}]')}"
             for j in range(RM // 4)]
    for i in range(len(ws)):
        body += ["        " + r.let(f"b{i}_{j}", "f16x2x4", f"ws{i}[{wo}kp * {WS} + tx + {j * TX}]")
                 for j in range(RN // 4)]
        for a in range(RM):
            for c in range(RN):
                pa = r.lane(f"a_{a // 4}", str(a % 4), "f16x2")
                pb = r.lane(f"b{i}_{c // 4}", str(c % 4), "f16x2")
                e = f"p{i}[{a * RN + c}]"
                body.append(f"        {e} = {r.fn('fma', pa, pb, e)};")
    body.append("    }")
    zero = r.half2(r.f(0.0), r.f(0.0))
    for i in range(len(ws)):  # the step's sums into f32
        for e in range(RM * RN):
            p = f"p{i}[{e}]"
            body += [f"    acc{i}[{e}] = acc{i}[{e}] + {r.cast('f32', p + '.x')} + "
                     f"{r.cast('f32', p + '.y')};", f"    {p} = {zero};"]
    # one buffer: a barrier before the next step overwrites it; two: the next step's barrier
    # (after its staging into the other) already keeps this one until all have read it
    body += (["    " + r.barrier()] if GEMM_HALF_BUFFERS == 1 else []) + ["}"]
    body += _store_runs(r, n, out, biases, len(ws), (RM, RN, TX, TY), S, N)
    return b.finish(body, groups)


def _store_runs(r: Renderer, n: Node, out: Accessor, biases: list[Accessor], weights: int,
                regs: tuple[int, int, int, int], S: int, N: int,
                clamped: bool = False) -> list[str]:
    """A tiled GEMM's epilogue from the registers: each thread's RM x RN accumulators acc{i}
    (its rows and columns in runs of four, ty- and tx-strided: regs = (RM, RN, TX, TY)),
    through `_epilogue`, stored where inside S x N. `clamped`: the row and column also
    clamped into S x N, for a GEMM whose rows and columns past the edge computed exactly the
    last one's values (read from its clamped x row and weight column): PoCL 3.1 runs the
    guarded-off stores anyway (`CLRuntime`), which then rewrite the same values."""
    RM, RN, TX, TY = regs
    lines = []
    for a in range(RM):
        for c in range(RN):
            row = f"s0 + (ty + {a // 4 * TY}) * 4 + {a % 4}"
            col = f"n0 + (tx + {c // 4 * TX}) * 4 + {c % 4}"
            if clamped:
                row, col = f"min({row}, {S - 1}u)", f"min({col}, {N - 1}u)"
            pre, value = _epilogue(r, n, [f"acc{i}[{a * RN + c}]" for i in range(weights)],
                                   biases, "oc")
            st = out.store(r, value, *coords_of("om", out.shape[:-1]), "oc")
            lines.append(f"{{ {r.let('om', 'u32', row)} {r.let('oc', 'u32', col)} "
                         f"if (om < {S} && oc < {N}) {{ {pre}{st} }} }}")
    return lines


def gemm_q8_tile(S: int, N: int, weights: int, K: int,
                 storage: int = 1 << 30) -> tuple[int, int, int, int, int]:
    """`_gemm_q8`'s tile for S rows of x, N columns, `weights` weights summed apart and K
    columns of x: GEMM_INT8_TILE where set, else the first of GEMM_INT8_TILES whose grid has
    GEMM_INT8_MIN_THREADS threads, whose accumulators fit GEMM_INT8_MAX_ACC and whose staged
    tiles fit `storage`; its blocks a step cut to 1 where they do not divide K's."""
    TM, TN, B, RM, RN = GEMM_INT8_TILE or _first_fit(
        GEMM_INT8_TILES, S, N, weights, GEMM_INT8_MIN_THREADS, GEMM_INT8_MAX_ACC, storage,
        lambda t: gemm_q8_storage(t, weights))
    return TM, TN, B if K // QBLOCK % B == 0 else 1, RM, RN


def _gemm_q8_shared(tile: tuple[int, int, int, int, int], weights: int,
                    offsets: tuple[bool, ...] = (), halves: int = 2) -> list[tuple[str, str, int]]:
    """`_gemm_q8`'s workgroup arrays: x's int8 words of a step (its 8 B words along K, as
    u32x4 runs of four rows, rows padded by one run) with each row's block scales and sums,
    and each weight's int8 words likewise (runs of four columns) with its scales, `halves` an
    x block (2 where a weight's scales cover 16), and, where its type has one (`offsets[i]`),
    the factor of x's block sum. The defaults: the most it declares."""
    TM, TN, B, _, _ = tile
    out = [("xt", "u32x4", 8 * B * (TM // 4 + 1)), ("xd", "f32", B * TM), ("xsum", "f32", B * TM)]
    for i in range(weights):
        out += [(f"wt{i}", "u32x4", 8 * B * (TN // 4 + 1)), (f"wa{i}", "f32", halves * B * TN)]
        if not offsets or offsets[i]:
            out.append((f"wc{i}", "f32", B * TN))
    return out


def gemm_q8_storage(tile: tuple[int, int, int, int, int], weights: int) -> int:
    """Bytes of workgroup memory `_gemm_q8` declares at this tile (at most)."""
    return sum((16 if ty == "u32x4" else 4) * count
               for _, ty, count in _gemm_q8_shared(tile, weights))


def _gemm_q8(r: Renderer, n: Node, x: Accessor, out: Accessor, ws: list[Accessor],
             biases: list[Accessor]):
    """Prefill on int8 dot products (x as one-level int8 blocks, dtype q8x1: the quantize
    pass's where `Capabilities.int8_gemm`), after llama.cpp's MMQ without matrix units: one
    workgroup per TM x TN tile of the output, each step of B blocks of 32 along K staging
    x's int8 words and each weight's integer quants as int8 words (its word reader's `ints`:
    Q4_0's, Q4_1's and Q4_K's nibbles, Q6_K's 6 bits made signed, Q8_0's bytes; for a block
    of 256 the words and group of the step's x block, `quant.XBlock`) in workgroup memory, in
    runs of four rows / columns (u32x4), with the scales. Every thread sums an RM x RN
    register tile of `dot4_i8` products in i32 over an x block (8 of them a pair; in two
    halves of 4 where a weight's scales cover 16, Q6_K), then folds it into f32:
    acc += isum * xd * wa + xsum * wc (xd, xsum x's block scale and sum; wa, wc the weight's
    scale and the factor of x's sum: Q4_0's -8 d, Q4_1's min, Q4_K's sub-block min).
    A word of four products is one instruction (the H200 through WGSL: dot4I8Packed ran 73 T
    int8 ops/s, f32 fmas 39 T flop/s; bench/webgpu_alu_probe.py)."""
    K, N, S = x.shape[-1], ws[0].shape[0], prod(x.shape[:-1])
    assert K % QBLOCK == 0 and all(w.dtype in WORDS for w in ws), \
        "int8 GEMM: weights with word readers (INT8_GEMM_WEIGHTS)"
    TM, TN, B, RM, RN = gemm_q8_tile(S, N, len(ws), K, r.workgroup_storage)
    TX, TY = TN // RN, TM // RM  # threads along columns, along rows
    wg = TX * TY
    assert RM % 4 == 0 and RN % 4 == 0, "int8 GEMM: register tiles of fours"
    b = Builder(r, f"{n.op}:gemm_q8", wg)
    b.use(x, out, *biases)
    b.int8 = True
    KW = 8 * B  # int8 words of x a row a step
    XS, WS = TM // 4 + 1, TN // 4 + 1  # padded rows of the staged runs
    nt, steps = -(-N // TN), K // QBLOCK // B
    groups = nt * -(-S // TM)
    readers = [WORDS[w.dtype](r) for w in ws]
    # each weight's plane offsets at (wcol, wk) and its groups at word wj (their scales and
    # offsets, and where its ints go), rendered once
    planes_at = [block_offsets(r, w, "wcol", "wk") for w in ws]
    reads = [rd.read(w, o, "wj", "q") for w, rd, (_, o) in zip(ws, readers, planes_at)]
    # a weight's c term (the factor of x's block sum), unless its ints are made signed
    offsets = tuple(bool(grps[0].int_c) and not (rd.x_block and rd.x_block.offset)
                    for rd, (_, grps) in zip(readers, reads))
    # elements a scale covers (Q6_K's 16: each x block's products folded in two halves)
    G = min([rd.x_block.scale_elems for rd in readers if rd.x_block] + [QBLOCK])
    H = QBLOCK // G
    for rd, (_, grps) in zip(readers, reads):
        if rd.x_block is None:  # blocks of 32: every group of a word is the block's
            assert all(g.a == grps[0].a and g.int_c == grps[0].int_c for g in grps), \
                "int8 GEMM: one scale and offset a block of 32"
        else:  # a group a word an x block: one int word each
            assert all(len(g.ints) == 1 for g in grps), "int8 GEMM: one int word a group"
    b.shared += _gemm_q8_shared((TM, TN, B, RM, RN), len(ws), offsets, H)
    xrow = lambda m: coords_of(f"min(s0 + {m}, {S - 1}u)", x.shape[:-1])  # noqa: E731
    body = b.group(groups) + [
        r.let("n0", "u32", f"grp % {nt} * {TN}"), r.let("s0", "u32", f"grp / {nt} * {TM}"),
        r.let("tx", "u32", f"lid % {TX}"), r.let("ty", "u32", f"lid / {TX}"),
        *(r.array(f"acc{i}", "f32", RM * RN) for i in range(len(ws))),
        *(r.array(f"isum{i}", "i32", RM * RN) for i in range(len(ws))),
        r.for_("kb", "0", str(steps)), "    " + r.let("k0", "u32", f"kb * {QBLOCK * B}"),
    ]
    # x: consecutive threads on consecutive words of a row (rows past S read row S - 1: their
    # sums are never stored)
    stage = [r.for_("t", "lid", str(TM * KW), str(wg)),
             "    " + r.let("m", "u32", f"t / {KW}"), "    " + r.let("kw", "u32", f"t % {KW}"),
             "    " + r.lane(f"xt[kw * {XS} + m / 4]", "m % 4", "u32") + " = "
             + x.plane("xq").u32(r, x.block_at(r, *xrow("m"), "k0 + kw * 4")["xq"]) + ";", "}",
             r.for_("t", "lid", str(TM * B), str(wg)),
             "    " + r.let("m", "u32", f"t % {TM}"),
             "    " + r.let("xb", "u32", x.block_at(r, *xrow("m"), f"k0 + t / {TM} * {QBLOCK}")
                            ["scale"]),
             f"    xd[t] = {x.plane('scale').load(r, 'xb')};",
             f"    xsum[t] = {x.plane('sums').load(r, 'xb')};", "}"]
    # each weight: a thread a word (a column's words of an x block consecutive), its ints to
    # the K they hold (element offsets in the weight's block, whose x blocks are its runs of
    # 32); the first word a scale covers stores it (into each half of the x block it covers),
    # the x block's first its offset
    for i, (w, rd) in enumerate(zip(ws, readers)):
        b.use(w)
        E = block_size(w.dtype)[0]
        # a block of 32: all its words are the x block's, one scale (its groups: all, below)
        xb = rd.x_block or XBlock(rd.per_block, lambda sbx, t: t, lambda sbx: "")
        wpx, Gw = xb.words, xb.scale_elems
        (offs, o), (lines, grps) = planes_at[i], reads[i]
        word = [r.let("wn", "u32", f"t / {wpx * B}"), r.let("wb", "u32", f"t % {wpx * B} / {wpx}"),
                r.let("tw", "u32", f"t % {wpx}"), r.let("wcol", "u32", f"min(n0 + wn, {N - 1}u)"),
                r.let("kx", "u32", f"k0 + wb * {QBLOCK}"), r.let("wk", "u32", f"kx - kx % {E}"),
                r.let("sbx", "u32", f"kx % {E} / {QBLOCK}"),
                r.let("wj", "u32", xb.word_of("sbx", "tw")), *offs, *rd.at("wj"),
                r.let("q", "u32", w.plane(rd.plane).u32(r, f"{o[rd.plane]} + 4 * wj")), *lines]
        if rd.x_block is None:
            runs = [(iv, run[0][1]) for g in grps for iv, run in zip(g.ints, g.runs())]
            a, c = grps[0].a, grps[0].int_c
        else:  # the x block's group of the word, chosen at run time
            word.append(r.let("h", "u32", xb.group_of("sbx")))

            def chosen(xs: list[str]) -> str:
                expr = xs[-1]
                for k in range(len(xs) - 2, -1, -1):
                    expr = r.select(f"h == {k}u", xs[k], expr)
                return expr

            runs = [(chosen([g.ints[0] for g in grps]), chosen([g.runs()[0][0][1] for g in grps]))]
            a, c = chosen([g.a for g in grps]), chosen([g.int_c or r.f(0.0) for g in grps])
        for iv, off in runs:
            if xb.offset:  # bytes v in [0, 2 offset) to v - offset, signed
                assert xb.offset == 32, "int8 GEMM: a signed offset of 32 only"
                word += [r.let("sv", "u32", f"({iv}) ^ 538976288u"),  # 0x20202020
                         r.let("sm", "u32", "sv & 538976288u")]
                iv = "sv | (sm << 1u) | (sm << 2u)"
            kw = f"(wb * 8 + ({off}) % {QBLOCK} / 4)"
            word.append(r.lane(f"wt{i}[{kw} * {WS} + wn / 4]", "wn % 4", "u32") + f" = {iv};")
        lead = [f"wa{i}[(wb * {H} + tw * 4 / {G} + {k}) * {TN} + wn] = {a};"
                for k in range(Gw // G)]
        word.append(f"if (tw % {Gw // 4} == 0u) {{ {' '.join(lead)} }}")
        if offsets[i]:
            word.append(f"if (tw == 0u) {{ wc{i}[wb * {TN} + wn] = {c}; }}")
        stage += [r.for_("t", "lid", str(TN * wpx * B), str(wg)), *("    " + x for x in word), "}"]
    body += ["    " + x for x in stage] + ["    " + r.barrier()]
    comp = "xyzw"
    for bb, hf in ((bb, hf) for bb in range(B) for hf in range(H)):
        # each x block's products (in halves where a scale covers 16), then their fold into f32
        kw0 = 8 * bb + hf * 8 // H
        body.append("    " + r.for_("kw", str(kw0), str(kw0 + 8 // H)))
        body += [f"        {r.let(f'a_{j}', 'u32x4', f'xt[kw * {XS} + ty + {j * TY}]')}"
                 for j in range(RM // 4)]
        for i in range(len(ws)):
            body += [f"        {r.let(f'b{i}_{j}', 'u32x4', f'wt{i}[kw * {WS} + tx + {j * TX}]')}"
                     for j in range(RN // 4)]
            for a in range(RM):
                for c in range(RN):
                    e = f"isum{i}[{a * RN + c}]"
                    dot = r.dot4_i8(f"a_{a // 4}.{comp[a % 4]}", f"b{i}_{c // 4}.{comp[c % 4]}")
                    body.append(f"        {e} = {e} + {dot};")
        body.append("    }")
        for a in range(RM):
            row = f"{bb * TM} + (ty + {a // 4 * TY}) * 4 + {a % 4}"
            body += ["    {", f"        {r.let('dx', 'f32', f'xd[{row}]')}",
                     f"        {r.let('sx', 'f32', f'xsum[{row}]')}"]
            for i in range(len(ws)):
                for c in range(RN):
                    col = f"(tx + {c // 4 * TX}) * 4 + {c % 4}"
                    e = a * RN + c
                    more = (f" + sx * wc{i}[{bb * TN} + {col}]"
                            if offsets[i] and hf == H - 1 else "")
                    body += [f"        acc{i}[{e}] = acc{i}[{e}] + "
                             f"{r.cast('f32', f'isum{i}[{e}]')} * dx * "
                             f"wa{i}[{(bb * H + hf) * TN} + {col}]{more};",
                             f"        isum{i}[{e}] = 0;"]
            body.append("    }")
    body += ["    " + r.barrier(), "}"]
    # (x rows past S were read as row S - 1, weight columns past N as column N - 1)
    body += _store_runs(r, n, out, biases, len(ws), (RM, RN, TX, TY), S, N, clamped=True)
    return b.finish(body, groups)


def _k_steps(r: Renderer, steps: int, BK: int, fetch: Callable[[str], list[str]],
             stage: list[str], prefetch: bool) -> list[str]:
    """The head of a tiled GEMM's loop over K (`kb`, steps of BK): each step's loads
    (`fetch(k)`: into this thread's registers) stored into workgroup memory (`stage`), then a
    barrier. With `prefetch` the next step's loads are issued after that barrier, before
    this step's products (their latency under them); else loaded and stored in turn. The
    caller adds the products and closes the loop with a barrier."""
    if prefetch:
        return ["{", r.let("k1", "u32", "0u"), *fetch("k1"), "}",
                r.for_("kb", "0", str(steps)), *("    " + x for x in stage),
                "    " + r.barrier(), f"    if (kb + 1u < {steps}u) {{",
                "        " + r.let("k1", "u32", f"(kb + 1u) * {BK}"),
                *("        " + x for x in fetch("k1")), "    }"]
    return [r.for_("kb", "0", str(steps)), "    " + r.let("k0", "u32", f"kb * {BK}"),
            *("    " + x for x in fetch("k0") + stage), "    " + r.barrier()]


def _tf32(r: Renderer, v: str) -> str:
    """f32 `v` rounded to tf32 (10 mantissa bits, to nearest, ties away from zero): what the
    matrix units multiply, so the plain spelling of `warp_mma` computes what they do."""
    return r.bitcast_f32(f"({r.bitcast_u32(v)} + 4096u) & 4294959104u")


def _gemm_mma(r: Renderer, n: Node, x: Accessor, out: Accessor, ws: list[Accessor],
              biases: list[Accessor]):
    """Prefill on matrix units: one workgroup per (TM rows of x) x (TN columns) tile, a
    subgroup of 32 lanes per 32 x 32 part of it, as 2 x 4 tiles of 16 x 8 (`warp_mma`).
    Each step of BK along K stages x (row-major) and the dequantized weights (column-major)
    in workgroup memory as GEMM_MMA_TYPE's units (a tf32-rounded f32, or a word of two
    halves), rows padded by 4 words (a fragment's 32 reads fall in 32 banks); every subgroup
    then multiplies its fragments BK / KS times. Each thread loads its share of a step into
    registers and stores it staged; with GEMM_MMA_PREFETCH the next step's loads are issued
    before this step's products (their latency under the matrix work). The epilogue stores
    from the fragments."""
    K, N, S = x.shape[-1], ws[0].shape[0], prod(x.shape[:-1])
    TM, TN, BK = GEMM_MMA_TILE or next(
        (t for t in GEMM_MMA_TILES if -(-S // t[0]) * -(-N // t[1]) >= GEMM_MMA_MIN_GROUPS),
        GEMM_MMA_TILES[-1])
    assert GEMM_MMA_TYPE in ("f16", "tf32"), f"GEMM_MMA_TYPE {GEMM_MMA_TYPE!r}"
    halves = GEMM_MMA_TYPE == "f16"
    P = 2 if halves else 1  # K elements per staged unit
    KS = 8 * P  # K of one warp_mma
    WM, WN = TM // 32, TN // 32  # subgroups along rows, along columns
    wg = 32 * WM * WN
    b = Builder(r, f"{n.op}:mma", wg)
    b.use(x, out, *biases)
    b.halves = halves
    EPT = TN * BK // wg  # weight elements each thread stages per step: a run of one column
    TPC = BK // EPT  # threads per column
    XPT = TM * BK // wg // P  # x units each thread stages per step (P elements along K each)
    assert BK % KS == 0 and EPT % P == 0 and XPT * P * wg == TM * BK, (TM, TN, BK)
    nt, steps = -(-N // TN), -(-K // BK)
    groups = nt * -(-S // TM)
    RS = BK // P + 4  # units between staged rows (x) and columns (weights)
    MI, NI = 2, 4  # a subgroup's tiles of 16 rows, of 8 columns
    unit = "u32" if halves else "f32"
    b.shared += [("xs", unit, TM * RS), *((f"ws{i}", unit, TN * RS) for i in range(len(ws)))]
    body = b.group(groups) + [
        r.let("n0", "u32", f"grp % {nt} * {TN}"), r.let("s0", "u32", f"grp / {nt} * {TM}"),
        r.let("wm", "u32", f"lid / {32 * WN} * 32"), r.let("wn", "u32", f"lid / 32 % {WN} * 32"),
        r.let("mg", "u32", "lid % 32 / 4"), r.let("mt", "u32", "lid % 4"),
        r.let("wc", "u32", f"lid / {TPC}"),  # the column this thread stages
        r.let("wr", "u32", f"min(n0 + wc, {N - 1}u)"),
    ]
    acc = {(i, mi, ni): [f"c{i}_{mi}_{ni}_{e}" for e in range(4)]
           for i in range(len(ws)) for mi in range(MI) for ni in range(NI)}
    body += [r.var(c, "f32", r.f(0.0)) for cs in acc.values() for c in cs]

    def x_at(u: int) -> tuple[str, str]:  # (row, unit along K) in the step of x unit u
        return f"(lid + {u * wg}) / {BK // P}", f"(lid + {u * wg}) % {BK // P}"

    def fetch(k0: str) -> list[str]:
        """The step at `k0`'s x (consecutive threads along K: coalesced) and weights into
        this thread's registers xv{u}_{h} and wv{i}_{e}."""
        lines = []
        for u in range(XPT):
            m, kw = x_at(u)
            for h in range(P):
                k = f"{k0} + ({kw}) * {P} + {h}" if halves else f"{k0} + {kw}"
                lines.append(f"xv{u}_{h} = {_x_value(r, x, S, K, BK, m, k)};")
        return lines + _stage_weights(b, ws, EPT, TPC, K, k0)

    def staged(*vs: str) -> str:  # a unit from its P values
        return r.pack_half2(*vs) if halves else _tf32(r, vs[0])

    stage = []
    for u in range(XPT):
        m, kw = x_at(u)
        stage.append(f"xs[({m}) * {RS} + {kw}] = {staged(*(f'xv{u}_{h}' for h in range(P)))};")
    for i in range(len(ws)):
        for e in range(0, EPT, P):
            slot = f"ws{i}[wc * {RS} + lid % {TPC} * {EPT // P} + {e // P}]"
            stage.append(f"{slot} = {staged(*(f'wv{i}_{e + h}' for h in range(P)))};")
    body += [r.var(f"xv{u}_{h}", "f32", r.f(0.0)) for u in range(XPT) for h in range(P)]
    body += [r.var(f"wv{i}_{e}", "f32", r.f(0.0)) for i in range(len(ws)) for e in range(EPT)]
    body += _k_steps(r, steps, BK, fetch, stage, GEMM_MMA_PREFETCH)
    body.append("    " + r.for_("ks", "0", str(BK // P), "8"))
    for (i, mi, ni), cs in acc.items():
        def a_at(row, k, mi=mi):
            return f"xs[(wm + {mi * 16} + {row}) * {RS} + ks + {k}]"

        def b_at(k, col, i=i, ni=ni):
            return f"ws{i}[(wn + {ni * 8} + {col}) * {RS} + ks + {k}]"
        body += ["        " + x for x in r.warp_mma(cs, a_at, b_at, halves)]
    body += ["    }", "    " + r.barrier(), "}"]
    # the epilogue from the fragments: element e of tile (mi, ni) is row mg + 8 (e / 2),
    # column 2 mt + e % 2 of it
    for mi in range(MI):
        for ni in range(NI):
            for e in range(4):
                row = f"s0 + wm + {mi * 16 + 8 * (e // 2)} + mg"
                col = f"n0 + wn + {ni * 8 + e % 2} + 2 * mt"
                pre, value = _epilogue(r, n, [acc[(i, mi, ni)][e] for i in range(len(ws))],
                                       biases, "oc")
                st = out.store(r, value, *coords_of("om", out.shape[:-1]), "oc")
                body.append(f"{{ {r.let('om', 'u32', row)} {r.let('oc', 'u32', col)} "
                            f"if (om < {S} && oc < {N}) {{ {pre}{st} }} }}")
    return b.finish(body, groups)


def _x_value(r: Renderer, x: Accessor, S: int, K: int, BK: int, m: str, k: str) -> str:
    """A tiled GEMM's x at row s0 + `m` of the tile and column `k` (S x K in all): its load
    clamped into x, zero past the rows (and past K where K is no whole number of steps)."""
    row = coords_of(f"min(s0 + {m}, {S - 1}u)", x.shape[:-1])
    ok = f"{m} < {S} - s0" + (f" && {k} < {K}" if K % BK else "")
    return r.select(ok, x.load(r, *row, f"min({k}, {K - 1}u)"), r.f(0.0))


def _stage_weights(b: Builder, ws: list[Accessor], EPT: int, TPC: int, K: int,
                   k0: str) -> list[str]:
    """Each weight's EPT elements of the step at `k0` (`_stage_weight`) into this thread's
    registers wv{i}_{e}, a block a weight."""
    lines = []
    for i, w in enumerate(ws):
        lines += ["{", *_stage_weight(b, w, EPT, TPC, K,
                                      lambda e, v, i=i: f"wv{i}_{e} = {v};", k0), "}"]
    return lines


def _stage_weight(b: Builder, w: Accessor, EPT: int, TPC: int, K: int,
                  put: Callable[[int, str], str], k0: str = "k0") -> list[str]:
    """This thread's EPT weights of the step's tile (column `wc`, K from `k0` + its run
    `kr`): `put(e, value)` of each, e = 0 .. EPT - 1 along K."""
    r = b.r
    b.use(w)
    body = [r.let("kr", "u32", f"lid % {TPC} * {EPT}")]
    if w.dtype in ("f32", "f16"):
        for e in range(EPT):
            v = w.load(r, "wr", f"min({k0} + kr + {e}, {K - 1}u)")
            if K % EPT or K % (EPT * TPC):
                v = r.select(f"{k0} + kr + {e} < {K}", v, r.f(0.0))
            body.append(put(e, v))
        return body
    E = block_size(w.dtype)[0]
    # a run of EPT (16) elements lies in one sub-block (16 or 32) of one block
    body.append(r.let("kq", "u32", f"{k0} + kr"))
    dq = dequant(r, w, "wr", f"kq - kq % {E}")
    assert EPT <= dq.sub and dq.sub % EPT == 0
    body += dq.block + [r.let("sb", "u32", f"kq % {E} / {dq.sub}"),
                        r.let("e0", "u32", f"kq % {dq.sub}")]
    body += dq.sub_lines("sb")
    for e in range(EPT):
        lines, value = dq.element("sb", f"(e0 + {e})")
        body.append("{ " + " ".join(lines) + f" {put(e, value)} }}")
    return body


class Columns:
    """The outputs y_i (..., N_i) of a stacked matmul as one (..., sum N_i) tensor, so the
    matmul kernels store it like any output: column c goes to the y_i whose range holds it
    (and a bias per y_i reads likewise)."""

    def __init__(self, parts: list[Accessor]):
        self.parts = parts
        self.shape = parts[0].shape[:-1] + (sum(p.shape[-1] for p in parts),)
        self.params = [p for a in parts for p in a.params]

    def _ranges(self):
        at = 0
        for k, p in enumerate(self.parts):
            yield k, p, at
            at += p.shape[-1]

    def store(self, r: Renderer, value: str, *coords: str) -> str:
        *lead, col = coords
        parts = []
        for k, p, at in self._ranges():
            st = p.store(r, "sv", *lead, f"sc - {at}" if at else "sc")
            if k == len(self.parts) - 1:
                parts.append(f"else {{ {st} }}" if k else st)
            else:
                parts.append(f"{'if' if k == 0 else 'else if'} (sc < {at + p.shape[-1]}) "
                             f"{{ {st} }}")
        # the value once, then the part's store (PoCL 3.1 stored wrong values when each
        # branch of the chain computed it, with a bias read through `load`'s choice)
        return f"{{ {r.let('sc', 'u32', col)} {r.let('sv', 'f32', value)} {' '.join(parts)} }}"

    def load(self, r: Renderer, *coords: str) -> str:
        *lead, col = coords
        expr = None
        for k, p, at in reversed(list(self._ranges())):
            v = p.load(r, *lead, f"({col}) - {at}" if at else col)
            expr = v if expr is None else r.select(f"({col}) < {at + p.shape[-1]}", v, expr)
        return expr


def matmul(r: Renderer, n: Node, acc: dict[str, Accessor]):
    """matmul(x, w), ffn_gate_up(x, wg, wu [, bg, bu]) (each weight's sums apart, the gated
    activation as the epilogue), or stacked_matmul(x, w_1.., [b_1..]) (the weights loaded
    as the rows of one matrix, which every w_i's accessor reads: one matmul, its columns
    stored into the y_i). Stage-aware: the GEMV at up to GEMV_ROWS rows of x where every
    weight has a word reader, the tiled GEMM past that, the block walk else."""
    gated = n.op == "ffn_gate_up"
    x, out = acc[n.inputs[0]], acc[n.outputs[0]]
    ws = [acc[i] for i in n.inputs[1 : 3 if gated else 2]]
    biases = [acc[i] for i in n.inputs[3:5]] if gated and n.attrs.get("bias") else []
    if n.op == "stacked_matmul":
        k = n.attrs["n"]
        out = Columns([acc[o] for o in n.outputs])
        assert ws[0].shape[0] == out.shape[-1], "the stacked weights are not one matrix"
        if n.attrs.get("bias"):
            biases = [Columns([acc[i] for i in n.inputs[1 + k : 1 + 2 * k]])]
    S = prod(x.shape[:-1])
    if x.dtype == Q8_1:  # the quantize pass's x for the int8 GEMM (Capabilities.int8_gemm)
        return _gemm_q8(r, n, x, out, ws, biases)
    assert GEMM_MMA in ("auto", "always", "never"), f"GEMM_MMA {GEMM_MMA!r}"
    if S > GEMV_ROWS and r.tiled_gemm and (GEMM_MMA == "always" or GEMM_MMA == "auto" and r.mma):
        return _gemm_mma(r, n, x, out, ws, biases)
    assert GEMM_HALF in ("auto", "always", "never"), f"GEMM_HALF {GEMM_HALF!r}"
    if S > GEMV_ROWS and r.tiled_gemm and r.f16_math and (
            GEMM_HALF == "always" or GEMM_HALF == "auto" and r.f16_gemm):
        return _gemm_half(r, n, x, out, ws, biases)
    if S > GEMV_ROWS and r.tiled_gemm:
        return _gemm(r, n, x, out, ws, biases)
    if S <= GEMV_ROWS and all(w.dtype in WORDS for w in ws):
        return _gemv(r, n, x, out, ws, biases)
    return _matmul_blocks(r, n, x, out, ws, biases)


def quantize_q8(r: Renderer, n: Node, acc: dict[str, Accessor]):
    """x (f32) -> its int8 blocks (`Q8Blocks`: two levels, scale, sum; or with `levels` 1
    one level, scale, sum), one thread per block of 32: the arithmetic of
    `ops_quant.quantize_planes` (`quantize_planes_1`) step for step (round half away from
    zero, the remainder in steps of 1/254), the levels packed four to a word."""
    x, out = acc[n.inputs[0]], acc[n.outputs[0]]
    one = n.attrs.get("levels", 2) == 1
    b = Builder(r, "quantize_q8_1" if one else "quantize_q8")
    b.use(x, out)
    body, groups = _threads(b, prod(x.shape) // QBLOCK)
    body += [r.let(f"v{t}", "f32", x.load(r, *coords_of(f"i * {QBLOCK} + {t}", x.shape)))
             for t in range(QBLOCK)]
    body.append(r.let("amax", "f32", _max_chain([r.fn("abs", f"v{t}") for t in range(QBLOCK)])))
    body.append(r.let("inv", "f32", r.select(f"amax > {r.f(0)}",
                                             f"{r.f(127)} / max(amax, {r.f(1e-30)})", r.f(0))))

    def away(v: str) -> str:  # round half away from zero: the cast truncates
        return r.cast("i32", f"{v} + {r.select(f'{v} >= {r.f(0)}', r.f(0.5), r.f(-0.5))}")

    for t in range(QBLOCK):
        body += [r.let(f"s{t}", "f32", f"v{t} * inv"), r.let(f"q{t}", "i32", away(f"s{t}"))]
        if not one:
            body += [r.let(f"e{t}", "f32", f"(s{t} - {r.cast('f32', f'q{t}')}) * {r.f(254)}"),
                     r.let(f"p{t}", "i32", away(f"e{t}"))]
    for lv, name in (("q", "xq"),) if one else (("q", "xq"), ("p", "xr")):
        for wd in range(QBLOCK // 4):
            packed = " | ".join(f"(({r.cast('u32', f'{lv}{4 * wd + k}')} & 255u) << {8 * k}u)"
                                for k in range(4))
            body.append(out.plane(name).store_u32(r, f"i * {QBLOCK} + {4 * wd}", packed))
    if one:
        levels = " + ".join(f"q{t}" for t in range(QBLOCK))
        body.append(r.let("scale", "f32", f"amax / {r.f(127)}"))
    else:
        levels = " + ".join(f"254 * q{t} + p{t}" for t in range(QBLOCK))
        body.append(r.let("scale", "f32", f"amax / {r.f(127)} / {r.f(254)}"))
    body += [out.plane("scale").store(r, "i", "scale"),
             out.plane("sums").store(r, "i", f"scale * {r.cast('f32', levels)}")]
    return b.finish(body, groups)


def embedding(r: Renderer, n: Node, acc: dict[str, Accessor]):
    table, ids, out = acc[n.inputs[0]], acc[n.inputs[1]], acc[n.outputs[0]]
    b = Builder(r, "embedding")
    b.use(ids, out)
    S, D = out.shape
    body, groups = _threads(b, S * D)
    body += [r.let("s", "u32", f"i / {D}"), r.let("c", "u32", f"i % {D}"),
             r.let("id", "u32", ids.load(r, "s")),
             r.let("c0", "u32", f"c - c % {block_elements(table)}")]
    dq = b.weight(table, "id", "c0")
    lines, value = dq.element("sb", "e")
    body += dq.block + [r.let("sb", "u32", f"c % {block_elements(table)} / {dq.sub}"),
                        r.let("e", "u32", f"c % {dq.sub}")]
    body += dq.sub_lines("sb") + lines + [out.store(r, value, "s", "c")]
    return b.finish(body, groups)


def kv_write(r: Renderer, n: Node, acc: dict[str, Accessor]):
    _, x, pos, out = (acc[i] for i in (*n.inputs, n.outputs[0]))  # (cache, x, pos) -> cache
    b = Builder(r, "kv_write")
    b.use(x, pos, out)
    body, groups = _threads(b, prod(x.shape))
    s, h, d = coords_of("i", x.shape)
    body += [r.let("p", "u32", pos.load(r, s)), out.store(r, x.load(r, s, h, d), "p", h, d)]
    return b.finish(body, groups)


def _rotate(r: Renderer, x: Accessor, pos: Accessor, ff: Accessor | None, a: dict,
            store: Callable[[str, str], str]) -> list[str]:
    """One thread's part of RoPE on row (s, h) of x (`s`, `h`, `j` bound): pair j < n_dims / 2
    rotated by the angle of position pos[s], or dimension j + n_dims / 2 passed through;
    `store(value, dim)` writes dimension `dim` of the row."""
    Dh, nd = x.shape[-1], a["n_dims"]
    half = nd // 2
    fscale, rest = r.f(a.get("freq_scale", 1.0)), f"j + {half}"
    ia, ib = ("2 * j", "2 * j + 1") if a["mode"] == "norm" else ("j", f"j + {half}")
    inv = r.fn("pow", r.f(a["theta"]), f"-{r.cast('f32', '2 * j')} / {r.f(nd)}")
    if ff is not None:
        inv = f"{inv} / {ff.load(r, 'j')}"
    assert Dh - half >= half
    return [f"if (j < {half}) {{",
            "    " + r.let("ang", "f32", f"{r.cast('f32', pos.load(r, 's'))} * {fscale} * {inv}"),
            "    " + r.let("cs", "f32", r.fn("cos", "ang")),
            "    " + r.let("sn", "f32", r.fn("sin", "ang")),
            "    " + r.let("xa", "f32", x.load(r, "s", "h", ia)),
            "    " + r.let("xb", "f32", x.load(r, "s", "h", ib)),
            f"    {store('xa * cs - xb * sn', ia)}",
            f"    {store('xa * sn + xb * cs', ib)}",
            f"}} else {{ {store(x.load(r, 's', 'h', rest), rest)} }}"]


def rope(r: Renderer, n: Node, acc: dict[str, Accessor]):
    x, pos, out = acc[n.inputs[0]], acc[n.inputs[1]], acc[n.outputs[0]]
    ff = acc[n.inputs[2]] if len(n.inputs) == 3 else None
    S, H, Dh = x.shape
    J = Dh - n.attrs["n_dims"] // 2  # pairs, then the dims past n_dims one by one
    b = Builder(r, "rope")
    b.use(x, pos, out, *([ff] if ff else []))
    body, groups = _threads(b, S * H * J)
    s, h, j = coords_of("i", (S, H, J))
    body += [r.let("s", "u32", s), r.let("h", "u32", h), r.let("j", "u32", j)]
    body += _rotate(r, x, pos, ff, n.attrs, lambda v, d: out.store(r, v, "s", "h", d))
    return b.finish(body, groups)


def rope_qkv_write(r: Renderer, n: Node, acc: dict[str, Accessor]):
    """A step's RoPE and cache writes in one launch: threads over the query's rotated pairs
    (into q'), then the key's (into the key cache at pos[s]), then the value's elements (into
    the value cache at pos[s])."""
    kc, vc, q, k, v, pos = (acc[i] for i in n.inputs[:6])
    ff = acc[n.inputs[6]] if len(n.inputs) == 7 else None
    # the caches written through the inputs: they are updated in place (outputs 0 and 1 name
    # the same storage in a model's graph; a hand-built graph may leave output 1 unbound)
    kc2, vc2, qo = kc, vc, acc[n.outputs[2]]
    S, H, Dh = q.shape
    Hkv, Dv = k.shape[1], v.shape[2]
    J = Dh - n.attrs["n_dims"] // 2
    nq, nk, nv = S * H * J, S * Hkv * J, S * Hkv * Dv
    b = Builder(r, "rope_qkv_write")
    b.use(kc, vc, q, k, v, pos, qo, *(acc[o] for o in n.outputs), *([ff] if ff else []))
    body, groups = _threads(b, nq + nk + nv)
    sq, hq, jq = coords_of("i", (S, H, J))
    sk, hk, jk = coords_of(f"i - {nq}", (S, Hkv, J))
    sv, hv, dv = coords_of(f"i - {nq + nk}", (S, Hkv, Dv))
    body += [f"if (i < {nq}) {{",
             *("    " + x for x in [r.let("s", "u32", sq), r.let("h", "u32", hq),
                                    r.let("j", "u32", jq)]),
             *("    " + x for x in _rotate(r, q, pos, ff, n.attrs,
                                           lambda val, d: qo.store(r, val, "s", "h", d))),
             f"}} else if (i < {nq + nk}) {{",
             *("    " + x for x in [r.let("s", "u32", sk), r.let("h", "u32", hk),
                                    r.let("j", "u32", jk), r.let("p", "u32", pos.load(r, "s"))]),
             *("    " + x for x in _rotate(r, k, pos, ff, n.attrs,
                                           lambda val, d: kc2.store(r, val, "p", "h", d))),
             "} else {",
             "    " + r.let("p", "u32", pos.load(r, sv)),
             f"    {vc2.store(r, v.load(r, sv, hv, dv), 'p', hv, dv)}",
             "}"]
    return b.finish(body, groups)


def attention_splits(n: Node, q_shape: tuple[int, ...], k_shape: tuple[int, ...]) -> int:
    """Workgroups each (query, head)'s keys are split over (1: the one-workgroup kernel): as
    many as bring S * H * splits to ATTN_SPLIT_GROUPS (decode: S * H alone is a few tens of
    workgroups, a large GPU has over a hundred cores), no more than the tiles of
    ATTN_SPLIT_TILE keys a query can see (the cache, or the window)."""
    S, H = q_shape[0], q_shape[1]
    keys = k_shape[0]
    if n.attrs.get("window", 0):
        keys = min(keys, n.attrs["window"])
    return max(1, min(ATTN_SPLIT_GROUPS // (S * H), -(-keys // ATTN_SPLIT_TILE)))


def attention_scratch(n: Node, shapes: dict[str, tuple[int, ...]]) -> int:
    """f32 words the split attention's partials take: (o[Dv], m, l) per (query, head, split);
    0 where the one-workgroup kernel runs."""
    q, k, v = (shapes[i] for i in n.inputs[:3])
    splits = attention_splits(n, q, k)
    return 0 if splits == 1 else q[0] * q[1] * splits * (v[2] + 2)


def attention(r: Renderer, n: Node, acc: dict[str, Accessor], scratch: Accessor | None = None):
    """Causal attention (GQA, window, softcap) over the cache. Where `attention_splits` is 1
    (prefill: many query rows; a short cache), each query's keys in one workgroup: by runs
    (`_attend_runs`, one workgroup per (query, kv head)) where the device has shuffles and
    the rows cut into 16-byte slots, else one of ATTN_TILE threads per (query, head), a key
    a thread (`_attend`). Else (decode) split-K: each (query, kv head) or (query, head)'s
    keys cut into `splits` equal shares (the count fixed at bind time, the share, in whole
    steps, from the position at run time; a split past the last key walks none), each
    share's workgroup writing its partial (o unnormalized, running max m, sum l) to
    `scratch`; then one workgroup per (query, head) merges its splits' partials
    (`_attention_combine`)."""
    q, k, v, pos = (acc[i] for i in n.inputs)
    out = acc[n.outputs[0]]
    S, H, Dh = q.shape
    Dv = v.shape[2]
    splits = attention_splits(n, q.shape, k.shape)
    lanes = attention_run_lanes(r, q.shape, k.shape, v.shape)
    if not all(a.vec4_param() is not None for a in (q, k, v)):
        lanes = 0
    if splits == 1 and lanes and ATTN_RUN_PREFILL:
        return [_attend_runs(r, n, q, k, v, pos, out, 1, lanes)[0]]
    if splits == 1:
        b = Builder(r, "attention", ATTN_TILE)
        body = b.group(S * H) + [r.let("s", "u32", f"grp / {H}"),
                                 r.let("h", "u32", f"grp % {H}")]
        b.use(out)
        body += _attend(b, n, q, k, v, pos, "lo", "p + 1",
                        lambda val, d: out.store(r, f"{val} / l", "s", "h", d))
        return [b.finish(body, S * H)]
    assert scratch is not None and scratch.shape[0] >= attention_scratch(
        n, {x: acc[x].shape for x in n.inputs})
    if lanes:
        split, step = _attend_runs(r, n, q, k, v, pos, scratch, splits, lanes)
    else:
        split, step = _attend_split(r, n, q, k, v, pos, scratch, splits)
    return [split, _attention_combine(r, n, out, pos, scratch, splits, step)]


def _window_start(r: Renderer, n: Node) -> str:
    """`lo`, the first key a query at position p sees (its window's, else 0)."""
    window = n.attrs.get("window", 0)
    return r.let("lo", "u32",
                 r.select(f"p + 1 > {window}", f"p + 1 - {window}", "0") if window else "0")


def _split_share(r: Renderer, splits: int, step: int) -> list[str]:
    """The keys [lo, p] a query sees cut into `splits` chunks of whole steps of `step` keys
    (the share fixed at run time, from p): `chunk` keys each, the first `used` holding any."""
    share = splits * step
    return [r.let("chunk", "u32", f"(p + 1 - lo + {share - 1}) / {share} * {step}"),
            r.let("used", "u32", "(p + 1 - lo + chunk - 1) / chunk")]


def _split_keys(r: Renderer, splits: int, step: int) -> list[str]:
    """Split `sp`'s keys, [ka, kb) (empty past the last key), after `_split_share`."""
    return [*_split_share(r, splits, step), r.let("ka", "u32", "lo + sp * chunk"),
            r.let("kb", "u32", "min(ka + chunk, p + 1)")]


def _attend_split(r: Renderer, n: Node, q: Accessor, k: Accessor, v: Accessor,
                  pos: Accessor, scratch: Accessor, splits: int) -> tuple[tuple, int]:
    """Split attention where there are no subgroup shuffles (or the rows do not split into
    16-byte slots): S * H * splits workgroups of ATTN_SPLIT_TILE threads, each `_attend` over
    its split's keys, one key a thread."""
    S, H, _ = q.shape
    Dv = v.shape[2]
    b = Builder(r, "attention:split", ATTN_SPLIT_TILE)
    b.use(scratch)
    W = Dv + 2  # a partial's words: o[Dv], m, l
    body = b.group(S * H * splits) + [
        r.let("sh", "u32", f"grp / {splits}"), r.let("sp", "u32", f"grp % {splits}"),
        r.let("s", "u32", f"sh / {H}"), r.let("h", "u32", f"sh % {H}")]
    body += _attend(b, n, q, k, v, pos, "ka", "kb",
                    lambda val, d: scratch.store(r, val, f"grp * {W} + {d}"),
                    lambda: _split_keys(r, splits, b.wg))  # (`_attend` defines lo)
    body.append(f"if (lid == 0) {{ {scratch.store(r, 'm', f'grp * {W} + {Dv}')} "
                f"{scratch.store(r, 'l', f'grp * {W} + {Dv + 1}')} }}")
    return b.finish(body, S * H * splits), b.wg


def attention_run_lanes(r: Renderer, q_shape: tuple[int, ...], k_shape: tuple[int, ...],
                        v_shape: tuple[int, ...]) -> int:
    """Lanes of a run of `_attend_runs` here: the most, a power of 2 up to ATTN_RUN_LANES and
    the subgroup's, that cut a key's and a value's row into whole 16-byte slots each; 0 where
    it does not run (no shuffles, rows not a multiple of 8 elements, the runs' merge past
    ATTN_MERGE_BYTES)."""
    Dh, Dv = q_shape[2], v_shape[2]
    G = q_shape[1] // k_shape[1]
    lanes = min(ATTN_RUN_LANES, r.subgroup_lanes)
    while lanes >= 2 and (Dh % (4 * lanes) or Dv % (4 * lanes)):
        lanes //= 2
    if lanes < 2 or 4 * G * Dv > ATTN_MERGE_BYTES:
        return 0
    return lanes


def _attend_runs(r: Renderer, n: Node, q: Accessor, k: Accessor, v: Accessor,
                 pos: Accessor, dest: Accessor, splits: int,
                 KL: int) -> tuple[tuple, int]:
    """Split attention by runs: S * Hkv * splits workgroups, each the G = H / Hkv query heads
    of one kv head (a key and a value row read once for all of them) over one split's keys.
    A run of KL adjacent lanes scores a key together: lane i holds the 16-byte slots i,
    i + KL, ... of q's rows and reads the same slots of the key's and the value's rows, so a
    subgroup's loads are whole adjacent 16-byte runs (the one-key-a-thread kernel's loads
    touch a cache line a lane). Each step a run issues the loads of ATTN_RUN_KEYS keys at once
    (no load waits on the one before), sums its lanes' products by shuffles and keeps its own
    online softmax (m, l, o per head); at the end the runs of a subgroup merge by shuffles,
    the subgroups through workgroup memory, into the split's partial per head (as
    `_attend_split`'s: o unnormalized, m, l, into `dest`, the scratch); or, with one split
    (many query rows: prefill), the output o / l into `dest`, the output. Returns the launch
    and the keys a step takes."""
    S, H, Dh = q.shape
    Hkv, Dv = k.shape[1], v.shape[2]
    G, U = H // Hkv, ATTN_RUN_KEYS
    sub = r.subgroup_lanes
    wg = max(sub, min(ATTN_RUN_WG, sub * (ATTN_MERGE_BYTES // (4 * G * Dv))))
    R, SG = wg // KL, wg // sub  # runs of a workgroup; its subgroups
    EH, EV = Dh // (4 * KL), Dv // (4 * KL)  # 16-byte slots of a row a lane holds
    step = R * U
    W = Dv + 2
    cap = n.attrs.get("softcap", 0)
    b = Builder(r, "attention:split" if splits > 1 else "attention", wg)
    b.use(q, k, v, pos, dest)
    for a in (q, k, v):  # (`attention` checked that each has a 16-byte view)
        p4 = a.vec4_param()
        b.params[p4.name] = p4

    def slot(a: Accessor, row: str, head: str, c: int) -> str:  # lane's c-th 16-byte slot
        return a.load4(r, row, head, f"4 * (lane + {c * KL})")

    zero4 = r.vec4(*[r.f(0.0)] * 4)
    body = b.group(S * Hkv * splits) + [
        r.let("sk", "u32", f"grp / {splits}"), r.let("sp", "u32", f"grp % {splits}"),
        r.let("s", "u32", f"sk / {Hkv}"), r.let("kh", "u32", f"sk % {Hkv}"),
        r.let("lane", "u32", f"lid % {KL}"), r.let("run", "u32", f"lid / {KL}"),
        f"if (lid == 0) {{ pv = {pos.load(r, 's')}; }}",
        r.uniform_let("p", "u32", "pv"),  # uniform: the steps' bound, around shuffles
        _window_start(r, n), *_split_keys(r, splits, step),
    ]
    b.shared.append(("pv", "u32", 0))
    for g in range(G):
        body += [r.let(f"q{g}_{c}", "f32x4", slot(q, "s", f"kh * {G} + {g}", c))
                 for c in range(EH)]
        body += [r.var(f"m{g}", "f32", r.f(-3e38)), r.var(f"l{g}", "f32", r.f(0.0))]
        body += [r.var(f"o{g}_{c}", "f32x4", zero4) for c in range(EV)]
    body.append(r.for_("t0", "ka", "kb", str(step)))  # the same steps for every run: shuffles
    inner = []
    for u in range(U):
        inner += [r.let(f"key{u}", "u32", f"t0 + {u * R} + run"),
                  r.let(f"ok{u}", "bool", f"key{u} < kb"),
                  r.let(f"row{u}", "u32", r.select(f"ok{u}", f"key{u}", "ka"))]
        inner += [r.let(f"k{u}_{c}", "f32x4", slot(k, f"row{u}", "kh", c)) for c in range(EH)]
        inner += [r.let(f"v{u}_{c}", "f32x4", slot(v, f"row{u}", "kh", c)) for c in range(EV)]
    scores = []
    for g in range(G):
        for u in range(U):
            dot = " + ".join(r.dot4(f"k{u}_{c}", f"q{g}_{c}") for c in range(EH))
            inner.append(r.var(f"s{g}_{u}", "f32", dot))
            scores.append(f"s{g}_{u}")
    inner += b.shuffle_sum(scores, KL)
    for g in range(G):
        for u in range(U):
            sc = f"s{g}_{u} * {r.f(n.attrs['scale'])}"
            if cap:
                sc = _softcap(r, sc, cap)
            inner.append(f"s{g}_{u} = {r.select(f'ok{u}', sc, r.f(-3e38))};")
        inner += [r.let(f"mn{g}", "f32", _max_chain([f"m{g}"] + [f"s{g}_{u}" for u in range(U)])),
                  r.let(f"corr{g}", "f32", r.fn("exp", f"m{g} - mn{g}"))]
        for u in range(U):
            inner.append(r.let(f"w{g}_{u}", "f32",
                               r.select(f"ok{u}", r.fn("exp", f"s{g}_{u} - mn{g}"), r.f(0.0))))
        ws = " + ".join(f"w{g}_{u}" for u in range(U))
        inner += [f"l{g} = l{g} * corr{g} + {ws};"]
        for c in range(EV):
            acc = " + ".join(f"w{g}_{u} * v{u}_{c}" for u in range(U))
            inner.append(f"o{g}_{c} = o{g}_{c} * corr{g} + {acc};")
        inner.append(f"m{g} = mn{g};")
    body += ["    " + x for x in inner] + ["}"]
    # the runs of a subgroup merged by a butterfly (each run's m, l, o against its partner's)
    mask = KL
    while mask < sub:
        for g in range(G):
            body += [r.let(f"pm{g}_{mask}", "f32", r.shuffle_xor(f"m{g}", f"{mask}u")),
                     r.let(f"pl{g}_{mask}", "f32", r.shuffle_xor(f"l{g}", f"{mask}u")),
                     r.let(f"nm{g}_{mask}", "f32", f"max(m{g}, pm{g}_{mask})"),
                     r.let(f"a{g}_{mask}", "f32", r.fn("exp", f"m{g} - nm{g}_{mask}")),
                     r.let(f"e{g}_{mask}", "f32", r.fn("exp", f"pm{g}_{mask} - nm{g}_{mask}")),
                     f"l{g} = l{g} * a{g}_{mask} + pl{g}_{mask} * e{g}_{mask};",
                     f"m{g} = nm{g}_{mask};"]
            for c in range(EV):
                other = r.vec4(*(r.shuffle_xor(f"o{g}_{c}.{x}", f"{mask}u") for x in "xyzw"))
                body.append(f"o{g}_{c} = o{g}_{c} * a{g}_{mask} + {other} * e{g}_{mask};")
        b.subgroups = True
        mask *= 2
    # the subgroups through workgroup memory: one run of each writes its state
    b.shared += [("rm", "f32", SG * G), ("rl", "f32", SG * G), ("rw", "f32", SG * G),
                 ("ro", "f32", SG * G * Dv)]
    body.append(r.let("sgi", "u32", f"lid / {sub}"))
    body.append(f"if (lid % {sub} < {KL}) {{")
    for g in range(G):
        body.append(f"    if (lane == 0) {{ rm[sgi * {G} + {g}] = m{g}; rl[sgi * {G} + {g}] = l{g}; }}")
        for c in range(EV):
            for i, x in enumerate("xyzw"):
                body.append(f"    ro[(sgi * {G} + {g}) * {Dv} + 4 * (lane + {c * KL}) + {i}] = "
                            f"o{g}_{c}.{x};")
    body += ["}", r.barrier()]
    # each subgroup's weight per head: exp(its m - the heads' max over subgroups)
    head_max = _max_chain([f"rm[{j} * {G} + i % {G}]" for j in range(SG)])
    body += [f"{r.for_('i', 'lid', str(SG * G), str(wg))} "
             f"rw[i] = {r.fn('exp', f'rm[i] - {head_max}')}; }}", r.barrier()]
    # (query s, head kh * G + g)'s split partial, o[Dv], m, l; or its output o / l
    body.append(r.for_("e", "lid", str(G * Dv), str(wg)))
    body += ["    " + r.let("g", "u32", f"e / {Dv}"), "    " + r.let("d", "u32", f"e % {Dv}"),
             "    " + r.let("ot", "f32", " + ".join(
                 f"rw[{j} * {G} + g] * ro[({j} * {G} + g) * {Dv} + d]" for j in range(SG))),
             "    " + r.let("lt", "f32", " + ".join(
                 f"rw[{j} * {G} + g] * rl[{j} * {G} + g]" for j in range(SG)))]
    if splits == 1:
        body += ["    " + dest.store(r, "ot / lt", "s", f"kh * {G} + g", "d"), "}"]
        return b.finish(body, S * Hkv), step
    body += ["    " + r.let("at", "u32", f"((s * {H} + kh * {G} + g) * {splits} + sp) * {W}"),
             "    " + dest.store(r, "ot", "at + d"),
             "    if (d == 0) {",
             "        " + dest.store(r, _max_chain([f"rm[{j} * {G} + g]" for j in range(SG)]),
                                     f"at + {Dv}"),
             "        " + dest.store(r, "lt", f"at + {Dv + 1}"),
             "    }", "}"]
    return b.finish(body, S * Hkv * splits), step


def _attend(b: Builder, n: Node, q: Accessor, k: Accessor, v: Accessor, pos: Accessor,
            first: str, stop: str, store: Callable[[str, str], str],
            keys: Callable[[], list[str]] = list) -> list[str]:
    """The walk of query s, head h (variables the caller defines) over keys [first, stop)
    (expressions of the position p, the window's first key lo, and what `keys()` defines
    after them), a tile of b.wg keys at a time: each thread scores one key (its Dh products,
    k read four at a time where the cache allows), the tile's max and the exponentials (once
    per key) by workgroup reductions, then the tile's values: each thread one output dim for
    every KG-th key (KG groups of Dv threads, summed at the end), the online softmax
    rescaling across tiles. Ends with `store(value, d)` of each output dim d's unnormalized
    sum (the running max in m, the sum of exponentials in l)."""
    r = b.r
    Dh, Hkv, Dv = q.shape[2], k.shape[1], v.shape[2]
    H = q.shape[1]
    tile = b.wg  # keys per tile: one a thread
    KG = max(1, b.wg // Dv)  # key groups of the value phase
    nd = -(-Dv // b.wg)  # output dims a thread (KG == 1 only)
    cap = n.attrs.get("softcap", 0)
    b.use(q, k, v, pos)
    k4 = k.vec4_param() if Dh % 4 == 0 else None
    if k4 is not None:
        b.params[k4.name] = k4
    b.shared += [("qv", "f32", Dh), ("sc", "f32", tile), ("pv", "u32", 0),
                 ("ored", "f32", KG * Dv)]
    if k4 is not None:
        qk = " + ".join(r.dot4(k.load4(r, "t0 + lid", "kh", str(4 * d)),
                               r.vec4(*(f"qv[{4 * d + i}]" for i in range(4))))
                        for d in range(Dh // 4))
    else:
        qk = " + ".join(f"qv[{d}] * {k.load(r, 't0 + lid', 'kh', str(d))}" for d in range(Dh))
    body = [
        r.let("kh", "u32", f"h / {H // Hkv}"),
        f"{r.for_('d', 'lid', str(Dh), str(b.wg))} qv[d] = {q.load(r, 's', 'h', 'd')}; }}",
        f"if (lid == 0) {{ pv = {pos.load(r, 's')}; }}",
        r.uniform_let("p", "u32", "pv"),
        _window_start(r, n),
        *keys(),
        r.var("m", "f32", r.f(-3e38)), r.var("l", "f32", r.f(0.0)), r.array("o", "f32", nd),
        r.let("dv", "u32", f"lid % {Dv}") if KG > 1 else r.let("dv", "u32", "lid"),
        r.let("kg", "u32", f"lid / {Dv}") if KG > 1 else r.let("kg", "u32", "0"),
        f"{r.for_('t0', first, stop, str(tile))}",
        f"    {r.let('nk', 'u32', f'min({tile}u, {stop} - t0)')}",
        f"    {r.var('sj', 'f32', r.f(-3e38))}",
        f"    if (lid < nk) {{ sj = ({qk}) * {r.f(n.attrs['scale'])}; }}",
    ]
    if cap:
        body.append(f"    if (lid < nk) {{ sj = {_softcap(r, 'sj', cap)}; }}")
    body += ["    " + r.var("mt", "f32", "sj")]
    body += ["    " + x for x in b.reduce_all("mt", "max")]
    body += ["    " + r.let("mn", "f32", "max(m, mt)"),
             "    " + r.let("corr", "f32", r.fn("exp", "m - mn")),
             "    " + r.var("pj", "f32", r.f(0.0)),
             f"    if (lid < nk) {{ pj = {r.fn('exp', 'sj - mn')}; }}",
             "    sc[lid] = pj;",
             "    " + r.var("lt", "f32", "pj")]
    body += ["    " + x for x in b.reduce_all("lt", "+")]  # (its barrier publishes sc too)
    body += ["    l = l * corr + lt;"]
    for e in range(nd):
        d = f"dv + {e * b.wg}" if e else "dv"
        vv = v.load(r, "t0 + j", "kh", d)
        loop = f"{r.for_('j', 'kg', 'nk', str(KG))} o[{e}] = o[{e}] + sc[j] * {vv}; }}"
        guard = f"kg < {KG}" if KG > 1 else f"{d} < {Dv}" if (e + 1) * b.wg > Dv else ""
        body += [f"    o[{e}] = o[{e}] * corr;",
                 f"    if ({guard}) {{ {loop} }}" if guard else f"    {loop}"]
    body += ["    m = mn;", "    " + r.barrier(), "}"]
    if KG > 1:  # the key groups' parts of each output dim summed
        body += [f"if (kg < {KG}) {{ ored[kg * {Dv} + dv] = o[0]; }}", r.barrier(),
                 f"if (lid < {Dv}) {{",
                 "    " + r.let("ot", "f32", " + ".join(f"ored[{g * Dv} + lid]"
                                                      for g in range(KG))),
                 f"    {store('ot', 'lid')}",
                 "}"]
    else:
        for e in range(nd):
            d = f"lid + {e * b.wg}"
            body.append(f"if ({d} < {Dv}) {{ {store(f'o[{e}]', d)} }}")
    return body


def _attention_combine(r: Renderer, n: Node, out: Accessor, pos: Accessor, part: Accessor,
                       splits: int, step: int) -> tuple[KernelSource, int]:
    """The split attention's second launch: one workgroup per (query, head) merges the
    partials of the splits that hold keys (`used`, from the position as the split kernel
    computed it): the splits' maxima and sums are read one a thread (no load waits on
    another), reduced over the workgroup, each split's weight exp(m - max) kept in workgroup
    memory; then each thread its output dims of sum(w o) / sum(w l), its loads of
    ATTN_COMBINE_LOADS splits issued before their sum."""
    S, H, Dv = out.shape
    W = Dv + 2
    b = Builder(r, "attention:combine", ATTN_COMBINE_WG)
    b.use(part, out, pos)
    b.shared += [("sw", "f32", splits), ("pv", "u32", 0)]
    nd = -(-Dv // b.wg)
    UC = ATTN_COMBINE_LOADS
    body = b.group(S * H) + [
        r.let("s", "u32", f"grp / {H}"), r.let("h", "u32", f"grp % {H}"),
        r.let("base", "u32", f"grp * {splits * W}"),
        f"if (lid == 0) {{ pv = {pos.load(r, 's')}; }}",
        r.uniform_let("p", "u32", "pv"), _window_start(r, n), *_split_share(r, splits, step),
        r.var("mx", "f32", r.f(-3e38)),
        f"{r.for_('i', 'lid', 'used', str(b.wg))} "
        f"mx = max(mx, {part.load(r, f'base + i * {W} + {Dv}')}); }}",
        *b.reduce_all("mx", "max"),
        r.var("lsum", "f32", r.f(0.0)),
        r.for_("i", "lid", "used", str(b.wg)),
        "    " + r.let("wt", "f32", r.fn("exp", f"{part.load(r, f'base + i * {W} + {Dv}')} - mx")),
        "    sw[i] = wt;",
        f"    lsum = lsum + wt * {part.load(r, f'base + i * {W} + {Dv + 1}')};",
        "}",
        *b.reduce_all("lsum", "+"),  # (its barriers publish sw too)
    ]
    for e in range(nd):
        body.append(r.var(f"o{e}", "f32", r.f(0.0)))
    body.append(r.for_("j0", "0", "used", str(UC)))
    for u in range(UC):  # splits past `used`: a valid row read, weight 0
        body += ["    " + r.let(f"j{u + 1}", "u32", f"min(j0 + {u}u, used - 1u)"),
                 "    " + r.let(f"w{u}", "f32",
                                r.select(f"j0 + {u}u < used", f"sw[j{u + 1}]", r.f(0.0)))]
    for e in range(nd):
        d = f"lid + {e * b.wg}" if e else "lid"
        dd = f"min({d}, {Dv - 1}u)" if (e + 1) * b.wg > Dv else d
        loads = [part.load(r, f"base + j{u + 1} * {W} + {dd}") for u in range(UC)]
        body.append(f"    o{e} = o{e} + " + " + ".join(f"w{u} * {ld}" for u, ld in enumerate(loads))
                    + ";")
    body.append("}")
    for e in range(nd):
        d = f"lid + {e * b.wg}"
        st = out.store(r, f"o{e} / lsum", "s", "h", d)
        body.append(st if (e + 1) * b.wg <= Dv else f"if ({d} < {Dv}) {{ {st} }}")
    return b.finish(body, S * H)


def _argmax_tree(b: Builder) -> list[str]:
    """Each thread's (best, bi) reduced over the workgroup into red[0], redi[0]: the larger
    value, the lower index on ties (numpy's first maximum)."""
    r = b.r
    b.shared += [("red", "f32", b.wg), ("redi", "u32", b.wg)]
    return ["red[lid] = best;", "redi[lid] = bi;", r.barrier(),
            *_pair_tree(r, b.wg, "red", "redi", "f32")]


def _pair_tree(r: Renderer, wg: int, keys: str, ids: str, ty: str, pad: str = "") -> list[str]:
    """The tree through workgroup memory that leaves the workgroup's best (key, id) pair in
    keys[0], ids[0]: the larger key, the smaller id on ties; a barrier after each level.
    Lines indented by `pad`."""
    lines = []
    s = wg // 2
    while s >= 1:
        lines += [f"{pad}if (lid < {s}) {{",
                  f"{pad}    {r.let('ok', ty, f'{keys}[lid + {s}]')} "
                  f"{r.let('oi', 'u32', f'{ids}[lid + {s}]')}",
                  f"{pad}    if (ok > {keys}[lid] || (ok == {keys}[lid] && oi < {ids}[lid])) "
                  f"{{ {keys}[lid] = ok; {ids}[lid] = oi; }}",
                  f"{pad}}}", pad + r.barrier()]
        s //= 2
    return lines


def argmax_groups(V: int) -> int:
    """Workgroups of argmax's first stage over V values."""
    return -(-V // (ARGMAX_WG * ARGMAX_PER_THREAD))


def argmax(r: Renderer, x: Accessor, out: Accessor, part_v: Accessor, part_i: Accessor,
           feed: Accessor | None = None) -> list[tuple[KernelSource, int]]:
    """Greedy sampling on the device: the index of the first maximum of a (1, V) or (V,)
    tensor into out[0] (i32), in two launches: `argmax_groups(V)` workgroups each take a
    slice (each thread ARGMAX_PER_THREAD values, loaded together) to a (value, index) pair
    in part_v / part_i, then one workgroup takes the pairs to the answer. With `feed` (the
    next decode step's token input) the answer is stored there too, as a valid id (0 for
    logits that are not finite, whose -1 the host reads from `out` and stops on)."""
    V = x.shape[-1]
    lead = ["0"] * (len(x.shape) - 1)
    G, per = argmax_groups(V), ARGMAX_PER_THREAD
    first = Builder(r, "argmax", ARGMAX_WG)
    first.use(x, part_v, part_i)
    body = first.group(G) + [r.var("best", "f32", r.f(-3e38)), r.var("bi", "u32", "0")]
    for e in range(per):  # ascending indices: `>` keeps the first maximum
        i = f"grp * {ARGMAX_WG * per} + {e * ARGMAX_WG} + lid"
        body.append(f"if ({i} < {V}) {{ {r.let(f'v{e}', 'f32', x.load(r, *lead, i))} "
                    f"if (v{e} > best) {{ best = v{e}; bi = {i}; }} }}")
    body += _argmax_tree(first)
    body.append(f"if (lid == 0) {{ {part_v.store(r, 'red[0]', 'grp')} "
                f"{part_i.store(r, r.cast('i32', 'redi[0]'), 'grp')} }}")
    last = Builder(r, "argmax_final", ARGMAX_WG)
    last.use(part_v, part_i, out, *([feed] if feed is not None else []))
    body2 = [r.let("lid", "u32", r.local_id()), r.var("best", "f32", r.f(-3e38)),
             r.var("bi", "u32", "0"),
             r.for_("g", "lid", str(G), str(ARGMAX_WG)),
             f"    {r.let('v', 'f32', part_v.load(r, 'g'))} "
             f"{r.let('vi', 'u32', part_i.load(r, 'g'))}",
             "    if (v > best || (v == best && vi < bi)) { best = v; bi = vi; }",
             "}"]
    body2 += _argmax_tree(last)
    body2.append(f"if (lid == 0) {{ {out.store(r, r.cast('i32', 'redi[0]'), '0')} }}")
    if feed is not None:
        valid = r.select("redi[0] < " + f"{V}u", r.cast("i32", "redi[0]"), "0")
        body2.append(f"if (lid == 0) {{ {feed.store(r, valid, *['0'] * len(feed.shape))} }}")
    return [first.finish(body, G), last.finish(body2, 1)]


TOPK_MAX = 64  # the largest top-k sampled on the device (more: the host samples)
EMPTY = "0xFFFFFFFFu"  # the id of no candidate (its key is 0, below every logit's)


def order_key(r: Renderer, bits: str) -> str:
    """The u32 whose unsigned order is the logits' order, from the f32's bits `bits` (a
    variable): -0 as +0 (equal logits), every NaN above +inf (the host's max is NaN when
    any logit is), and no logit's key 0 (-inf's is 0x007FFFFF)."""
    mag = f"({bits} & 0x7FFFFFFFu)"
    neg = r.select(f"({bits} & 0x80000000u) != 0u && {mag} != 0u", f"~{bits}",
                   f"{bits} | 0x80000000u")
    return r.select(f"{mag} > 0x7F800000u", "0xFFFFFFFFu", neg)


def _topk_rounds(b: Builder, K: int, n: int, id_of: Callable[[int], str],
                 store: Callable[[str, str, str], str]) -> list[str]:
    """K rounds of max-and-exclude over the workgroup: each thread holds keys k0.. k{n-1} of
    ids `id_of(e)` (EMPTY-padded, key 0) and its best (bk, bi); each round the workgroup's
    best pair (larger key, smaller id on ties) is reduced by a tree through workgroup memory,
    `store(round, key, id)` by thread 0, and its owner takes it out and finds its next best."""
    r = b.r
    b.shared += [("redk", "u32", b.wg), ("redi", "u32", b.wg)]

    def rescan() -> list[str]:
        lines = ["bk = 0u;", f"bi = {EMPTY};"]
        for e in range(n):
            lines.append(f"if (k{e} > bk || (k{e} == bk && {id_of(e)} < bi)) "
                         f"{{ bk = k{e}; bi = {id_of(e)}; }}")
        return lines

    body = [r.var("bk", "u32", "0u"), r.var("bi", "u32", EMPTY), *rescan(),
            r.for_("rd", "0u", str(K)),
            "    redk[lid] = bk;", "    redi[lid] = bi;", "    " + r.barrier(),
            *_pair_tree(r, b.wg, "redk", "redi", "u32", "    ")]
    body += ["    " + r.let("wk", "u32", "redk[0]"), "    " + r.let("wi", "u32", "redi[0]"),
             f"    if (lid == 0u) {{ {store('rd', 'wk', 'wi')} }}",
             "    if (wk != 0u && bi == wi) {",
             *(f"        if ({id_of(e)} == wi) {{ k{e} = 0u; }}" for e in range(n)),
             *("        " + x for x in rescan()),
             "    }", "    " + r.barrier(), "}"]
    return body


def topk(r: Renderer, x: Accessor, K: int, part_k: Accessor, part_i: Accessor,
         out: Accessor) -> list[tuple[KernelSource, int]]:
    """Top-k sampling's device half: the K largest logits of a (1, V) or (V,) tensor,
    best first, ties to the smaller id (the host's `sampler._best` order), as out[0:K] =
    their order keys (`order_key`, as i32) and out[K:2K] = their ids, in two launches like
    argmax's: `argmax_groups(V)` workgroups each take K rounds over their slice (each thread
    ARGMAX_PER_THREAD logits) into part_k / part_i[grp * K + round], then one workgroup K
    rounds over all the groups' pairs. V >= K: every answer is a logit."""
    V = x.shape[-1]
    lead = ["0"] * (len(x.shape) - 1)
    G, per, wg = argmax_groups(V), ARGMAX_PER_THREAD, ARGMAX_WG
    first = Builder(r, f"topk{K}", wg)
    first.use(x, part_k, part_i)
    # No `Builder.group` (its `if (grp >= G) { return; }`, never taken here: G groups on one
    # axis): PoCL 3.1 runs this kernel's rounds wrong after an early return (odd threads'
    # logits lost past a few rounds)
    assert G <= MAX_GROUPS
    body = [r.let("grp", "u32", r.group_id(0)), r.let("lid", "u32", r.local_id())]
    for e in range(per):
        i = f"grp * {wg * per} + {e * wg} + lid"
        bits = r.let(f"x{e}", "u32", r.bitcast_u32(x.load(r, *lead, f"i{e}")))
        body += [r.let(f"i{e}", "u32", i), r.var(f"k{e}", "u32", "0u"),
                 f"if (i{e} < {V}) {{ {bits} k{e} = {order_key(r, f'x{e}')}; }}"]
    body += _topk_rounds(
        first, K, per, lambda e: f"i{e}",
        lambda t, k, i: f"{part_k.store(r, r.cast('i32', k), f'grp * {K} + {t}')} "
                        f"{part_i.store(r, r.cast('i32', i), f'grp * {K} + {t}')}")
    N = G * K
    n2 = -(-N // wg)
    last = Builder(r, f"topk{K}_final", wg)
    last.use(part_k, part_i, out)
    body2 = [r.let("lid", "u32", r.local_id())]
    for e in range(n2):
        j = f"{e * wg} + lid"
        body2 += [r.var(f"k{e}", "u32", "0u"), r.var(f"i{e}", "u32", EMPTY)]
        line = (f"k{e} = {r.cast('u32', part_k.load(r, j))}; "
                f"i{e} = {r.cast('u32', part_i.load(r, j))};")
        body2.append(line if (e + 1) * wg <= N else f"if ({j} < {N}) {{ {line} }}")
    body2 += _topk_rounds(
        last, K, n2, lambda e: f"i{e}",
        lambda t, k, i: f"{out.store(r, r.cast('i32', k), t)} "
                        f"{out.store(r, r.cast('i32', i), f'{K} + {t}')}")
    return [first.finish(body, G), last.finish(body2, 1)]


def topk_draw(r: Renderer, pairs: Accessor, u: Accessor, out: Accessor, feed: Accessor,
              K: int, top_p: float, min_p: float, temperature: float) -> tuple[KernelSource, int]:
    """Top-k sampling's last step on the device, so that the next decode step can be queued
    before this one's token is read (`_SamplerKernels.submit`): the host's `_cut` and
    `draw` over `topk`'s K (key, id) pairs (best first) for one uniform u[0] the host's
    generator drew. K threads stage the logits in workgroup memory (one load each, where one
    thread would wait on K loads a pass), then one thread takes the K, cuts them by top-p
    (the candidates while the cumulative probability at temperature 1 is below top_p, and
    one more) and min-p (those at least min_p times the best's probability), and picks the
    first whose cumulative probability at the temperature exceeds u (numpy's `choice`).
    The id goes to out[0] and to `feed` (the next step's token input); logits that are not
    finite give -1 in out[0] (the host stops on it) and 0 in `feed`. In f32 where the host
    works in f64: the same token unless u or top_p falls within rounding of a cumulative
    probability."""
    b = Builder(r, f"topk{K}_draw", TOPK_MAX)
    b.use(pairs, u, out, feed)
    b.shared.append(("lv", "f32", TOPK_MAX))
    k = r.cast("u32", pairs.load(r, "lid"))
    logit = r.bitcast_f32(r.select(f"({k} & 0x80000000u) != 0u", f"{k} ^ 0x80000000u",
                                   f"~{k}"))  # `order_key`'s inverse

    def over(n: str, e: str, *lines: str) -> list[str]:  # for j < n, with e = exp(`e`)
        return [r.for_("j", "0u", n), "    " + r.let("e", "f32", r.fn("exp", e)),
                *("    " + x for x in lines), "}"]

    at_t1, at_t = "lv[j] - v0", f"(lv[j] - v0) * {r.f(1.0 / temperature)}"
    body = [r.let("lid", "u32", r.local_id()),
            f"if (lid < {K}u) {{ lv[lid] = {logit}; }}", r.barrier(),
            "if (lid != 0u) { return; }",
            r.let("v0", "f32", "lv[0]"), r.var("tok", "i32", "-1"),
            f"if (({r.bitcast_u32('v0')} & 0x7F800000u) != 0x7F800000u) {{",
            r.var("total", "f32", r.f(0.0)), *over(f"{K}u", at_t1, "total = total + e;"),
            r.var("n", "u32", f"{K}u")]
    if top_p < 1.0:
        body += [r.var("cum", "f32", r.f(0.0)), r.var("below", "u32", "0u"),
                 *over(f"{K}u", at_t1, "cum = cum + e / total;",
                       f"if (cum < {r.f(top_p)}) {{ below = below + 1u; }}"),
                 "n = min(n, below + 1u);"]
    if min_p > 0.0:
        body += [r.var("kept", "u32", "0u"),
                 *over(f"{K}u", at_t1,
                       f"if (e / total >= {r.f(min_p)} * ({r.f(1.0)} / total)) "
                       "{ kept = kept + 1u; }"),
                 "n = min(n, max(kept, 1u));"]
    body += [r.var("s", "f32", r.f(0.0)), *over("n", at_t, "s = s + e;"),
             r.var("c", "f32", r.f(0.0)), r.var("pick", "u32", "0u"),
             *over("n", at_t, "c = c + e;",
                   f"if (c / s <= {u.load(r, '0')}) {{ pick = pick + 1u; }}"),
             f"tok = {r.cast('i32', pairs.load(r, f'{K}u + min(pick, n - 1u)'))};",
             "}",
             out.store(r, "tok", "0"),
             feed.store(r, r.select("tok >= 0", "tok", "0"), *["0"] * len(feed.shape))]
    return b.finish(body, 1)


def subgroup_probe(r: Renderer, lanes: int) -> KernelSource:
    """What `gpu.probe_subgroups` runs: each thread's f32(lid) summed over its run of `lanes`
    threads by the butterfly of `Builder.shuffle_sum`, into out[lid]."""
    b = Builder(r, "subgroup_probe")
    out = Param("b0", "f32", True)
    b.params[out.name] = out
    body = [r.let("lid", "u32", r.local_id()), r.var("v", "f32", r.cast("f32", "lid"))]
    body += b.shuffle_sum(["v"], lanes)
    body.append(r.store(out, "lid", "v"))
    return b.finish(body, 1)[0]


TEMPLATES: dict[str, Callable] = {
    **{op: elementwise for op in (*UNARY, *BINARY)},
    "rms_norm": rms_norm,
    "add_rms_norm": rms_norm,
    "matmul": matmul,
    "ffn_gate_up": matmul,
    "stacked_matmul": matmul,
    "embedding": embedding,
    "quantize_q8": quantize_q8,
    "kv_write": kv_write,
    "rope": rope,
    "rope_qkv_write": rope_qkv_write,
    "attention": attention,
}


# ops whose launches pass values between them through scratch memory: the f32 words a node
# needs (0: none), from the node and its inputs' shapes, before anything is bound
SCRATCH: dict[str, Callable[[Node, dict[str, tuple[int, ...]]], int]] = {
    "attention": attention_scratch,
}


def scratch_words(n: Node, shapes: dict[str, tuple[int, ...]]) -> int:
    return SCRATCH[n.op](n, shapes) if n.op in SCRATCH else 0


def kernel_for(r: Renderer, n: Node, acc: dict[str, Accessor],
               scratch: Accessor | None = None) -> list[tuple[KernelSource, int]]:
    """The node's launches, in order: one for most ops; two for split-K attention, whose
    partials pass through `scratch` (a flat f32 accessor of `scratch_words` words, free
    again once the node's launches have run)."""
    if n.op not in TEMPLATES:
        raise UnsupportedError(f"no {r.name} kernel for op {n.op!r}")
    got = TEMPLATES[n.op](r, n, acc, scratch) if n.op in SCRATCH else TEMPLATES[n.op](r, n, acc)
    return got if isinstance(got, list) else [got]
