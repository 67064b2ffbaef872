"""What the portable GPU backends share: weights into planes, accessors bound to the plan,
one launch per node, one submission per call.

A backend (`webgpu/`, `opencl/`) is a `Runtime` (its API's buffers, compiler and queue) plus
a renderer; everything here is written once against both:

    load_weights   each weight into the storage its kernels read (quantized: one plane per
                   block field, `QuantBlockPlanes`), each physical object its own buffer, cut
                   into chunks where it exceeds the device's largest binding; no float copy
    program        per node of the passed graph: an accessor per tensor (storage + where its
                   objects are: the arena at the plan's offsets, the weight or cache buffers),
                   the op's template rendered once per distinct launch (`launch_key`: a
                   model's layers share theirs), compiled once per source, bound once;
                   a node of several launches (split-K attention) passes values between them
                   through scratch: a region of the arena past the planned tensors
    run            the inputs written, every launch queued, the outputs read: one submission
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from drift.backends.base import Backend, HeldBytes, Program, weight_stacks
from drift.backends.kernels import quant, templates
from drift.backends.kernels.access import Accessor, Chunk, Obj
from drift.backends.kernels.quant import DEQUANT
from drift.backends.kernels.renderer import KernelSource, Param, Renderer
from drift.backends.kernels.templates import (
    GEMV_LANES,
    GEMV_ROWS,
    TEMPLATES,
    TOPK_MAX,
    argmax,
    argmax_groups,
    kernel_for,
    scratch_words,
    subgroup_probe,
    topk,
    topk_draw,
)
from drift.errors import InvalidArgumentError, UnsupportedError
from drift.formats.gguf import GGUFFile, check_quant_supported
from drift.ir import REGISTRY, Role, TensorSpec, storage_name
from drift.ir.ops import is_view
from drift.passes import Capabilities, Compiled
from drift.passes.storage import Storage, StridedBuffer, align_up, weight_storage

PLAIN_WEIGHTS = ("f32", "f16")
# the fused ops the templates implement
FUSED_OPS = frozenset({"add_rms_norm", "ffn_gate_up", "stacked_matmul", "rope_qkv_write"})
# the weight types the GEMV reads against int8 x (their word readers give `Group.ints`)
INT8_WEIGHTS = frozenset({"Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K"})
# the weight types prefill's int8 GEMM (`templates._gemm_q8`) reads: their word readers' ints,
# and where a block of 256 holds each x block (`quant.XBlock`)
INT8_GEMM_WEIGHTS = frozenset({"Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K"})


def int8_choice(int8_dot: bool | None) -> bool | None:
    """The int8-x GEMV asked for: the argument, else DRIFT_INT8_DOT (0: off, 1: on, emulated
    where the device has no int8 dot product), else None (the default: off)."""
    if int8_dot is not None:
        return int8_dot
    v = os.environ.get("DRIFT_INT8_DOT", "")
    if v not in ("", "0", "1"):
        raise InvalidArgumentError(f"DRIFT_INT8_DOT={v!r}: 0 or 1")
    return None if v == "" else v == "1"


def int8_gemm_choice(r, emulated: bool) -> bool:
    """Whether prefill's matmuls run on the int8 GEMM (x quantized to one-level int8 blocks by
    the quantize pass): DRIFT_INT8_GEMM (0: off, 1: on) where set, else `templates.GEMM_INT8`:
    "always"; "auto" on a GPU (not a CPU driver: `emulated`) whose renderer takes tiled GEMMs
    and spells no matrix units (those are faster); "never"."""
    v = os.environ.get("DRIFT_INT8_GEMM", "")
    if v not in ("", "0", "1"):
        raise InvalidArgumentError(f"DRIFT_INT8_GEMM={v!r}: 0 or 1")
    if v:
        return v == "1"
    mode = templates.GEMM_INT8
    if mode not in ("auto", "always", "never"):
        raise InvalidArgumentError(f"GEMM_INT8 {mode!r}: auto, always or never")
    return mode == "always" or (mode == "auto" and r.tiled_gemm and not r.mma and not emulated)


def _kind(dtype: str) -> str:
    """The kind of buffer an object of this element type is bound as."""
    return dtype if dtype in ("f32", "i32") else "u8"


def _unit(kind: str) -> int:
    return 1 if kind == "u8" else 4


@dataclass
class Timing:
    """One submission's launches timed by the device's own clock (`Runtime.timed`)."""

    seconds: list[float]  # each launch's device time, in launch order
    span: float  # device clock from the first launch's start to the last one's end
    enqueue: float  # host seconds spent recording / enqueueing the launches
    wall: float  # host seconds from the first launch recorded to the results read
    method: str  # how the device timed them (one line, for the report)


class Runtime(ABC):
    """One API's device: buffers, kernel compilation, launches, submission."""

    renderer: Renderer
    binding_alignment: int  # a binding's offset into its buffer is a multiple of this
    max_binding: int  # bytes one binding may span
    subgroup_size: int = 0
    subgroup_lanes: int = 0  # shuffle lanes to try (`probe_subgroups`); 0: no shuffles
    # the renderer's `int8` spelling of the device's int8 dot product ("" none), and the one
    # a test or DRIFT_INT8_DOT=1 gets where there is none (the same sum, byte by byte)
    int8: str = ""
    int8_emulated: str = ""

    @abstractmethod
    def buffer(self, nbytes: int) -> Any:
        """A zeroed device buffer of at least nbytes (a multiple of 4)."""

    @abstractmethod
    def write(self, buf: Any, offset: int, data: np.ndarray) -> None: ...

    @abstractmethod
    def compile(self, k: KernelSource) -> Any:
        """The compiled kernel (the API caches nothing: callers cache by source)."""

    @abstractmethod
    def launch(self, kernel: Any, params: Sequence[Param],
               places: Sequence[tuple[Any, int, int]], groups: int) -> Any:
        """A launch bound once: `places[i]` = (buffer, offset, bytes) of params[i]."""

    @abstractmethod
    def run(self, launches: Sequence[Any], writes: Sequence[tuple[Any, int, np.ndarray]],
            reads: Sequence[tuple[Any, int, int]]) -> list[np.ndarray]:
        """Write, launch all, read back (uint8 arrays): one submission."""

    def submit(self, launches: Sequence[Any], writes: Sequence[tuple[Any, int, np.ndarray]],
               reads: Sequence[tuple[Any, int, int]]) -> Any:
        """`run` without waiting: the submission queued, a ticket returned that `collect`
        turns into the reads (a decode step queued while the one before is on the device:
        `_SamplerKernels.submit`). Here: run at once (a runtime whose `run` waits anyway)."""
        return self.run(launches, writes, reads)

    def collect(self, ticket: Any) -> list[np.ndarray]:
        """The reads of a `submit`, waited for (that submission only, not later ones)."""
        return ticket

    @abstractmethod
    def sync(self) -> None:
        """Wait for everything submitted."""

    def nbytes(self, buf: Any) -> int:
        return buf.size

    def forget(self, buf: Any) -> None:
        """`buf` is no longer used (an outgrown arena): drop what the runtime keeps for it."""

    def timed(self, launches: Sequence[Any],
              writes: Sequence[tuple[Any, int, np.ndarray]]) -> Timing | None:
        """Write, then launch all in one submission with device timestamps around each
        launch; None where the device gives none (`timing_unavailable` says why)."""
        return None

    timing_unavailable = "this runtime has no device timestamps"


def probe_subgroups(rt: Runtime) -> int:
    """The lanes the renderer's `shuffle_xor` exchanges values across on this device: the
    largest power of 2 from the runtime's candidate down whose probe (a kernel of the
    butterfly the reductions use) compiles and sums right here; 0 if none does. (wgpu reports
    subgroup sizes 4 to 128 for NVIDIA's 32 and lavapipe's 8: only running tells. A compiler
    that picks the subgroup size per kernel could give another kernel fewer lanes than the
    probe's; the drivers seen keep one size.)"""
    lanes = rt.subgroup_lanes
    while lanes >= 2:
        if not lanes & (lanes - 1) and _probe(rt, lanes):
            rt.renderer.subgroup_lanes = lanes
            return lanes
        lanes //= 2
    rt.renderer.subgroup_lanes = 0
    return 0


def _probe(rt: Runtime, lanes: int) -> bool:
    rt.renderer.subgroup_lanes = lanes
    try:
        ks = subgroup_probe(rt.renderer, lanes)
        buf = rt.buffer(4 * ks.workgroup)
        launch = rt.launch(rt.compile(ks), ks.params, [(buf, 0, 4 * ks.workgroup)], 1)
        (raw,) = rt.run([launch], [(buf, 0, np.zeros(ks.workgroup, np.float32))],
                        [(buf, 0, 4 * ks.workgroup)])
    except Exception:  # the compiler refused it: no shuffles
        return False
    lid = np.arange(ks.workgroup)
    want = (lid - lid % lanes) * lanes + lanes * (lanes - 1) // 2
    return bool(np.array_equal(raw.view(np.float32), want.astype(np.float32)))


def _signature(a: Accessor | None) -> tuple | None:
    """What a template reads of an accessor: its shape, type, storage and, of each binding,
    the param and the units it is shifted by (not the place it binds: that is the launch's)."""
    if a is None:
        return None
    return (a.shape, a.dtype, repr(a.storage),
            tuple((tuple((c.param, c.shift) for c in o.chunks), o.chunk) for o in a.objs))


def launch_key(n: Any, acc: dict[str, Accessor], scratch: Accessor | None,
               context: tuple) -> tuple:
    """Everything `kernel_for` reads for node `n`: its op and attributes, its inputs' and
    outputs' accessors in order, its scratch, and `context` (`GPUBackend.render_context`).
    Two nodes with one key get the same kernels: a template is a function of these alone."""
    return (n.op, repr(sorted(n.attrs.items())),
            tuple(_signature(acc[x]) for x in (*n.inputs, *n.outputs)), _signature(scratch),
            context)


def _places(params: Sequence[Param], places: dict[str, Any]) -> list[Any]:
    """Where each param is bound (a view, such as an f32x4 one, at its buffer's place)."""
    return [places[p.view_of or p.name] for p in params]


class GPUBackend(Backend):
    """A backend over a `Runtime`: subclasses say how to make one (`make_runtime`)."""

    # quant planes tiled by the decode GEMV's rows on lanes (8 rows): a tile's slots of one
    # block adjacent, so that consecutive threads on consecutive rows read consecutive bytes
    # (the prefill GEMM's weight tiles load faster too: 8B OpenCL pp512 971 -> 1498 tok/s)
    kernel_tile_rows = GEMV_LANES
    # a node's kernels rendered once for all the nodes whose templates read the same things
    # (`kernels_for`: a model's layers, each prompt length's program); False renders each
    render_memo = True

    def __init__(self, max_binding_bytes: int | None = None, int8_dot: bool | None = None,
                 int8_gemm: bool | None = None):
        """int8_dot: decode GEMVs on x as int8 blocks, through the device's int8 dot product
        (emulated where it has none). Off unless asked for (here or DRIFT_INT8_DOT=1): on the
        H200 the int8 GEMVs are faster alone on the large shapes but decode is slower with them
        (the quantize kernels in front; BENCHMARKS.md, "fifth run"). int8_gemm: prefill's
        matmuls on the int8 GEMM (x in one-level int8 blocks); None: as `templates.GEMM_INT8`
        says (`int8_gemm_choice`)."""
        self.rt: Runtime = self.make_runtime()
        probe_subgroups(self.rt)
        self.int8_gemv = bool(int8_choice(int8_dot))
        self.int8_gemm = int8_gemm
        self.rt.renderer.int8 = self.rt.int8 or self.rt.int8_emulated
        self.limit = self.rt.max_binding
        if max_binding_bytes:  # tests: a small limit exercises the split objects cheaply
            self.limit = min(self.limit, max_binding_bytes)
        self.align = max(64, self.rt.binding_alignment)
        self.weights: dict[str, tuple[Storage, list[Obj]]] = {}
        # a weight loaded as rows of a stacked matmul's one matrix: (that matrix's name, shape)
        self.stacked: dict[str, tuple[str, tuple[int, int]]] = {}
        self._host: dict[str, np.ndarray] = {}  # load_arrays' weights, for stacking later
        self.state: dict[str, tuple[Storage, Any]] = {}
        self.arena: Any = None
        self._kernels: dict[str, Any] = {}  # source -> compiled kernel
        # a node's launches by what its templates read (`launch_key`): the same kernels for
        # each layer, and for each prompt length's program, rendered once
        self._rendered: dict[tuple, list[tuple[KernelSource, int, Any]]] = {}
        self.pending: tuple[GPUProgram, list] | None = None  # a call not yet submitted

    @abstractmethod
    def make_runtime(self) -> Runtime: ...

    def capabilities(self) -> Capabilities:
        int8_gemm = (int8_gemm_choice(self.rt.renderer, self.emulated())
                     if self.int8_gemm is None else self.int8_gemm)
        return Capabilities(
            alignment=self.align, channel_slices=False,
            max_object_bytes=self.limit - self.align, quant_planes=True,
            quant_tile_rows=self.kernel_tile_rows, inplace=True, fused_ops=FUSED_OPS,
            int8_dot=self.int8_gemv,
            int8_weights=INT8_WEIGHTS if self.int8_gemv else frozenset(),
            int8_gemm=int8_gemm, int8_gemm_weights=INT8_GEMM_WEIGHTS if int8_gemm else frozenset(),
            gemv_rows=GEMV_ROWS,
            weight_types=frozenset(DEQUANT) | frozenset(PLAIN_WEIGHTS),
            subgroup_size=self.rt.subgroup_size)

    def supports(self, op: str) -> bool:
        return (op in TEMPLATES or is_view(op)) and (not REGISTRY[op].fused or op in FUSED_OPS)

    # -- weights and state

    def load_weights(self, model_file: GGUFFile, specs: list[TensorSpec], stacks=()) -> None:
        """Each weight into its storage; the weights of each group in `stacks` (a stacked
        matmul's) as adjacent rows of one matrix, which one matmul kernel reads."""
        by_name = {s.name: s for s in specs}
        for group in stacks:
            if all(g in by_name for g in group):
                for g in group:
                    check_quant_supported(model_file.tensors[g])
                self._load_stack([by_name[g] for g in group],
                                 [np.asarray(model_file.tensors[g].data) for g in group])
        for s in specs:
            if s.name not in self.stacked:
                info = model_file.tensors[s.name]
                check_quant_supported(info)
                self.load_raw(s.name, s.shape, s.dtype, np.asarray(info.data))

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        for name, a in arrays.items():
            a = np.asarray(a)
            dtype = "f16" if a.dtype == np.float16 else "f32"
            a = a.astype(np.float16 if dtype == "f16" else np.float32)
            self.load_raw(name, a.shape, dtype, a)
            self._host[name] = a  # (tests' small weights) stacked when a program needs it

    def _load_stack(self, specs: list[TensorSpec], data: list[np.ndarray]) -> None:
        """Weights of one type and width as the rows of one matrix named after them all
        (GGUF rows are whole blocks: the file's rows concatenate)."""
        name = "+".join(s.name for s in specs)
        shape = (sum(s.shape[0] for s in specs), specs[0].shape[1])
        self.load_raw(name, shape, specs[0].dtype, np.concatenate(data))
        for s in specs:
            self.stacked[s.name] = (name, shape)
            self.weights.pop(s.name, None)  # (load_arrays' copy) read only through the stack

    def ensure_stacked(self, graph) -> None:
        """Every stacked matmul's weights stacked (load_weights did, given the stacks; weights
        of load_arrays are stacked from their host copies here)."""
        for group in weight_stacks(graph):
            if len({self.stacked.get(g, (g,))[0] for g in group}) == 1 and group[0] in self.stacked:
                continue
            if not all(g in self._host for g in group):
                raise UnsupportedError(f"{self.name}: {', '.join(group)} run as one matmul but "
                                       "were not loaded as its stack (load_weights' stacks)")
            self._load_stack([graph.tensors[g] for g in group], [self._host[g] for g in group])

    def load_raw(self, name: str, shape: tuple[int, ...], dtype: str, data: np.ndarray) -> None:
        """A weight as the file stores it (GGUF blocks for quantized types), converted once
        into its storage's objects on the device."""
        if dtype not in DEQUANT and dtype not in PLAIN_WEIGHTS:
            raise UnsupportedError(f"{self.name}: weight {name} of type {dtype} is not supported")
        st = weight_storage(tuple(shape), dtype, True, self.kernel_tile_rows, self.align)
        objs = []
        for po, arr in zip(st.objects(), st.to_physical(data)):
            objs.append(self._upload(np.ascontiguousarray(arr).view(np.uint8).reshape(-1),
                                     _kind(po.dtype), f"w:{name}:{len(objs)}"))
        self.weights[name] = (st, objs)

    def _upload(self, raw: np.ndarray, kind: str, label: str) -> Obj:
        """One physical object: a buffer, or chunks of at most the binding limit."""
        chunk = raw.nbytes if raw.nbytes <= self.limit else self.limit // 256 * 256
        chunks = []
        for k, at in enumerate(range(0, max(raw.nbytes, 1), chunk)):
            part = raw[at : at + chunk]
            size = align_up(max(part.nbytes, 4), 4)
            buf = self.rt.buffer(size)
            if part.nbytes:
                self.rt.write(buf, 0, part)
            chunks.append(Chunk(Param(f"{label}:{k}", kind, False), (buf, 0, size), 0))
        return Obj(tuple(chunks), chunk // _unit(kind))

    def alloc_state(self, specs: list[TensorSpec]) -> None:
        for s in specs:
            if s.name not in self.state:
                st = StridedBuffer(s.shape, s.dtype, None, self.align)
                if st.nbytes > self.limit:
                    raise UnsupportedError(f"{s.name}: a KV cache above one binding "
                                           f"({self.limit} bytes) is not split yet")
                self.state[s.name] = (st, self.rt.buffer(align_up(st.nbytes, 4)))

    def has_weight(self, name: str) -> bool:
        return name in self.weights or name in self.stacked

    def held_bytes(self) -> HeldBytes:
        w = sum(c.place[2] for _, objs in self.weights.values() for o in objs for c in o.chunks)
        s = sum(self.rt.nbytes(b) for _, b in self.state.values())
        return HeldBytes(w, s, self.rt.nbytes(self.arena) if self.arena is not None else 0)

    def reserve(self, nbytes: int) -> Any:
        """The one arena every program runs from, grown when a program needs more."""
        if self.arena is None or self.rt.nbytes(self.arena) < nbytes:
            if self.arena is not None:
                self.rt.forget(self.arena)
            self.arena = self.rt.buffer(align_up(max(nbytes, 4), 4))
        return self.arena

    def kernel(self, k: KernelSource) -> Any:
        src = self.rt.renderer.render(k)
        if src not in self._kernels:
            self._kernels[src] = self.rt.compile(k)
        return self._kernels[src]

    def kernels_for(self, n: Any, acc: dict[str, Accessor], scratch: Accessor | None,
                    context: tuple) -> list[tuple[KernelSource, int, Any]]:
        """The node's launches (`kernel_for`) with their compiled kernels: rendered once for
        every node whose templates read the same things (`launch_key`) in one `context`
        (`render_context`); with `render_memo` off, every time."""
        def render() -> list[tuple[KernelSource, int, Any]]:
            return [(ks, g, self.kernel(ks)) for ks, g in kernel_for(self.rt.renderer, n, acc,
                                                                      scratch)]

        if not self.render_memo:
            return render()
        key = launch_key(n, acc, scratch, context)
        if key not in self._rendered:
            self._rendered[key] = render()
        return self._rendered[key]

    def render_context(self) -> tuple:
        """What every template reads besides its node: the renderer's settings and the
        kernel modules' constants (tests and bench/drift_with.py change them between
        programs)."""
        r = self.rt.renderer
        consts = tuple((m.__name__, k, repr(v)) for m in (templates, quant)
                       for k, v in sorted(vars(m).items()) if k.isupper())
        return type(r), repr(sorted(vars(r).items())), consts

    def program(self, compiled: Compiled) -> GPUProgram:
        return GPUProgram(compiled, self)

    def synchronize(self) -> None:
        self.flush()
        self.rt.sync()

    def flush(self) -> None:
        """Submit the call `run(feeds, to_host=False)` left for the sampler, if any."""
        if self.pending is not None:
            prog, writes = self.pending
            self.pending = None
            self.rt.run(prog.launches, writes, [])

    def sampler(self, config) -> GreedySampler | TopKSampler | None:
        """Greedy sampling on the device (the argmax joins the step's submission; only the
        token id comes back), and top-k sampling up to TOPK_MAX (the device's top-k joins
        it; the host or, decoding ahead, the device finishes: `TopKSampler`). Other configurations
        (a repetition penalty, top-k off or above TOPK_MAX) sample on the host."""
        if config.repeat_penalty != 1.0:
            return None
        if config.greedy:
            return GreedySampler(self)
        if 0 < config.top_k <= TOPK_MAX:
            return TopKSampler(self, config)
        return None


class GPUProgram(Program):
    def __init__(self, compiled: Compiled, backend: GPUBackend):
        self.compiled, self.graph, self.backend = compiled, compiled.graph, backend
        self.plan, self.storages = compiled.plan, compiled.storages
        assert self.plan is not None
        # scratch past the planned tensors: one region, which each node that needs it uses in
        # turn (its launches run one after another, and it is dead after the node's last)
        shapes = {name: t.shape for name, t in self.graph.tensors.items()}
        self._scratch_words = {id(n): scratch_words(n, shapes) for n in self.graph.nodes
                               if not is_view(n.op)}
        self.scratch_at = align_up(self.plan.arena_bytes, backend.align)
        words = max(self._scratch_words.values(), default=0)
        backend.reserve(self.scratch_at + 4 * words if words else self.plan.arena_bytes)
        backend.ensure_stacked(self.graph)
        for n in self.graph.nodes:
            if not (is_view(n.op) or backend.supports(n.op)):
                raise UnsupportedError(f"{backend.name}: no kernel for {n.op}")
        self._bound: Any = None
        self.launches: list[Any] = []
        self.sources: list[KernelSource] = []
        self._launch_nodes: list[Any] = []  # the node each launch runs
        self._bind()  # kernels compiled and bound now: a call only writes, launches, reads

    # -- binding

    def _obj(self, buf: Any, off: int, nbytes: int, kind: str, writable: bool,
             names: dict) -> Obj:
        a = self.backend.rt.binding_alignment
        base = off - off % a
        size = align_up(off + nbytes - base, 4)
        key = (id(buf), base, size, kind)
        if key not in names:
            names[key] = (Param(f"b{len(names)}", kind, writable), (buf, base, size))
        p, place = names[key]
        return Obj((Chunk(p, place, (off - base) // _unit(kind)),), 0)

    def _accessor(self, name: str, names: dict) -> Accessor:
        b = self.backend
        t = self.graph.tensors[name]
        if t.role == Role.WEIGHT:
            # a stacked weight reads as its whole stack: the stacked matmul's one matrix
            stack, shape = b.stacked.get(name, (name, t.shape))
            st, objs = b.weights[stack]
            # weights' params are named by the kernel: rename them in order of use
            renamed = []
            for o in objs:
                chunks = []
                for c in o.chunks:
                    key = (id(c.place[0]), 0, c.place[2], c.param.kind)
                    if key not in names:
                        names[key] = (Param(f"b{len(names)}", c.param.kind, False), c.place)
                    chunks.append(Chunk(names[key][0], c.place, 0))
                renamed.append(Obj(tuple(chunks), o.chunk))
            return Accessor(name, shape, t.dtype, st, tuple(renamed))
        if t.role == Role.KV:
            st, buf = b.state[storage_name(name)]
            return Accessor(name, t.shape, t.dtype, st,
                            (self._obj(buf, 0, st.nbytes, _kind(t.dtype), True, names),))
        st = self.storages[name]
        base = self.plan.offsets[name]
        objs = tuple(self._obj(b.arena, base + o.offset, o.nbytes, _kind(o.dtype), True, names)
                     for o in st.objects())
        return Accessor(name, t.shape, t.dtype, st, objs)

    def _bind(self) -> None:
        """Render (once per distinct launch), compile (once per source) and bind every node's
        kernel to the current arena; again only when the arena has grown since."""
        b = self.backend
        if self._bound is b.arena:
            return
        self.launches, self.sources, self._launch_nodes = [], [], []
        context = b.render_context()
        for n in self.graph.nodes:
            if is_view(n.op):
                continue
            names: dict = {}
            acc = {x: self._accessor(x, names) for x in (*n.inputs, *n.outputs)}
            words = self._scratch_words[id(n)]
            scratch = self._scratch(words, names) if words else None
            for ks, groups, kernel in b.kernels_for(n, acc, scratch, context):
                places = {p.name: place for p, place in names.values()}
                self.launches.append(b.rt.launch(kernel, ks.params,
                                                 _places(ks.params, places), groups))
                self.sources.append(ks)
                self._launch_nodes.append(n)
        self._bound = b.arena

    def _scratch(self, words: int, names: dict) -> Accessor:
        """A node's scratch: `words` f32 at `scratch_at` of the arena."""
        b = self.backend
        return Accessor("scratch", (words,), "f32", StridedBuffer((words,), "f32", None, b.align),
                        (self._obj(b.arena, self.scratch_at, 4 * words, "f32", True, names),))

    # -- running

    def run(self, feeds: dict[str, np.ndarray], to_host: bool = True,
            fed: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The outputs on the host; with `to_host=False`, `DeviceOutput`s: the call is held
        back until the sampler adds its kernel (or anything else runs first). Inputs in
        `fed` are not written: a kernel queued before this call stores them (the greedy
        sampler's token, `_SamplerKernels.submit`)."""
        self._bind()
        self.backend.flush()
        if not to_host:
            self.backend.pending = (self, self._writes(feeds, fed))
            return {name: DeviceOutput(self, name) for name in self.graph.outputs}
        arena, writes, reads = self.backend.arena, self._writes(feeds, fed), []
        for name in self.graph.outputs:
            reads.append((arena, self.plan.offsets[name], self.storages[name].nbytes))
        got = self.backend.rt.run(self.launches, writes, reads)
        out = {}
        for name, raw in zip(self.graph.outputs, got):
            st = self.storages[name]
            out[name] = np.array(st.from_physical(st.bind(raw)), copy=True)
        return out

    def _writes(self, feeds: dict[str, np.ndarray],
                fed: frozenset[str] = frozenset()) -> list[tuple[Any, int, np.ndarray]]:
        """The inputs (but those `fed` on the device), each laid out by its storage, as
        (arena, offset, bytes). A call always writes the arena first (a graph without inputs
        writes a dead word): PoCL 3.1 crashes running kernels over sub-buffers of a buffer
        last touched by a read."""
        arena = self.backend.arena
        writes = [self.input_write(name, feeds[name]) for name in self.graph.inputs
                  if name not in fed]
        return writes or [(arena, 0, np.zeros(4, np.uint8))]

    def input_write(self, name: str, value: Any) -> tuple[Any, int, np.ndarray]:
        """Input `name` = `value`, laid out by its storage: (arena, offset, bytes)."""
        spec, st = self.graph.tensors[name], self.storages[name]
        x = np.asarray(value, dtype=np.int32 if spec.dtype == "i32" else np.float32)
        block = np.zeros(st.nbytes, dtype=np.uint8)
        st.write(st.bind(block), x.reshape(spec.shape))
        return self.backend.arena, self.plan.offsets[name], block

    def timed(self, feeds: dict[str, np.ndarray], extra: Sequence[Any] = ()) -> Timing | None:
        """One call (its launches, then `extra` launches, e.g. the sampler's) in one
        submission, each launch timed on the device (`Runtime.timed`); outputs not read."""
        self._bind()
        self.backend.flush()
        return self.backend.rt.timed([*self.launches, *extra], self._writes(feeds))

    def launch_nodes(self) -> list[Any]:
        """The node each launch runs, in launch order (`launches[i]` runs `launch_nodes()[i]`;
        a node of several launches appears once for each, in a row)."""
        self._bind()
        return list(self._launch_nodes)

    def profile(self, feeds: dict[str, np.ndarray]) -> list[tuple[Any, float]]:
        """Seconds per node (the sum over its launches): with device timestamps, each
        launch's device time within one submission; without, each node's launches submitted
        alone (after the input writes) and waited for, so the sum exceeds a call's time by
        the submissions."""
        import time

        self.run(feeds)
        timing = self.timed(feeds)
        secs: dict[int, float] = {}
        if timing is not None:
            for n, t in zip(self._launch_nodes, timing.seconds):
                secs[id(n)] = secs.get(id(n), 0.0) + t
            return [(n, secs.get(id(n), 0.0)) for n in self.graph.nodes]
        rt, writes = self.backend.rt, self._writes(feeds)
        for n in self.graph.nodes:
            launches = [x for x, m in zip(self.launches, self._launch_nodes) if m is n]
            if launches:
                t0 = time.perf_counter()
                rt.run(launches, writes, [])
                rt.sync()
                secs[id(n)] = time.perf_counter() - t0
        return [(n, secs.get(id(n), 0.0)) for n in self.graph.nodes]

    def launch_counts(self) -> list[float]:
        self._bind()
        count: dict[int, int] = {}
        for n in self._launch_nodes:
            count[id(n)] = count.get(id(n), 0) + 1
        return [float(count.get(id(n), 0)) for n in self.graph.nodes]



class DeviceOutput:
    """An output left on the device (`run(feeds, to_host=False)`), valid until the next call."""

    def __init__(self, program: GPUProgram, name: str):
        self.program, self.name = program, name

    def reshape(self, *shape) -> DeviceOutput:
        return self  # where it is, as it is: only the sampler reads it

    def __array__(self, dtype=None, copy=None):
        b = self.program.backend
        b.flush()
        st = self.program.storages[self.name]
        (raw,) = b.rt.run([], [], [(b.arena, self.program.plan.offsets[self.name], st.nbytes)])
        x = np.array(st.from_physical(st.bind(raw)), copy=True).reshape(-1)
        return x if dtype is None else x.astype(dtype)


class _SamplerKernels:
    """What the device samplers share: their kernels bound once per program output (again
    when the arena grows), and one submission of the pending call with them."""

    backend: GPUBackend

    def __init__(self, backend: GPUBackend):
        self.backend = backend
        self._launches: dict[tuple[int, str], list[Any]] = {}
        self._partials: dict[int, tuple[Any, Any]] = {}  # first-stage groups -> two buffers

    def kernels(self, r, x: Accessor, small, G: int, feed: Accessor | None = None) -> list:
        """[(KernelSource, groups)] over logits `x`; `small(name, dtype, buf, n)` is an
        accessor of a small buffer, `self._partials[G]` the first stage's two buffers; `feed`
        an input of the next call that the sampled token is stored into (decode ahead)."""
        raise NotImplementedError

    def partial_bytes(self, G: int) -> int:
        raise NotImplementedError

    def launches(self, logits: DeviceOutput, feed: GPUProgram | None = None) -> list[Any]:
        """The kernels bound to `logits` (and to `feed`'s "tokens" input: the sampled token
        stored there for that program's next call)."""
        b, prog = self.backend, logits.program
        if feed is not None:
            feed._bind()
        key = (id(prog), logits.name, id(feed) if feed is not None else None)
        if (key not in self._launches or prog._bound is not b.arena
                or feed is not None and feed._bound is not b.arena):
            names: dict = {}
            x = prog._accessor(logits.name, names)
            into = feed._accessor("tokens", names) if feed is not None else None
            G = argmax_groups(x.shape[-1])
            if G not in self._partials:
                n = self.partial_bytes(G)
                self._partials[G] = (b.rt.buffer(n), b.rt.buffer(n))

            def small(name, dtype, buf, n):
                return Accessor(name, (n,), dtype, StridedBuffer((n,), dtype),
                                (prog._obj(buf, 0, 4 * n, dtype, True, names),))

            self._launches[key] = []
            for ks, groups in self.kernels(b.rt.renderer, x, small, G, into):
                places = {p.name: place for p, place in names.values()}
                self._launches[key].append(b.rt.launch(b.kernel(ks), ks.params,
                                                       _places(ks.params, places), groups))
        return self._launches[key]

    def run_pending(self, logits: DeviceOutput, out, nbytes: int) -> np.ndarray | None:
        """The pending call and these kernels in one submission, `nbytes` of `out` read back;
        None where the call is not pending (already computed: the caller samples on the host
        rather than run a kernel without writing the arena first: PoCL, GPUProgram._writes)."""
        b, prog = self.backend, logits.program
        launches = self.launches(logits)
        if b.pending is None or b.pending[0] is not prog:
            return None
        writes, b.pending = b.pending[1], None
        (raw,) = b.rt.run([*prog.launches, *launches], writes, [(out, 0, nbytes)])
        return raw

    # -- decode ahead: the next step queued before this one's token is read

    token: Any  # the device buffer of the drawn token (i32)

    def draws_on_device(self, logits: DeviceOutput) -> bool:
        return True

    def on_host(self, logits: DeviceOutput) -> int:
        """The token drawn on the host, from the logits brought back."""
        raise NotImplementedError

    def draw_writes(self) -> list[tuple[Any, int, np.ndarray]]:
        """What the kernels need written before each draw (top-k's uniform)."""
        return []

    def submit(self, logits: DeviceOutput, feed: GPUProgram) -> Any:
        """The pending call and the sampler's kernels queued, the token stored into `feed`'s
        "tokens" input as well as read back: `feed.run(..., fed={"tokens"})` may be queued
        behind it before `collect` waits for the token. Where the call is not pending
        (computed already) or the device does not draw, the host's token is written there
        instead."""
        b, prog = self.backend, logits.program
        if self.draws_on_device(logits):
            launches = self.launches(logits, feed)
            if b.pending is not None and b.pending[0] is prog:
                writes, b.pending = b.pending[1], None
                return ("device", b.rt.submit([*prog.launches, *launches],
                                              [*writes, *self.draw_writes()],
                                              [(self.token, 0, 4)]))
        token = self.on_host(logits)
        b.rt.write(*feed.input_write("tokens", [token]))
        return ("host", token)

    def collect(self, ticket: Any) -> int:
        """The token of a `submit` (negative: the logits were not finite)."""
        kind, value = ticket
        if kind == "host":
            return value
        (raw,) = self.backend.rt.collect(value)
        return int(raw.view(np.int32)[0])


class GreedySampler(_SamplerKernels):
    """argmax(logits) on the device: the pending call's launches, then the argmax kernels
    (two stages), submitted together; 4 bytes read back."""

    def __init__(self, backend: GPUBackend):
        super().__init__(backend)
        self.token = backend.rt.buffer(4)

    def partial_bytes(self, G: int) -> int:
        return 4 * G  # (value, index) per group

    def kernels(self, r, x, small, G, feed=None):
        out = small("token", "i32", self.token, 1)
        vals, idx = (small(f"part_{t}", t, buf, G)
                     for t, buf in zip(("f32", "i32"), self._partials[G]))
        return argmax(r, x, out, vals, idx, feed)

    def __call__(self, logits: DeviceOutput, history=()) -> int:
        raw = self.run_pending(logits, self.token, 4)
        if raw is None:
            return self.on_host(logits)
        return int(raw.view(np.int32)[0])

    def on_host(self, logits: DeviceOutput) -> int:
        return int(np.argmax(np.asarray(logits)))


class TopKSampler(_SamplerKernels):
    """Top-k sampling (0 < top_k <= TOPK_MAX, no repetition penalty) with the device's help:
    the pending call's launches, then `templates.topk`'s two stages, in one submission.
    Called (a step at a time), the k (order key, id) pairs come back (8k bytes) and the
    host's `Sampler.from_best` finishes (top-p, min-p, temperature, the draw, with its
    generator): for a seed, the tokens of host sampling. Decoding ahead (`submit`), the
    device finishes too (`templates.topk_draw`, given the uniform the host's generator
    draws next), so that the token can feed the next step on the device: the same tokens
    but where f32 rounding moves a cut. A vocabulary of at most top_k samples on the host."""

    def __init__(self, backend: GPUBackend, config):
        from drift.runtime.sampler import Sampler

        assert not config.greedy and 0 < config.top_k <= TOPK_MAX
        assert config.repeat_penalty == 1.0
        super().__init__(backend)
        self.config, self.k = config, config.top_k
        self.host = Sampler(config)
        self.out = backend.rt.buffer(8 * self.k)
        self.token, self.uniform = backend.rt.buffer(4), backend.rt.buffer(4)

    def partial_bytes(self, G: int) -> int:
        return 4 * G * self.k  # k (key, id) pairs per group

    def kernels(self, r, x, small, G, feed=None):
        K, c = self.k, self.config
        out = small("topk", "i32", self.out, 2 * K)
        keys, ids = (small(f"part_{t}", "i32", buf, G * K)
                     for t, buf in zip(("k", "i"), self._partials[G]))
        launches = topk(r, x, K, keys, ids, out)
        if feed is not None:
            launches.append(topk_draw(r, out, small("uniform", "f32", self.uniform, 1),
                                      small("token", "i32", self.token, 1), feed, K,
                                      c.top_p, c.min_p, c.temperature))
        return launches

    def best(self, logits: DeviceOutput) -> tuple[np.ndarray, np.ndarray] | None:
        """The pending call run with the top-k: (ids, logits) of the k best, best first;
        None where the call is not pending (see `run_pending`)."""
        raw = self.run_pending(logits, self.out, 8 * self.k)
        if raw is None:
            return None
        return raw.view(np.int32)[self.k :].copy(), logits_of_keys(raw.view(np.uint32)[: self.k])

    def __call__(self, logits: DeviceOutput, history=()) -> int:
        if self.draws_on_device(logits):
            got = self.best(logits)
            if got is not None:
                return self.host.from_best(*got)
        return self.on_host(logits)

    def draws_on_device(self, logits: DeviceOutput) -> bool:
        return logits.program.graph.tensors[logits.name].shape[-1] > self.k

    def on_host(self, logits: DeviceOutput) -> int:
        return self.host(np.asarray(logits))

    def draw_writes(self):
        # the generator's next uniform, as the host's draw would take it
        return [(self.uniform, 0, np.array([self.host.rng.random()], np.float32).view(np.uint8))]


def logits_of_keys(keys: np.ndarray) -> np.ndarray:
    """The float32 logits of `templates.order_key`s (NaN for a NaN's)."""
    keys = keys.astype(np.uint32)
    bits = np.where(keys & np.uint32(0x80000000), keys ^ np.uint32(0x80000000), ~keys)
    return bits.astype(np.uint32).view(np.float32)

