"""The Triton backend: NVIDIA (CUDA) and AMD (ROCm) GPUs through Triton kernels and torch.

- device.py     what the GPU is (SMs, shared memory, L2, capability) and the tile sizes
- weights.py    GGUF blocks -> planes on the GPU (no float copy of a quantized weight)
- matmul.py     GEMV (decode) / GEMM (prefill) / embedding templates over the plane kinds
- attention.py  flash-decoding (split-K, GQA) and causal / windowed flash attention
- pointwise.py  rms_norm, rope, kv_write, elementwise
- launch.py     one launcher per IR op
- program.py    a compiled graph: static buffers, lifetime-shared activations, CUDA graph

Activations are fp32 (fp32 accumulation everywhere; prefill matrix tiles are fp16 on the
tensor cores); the KV cache is fp16. Without a GPU, `TRITON_INTERPRET=1 DRIFT_TRITON_CPU=1`
runs the same kernels on the CPU through Triton's interpreter (the tests do).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import numpy as np

from drift.backends.base import Backend, DeviceInfo
from drift.errors import DeviceError
from drift.formats.gguf import GGUFFile
from drift.ir import Graph, Role, TensorSpec, storage_name

MEMORY_MARGIN = 512 * 2**20  # left free for the CUDA context, Triton and activations


def _fmt(n: int) -> str:
    return f"{n / 2**30:.2f} GiB ({n} bytes)"


class TritonBackend(Backend):
    name = "triton"
    kv_dtype = "f16"

    def __init__(self) -> None:
        from drift.backends.triton.device import read_device, tune

        self.torch_device, self.info = read_device()
        self.tuning = tune(self.info)
        if os.environ.get("DRIFT_TRITON_INTGEMV") == "0":  # decode on the float GEMV
            from dataclasses import replace

            self.tuning = replace(self.tuning, int_gemv=False)
        self.weights: dict[str, Any] = {}
        self.state: dict[str, Any] = {}
        self.cuda_graphs = (self.torch_device.type == "cuda"
                            and os.environ.get("DRIFT_CUDA_GRAPHS", "1") != "0")
        # DRIFT_TRITON_STACK=0: no stacked Q/K/V and gate/up (one GEMV per weight);
        # DRIFT_TRITON_DENSE=0: prefill GEMM with tiles dequantized in registers only
        self.stack_weights = os.environ.get("DRIFT_TRITON_STACK", "1") != "0"
        self.dense_prefill = os.environ.get("DRIFT_TRITON_DENSE", "1") != "0"
        self._scratch = None

    @classmethod
    def available(cls) -> bool:
        if importlib.util.find_spec("triton") is None or importlib.util.find_spec("torch") is None:
            return False
        from drift.backends.triton.device import interpreting

        if interpreting():
            return True
        import torch

        return torch.cuda.is_available()

    def device(self) -> DeviceInfo:
        return self.info

    # -- memory

    def free_memory(self) -> int:
        import torch

        if self.torch_device.type != "cuda":
            return self.info.memory_bytes
        free, _total = torch.cuda.mem_get_info(self.torch_device)
        return int(free)

    def _check_fits(self, what: str, need: int) -> None:
        free = self.free_memory()
        if need + MEMORY_MARGIN > free:
            raise DeviceError(
                f"{what} needs {_fmt(need)} on {self.info.name}, which has {_fmt(free)} free "
                f"(keeping {MEMORY_MARGIN // 2**20} MiB back): use a smaller model, quant or --ctx"
            )

    def load_weights(self, model_file: GGUFFile, specs: list[TensorSpec]) -> None:
        from drift.backends.triton.weights import stack_groups, upload, upload_stack

        infos = [model_file.tensors[s.name] for s in specs if s.name not in self.weights]
        self._check_fits("the model's weights", sum(i.nbytes for i in infos))
        stacked = set()
        if self.stack_weights:
            for group in stack_groups(infos):
                for info, w in zip(group, upload_stack(group, self.torch_device)):
                    self.weights[info.name] = w
                    stacked.add(info.name)
        for info in infos:
            if info.name not in stacked:
                self.weights[info.name] = upload(info, self.torch_device)

    def weight_bytes(self) -> int:
        total, bases = 0, set()
        for w in self.weights.values():
            if getattr(w, "base", None) is not None:  # stacked: count the stack once
                if id(w.base) not in bases:
                    bases.add(id(w.base))
                    total += w.base.nbytes
            else:
                total += w.nbytes if hasattr(w, "kind") else w.numel() * w.element_size()
        return total

    def scratch(self, numel: int):
        """The fp16 dequantization scratch of the prefill GEMM, shared by every program and
        grown to the largest weight asked for (part of the planned arena)."""
        import torch

        if self._scratch is None or self._scratch.numel() < numel:
            self._scratch = None
            self._check_fits("the fp16 dequantization scratch", 2 * numel)
            self._scratch = torch.empty(numel, dtype=torch.float16, device=self.torch_device)
        return self._scratch

    def scratch_bytes(self) -> int:
        return 0 if self._scratch is None else self._scratch.numel() * 2

    def alloc_state(self, specs: list[TensorSpec]) -> None:
        import torch

        from drift.backends.triton.program import TORCH_DTYPES

        new = [s for s in specs if s.name not in self.state]
        self._check_fits("the KV cache", sum(s.nbytes for s in new))
        for s in new:
            self.state[s.name] = torch.zeros(s.shape, dtype=TORCH_DTYPES[s.dtype],
                                             device=self.torch_device)

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())

    def compile(self, graph: Graph):
        from drift.backends.triton.program import TritonProgram

        missing = [t.name for t in graph.by_role(Role.WEIGHT) if t.name not in self.weights]
        assert not missing, f"weights not loaded: {missing[:3]}"
        self.alloc_state([t for t in graph.by_role(Role.KV) if t.name == storage_name(t.name)])
        return TritonProgram(graph, self)

    def sampler(self, config):
        """Sampling on the GPU (sampling.py) for greedy and top-k up to its candidate limit."""
        from drift.backends.triton.sampling import DeviceSampler

        return DeviceSampler(config, self.torch_device) if DeviceSampler.covers(config) else None

    def synchronize(self) -> None:
        import torch

        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)


def to_host(x) -> np.ndarray:
    return x.detach().float().cpu().numpy()


BACKEND = TritonBackend
