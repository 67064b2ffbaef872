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
from itertools import pairwise

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
        self.static: set[str] = set()  # outputs of stacked GEMVs: fixed views, never pooled
        self.stacks: dict[str, tuple] = {}  # first member's output -> (base weight, buffer)
        self.share: dict[int, float] = {}  # node index -> its share of its stack's time
        self._plan()
        self.qx = None
        self._qx_of = None  # name of the x the quantized-x buffer holds at this point
        self.scratch_fp16 = self._prefill_scratch()  # prefill GEMM's dequantized weight
        self.fused = self._plan_row_fusion()
        self.steps: list[Callable[[], None]] = [self._bind(n, i)
                                                for i, n in enumerate(graph.nodes)]
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
        if int(g.meta.get("n_tokens", 0)) == 1:
            self._plan_stacks()
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
                    if name in self.static:
                        continue
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
                if (spec.role == Role.ACTIVATION and last_use.get(r, -1) <= i and r in env
                        and r not in self.static):
                    base = env[r]
                    pool.setdefault((spec.numel, base.dtype), []).append(base.view(-1))
                    last_use[r] = -2  # released once
        self.scratch_decode = None  # split-K partials of decode attention
        S = int(g.meta.get("n_tokens", 0))
        attn = [n for n in g.nodes if n.op == "attention"]
        if S == 1 and attn:
            q, k, v = (g.tensors[x] for x in attn[0].inputs[:3])
            sd = launch.DecodeScratch(q.shape[1], k.shape[1], v.shape[2], k.shape[0], self.tu,
                                      self.device)
            self.scratch_decode = sd
            self.activation_bytes += 4 * (sd.m.numel() + sd.l.numel() + sd.acc.numel())

    def _plan_stacks(self) -> None:
        """Decode: matmuls over the row ranges of one stacked weight (weights.STACKS) that read
        the same x become one GEMV over the stack, writing one buffer whose row ranges are
        the members' outputs."""
        g = self.graph
        groups: dict[tuple, list[int]] = {}
        for i, n in enumerate(g.nodes):
            if n.op != "matmul":
                continue
            w = self.env.get(n.inputs[1])
            if getattr(w, "base", None) is not None:
                groups.setdefault((n.inputs[0], id(w.base)), []).append(i)
        for idx in groups.values():
            ws = [self.env[g.nodes[i].inputs[1]] for i in idx]
            base = ws[0].base
            if sum(w.shape[0] for w in ws) != base.shape[0] or len(idx) < 2:
                continue
            buf = torch.empty(base.shape[0], dtype=torch.float32, device=self.device)
            self.activation_bytes += buf.numel() * 4
            for i, w in zip(idx, ws):
                out = g.nodes[i].outputs[0]
                self.env[out] = buf[w.row0 : w.row0 + w.shape[0]].view(g.tensors[out].shape)
                self.static.add(out)
                self.share[i] = w.nbytes / base.nbytes
            self.stacks[g.nodes[idx[0]].outputs[0]] = (base, buf)
            for i in idx[1:]:
                self.stacks[g.nodes[i].outputs[0]] = None  # computed by the first member

    def _prefill_scratch(self):
        """The fp16 scratch for the dense prefill GEMM: the largest quantized weight that a
        matmul of >= tu.dense_min_m rows reads (the backend holds one, shared)."""
        if not getattr(self.backend, "dense_prefill", False):
            return None
        need = 0
        for n in self.graph.nodes:
            if n.op != "matmul":
                continue
            w = self.env[n.inputs[1]]
            x = self.graph.tensors[n.inputs[0]]
            M = x.numel // w.shape[1]
            if getattr(w, "kind", 0) != 0 and M >= self.tu.dense_min_m:
                need = max(need, w.shape[0] * w.shape[1])
                if launch.i8_gemm_ok(w):  # the int8 GEMM's x (and unpacked Q4_0) fit too
                    need = max(need, -(-launch.i8_scratch_bytes(M, *w.shape, True) // 2))
        return self.backend.scratch(need) if need else None

    def _plan_row_fusion(self) -> dict[int, tuple]:
        """Decode: row ops fused with their neighbours and with the int8 quantization of x for
        the GEMVs that read them. {node index: (kind, ...)}; kind "skip" for a node whose
        work another node's kernel does. Patterns:
          add(a, b) -> s; rms_norm(s, w) -> n      one kernel: s, n [, n quantized]
          rms_norm(a, w) -> n                      n [, n quantized]
          swiglu / geglu(g, u) -> y                y, y quantized
        quantized when a matmul reads the output and can use int8 x."""
        g = self.graph
        if int(g.meta.get("n_tokens", 0)) != 1:
            return {}
        readers: dict[str, list] = {}
        for n in g.nodes:
            for x in n.inputs:
                readers.setdefault(x, []).append(n)

        def int_readers(name: str) -> bool:
            rs = readers.get(name, [])
            return self.tu.int_gemv and bool(rs) and all(
                r.op == "matmul" and launch.int_gemv_ok(g.tensors[name].numel,
                                                        self.env[r.inputs[1]])
                for r in rs)

        plan: dict[int, tuple] = {}
        nodes = g.nodes
        for i, n in enumerate(nodes):
            if i in plan:
                continue
            nxt = nodes[i + 1] if i + 1 < len(nodes) else None
            four = nodes[i : i + 4]
            if [m.op for m in four] == ["rope", "rope", "kv_write", "kv_write"]:
                rq, rk, wk, wv = four
                if (rq.attrs == rk.attrs and rq.inputs[1:] == rk.inputs[1:]
                        and wk.inputs[1] == rk.outputs[0] and wk.inputs[2] == rq.inputs[1]
                        and wv.inputs[2] == rq.inputs[1]
                        and readers.get(rk.outputs[0], []) == [wk]):
                    plan[i] = ("rope_kv",)
                    for j in (1, 2, 3):
                        plan[i + j] = ("skip",)
                    continue
            if (n.op == "add" and nxt is not None and nxt.op == "rms_norm"
                    and nxt.inputs[0] == n.outputs[0]
                    and g.tensors[n.inputs[0]].shape == g.tensors[n.inputs[1]].shape
                    and g.tensors[n.outputs[0]].numel == g.tensors[nxt.inputs[1]].numel):
                plan[i] = ("add_norm", i + 1, int_readers(nxt.outputs[0]))
                plan[i + 1] = ("skip",)
            elif n.op == "rms_norm" and g.tensors[n.inputs[0]].numel == g.tensors[n.inputs[1]].numel:
                plan[i] = ("norm", i, int_readers(n.outputs[0]))
            elif (n.op == "attention" and self.scratch_attn_ok(n)
                  and len(readers.get(n.outputs[0], [])) == 1
                  and readers[n.outputs[0]][0].op == "reshape"
                  and int_readers(readers[n.outputs[0]][0].outputs[0])):
                plan[i] = ("attn_quant", readers[n.outputs[0]][0].outputs[0])
            elif (n.op in ("swiglu", "geglu") and int_readers(n.outputs[0])
                  and g.tensors[n.outputs[0]].numel % 32 == 0):
                plan[i] = ("act_quant",)
        return plan

    def scratch_attn_ok(self, n) -> bool:
        """Decode attention whose merge kernel can quantize its output (see launch)."""
        v = self.graph.tensors[n.inputs[2]]
        return launch.attention_quantizes(v.shape[-1])

    def _ensure_qx(self, K: int) -> None:
        if self.qx is None or self.qx.xq.numel() < K:
            Kmax = max([K] + [self.graph.tensors[n.inputs[0]].shape[-1]
                              for n in self.graph.nodes if n.op == "matmul"])
            self.qx = launch.QuantizedX(Kmax, self.device)
            self.activation_bytes += self.qx.nbytes

    def _bind_fused(self, n, i: int) -> Callable[[], None]:
        plan, env, tu, g = self.fused[i], self.env, self.tu, self.graph
        kind = plan[0]
        if kind == "skip":
            return lambda: None
        if kind == "rope_kv":
            rq, rk, wk, wv = g.nodes[i : i + 4]
            q, pos = env[rq.inputs[0]], env[rq.inputs[1]]
            f = env[rq.inputs[2]] if len(rq.inputs) == 3 else None
            k, v = env[rk.inputs[0]], env[wv.inputs[1]]
            qo, kc, vc = env[rq.outputs[0]], env[wk.outputs[0]], env[wv.outputs[0]]
            a = rq.attrs
            return lambda: launch.rope_kv_decode(q, k, v, pos, f, qo, kc, vc, a, tu)
        if kind == "attn_quant":
            ins = [env[x] for x in n.inputs]
            out = env[n.outputs[0]]
            self._ensure_qx(out.numel())
            qx, sc, a = self.qx, self.scratch_decode, n.attrs
            self._qx_of = plan[1]  # the reshape the output projection reads
            return lambda: launch.attention(ins[0], ins[1], ins[2], ins[3], out, a, tu, sc, qx)
        if kind == "act_quant":
            gate, up = env[n.inputs[0]], env[n.inputs[1]]
            out = env[n.outputs[0]]
            self._ensure_qx(out.numel())
            qx = self.qx
            self._qx_of = n.outputs[0]
            gelu = n.op == "geglu"
            return lambda: launch.swiglu_quant(gate, up, out, qx, gelu, tu)
        norm = g.nodes[plan[1]]
        a = norm.attrs
        w = env[norm.inputs[1]]
        out = env[norm.outputs[0]]
        if plan[2]:
            self._ensure_qx(out.numel())
            qx = self.qx
            self._qx_of = norm.outputs[0]
        else:
            qx = None
        if kind == "add_norm":
            x, b, s = env[n.inputs[0]], env[n.inputs[1]], env[n.outputs[0]]
        else:
            x, b, s = env[n.inputs[0]], None, None
        eps, uo = a["eps"], bool(a.get("unit_offset"))
        return lambda: launch.norm_quant(x, b, w, s, out, qx, eps, uo, tu)

    def _gemv(self, xname: str, x: torch.Tensor, w, out: torch.Tensor) -> Callable[[], None]:
        """One decode matmul: on int8 x (quantized here unless the previous GEMV already
        quantized this x) where the weight allows, else the float GEMV."""
        tu = self.tu
        if not (tu.int_gemv and launch.int_gemv_ok(x.numel(), w)):
            self._qx_of = None
            return lambda: launch.matmul(x, w, out, tu)
        self._ensure_qx(x.numel())
        qx = self.qx
        if self._qx_of == xname:
            return lambda: launch.gemv_q8x(qx, w, out, tu)
        self._qx_of = xname

        def step() -> None:
            launch.quantize_x(x.reshape(-1), qx, tu)
            launch.gemv_q8x(qx, w, out, tu)

        return step

    # -- launches

    def _bind(self, n, i: int = -1) -> Callable[[], None]:
        if i in self.fused:
            return self._bind_fused(n, i)
        env, tu, a = self.env, self.tu, n.attrs
        ins = [env[x] for x in n.inputs]
        out = env[n.outputs[0]]
        op = n.op
        if op in VIEW_OPS:
            return lambda: None
        if op == "embedding":
            return lambda: launch.embedding(ins[0], ins[1], out, tu)
        if op == "matmul":
            if n.outputs[0] in self.stacks:
                stack = self.stacks[n.outputs[0]]
                if stack is None:
                    return lambda: None  # its rows come from the first member's GEMV
                base, buf = stack
                return self._gemv(n.inputs[0], ins[0], base, buf)
            if ins[0].numel() == ins[1].shape[1]:
                return self._gemv(n.inputs[0], ins[0], ins[1], out)
            sc = self.scratch_fp16
            return lambda: launch.matmul(ins[0], ins[1], out, tu, sc)
        if op == "rms_norm":
            return lambda: launch.rms_norm(ins[0], ins[1], out, a["eps"],
                                           bool(a.get("unit_offset")), tu)
        if op == "rope":
            f = ins[2] if len(ins) == 3 else None
            return lambda: launch.rope(ins[0], ins[1], f, out, a, tu)
        if op == "kv_write":
            return lambda: launch.kv_write(ins[0], ins[1], ins[2], tu)
        if op == "attention":
            sc = self.scratch_decode
            return lambda: launch.attention(ins[0], ins[1], ins[2], ins[3], out, a, tu, sc)
        if op in ELEMENTWISE:
            b = ins[1] if len(ins) == 2 else None
            value = a.get("cap", 0.0) if op == "softcap" else a.get("value", 0.0)
            return lambda: launch.elementwise(op, ins[0], b, out, tu, value)
        raise NotImplementedError(f"triton backend: no kernel for op {op!r}")

    def _launch_all(self) -> None:
        for step in self.steps:
            step()

    def run(self, feeds: dict[str, np.ndarray], to_host: bool = True) -> dict:
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
        if not to_host:  # for the device sampler: the buffers stay valid until the next run
            return {o: self.env[o] for o in self.graph.outputs}
        return {o: self.env[o].float().cpu().numpy().copy() for o in self.graph.outputs}

    def profile(self, feeds: dict[str, np.ndarray]) -> list:
        """Per node, seconds of its launches alone (CUDA events, eager, after a warm run).
        A stack's one GEMV is shared among its members by their weight bytes."""
        for name in self.graph.inputs:
            spec = self.graph.tensors[name]
            arr = np.asarray(feeds[name], dtype=np.int32 if spec.dtype == "i32" else np.float32)
            self.env[name].copy_(torch.from_numpy(arr.reshape(spec.shape)))
        if self.device.type != "cuda":
            import time

            out = []
            for node, step in zip(self.graph.nodes, self.steps):
                t0 = time.perf_counter()
                step()
                out.append((node, time.perf_counter() - t0))
            return out
        if self.runs == 0:
            self._launch_all()  # compiles
        times = self._graph_step_times()
        # a stack's time sits on its first member: spread it by bytes
        result = []
        stack_total = {}
        for i, node in enumerate(self.graph.nodes):
            if node.op == "matmul" and node.outputs[0] in self.stacks:
                st = self.stacks[node.outputs[0]]
                if st is not None:
                    stack_total[id(st[0])] = times[i]
        for i, node in enumerate(self.graph.nodes):
            t = times[i]
            if i in self.share:
                w = self.env[node.inputs[1]]
                t = stack_total[id(w.base)] * self.share[i]
            result.append((node, t))
        return result

    def _graph_step_times(self) -> list[float]:
        """Seconds of each step inside one CUDA graph of the whole call, from timing events
        recorded between the steps as graph nodes: the kernels run back to back as in a real
        replay (no host launch gaps, the L2 as the previous kernel left it). Launched one by
        one from the host instead, a 2 us kernel reads as its ~20 us of launch."""
        calib = 16  # empty event pairs first: what an interval costs with no kernel in it
        if getattr(self, "_prof", None) is None:
            ev = [torch.cuda.Event(enable_timing=True, external=True)
                  for _ in range(len(self.steps) + 1 + calib)]
            torch.cuda.synchronize(self.device)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for e in ev[:calib]:
                    e.record()
                ev[calib].record()
                for step, e in zip(self.steps, ev[calib + 1:]):
                    step()
                    e.record()
            self._prof = (g, ev)
        g, ev = self._prof
        g.replay()
        torch.cuda.synchronize(self.device)
        gaps = sorted(a.elapsed_time(b) / 1e3 for a, b in pairwise(ev[:calib]))
        self.event_overhead_s = gaps[len(gaps) // 2]
        # each step's interval less the event nodes' own cost (~1.3 us on the H100); a step
        # with no kernel (a view, a fused-away node) reads 0
        return [max(0.0, a.elapsed_time(b) / 1e3 - self.event_overhead_s)
                for a, b in pairwise(ev[calib:])]

    def _capture(self) -> None:
        """Record the launches (already compiled by the eager run) as one CUDA graph."""
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._launch_all()
        torch.cuda.synchronize(self.device)
        self.cuda_graph = graph
