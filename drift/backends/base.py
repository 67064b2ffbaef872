"""The interface every backend implements, and the registry that finds them by name.

A backend is small: it describes its device, takes the model's weights once (converting them
into the layout its kernels want), holds the persistent state (KV cache), and compiles a
graph into a `Program` that runs one call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from drift.formats.gguf import GGUFFile
from drift.ir import Graph, TensorSpec


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


class Program(ABC):
    """One compiled graph. `run` feeds the graph inputs and returns its outputs on the host.
    A backend whose `sampler` samples on its device also accepts `run(feeds, to_host=False)`,
    which leaves the outputs where they are (valid until the next run)."""

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Backend(ABC):
    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def available(cls) -> bool:
        """Whether this machine can run the backend (library importable, device present)."""

    @abstractmethod
    def device(self) -> DeviceInfo: ...

    @abstractmethod
    def load_weights(self, model_file: GGUFFile, specs: list[TensorSpec]) -> None:
        """Take the weights the graphs will read, converted once into this backend's layout."""

    @abstractmethod
    def alloc_state(self, specs: list[TensorSpec]) -> None:
        """Allocate the persistent tensors (KV cache) the graphs update in place."""

    def sampler(self, config) -> Any:
        """A callable (device logits, history) -> token id that samples on this backend's
        device with `config` (a SamplerConfig), or None: the host samples."""
        return None

    @abstractmethod
    def compile(self, graph: Graph) -> Program: ...
