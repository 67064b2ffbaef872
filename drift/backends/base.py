"""The interface every backend implements.

A backend is small: it describes its device and what the passes may assume of it
(`capabilities`), says which ops it has kernels for (`supports`: hybrid execution partitions a
graph by the answers), takes the model's weights once (converted into the storages its kernels
read), holds the persistent state (KV cache), and turns a *passed* graph into a `Program` that
runs one call. It never fuses, plans memory or re-lays weights on its own: `compile` runs the
one pass pipeline (`drift/passes/pipeline.py`) with the backend's capabilities and hands the
result to `program`, which binds kernels to the plan's arena offsets.

    caps = backend.capabilities()          what the passes specialize on
    backend.supports("add_rms_norm")       a kernel exists for this op
    backend.load_weights(file, specs, stacks)
    prog = backend.compile(graph)          run_pipeline(graph, caps) -> backend.program(compiled)
    prog.run(feeds)                        outputs on the host (or on the device for its sampler)
    backend.held_bytes()                   weights, state, arena, scratch actually held
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from drift.errors import UnsupportedError
from drift.formats.gguf import GGUFFile
from drift.ir import REGISTRY, Graph, Role, TensorSpec, storage_name
from drift.passes import Capabilities, Compiled, PassContext, run_pipeline


@dataclass(frozen=True)
class DeviceInfo:
    backend: str
    name: str
    kind: str  # "cpu" or "gpu"
    memory_bytes: int
    compute_units: int
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        gib = self.memory_bytes / 2**30
        return f"{self.backend}: {self.name} ({self.compute_units} units, {gib:.1f} GiB)"


@dataclass(frozen=True)
class HeldBytes:
    """What a backend holds on its device, in bytes, as allocated (not as the file says)."""

    weights: int  # in the layouts the kernels read (dequantized copies count as floats)
    state: int  # KV cache
    arena: int  # the planned intermediates of the largest compiled program
    scratch: int = 0  # kernel workspaces outside the arena (e.g. a dequantized weight tile)

    @property
    def total(self) -> int:
        return self.weights + self.state + self.arena + self.scratch


class Program(ABC):
    """One compiled graph: `graph` is the passed graph it runs, `compiled` the pipeline's
    result (storages, arena plan). `run` feeds the graph inputs and returns its outputs on
    the host; a backend whose `sampler` samples on its device also accepts
    `run(feeds, to_host=False)`, which leaves the outputs where they are (valid until the
    next run)."""

    graph: Graph
    compiled: Compiled

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray], to_host: bool = True) -> dict[str, Any]: ...

    @property
    def arena_bytes(self) -> int:
        plan = self.compiled.plan
        return plan.arena_bytes if plan is not None else 0

    def profile(self, feeds: dict[str, np.ndarray]) -> list[tuple[Any, float]]:
        """Per node of `graph`, seconds of its kernels in one call (as `run`, cache included).
        Backends that can time their kernels override it."""
        raise UnsupportedError(f"{type(self).__name__} does not time its kernels")

    def launch_counts(self) -> list[float] | None:
        """Kernels launched per node of `graph` in one call, where the backend counts them."""
        return None


class Backend(ABC):
    name: ClassVar[str]
    kv_dtype: ClassVar[str] = "f32"  # element type of the KV cache it keeps
    # Kernels of another device for ops this backend has none for, by op: called with the
    # node and its activation inputs as host arrays, returning its outputs (hybrid execution
    # sets them: drift/hybrid/backend.py); the Triton program binds such a node as a host
    # call (drift/backends/triton/program.py, `HostCall`).
    host_ops: Mapping[str, Callable[[Any, dict[str, np.ndarray]], list[np.ndarray]]] = (
        MappingProxyType({}))
    host_calls: ClassVar[bool] = False  # whether its programs can call `host_ops`
    # whether it can run weights it does not hold, copied in from the file by the node that
    # reads them (`stream_weights`; hybrid prefill of a model larger than the GPU)
    streams_weights: ClassVar[bool] = False

    def stream_weights(self, model_file, names) -> None:
        """Run these weights of `model_file` from host memory: each call copies them to the
        device right before the node that reads them and lets them go after it."""
        raise UnsupportedError(f"the {self.name} backend does not stream weights")

    @classmethod
    @abstractmethod
    def available(cls) -> bool:
        """Whether this machine can run the backend (library importable, device present)."""

    @classmethod
    def emulated(cls) -> bool:
        """Whether the device found is a CPU implementation of a GPU API (lavapipe, PoCL):
        the `auto` device passes over it (the numpy backend is faster there)."""
        return False

    @abstractmethod
    def device(self) -> DeviceInfo: ...

    @abstractmethod
    def capabilities(self) -> Capabilities:
        """What the passes may assume of this device and its kernels."""

    def supports(self, op: str) -> bool:
        """Whether this backend has a kernel for `op`: every op of the registry that is not a
        fused op, and the fused ops its capabilities name."""
        if op not in REGISTRY:
            return False
        return not REGISTRY[op].fused or op in self.capabilities().fused_ops

    # -- weights and state

    @abstractmethod
    def load_weights(self, model_file: GGUFFile, specs: list[TensorSpec],
                     stacks: Sequence[tuple[str, ...]] = ()) -> None:
        """Take the weights the graphs will read, converted once into this backend's layout.
        `stacks`: groups of weights the passes fused into one matmul (`stacked_matmul`), to be
        laid out as adjacent rows of one matrix."""

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Weights given as float arrays (tests, graphs without a GGUF file)."""
        raise UnsupportedError(f"the {self.name} backend takes weights from GGUF files only")

    @abstractmethod
    def alloc_state(self, specs: list[TensorSpec]) -> None:
        """Allocate the persistent tensors (KV cache) the graphs update in place."""

    @abstractmethod
    def held_bytes(self) -> HeldBytes: ...

    def free_memory(self) -> int | None:
        """Bytes the device has free now, where the backend can ask (None: unknown)."""
        return None

    def stored_dtypes(self) -> dict[str, str]:
        """Weights held in another element type than the file's (a dequantized copy): name ->
        the IR dtype held. Analysis counts the bytes a step really reads from it."""
        return {}

    # -- compiling and running

    def lower(self, graph: Graph, dump_dir: str | Path | None = None) -> Compiled:
        """The pass pipeline with this backend's capabilities: fused graph, storages, arena."""
        return run_pipeline(graph, PassContext(self.capabilities()), dump_dir)

    def compile(self, graph: Graph) -> Program:
        compiled = self.lower(graph)
        g = compiled.graph
        missing = [t.name for t in g.by_role(Role.WEIGHT) if not self.has_weight(t.name)]
        if missing:
            raise UnsupportedError(f"weights not loaded: {', '.join(missing[:3])}")
        self.alloc_state([t for t in g.by_role(Role.KV) if t.name == storage_name(t.name)])
        return self.program(compiled)

    @abstractmethod
    def has_weight(self, name: str) -> bool: ...

    @abstractmethod
    def program(self, compiled: Compiled) -> Program:
        """Bind the kernels of a passed graph to its plan."""

    def sampler(self, config) -> Any:
        """A callable (device logits, history) -> token id that samples on this backend's
        device with `config` (a SamplerConfig), or None: the host samples."""
        return None

    def synchronize(self) -> None:
        """Wait for the work queued on the device."""

    def launch_counter(self):
        """A context manager yielding a one-element list that counts kernel launches while
        open, or None where the backend cannot count them (profiling)."""
        return None  # noqa: RET501  (the interface's answer, spelled out)


def weight_stacks(graph: Graph) -> list[tuple[str, ...]]:
    """The weight groups a passed graph runs as one matmul: what `load_weights` lays out
    adjacently."""
    out: list[tuple[str, ...]] = []
    for n in graph.nodes:
        if n.op == "stacked_matmul":
            group = tuple(n.inputs[1 : 1 + n.attrs["n"]])
            if group not in out:
                out.append(group)
    return out
