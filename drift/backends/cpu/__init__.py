"""The numpy backend: the executable specification.

Every node runs through its op's numpy reference from the registry, so this backend *is* the
definition of what a graph computes; the GPU backends are tested against it. It runs graphs
the way the GPU backends do, after the same passes (`drift/passes/pipeline.py`):

- fusion: fused graphs run through the fused ops' references (`CPUBackend(fuse=False)`
  compiles without, for the tests that compare the two);
- tensor virtualization: every activation is read and written through the storage the layout
  pass chose for it (4-wide channel slices, several objects for a large tensor, a plain
  buffer), so a wrong coordinate translation gives wrong logits;
- memory planning: every activation is a view of one uint8 arena at its planned offset, so
  two tensors wrongly sharing memory give wrong logits too. Outputs are copied out.

Weights: a file whose matrices are all Q4_0, Q4_1 or Q8_0 keeps them in their blocks
(`NativeQuantMatrix`: the compiled GEMV of `native.py` at decode, slabs dequantized in C for
BLAS at prefill; the weights rebuilt exactly, in float32), so decode reads the file's bytes.
Other files are dequantized to float32 once at load while the float copy stays within a budget;
past it they stay quantized too, so an 8B model runs in a few GB of memory rather than 32:
Q4_0/Q4_1/Q8_0 matrices native, other types converted once into tiled scale/quant planes (the
`QuantBlockPlanes` storage a GPU kernel would read) and dequantized slab by slab inside each
matmul (`LazyQuantMatrix`; also everything where no C compiler is found). Weights never enter
the arena.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from drift.backends.base import Backend, DeviceInfo, HeldBytes, Program
from drift.formats import quants
from drift.formats.gguf import GGUFFile, TensorInfo, check_quant_supported
from drift.ir import REGISTRY, Graph, Role, TensorSpec, storage_name
from drift.ir.ops_fused import RowPart, stacked_rows
from drift.ir.tensor import NUMPY_DTYPES
from drift.passes import Capabilities, Compiled, PassContext, run_pipeline
from drift.passes.storage import BLOCK_FIELDS, QuantBlockPlanes, QuantBlocks, Storage

DEFAULT_DEQUANT_BUDGET = 4 * 2**30  # bytes of float32 weights kept dequantized
ROWS_PER_CHUNK = 1024  # rows dequantized at a time for a lazy matmul (a multiple of the tile)

# What the numpy backend asks of the passes. It could hold any tensor as one flat array; it
# deliberately realises them the way a GPU with images must (channel slices, objects of at
# most 64 KiB), so that the executable specification runs the coordinate translations of
# `drift/passes/storage.py` on every call and a wrong one fails the model tests.
CPU_CAPABILITIES = Capabilities(alignment=64, channel_slices=True, max_object_bytes=1 << 16,
                                quant_planes=False, quant_tile_rows=16, inplace=True)


class LazyQuantMatrix:
    """A (N, K) weight kept quantized, in tiled scale/quant planes converted once at load;
    `matmul_t` dequantizes a slab of rows at a time."""

    def __init__(self, info: TensorInfo, tile_rows: int = 16):
        self.name, self.qtype, self.shape = info.name, info.qtype, info.shape
        shape = (int(info.shape[0]), int(info.shape[1]))
        if info.qtype.name in BLOCK_FIELDS:
            self.storage: Storage = QuantBlockPlanes(shape, info.qtype.name, tile_rows)
        else:
            self.storage = QuantBlocks(shape, info.qtype.name)
        self.objs = self.storage.to_physical(np.asarray(info.data))

    def _blocks(self, r0: int, r1: int) -> np.ndarray:
        if isinstance(self.storage, QuantBlockPlanes):
            return self.storage.rows(self.objs, r0, r1)
        return self.objs[0][r0:r1]

    def _dequant(self, raw: np.ndarray) -> np.ndarray:
        return quants.dequantize(raw, self.qtype, (raw.shape[0], self.shape[1]), self.name)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if isinstance(self.storage, QuantBlockPlanes):
            return self._dequant(self.storage.gather_rows(self.objs, ids))
        return self._dequant(self.objs[0][ids])

    def matmul_t(self, x: np.ndarray) -> np.ndarray:
        n = self.shape[0]
        out = np.empty(x.shape[:-1] + (n,), dtype=np.float32)
        for r0 in range(0, n, ROWS_PER_CHUNK):
            r1 = min(n, r0 + ROWS_PER_CHUNK)
            out[..., r0:r1] = x @ self._dequant(self._blocks(r0, r1)).T
        return out


GEMV_ROWS = 8  # up to this many rows of x, a kept-quantized matmul runs the compiled GEMV
SLAB_FLOATS = 1 << 20  # past it, a kept-quantized matmul dequantizes slabs of about this size


class NativeQuantMatrix:
    """A (N, K) Q4_0 / Q4_1 / Q8_0 weight kept in its blocks (`RowPlanes`: the file's quants,
    f16 scales), multiplied by the compiled GEMV of `native.py` for a few rows of x (decode)
    and by BLAS on slabs dequantized from the same planes for many (prefill). Both rebuild the
    weights exactly as the reference does; only the summation order differs."""

    def __init__(self, name: str, qtype, planes, lib):
        self.name, self.qtype, self.planes, self.lib = name, qtype, planes, lib
        self.shape = (planes.qs.shape[0], planes.K)

    @classmethod
    def from_file(cls, info: TensorInfo, lib) -> NativeQuantMatrix:
        from drift.backends.cpu.native import RowPlanes

        shape = (int(info.shape[0]), int(info.shape[1]))
        return cls(info.name, info.qtype,
                   RowPlanes.from_blocks(np.asarray(info.data), info.qtype.name, shape), lib)

    @property
    def nbytes(self) -> int:
        return self.planes.nbytes

    @classmethod
    def stacked(cls, parts: list[NativeQuantMatrix]) -> NativeQuantMatrix | None:
        """One matrix of the parts' rows one after another (a horizontal fusion's weights:
        one GEMV call instead of one per part), or None where their types or widths differ."""
        from drift.backends.cpu.native import RowPlanes

        first = parts[0].planes
        if any(p.planes.kind != first.kind or p.planes.K != first.K for p in parts):
            return None
        def joined(field: str) -> np.ndarray | None:
            if getattr(first, field) is None:
                return None
            return np.concatenate([getattr(p.planes, field) for p in parts])

        planes = RowPlanes(first.kind, joined("qs"), joined("d"), joined("m"), first.K)
        return cls("+".join(p.name for p in parts), parts[0].qtype, planes, parts[0].lib)

    def __getitem__(self, rows: slice) -> NativeQuantMatrix:
        """Rows r0:r1 as a matrix of their own (views of these planes)."""
        from drift.backends.cpu.native import RowPlanes

        p = self.planes
        part = RowPlanes(p.kind, p.qs[rows], p.d[rows], None if p.m is None else p.m[rows], p.K)
        return NativeQuantMatrix(self.name, self.qtype, part, self.lib)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        from drift.backends.cpu.native import RowPlanes

        p, ids = self.planes, np.asarray(ids, dtype=np.int64)
        sub = RowPlanes(p.kind, p.qs[ids], p.d[ids], None if p.m is None else p.m[ids], p.K)
        return sub.dequantize()

    def matmul_t(self, x: np.ndarray) -> np.ndarray:
        from drift.backends.cpu.native import dequant_rows, gemv_f32

        lead, K = x.shape[:-1], x.shape[-1]
        flat = np.asarray(x, dtype=np.float32).reshape(-1, K)
        if flat.shape[0] <= GEMV_ROWS:
            return gemv_f32(self.lib, self.planes, flat).reshape(*lead, -1)
        n = self.shape[0]
        out = np.empty((flat.shape[0], n), dtype=np.float32)
        rows = min(n, max(ROWS_PER_CHUNK, SLAB_FLOATS // K))  # a slab of ~1 M floats
        slab = np.empty((rows, K), np.float32)
        for r0 in range(0, n, rows):  # dequantized in C (the exact values), then BLAS
            r1 = min(n, r0 + rows)
            part = dequant_rows(self.lib, self.planes, r0, r1, slab[: r1 - r0])
            out[:, r0:r1] = flat @ part.T
        return out.reshape(*lead, n)


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 * 2**30


class CPUBackend(Backend):
    name = "cpu"
    host_calls = True  # a node with a host op runs it instead of its reference

    def __init__(self, dequant_budget: int | None = None, fuse: bool = True,
                 strategy: str = "greedy_by_size", capabilities: Capabilities | None = None,
                 native: bool = True):
        """dequant_budget: float32 bytes of weights kept dequantized (DRIFT_CPU_DEQUANT_BUDGET
        overrides it). Unset, a file whose matrices are all Q4_0/Q4_1/Q8_0 stays in its blocks
        when the C kernels build (`native`): decode reads the file's bytes, not 4x as many
        (SmolLM2: 1.4x faster, 5.6x less memory); any other file is dequantized within
        DEFAULT_DEQUANT_BUDGET."""
        env = os.environ.get("DRIFT_CPU_DEQUANT_BUDGET")
        self.auto_native = not env and dequant_budget is None
        self.dequant_budget = int(env) if env else (
            DEFAULT_DEQUANT_BUDGET if dequant_budget is None else dequant_budget)
        self.fuse = fuse
        self.strategy = strategy
        self.native = native  # kept-quantized Q4_0/Q4_1/Q8_0 through the compiled GEMV
        self._caps = capabilities or CPU_CAPABILITIES
        self.weights: dict[str, Any] = {}
        self.state: dict[str, np.ndarray] = {}
        self.weights_dequantized = True
        self.arena = np.zeros(0, dtype=np.uint8)  # shared by every program: one runs at a time
        self._packed: set[str] = set()

    @classmethod
    def available(cls) -> bool:
        return True

    def device(self) -> DeviceInfo:
        return DeviceInfo("cpu", "numpy", "cpu", _total_memory(), os.cpu_count() or 1,
                          {"blas": _blas_name()})

    def capabilities(self) -> Capabilities:
        # Quantized weights are planes exactly when they were kept quantized at load.
        return replace(self._caps, quant_planes=not self.weights_dequantized)

    def load_weights(self, model_file: GGUFFile, specs: list[TensorSpec],
                     stacks=()) -> None:
        # stacks: packed at compile time from the graph (`_pack`), once they are dequantized
        infos = [model_file.tensors[s.name] for s in specs]
        for info in infos:
            check_quant_supported(info)
        from drift.backends.cpu.native import KINDS, library

        matrices = [info for info in infos if len(info.shape) == 2]
        float_bytes = sum(4 * info.n_elements for info in matrices)
        keep_float = float_bytes <= self.dequant_budget
        if (keep_float and self.auto_native and self.native and matrices
                and all(i.qtype.name in KINDS and i.shape[1] % 32 == 0 for i in matrices)):
            keep_float = library() is None  # all of them run from their blocks
        lib = library() if not keep_float and self.native else None
        for info in infos:
            if len(info.shape) == 2 and not keep_float:
                if lib is not None and info.qtype.name in KINDS and info.shape[1] % 32 == 0:
                    self.weights[info.name] = NativeQuantMatrix.from_file(info, lib)
                else:
                    self.weights[info.name] = LazyQuantMatrix(info, self._caps.quant_tile_rows)
            else:
                self.weights[info.name] = model_file.dequantize(info.name)
        self.weights_dequantized = keep_float

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Weights given as arrays (random weights for graphs without a GGUF file: tests,
        diffusion models)."""
        self.weights.update({k: np.ascontiguousarray(v) for k, v in arrays.items()})

    def alloc_state(self, specs: list[TensorSpec]) -> None:
        for s in specs:
            if s.name not in self.state:
                self.state[s.name] = np.zeros(s.shape, dtype=NUMPY_DTYPES[s.dtype])

    def has_weight(self, name: str) -> bool:
        return name in self.weights

    def supports(self, op: str) -> bool:
        """Every op of the registry: each node runs through its reference. (Which fused ops the
        passes *make* for this backend is `capabilities().fused_ops`.)"""
        return op in REGISTRY

    def lower(self, graph: Graph, dump_dir=None) -> Compiled:
        ctx = PassContext(self.capabilities(), fuse=self.fuse, strategy=self.strategy)
        return run_pipeline(graph, ctx, dump_dir)

    def program(self, compiled: Compiled) -> CPUProgram:
        self._pack(compiled.graph)
        return CPUProgram(compiled, self)

    def held_bytes(self) -> HeldBytes:
        """What the process holds: float copies at their size, lazily dequantized matrices at
        their planes' size (what a matmul streams), the cache, the arena."""
        weights = 0  # packed parts are views that partition their whole: no double count
        for w in self.weights.values():
            if isinstance(w, LazyQuantMatrix):
                weights += sum(o.nbytes for o in w.objs)
            elif isinstance(w, RowPart):  # its share of the stacked blocks
                weights += w.whole.nbytes * w.shape[0] // w.whole.shape[0]
            elif isinstance(w, (NativeQuantMatrix, np.ndarray)):
                weights += w.nbytes
        state = sum(a.nbytes for a in self.state.values())
        return HeldBytes(weights, state, self.arena.nbytes)

    def stored_dtypes(self) -> dict[str, str]:
        ir = {np.dtype(v): k for k, v in NUMPY_DTYPES.items()}
        return {name: ir[w.dtype] for name, w in self.weights.items()
                if isinstance(w, np.ndarray) and w.dtype in ir}

    def _pack(self, graph: Graph) -> None:
        """Concatenate the weights of each horizontal fusion into one array, once: the parts
        become views of adjacent rows, and the fused op's reference runs one matmul."""
        for n in graph.nodes:
            if n.op not in ("stacked_matmul", "ffn_gate_up"):
                continue
            names = list(n.inputs[1 : 1 + n.attrs["n"]] if n.op == "stacked_matmul"
                         else n.inputs[1:3])
            parts = [self.weights[w] for w in names]
            if stacked_rows(parts) is not None or any(w in self._packed for w in names):
                continue
            if all(isinstance(p, NativeQuantMatrix) for p in parts):
                whole = NativeQuantMatrix.stacked(parts)  # in their blocks: RowParts of one
                if whole is None:
                    continue
                at = 0
                for w, p in zip(names, parts):
                    self.weights[w] = RowPart(whole, at, at + p.shape[0])
                    at += p.shape[0]
                self._packed.update(names)
                continue
            if not all(isinstance(p, np.ndarray) and p.ndim == 2 for p in parts):
                continue  # other quantized weights stay apart: slab-wise matmuls
            whole = np.concatenate(parts, axis=0)
            at = 0
            for w, p in zip(names, parts):
                self.weights[w] = whole[at : at + p.shape[0]]
                at += p.shape[0]
            self._packed.update(names)

    def reserve(self, nbytes: int) -> None:
        if self.arena.nbytes < nbytes:
            self.arena = np.zeros(nbytes, dtype=np.uint8)


class CPUProgram(Program):
    """One compiled graph: its steps read and write arena tensors through their storages."""

    def __init__(self, compiled: Compiled, backend: CPUBackend):
        self.compiled = compiled
        self.graph = compiled.graph
        self.storages = compiled.storages
        self.plan = compiled.plan
        self.log = compiled.ctx.log
        self.backend = backend
        assert self.plan is not None
        backend.reserve(self.plan.arena_bytes)
        self.steps = [(self._kernel(n), n.inputs, n.outputs, n.attrs) for n in self.graph.nodes]
        self._bound: np.ndarray | None = None
        self._readers: dict[str, Callable[[], Any]] = {}
        self._writers: dict[str, Callable[[np.ndarray], None]] = {}

    def _kernel(self, n) -> Callable:
        """The node's reference, or the host op the backend was given for it (hybrid
        execution's compiled cold FFN), called with its inputs by name."""
        host = self.backend.host_ops.get(n.op)
        if host is None:
            return REGISTRY[n.op].reference
        return lambda values, attrs, n=n: host(n, dict(zip(n.inputs, values)))

    def _bind(self) -> None:
        """Readers and writers of every tensor, over the backend's current arena."""
        arena = self.backend.arena
        if self._bound is arena:
            return
        readers: dict[str, Callable[[], Any]] = {}
        writers: dict[str, Callable[[np.ndarray], None]] = {}
        for name, off in self.plan.offsets.items():
            st = self.storages[name]
            objs = st.bind(arena[off : off + st.nbytes])
            if st.linear:  # a view of the arena: read as is, written by one copy
                view = st.from_physical(objs)
                readers[name] = lambda v=view: v
                writers[name] = lambda x, v=view: np.copyto(v, x, casting="same_kind")
            else:
                readers[name] = lambda s=st, o=objs: s.from_physical(o)
                writers[name] = lambda x, s=st, o=objs: s.write(o, x)
            if name in self.plan.views:  # the reference returned a view of its input's memory
                writers[name] = lambda x: None
        weights, state = self.backend.weights, self.backend.state
        for t in self.graph.tensors.values():
            if t.role == Role.WEIGHT:  # (a host op's weights live with its kernel: None)
                readers[t.name] = lambda n=t.name: weights.get(n)
            elif t.role == Role.KV:  # updated in place by kv_write: nothing to write back
                persistent = storage_name(t.name)
                readers[t.name] = lambda n=persistent: state[n]
                writers[t.name] = lambda x: None
        self._readers, self._writers, self._bound = readers, writers, arena

    def _call(self, feeds: dict[str, np.ndarray], clock=None) -> list[float]:
        self._bind()
        read, write = self._readers, self._writers
        for name in self.graph.inputs:
            spec = self.graph.tensors[name]
            write[name](np.asarray(feeds[name], dtype=NUMPY_DTYPES[spec.dtype]).reshape(spec.shape))
        times = []
        for ref, inputs, outputs, attrs in self.steps:
            t0 = clock() if clock else 0.0
            results = ref([read[i]() for i in inputs], attrs)
            for name, value in zip(outputs, results, strict=True):
                write[name](value)
            if clock:
                times.append(clock() - t0)
        return times

    def run(self, feeds: dict[str, np.ndarray], to_host: bool = True) -> dict[str, np.ndarray]:
        self._call(feeds)
        # Copied out: the arena is overwritten by the next call.
        read = self._readers
        return {name: np.array(read[name](), copy=True) for name in self.graph.outputs}

    def profile(self, feeds: dict[str, np.ndarray]) -> list:
        """Seconds per node of one call, through the storages and arena as `run` goes."""
        import time

        return list(zip(self.graph.nodes, self._call(feeds, time.perf_counter)))

    def launch_counts(self) -> list[float]:
        return [1.0] * len(self.graph.nodes)  # one dispatch per node: the numpy walk


def _blas_name() -> str:
    try:
        cfg = np.show_config(mode="dicts")
        return cfg["Build Dependencies"]["blas"]["name"]
    except Exception:  # numpy builds without the config dict: not worth failing for
        return "unknown"


BACKEND = CPUBackend
