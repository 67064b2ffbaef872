"""A compiled graph on the Triton backend.

At compile time every tensor gets its device buffer: weights and the KV cache from the
backend, inputs as static buffers, views (reshape, last_row, the KV updates `name'`) as views,
and activations from a pool where a buffer is reused once its last reader has run (greedy in
execution order, exact size match). Each node becomes one bound launcher, so a call is a flat
list of kernel launches over fixed addresses; on CUDA that list is captured once as a CUDA
graph (after a first eager run that compiles the kernels) and replayed on every later call,
the inputs copied into the static buffers first.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from drift.backends.base import Program
from drift.backends.triton import launch
from drift.ir import Graph, Role, storage_name

TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16,
                "i32": torch.int32, "f64": torch.float64}
VIEW_OPS = ("reshape", "last_row")
ELEMENTWISE = ("add", "mul", "scale", "silu", "gelu", "swiglu", "geglu", "softcap")


class TritonProgram(Program):
    def __init__(self, graph: Graph, backend):
        self.graph = graph
        self.backend = backend
        self.device = backend.torch_device
        self.tu = backend.tuning
        self.env: dict[str, torch.Tensor] = {}
        self.activation_bytes = 0
        self._plan()
        self.steps: list[Callable[[], None]] = [self._bind(n) for n in graph.nodes]
        self.cuda_graph = None
        self.runs = 0

    # -- buffers

    def _plan(self) -> None:
        g, env = self.graph, self.env
        for t in g.tensors.values():
            if t.role == Role.WEIGHT:
                env[t.name] = self.backend.weights[t.name]
            elif t.role == Role.KV and t.name == storage_name(t.name):
                env[t.name] = self.backend.state[t.name]
            elif t.role == Role.INPUT:
                env[t.name] = torch.zeros(t.shape, dtype=TORCH_DTYPES[t.dtype],
                                          device=self.device)
        root: dict[str, str] = {}  # view -> the tensor whose buffer it uses
        last_use: dict[str, int] = {}
        for i, n in enumerate(g.nodes):
            for name in n.inputs:
                last_use[root.get(name, name)] = i
            if n.op in VIEW_OPS:
                root[n.outputs[0]] = root.get(n.inputs[0], n.inputs[0])
        for o in g.outputs:
            last_use[root.get(o, o)] = len(g.nodes)  # outputs live to the end
        pool: dict[tuple[int, torch.dtype], list[torch.Tensor]] = {}
        for i, n in enumerate(g.nodes):
            if n.op in VIEW_OPS:
                src = env[n.inputs[0]]
                spec = g.tensors[n.outputs[0]]
                env[n.outputs[0]] = src.view(spec.shape) if n.op == "reshape" else src[-1:]
            elif g.tensors[n.outputs[0]].role == Role.KV:  # kv_write: in place
                env[n.outputs[0]] = env[storage_name(n.outputs[0])]
            else:
                for name in n.outputs:
                    spec = g.tensors[name]
                    key = (spec.numel, TORCH_DTYPES[spec.dtype])
                    free = pool.get(key)
                    if free:
                        buf = free.pop()
                    else:
                        buf = torch.empty(spec.numel, dtype=key[1], device=self.device)
                        self.activation_bytes += buf.numel() * buf.element_size()
                    env[name] = buf.view(spec.shape)
            for name in set(n.inputs) | set(n.outputs):
                r = root.get(name, name)
                spec = g.tensors[r]
                if spec.role == Role.ACTIVATION and last_use.get(r, -1) <= i and r in env:
                    base = env[r]
                    pool.setdefault((spec.numel, base.dtype), []).append(base.view(-1))
                    last_use[r] = -2  # released once
        self.scratch = None
        S = int(g.meta.get("n_tokens", 0))
        attn = [n for n in g.nodes if n.op == "attention"]
        if S == 1 and attn:
            q, k, v = (g.tensors[x] for x in attn[0].inputs[:3])
            self.scratch = launch.DecodeScratch(q.shape[1], k.shape[1], v.shape[2], k.shape[0],
                                                self.tu, self.device)

    # -- launches

    def _bind(self, n) -> Callable[[], None]:
        env, tu, a = self.env, self.tu, n.attrs
        ins = [env[x] for x in n.inputs]
        out = env[n.outputs[0]]
        op = n.op
        if op in VIEW_OPS:
            return lambda: None
        if op == "embedding":
            return lambda: launch.embedding(ins[0], ins[1], out, tu)
        if op == "matmul":
            return lambda: launch.matmul(ins[0], ins[1], out, tu)
        if op == "rms_norm":
            return lambda: launch.rms_norm(ins[0], ins[1], out, a["eps"],
                                           bool(a.get("unit_offset")), tu)
        if op == "rope":
            f = ins[2] if len(ins) == 3 else None
            return lambda: launch.rope(ins[0], ins[1], f, out, a, tu)
        if op == "kv_write":
            return lambda: launch.kv_write(ins[0], ins[1], ins[2], tu)
        if op == "attention":
            sc = self.scratch
            return lambda: launch.attention(ins[0], ins[1], ins[2], ins[3], out, a, tu, sc)
        if op in ELEMENTWISE:
            b = ins[1] if len(ins) == 2 else None
            value = a.get("cap", 0.0) if op == "softcap" else a.get("value", 0.0)
            return lambda: launch.elementwise(op, ins[0], b, out, tu, value)
        raise NotImplementedError(f"triton backend: no kernel for op {op!r}")

    def _launch_all(self) -> None:
        for step in self.steps:
            step()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name in self.graph.inputs:
            spec = self.graph.tensors[name]
            arr = np.asarray(feeds[name], dtype=np.int32 if spec.dtype == "i32" else np.float32)
            self.env[name].copy_(torch.from_numpy(arr.reshape(spec.shape)))
        if self.cuda_graph is not None:
            self.cuda_graph.replay()
        else:
            self._launch_all()
            if self.backend.cuda_graphs and self.runs == 0:
                self._capture()
        self.runs += 1
        return {o: self.env[o].float().cpu().numpy().copy() for o in self.graph.outputs}

    def _capture(self) -> None:
        """Record the launches (already compiled by the eager run) as one CUDA graph."""
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._launch_all()
        torch.cuda.synchronize(self.device)
        self.cuda_graph = graph
