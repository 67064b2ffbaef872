"""The numpy backend: the executable specification.

Every node runs through its op's numpy reference from the registry, so this backend *is* the
definition of what a graph computes; the GPU backends are tested against it.

Weights: matrices are dequantized to float32 once at load while the float copy stays within a
budget (small models then decode at BLAS speed); past the budget they stay quantized and are
dequantized block of rows by block of rows inside each matmul, so an 8B Q4_0 model runs in
a few GB of memory rather than 32.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from drift.backends.base import Backend, DeviceInfo, Program
from drift.formats import quants
from drift.formats.gguf import GGUFFile, TensorInfo, check_quant_supported
from drift.ir import Graph, Role, TensorSpec, run_reference, storage_name
from drift.ir.ops import REGISTRY

DEFAULT_DEQUANT_BUDGET = 4 * 2**30  # bytes of float32 weights kept dequantized
ROWS_PER_CHUNK = 1024  # rows dequantized at a time for a lazy matmul


class LazyQuantMatrix:
    """A (N, K) weight kept in its GGUF blocks; `matmul_t` dequantizes a slab of rows at a time."""

    def __init__(self, info: TensorInfo):
        self.info = info
        self.shape = info.shape

    def _dequant(self, rows: slice | np.ndarray) -> np.ndarray:
        raw = np.asarray(self.info.data)[rows]
        return quants.dequantize(raw, self.info.qtype, (raw.shape[0], self.shape[1]), self.info.name)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return self._dequant(np.asarray(ids, dtype=np.int64))

    def matmul_t(self, x: np.ndarray) -> np.ndarray:
        n = self.shape[0]
        out = np.empty(x.shape[:-1] + (n,), dtype=np.float32)
        for r0 in range(0, n, ROWS_PER_CHUNK):
            r1 = min(n, r0 + ROWS_PER_CHUNK)
            out[..., r0:r1] = x @ self._dequant(slice(r0, r1)).T
        return out


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 * 2**30


class CPUBackend(Backend):
    name = "cpu"

    def __init__(self, dequant_budget: int | None = None):
        env = os.environ.get("DRIFT_CPU_DEQUANT_BUDGET")
        self.dequant_budget = int(env) if env else (dequant_budget or DEFAULT_DEQUANT_BUDGET)
        self.weights: dict[str, Any] = {}
        self.state: dict[str, np.ndarray] = {}

    @classmethod
    def available(cls) -> bool:
        return True

    def device(self) -> DeviceInfo:
        return DeviceInfo("cpu", "numpy", "cpu", _total_memory(), os.cpu_count() or 1,
                          {"blas": _blas_name()})

    def load_weights(self, model_file: GGUFFile, specs: list[TensorSpec]) -> None:
        infos = [model_file.tensors[s.name] for s in specs]
        for info in infos:
            check_quant_supported(info)
        float_bytes = sum(4 * info.n_elements for info in infos if len(info.shape) == 2)
        keep_float = float_bytes <= self.dequant_budget
        for info in infos:
            if len(info.shape) == 2 and not keep_float:
                self.weights[info.name] = LazyQuantMatrix(info)
            else:
                self.weights[info.name] = model_file.dequantize(info.name)
        self.weights_dequantized = keep_float

    def alloc_state(self, specs: list[TensorSpec]) -> None:
        for s in specs:
            if s.name not in self.state:
                self.state[s.name] = np.zeros(s.shape, dtype=np.dtype(_NP_DTYPES[s.dtype]))

    def compile(self, graph: Graph) -> "CPUProgram":
        missing = [t.name for t in graph.by_role(Role.WEIGHT) if t.name not in self.weights]
        assert not missing, f"weights not loaded: {missing[:3]}"
        self.alloc_state([t for t in graph.by_role(Role.KV) if t.name == storage_name(t.name)])
        return CPUProgram(graph, self)


_NP_DTYPES = {"f32": "float32", "f16": "float16", "f64": "float64", "i32": "int32"}


class CPUProgram(Program):
    def __init__(self, graph: Graph, backend: CPUBackend):
        self.graph = graph
        self.backend = backend
        self.steps = [(REGISTRY[n.op].name, n.inputs, n.outputs, n.attrs) for n in graph.nodes]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        env: dict[str, Any] = dict(self.backend.weights)
        env.update(self.backend.state)
        for name in self.graph.inputs:
            spec = self.graph.tensors[name]
            env[name] = np.asarray(feeds[name], dtype=_NP_DTYPES[spec.dtype]).reshape(spec.shape)
        for op, inputs, outputs, attrs in self.steps:
            results = run_reference(op, [env[i] for i in inputs], attrs)
            for name, value in zip(outputs, results, strict=True):
                env[name] = value
        return {name: env[name] for name in self.graph.outputs}


def _blas_name() -> str:
    try:
        cfg = np.show_config(mode="dicts")
        return cfg["Build Dependencies"]["blas"]["name"]
    except Exception:  # numpy builds without the config dict: not worth failing for
        return "unknown"


BACKEND = CPUBackend
