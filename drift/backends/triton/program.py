"""A passed graph bound to Triton kernels.

The graph comes from the pass pipeline (`drift/passes/pipeline.py`) with the backend's
capabilities: it is already fused (stacked matmuls, add + norm, the decode row ops that
quantize x for the int8 GEMV, RoPE + cache writes) and planned (one arena, an offset per
tensor). This file only binds: every arena tensor becomes a view of one device buffer at the
plan's offset, weights and the KV cache come from the backend, and each node becomes one
bound launcher from `LOWERINGS` (op -> kernels). A call is then a flat list of launches over
fixed addresses; on CUDA that list is captured once as a CUDA graph (after a first eager run
that compiles the kernels) and replayed on every later call, the inputs copied into their
arena slots first.

A node that reads a weight the backend streams (`backend.streamed`: hybrid prefill) uploads
it in its own step to the device in kernel layout (from page-locked host memory, or from the
file: `weights.to_device`, `weights.upload`) and lowers itself over it at every call; the
copy is freed after the node. Such a program is not captured as a CUDA graph (a prefill's few
hundred launches are nothing next to its copies).

A node the backend has no kernel for but `backend.host_ops` names (hybrid execution: an FFN's
cold neurons, `ffn_cold`) is a host call (`HostCall`): its activation inputs are copied to
pinned host memory right after their producers ran (a D2H copy and an event on the stream),
the GPU goes on with the nodes after it that do not need it, the host kernel runs at the
node's place, and its outputs are copied back into their arena slots. Captured, the copies
and the event are nodes of the CUDA graphs (the host's Python on each copy was most of a
decode token's overhead: 33 host calls, 12 ms a token at 2.98 GiB for Llama 3 8B), so the
graphs are cut only where the host computes: one graph from each host call's outputs to the
next one's inputs and on to its node.

Two kinds of memory live outside the arena, as kernel workspaces (`scratch_bytes`): the split-K
partials of decode attention, and the f32 row the fused quantizing kernels also write next to
their int8 blocks (no later kernel reads it).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import numpy as np
import torch

from drift.backends.base import Program
from drift.backends.triton import launch
from drift.backends.triton.launch import QuantizedX
from drift.formats.gguf import TensorInfo
from drift.ir import REGISTRY, Node, Role, storage_name
from drift.ir.tensor import NUMPY_DTYPES
from drift.passes import Compiled
from drift.passes.storage import Q8Blocks

TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16,
                "i32": torch.int32, "f64": torch.float64, "i8": torch.int8, "u8": torch.uint8}
ELEMENTWISE = ("add", "mul", "scale", "silu", "gelu", "swiglu", "geglu", "softcap")


class TritonProgram(Program):
    def __init__(self, compiled: Compiled, backend):
        self.compiled = compiled
        self.graph = compiled.graph
        self.plan = compiled.plan
        assert self.plan is not None, "a Triton program runs a planned graph"
        self.backend = backend
        self.device = backend.torch_device
        self.tu = backend.tuning
        n_tokens = int(self.graph.meta.get("n_tokens", 0))
        self.decode = n_tokens == 1
        self.arena = torch.zeros(max(self.plan.arena_bytes, 16), dtype=torch.uint8,
                                 device=self.device)
        self.env: dict[str, object] = {}
        self._bind_tensors()
        self.scratch_bytes = 0
        self.scratch_decode = self._decode_attention_scratch()
        self.row = self._row_scratch()
        self.scratch_fp16 = self._prefill_scratch()
        self.host_calls: dict[int, HostCall] = {}
        self.streams = False  # whether a node streams its weights (then no CUDA graph)
        self.steps: list[Callable[[], None]] = [self._bind(n, i)
                                                for i, n in enumerate(self.graph.nodes)]
        self.schedule = self._schedule()
        self.cuda_graph = None
        self.runs = 0

    # -- buffers: the plan's offsets, nothing else

    def _view(self, offset: int, nbytes: int, dtype: str, shape) -> torch.Tensor:
        return self.arena[offset : offset + nbytes].view(TORCH_DTYPES[dtype]).view(shape)

    def _bind_tensors(self) -> None:
        g, plan, storages = self.graph, self.plan, self.compiled.storages
        for name, off in plan.offsets.items():
            spec, st = g.tensors[name], storages[name]
            if isinstance(st, Q8Blocks):
                planes = [self._view(off + o.offset, o.nbytes, o.dtype, o.shape)
                          for o in st.objects()]
                self.env[name] = QuantizedX(*planes)
            else:
                assert st.linear, f"{name}: the Triton kernels read row-major buffers ({st})"
                self.env[name] = self._view(off, spec.nbytes, spec.dtype, spec.shape)
        for t in g.tensors.values():
            if t.role == Role.WEIGHT:  # a host call's weights live with its kernel
                if t.name in self.backend.weights:
                    self.env[t.name] = self.backend.weights[t.name]
            elif t.role == Role.KV:  # updates in place: every version is the cache itself
                self.env[t.name] = self.backend.state[storage_name(t.name)]

    def buffer_offsets(self) -> dict[str, int]:
        """Byte offset in the arena of every arena tensor's device buffer (the first plane of a
        q8x tensor): what a test compares with the plan."""
        base = self.arena.data_ptr()
        out = {}
        for name in self.plan.offsets:
            t = self.env[name]
            out[name] = (t.xq if isinstance(t, QuantizedX) else t).data_ptr() - base
        return out

    def _decode_attention_scratch(self):
        attn = [n for n in self.graph.nodes if n.op in ("attention", "attention_q8")]
        if not (self.decode and attn):
            return None
        q, k, v = (self.graph.tensors[x] for x in attn[0].inputs[:3])
        sd = launch.DecodeScratch(q.shape[1], k.shape[1], v.shape[2], k.shape[0], self.tu,
                                  self.device)
        self.scratch_bytes += 4 * (sd.m.numel() + sd.l.numel() + sd.acc.numel())
        return sd

    def _row_scratch(self):
        """The f32 row the quantizing decode kernels write beside their blocks."""
        widest = 0
        for n in self.graph.nodes:
            if n.op in ("rms_norm_q8", "add_rms_norm_q8", "gated_act_q8", "attention_q8"):
                widest = max(widest, self.graph.tensors[n.outputs[-1]].numel)
        if not widest:
            return None
        self.scratch_bytes += 4 * widest
        return torch.empty(widest, dtype=torch.float32, device=self.device)

    def _prefill_scratch(self):
        """The fp16 scratch of the dense prefill GEMM: the largest quantized weight that a
        matmul of >= tu.dense_min_m rows reads (the backend holds one, shared)."""
        if not self.backend.dense_prefill:
            return None
        need = 0
        for n in self.graph.nodes:
            if n.op not in ("matmul", "stacked_matmul"):
                continue
            x = self.graph.tensors[n.inputs[0]]
            for wname in n.inputs[1 : 1 + n.attrs.get("n", 1)]:
                w = self.graph.tensors[wname]  # (a streamed one is not in env yet)
                quantized = w.dtype not in TORCH_DTYPES
                if quantized and x.numel // w.shape[1] >= self.tu.dense_min_m:
                    need = max(need, w.shape[0] * w.shape[1])
        return self.backend.scratch(need) if need else None

    # -- launches: one bound step per node

    def _bind(self, n: Node, index: int) -> Callable[[], None]:
        if REGISTRY[n.op].view:
            return lambda: None
        host = self.backend.host_ops.get(n.op)  # first: its weights may not be here
        if host is not None:
            call = HostCall(self, n, host)
            self.host_calls[index] = call
            return call.eager
        lower = LOWERINGS.get(n.op)
        if lower is None:
            raise NotImplementedError(f"triton backend: no kernel for op {n.op!r}")
        streamed = [w for w in n.inputs if w in self.backend.streamed]
        if streamed:
            self.streams = True
            return lambda: self._run_streamed(n, lower, streamed)
        return lower(self, n)

    def _run_streamed(self, n: Node, lower, names: list[str]) -> None:
        """The node over its streamed weights, uploaded for this call and dropped after."""
        from drift.backends.triton.weights import to_device, upload

        for name in names:
            w = self.backend.streamed[name]
            self.env[name] = (upload(w, self.device) if isinstance(w, TensorInfo)
                              else to_device(w, self.device))
        try:
            lower(self, n)()
        finally:
            for name in names:
                del self.env[name]

    def _schedule(self) -> list:
        """The call in order: runs of GPU launches (lists of steps) and host-call phases
        (`send` right after the last producer of the call's inputs, `receive` at its node)."""
        producer = {o: i for i, n in enumerate(self.graph.nodes) for o in n.outputs}
        sends: dict[int, list[HostCall]] = {}
        for i, call in self.host_calls.items():
            after = max((producer.get(x, -1) for x in call.input_names), default=-1)
            sends.setdefault(after, []).append(call)
        out: list = [[]]
        for call in sends.get(-1, []):
            out += [call.send, []]
        for i, step in enumerate(self.steps):
            if i in self.host_calls:
                out += [self.host_calls[i].receive, []]
            else:
                out[-1].append(step)
            for call in sends.get(i, []):
                out += [call.send, []]
        return [item for item in out if item != []]

    def _launch_all(self) -> None:
        for item in self.schedule:
            if isinstance(item, list):
                for step in item:
                    step()
            else:
                item()

    def _feed(self, feeds: dict[str, np.ndarray]) -> None:
        for name in self.graph.inputs:
            spec = self.graph.tensors[name]
            arr = np.asarray(feeds[name], dtype=NUMPY_DTYPES[spec.dtype])
            self.env[name].copy_(torch.from_numpy(arr.reshape(spec.shape)))

    def run(self, feeds: dict[str, np.ndarray], to_host: bool = True) -> dict:
        self._feed(feeds)
        if self.cuda_graph is not None:
            for item in self.cuda_graph:
                item() if callable(item) else item.replay()
        else:
            self._launch_all()
            if self.backend.cuda_graphs and self.runs == 0 and not self.streams:
                self._capture()
        self.runs += 1
        if not to_host:  # for the device sampler: the buffers stay valid until the next run
            return {o: self.env[o] for o in self.graph.outputs}
        return {o: self._to_host(o) for o in self.graph.outputs}

    def _to_host(self, name: str) -> np.ndarray:
        """A tensor's logical value on the host, read through its storage."""
        t = self.env[name]
        if isinstance(t, QuantizedX):
            planes = [p.cpu().numpy() for p in (t.xq, t.xr, t.xd, t.xs)]
            return self.compiled.storages[name].from_physical(planes)
        return t.float().cpu().numpy().copy()

    def launch_counts(self) -> list[float] | None:
        """Triton launches of each step of one eager call (the current inputs)."""
        counter = self.backend.launch_counter()
        if counter is None:
            return None
        counts: list[float] = []
        with counter as box:
            for step in self.steps:
                n0 = box[0]
                step()
                counts.append(float(box[0] - n0))
        self.backend.synchronize()
        return counts if sum(counts) > 0 else None

    def profile(self, feeds: dict[str, np.ndarray]) -> list:
        """Per node, seconds of its launches (CUDA events inside one captured graph, after a
        warm run; on the interpreter, wall time per step)."""
        self._feed(feeds)
        if self.device.type != "cuda" or self.host_calls:  # host calls: not in one graph
            import time

            out = []
            for node, step in zip(self.graph.nodes, self.steps):
                t0 = time.perf_counter()
                step()
                self.backend.synchronize()
                out.append((node, time.perf_counter() - t0))
            return out
        if self.runs == 0:
            self._launch_all()  # compiles
        return list(zip(self.graph.nodes, self._graph_step_times()))

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
        # with no kernel (a view) reads 0
        return [max(0.0, a.elapsed_time(b) / 1e3 - self.event_overhead_s)
                for a, b in pairwise(ev[calib:])]

    def _capture(self) -> None:
        """Record the launches (already compiled by the eager run) as CUDA graphs: one, or,
        with host calls, one per stretch between two host computations: a host call's input
        copies and event (`send`) and its output copies (`upload`) are captured with the
        launches around them, its kernel (`compute`) stays host code between two graphs."""
        torch.cuda.synchronize(self.device)
        stretches: list = [[]]  # lists of capturable steps, and host computations between
        for item in self.schedule:
            if isinstance(item, list):
                stretches[-1] += item
            elif item.__func__ is HostCall.send:  # copies and an event: captured in place
                stretches[-1].append(item)
            else:  # a receive: the host computes, the copies back start the next graph
                call = item.__self__
                stretches += [call.compute, [call.upload]]
        replay: list = []
        for item in stretches:
            if not isinstance(item, list):
                replay.append(item)
            elif item:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    for step in item:
                        step()
                replay.append(graph)
        torch.cuda.synchronize(self.device)
        self.cuda_graph = replay


class HostCall:
    """A node run by a host kernel (`backend.host_ops[op](node, inputs) -> outputs`, numpy
    arrays) inside a GPU program: inputs out after their producers, outputs back at the node."""

    def __init__(self, p: TritonProgram, n: Node, kernel):
        g = p.graph
        self.node, self.kernel, self.device = n, kernel, p.device
        self.input_names = [x for x in n.inputs if g.tensors[x].role != Role.WEIGHT]
        self.inputs = [p.env[x] for x in self.input_names]
        self.outputs = [p.env[o] for o in n.outputs]
        if any(isinstance(t, QuantizedX) for t in self.inputs + self.outputs):
            raise NotImplementedError(f"{n.op}: a host call takes plain tensors")
        pin = p.device.type == "cuda"
        self.host_in = [torch.empty(t.shape, dtype=t.dtype, pin_memory=pin) for t in self.inputs]
        self.host_out = [torch.empty(t.shape, dtype=t.dtype, pin_memory=pin)
                         for t in self.outputs]
        # external: recorded by a CUDA graph that captured it at each replay (the host waits
        # on that record, not on the graph's end)
        self.event = torch.cuda.Event(external=True) if pin else None
        # numpy views of the pinned buffers, made once (a decode token calls each layer's)
        self.in_arrays = [h.numpy() for h in self.host_in]
        self.out_arrays = [h.numpy() for h in self.host_out]

    def send(self) -> None:
        """The inputs to pinned host memory, then the event the host waits on (capturable)."""
        for h, t in zip(self.host_in, self.inputs):
            h.copy_(t, non_blocking=True)
        if self.event is not None:
            self.event.record()

    def compute(self) -> None:
        """Host code: wait for the inputs only (later GPU work may still be running), run the
        kernel, its outputs into the pinned buffers `upload` reads."""
        if self.event is not None:
            self.event.synchronize()
        results = self.kernel(self.node, dict(zip(self.input_names, self.in_arrays)))
        for a, r in zip(self.out_arrays, results):
            np.copyto(a, np.asarray(r).reshape(a.shape), casting="same_kind")

    def upload(self) -> None:
        """The outputs back into their arena slots (capturable: a graph's first nodes)."""
        for h, t in zip(self.host_out, self.outputs):
            t.copy_(h, non_blocking=True)

    def receive(self) -> None:
        self.compute()
        self.upload()

    def eager(self) -> None:
        self.send()
        self.receive()


# ---------------------------------------------------------------------------------------------
# lowerings: op -> a bound step over the program's buffers


def _ins(p: TritonProgram, n: Node) -> list:
    return [p.env[x] for x in n.inputs]


def _lower_embedding(p, n):
    table, ids = _ins(p, n)
    out, tu = p.env[n.outputs[0]], p.tu
    return lambda: launch.embedding(table, ids, out, tu)


def _gemv_or_gemm(p: TritonProgram, x, w, out) -> Callable[[], None]:
    """One matmul: the int8-x GEMV when x is q8x blocks, the float GEMV for one row, the GEMM
    (dequantize + dense for quantized weights at >= dense_min_m rows) otherwise."""
    tu, sc = p.tu, p.scratch_fp16
    if isinstance(x, QuantizedX):
        return lambda: launch.gemv_q8x(x, w, out, tu)
    return lambda: launch.matmul(x, w, out, tu, sc)


def _lower_matmul(p, n):
    x, w = _ins(p, n)
    return _gemv_or_gemm(p, x, w, p.env[n.outputs[0]])


def _adjacent(outs: list[torch.Tensor]) -> bool:
    at = outs[0].data_ptr()
    for o in outs:
        if o.data_ptr() != at:
            return False
        at += o.numel() * o.element_size()
    return True


def _lower_stacked_matmul(p, n):
    """One GEMV over the weights stacked at load when the call has one row and the plan laid
    the outputs back to back (it does: `adjacent_outputs`); else one matmul per member."""
    k = n.attrs["n"]
    x, ws = p.env[n.inputs[0]], [p.env[w] for w in n.inputs[1 : 1 + k]]
    outs = [p.env[o] for o in n.outputs]
    base = getattr(ws[0], "base", None)
    one_row = isinstance(x, QuantizedX) or x.numel() == ws[0].shape[1]
    stacked = (one_row and base is not None and all(w.base is base for w in ws)
               and [w.row0 for w in ws] == list(np.cumsum([0] + [w.shape[0] for w in ws[:-1]]))
               and sum(w.shape[0] for w in ws) == base.shape[0] and _adjacent(outs))
    if stacked:
        whole = outs[0].reshape(-1).as_strided((base.shape[0],), (1,))
        steps = [_gemv_or_gemm(p, x, base, whole)]
    else:
        steps = [_gemv_or_gemm(p, x, w, o) for w, o in zip(ws, outs)]
    if n.attrs.get("bias"):
        tu = p.tu
        for o, b in zip(outs, (p.env[b] for b in n.inputs[1 + k : 1 + 2 * k])):
            steps.append(lambda o=o, b=b: launch.elementwise("add", o, b, o, tu))
    if len(steps) == 1:
        return steps[0]
    return lambda: [s() for s in steps]


def _lower_rms_norm(p, n):
    x, w = _ins(p, n)
    out, tu, a = p.env[n.outputs[0]], p.tu, n.attrs
    eps, uo = a["eps"], bool(a.get("unit_offset"))
    if p.decode and x.numel() == w.numel():  # one row: the one-program row kernel
        return lambda: launch.norm_quant(x, None, w, None, out, None, eps, uo, tu)
    return lambda: launch.rms_norm(x, w, out, eps, uo, tu)


def _lower_add_rms_norm(p, n):
    a_, b_, w = _ins(p, n)
    s, out = (p.env[o] for o in n.outputs)
    tu, eps, uo = p.tu, n.attrs["eps"], bool(n.attrs.get("unit_offset"))
    if p.decode and a_.numel() == w.numel():
        return lambda: launch.norm_quant(a_, b_, w, s, out, None, eps, uo, tu)

    def step() -> None:
        launch.elementwise("add", a_, b_, s, tu)
        launch.rms_norm(s, w, out, eps, uo, tu)

    return step


def _lower_rms_norm_q8(p, n):
    x, w = _ins(p, n)
    qx, row, tu = p.env[n.outputs[0]], p.row[: w.numel()], p.tu
    eps, uo = n.attrs["eps"], bool(n.attrs.get("unit_offset"))
    return lambda: launch.norm_quant(x, None, w, None, row, qx, eps, uo, tu)


def _lower_add_rms_norm_q8(p, n):
    a_, b_, w = _ins(p, n)
    s, qx = (p.env[o] for o in n.outputs)
    row, tu = p.row[: w.numel()], p.tu
    eps, uo = n.attrs["eps"], bool(n.attrs.get("unit_offset"))
    return lambda: launch.norm_quant(a_, b_, w, s, row, qx, eps, uo, tu)


def _lower_gated_act_q8(p, n):
    g, u = _ins(p, n)
    qx, tu = p.env[n.outputs[0]], p.tu
    row = p.row[: g.numel()]
    gelu = n.attrs["act"] == "geglu"
    return lambda: launch.swiglu_quant(g, u, row, qx, gelu, tu)


def _lower_quantize_q8(p, n):
    (x,) = _ins(p, n)
    qx, tu = p.env[n.outputs[0]], p.tu
    return lambda: launch.quantize_x(x.reshape(-1), qx, tu)


def _lower_rope(p, n):
    ins = _ins(p, n)
    out, tu, a = p.env[n.outputs[0]], p.tu, n.attrs
    f = ins[2] if len(ins) == 3 else None
    return lambda: launch.rope(ins[0], ins[1], f, out, a, tu)


def _lower_kv_write(p, n):
    cache, x, pos = _ins(p, n)
    tu = p.tu
    return lambda: launch.kv_write(cache, x, pos, tu)


def _lower_rope_qkv_write(p, n):
    kc, vc, q, k, v, pos, *rest = _ins(p, n)
    f = rest[0] if rest else None
    qo, tu, a = p.env[n.outputs[2]], p.tu, n.attrs
    return lambda: launch.rope_kv_decode(q, k, v, pos, f, qo, kc, vc, a, tu)


def _lower_attention(p, n):
    q, k, v, pos = _ins(p, n)
    out, tu, a, sc = p.env[n.outputs[0]], p.tu, n.attrs, p.scratch_decode
    return lambda: launch.attention(q, k, v, pos, out, a, tu, sc)


def _lower_attention_q8(p, n):
    """Decode attention whose merge kernel writes the output's int8 blocks (whole heads of a
    power-of-two width); other widths merge to f32 and quantize after."""
    q, k, v, pos = _ins(p, n)
    qx, tu, a, sc = p.env[n.outputs[0]], p.tu, n.attrs, p.scratch_decode
    row = p.row[: q.shape[1] * v.shape[2]]
    if launch.attention_quantizes(v.shape[2]):
        return lambda: launch.attention(q, k, v, pos, row, a, tu, sc, qx)

    def step() -> None:
        launch.attention(q, k, v, pos, row, a, tu, sc)
        launch.quantize_x(row, qx, tu)

    return step


def _lower_elementwise(p, n):
    ins = _ins(p, n)
    out, tu, a, op = p.env[n.outputs[0]], p.tu, n.attrs, n.op
    b = ins[1] if len(ins) == 2 else None
    value = a.get("cap", 0.0) if op == "softcap" else a.get("value", 0.0)
    return lambda: launch.elementwise(op, ins[0], b, out, tu, value)


LOWERINGS: dict[str, Callable[[TritonProgram, Node], Callable[[], None]]] = {
    "embedding": _lower_embedding,
    "matmul": _lower_matmul,
    "stacked_matmul": _lower_stacked_matmul,
    "rms_norm": _lower_rms_norm,
    "add_rms_norm": _lower_add_rms_norm,
    "rms_norm_q8": _lower_rms_norm_q8,
    "add_rms_norm_q8": _lower_add_rms_norm_q8,
    "gated_act_q8": _lower_gated_act_q8,
    "quantize_q8": _lower_quantize_q8,
    "rope": _lower_rope,
    "kv_write": _lower_kv_write,
    "rope_qkv_write": _lower_rope_qkv_write,
    "attention": _lower_attention,
    "attention_q8": _lower_attention_q8,
    **{op: _lower_elementwise for op in ELEMENTWISE},
}

# the ops the backend runs (`TritonBackend.supports`): views need no kernel
SUPPORTED_OPS = frozenset(LOWERINGS) | {op for op, d in REGISTRY.items() if d.view}
