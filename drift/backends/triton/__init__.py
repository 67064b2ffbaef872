"""The Triton backend: NVIDIA (CUDA) and AMD (ROCm) GPUs through Triton kernels and torch.

- device.py     what the GPU is (SMs, shared memory, L2, capability) and the tile sizes
- weights.py    GGUF blocks -> planes on the GPU (no float copy of a quantized weight)
- matmul.py     GEMV (decode) / GEMM (prefill) / embedding templates over the plane kinds
- attention.py  flash-decoding (split-K, GQA) and causal / windowed flash attention
- pointwise.py  rms_norm, rope, kv_write, elementwise
- launch.py     one launcher per kernel
- program.py    a passed graph bound to launches (op -> kernels), arena views, CUDA graph

What the passes may assume is `capabilities()`: which fused ops have kernels here (some for
one token only), int8 dot products for the decode GEMV (dp4a: NVIDIA), 16-byte alignment.
The graph it runs is the one `drift compile --device cuda --dump` shows.

Activations are fp32 (fp32 accumulation everywhere; prefill matrix tiles are fp16 on the
tensor cores); the KV cache is fp16. Without a GPU, `TRITON_INTERPRET=1 DRIFT_TRITON_CPU=1`
runs the same kernels on the CPU through Triton's interpreter (the tests do).
"""

from __future__ import annotations

import importlib.util
import os
import weakref
from typing import Any

from drift.backends.base import Backend, DeviceInfo, HeldBytes
from drift.errors import DeviceError
from drift.formats.gguf import GGUFFile
from drift.ir import TensorSpec
from drift.passes import Capabilities, Compiled

# fused ops with kernels here; those in DECODE_ONLY take one token (one program per row/head)
FUSED_OPS = frozenset({"stacked_matmul", "add_rms_norm", "rope_qkv_write", "rms_norm_q8",
                       "add_rms_norm_q8", "gated_act_q8", "attention_q8"})
DECODE_ONLY = frozenset({"rope_qkv_write", "rms_norm_q8", "add_rms_norm_q8", "gated_act_q8",
                         "attention_q8"})
# weight types the int8-x GEMV reads: 4-bit nibble planes and int8 planes in blocks of 16/32
INT8_WEIGHTS = frozenset({"Q4_0", "Q4_1", "Q4_K", "Q8_0", "Q5_0", "Q5_K", "Q6_K"})


def triton_capabilities(int8_dot: bool, warp_size: int = 32) -> Capabilities:
    """What the passes may assume of the Triton kernels on a device (also for `drift compile
    --device cuda` on a machine without one)."""
    from drift.backends.triton.weights import SUPPORTED

    return Capabilities(alignment=16, channel_slices=False, max_object_bytes=0,
                        weight_types=frozenset(q.name for q in SUPPORTED),
                        quant_planes=False, kernel_planes=True, inplace=True,
                        fused_ops=FUSED_OPS,
                        decode_fused_ops=DECODE_ONLY, int8_dot=int8_dot,
                        int8_weights=INT8_WEIGHTS if int8_dot else frozenset(),
                        subgroup_size=warp_size)

MEMORY_MARGIN = 512 * 2**20  # left free for the CUDA context, Triton and activations


def _available_host_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _fmt(n: int) -> str:
    return f"{n / 2**30:.2f} GiB ({n} bytes)"


class TritonBackend(Backend):
    name = "triton"
    kv_dtype = "f16"
    host_calls = True  # program.py binds a node it has no kernel for to backend.host_ops
    streams_weights = True  # program.py uploads a streamed weight in the step that reads it

    def __init__(self) -> None:
        from dataclasses import replace

        from drift.backends.triton.device import read_device, tune

        self.torch_device, info = read_device()
        self.tuning = tune(info)
        # which measured kernel table runs here, for `drift bench` / `drift tune --show`
        self.info = replace(info, extra={**info.extra,
                                         "kernel_table": self.tuning.table_source or "defaults"})
        if os.environ.get("DRIFT_TRITON_INTGEMV") == "0":  # decode on the float GEMV
            self.tuning = replace(self.tuning, int_gemv=False)
        self.weights: dict[str, Any] = {}
        # stream_weights: name -> the weight in page-locked host memory (QWeight), or the
        # file's TensorInfo where pinning them all would take over half the free host memory
        self.streamed: dict[str, Any] = {}
        self.state: dict[str, Any] = {}
        self.cuda_graphs = (self.torch_device.type == "cuda"
                            and os.environ.get("DRIFT_CUDA_GRAPHS", "1") != "0")
        # DRIFT_TRITON_STACK=0: no stacked Q/K/V and gate/up (one GEMV per weight);
        # DRIFT_TRITON_DENSE=0: prefill GEMM with tiles dequantized in registers only
        self.stack_weights = os.environ.get("DRIFT_TRITON_STACK", "1") != "0"
        self.dense_prefill = os.environ.get("DRIFT_TRITON_DENSE", "1") != "0"
        self._scratch = None
        self._programs: weakref.WeakSet = weakref.WeakSet()  # live programs, for held_bytes

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

    def capabilities(self) -> Capabilities:
        return triton_capabilities(self.tuning.int_gemv, self.info.extra.get("warp_size", 32))

    def supports(self, op: str) -> bool:
        from drift.backends.triton.program import SUPPORTED_OPS

        return op in SUPPORTED_OPS and super().supports(op)

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

    def load_weights(self, model_file: GGUFFile, specs: list[TensorSpec],
                     stacks=()) -> None:
        """Upload each weight in its kernel layout; the groups in `stacks` (the passes'
        stacked matmuls) as one matrix whose row ranges are the members."""
        from drift.backends.triton.weights import stackable, upload, upload_stack

        infos = [model_file.tensors[s.name] for s in specs if s.name not in self.weights]
        self._check_fits("the model's weights", sum(i.nbytes for i in infos))
        wanted = {i.name: i for i in infos}
        if self.stack_weights:
            for group in stacks:
                members = [wanted.get(name) for name in group]
                if any(m is None for m in members) or not stackable(members):
                    continue
                for info, w in zip(members, upload_stack(members, self.torch_device)):
                    self.weights[info.name] = w
        for info in infos:
            if info.name not in self.weights:
                self.weights[info.name] = upload(info, self.torch_device)

    def has_weight(self, name: str) -> bool:
        return name in self.weights or name in self.streamed

    def stream_weights(self, model_file, names) -> None:
        from drift.backends.triton.weights import pinned

        infos = [model_file.tensors[n] for n in names if n not in self.weights]
        pin = (self.torch_device.type == "cuda"
               and sum(i.nbytes for i in infos) < 0.5 * _available_host_memory())
        for info in infos:
            self.streamed[info.name] = pinned(info) if pin else info

    def _weight_bytes(self) -> int:
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

    def held_bytes(self) -> HeldBytes:
        state = sum(t.numel() * t.element_size() for t in self.state.values())
        arena = max((p.arena.numel() for p in self._programs), default=0)
        scratch = self.scratch_bytes() + max((p.scratch_bytes for p in self._programs),
                                             default=0)
        return HeldBytes(self._weight_bytes(), state, arena, scratch)

    def program(self, compiled: Compiled):
        from drift.backends.triton.program import TritonProgram

        prog = TritonProgram(compiled, self)
        self._programs.add(prog)
        return prog

    def launch_counter(self):
        """Counts Triton kernel launches through its launch-enter hook (None where the
        installed Triton has none)."""
        from drift.backends.triton.launch_hook import launch_counter

        return launch_counter()

    def sampler(self, config):
        """Sampling on the GPU (sampling.py) for greedy and top-k up to its candidate limit."""
        from drift.backends.triton.sampling import DeviceSampler

        return DeviceSampler(config, self.torch_device) if DeviceSampler.covers(config) else None

    def synchronize(self) -> None:
        import torch

        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)


BACKEND = TritonBackend
