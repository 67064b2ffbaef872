"""Hybrid execution: one model over a GPU backend and the CPU, split by a `HybridPlan`.

`HybridBackend` is a Backend made of two: the GPU backend it wraps, which compiles and runs
the split graph (`split_ffn`) through its own passes, and the CPU kernels of `ffn_cold`
(`ColdFFN`, drift/backends/cpu/native.py), which it hands the GPU backend as a host op. The
weights are loaded from the split view of the file (`SplitModelFile`): the GPU gets every
tensor but the cold ones (attention, norms, embeddings, LM head, KV cache, hot neurons), the
CPU the cold neurons' planes. Nothing of the model is written twice: the graph is the
model's, the passes are the GPU backend's, the only hybrid code is the split, the CPU kernel
and this glue.

A GPU backend that has a kernel for `ffn_cold` (the numpy backend runs its reference) gets
the cold weights too and runs everything itself: that is how the split's graph and weights
are tested against the dense model without a GPU.

`plan_for_budget` turns a GPU memory budget into a plan: what must be on the GPU first
(every weight outside the FFNs, the KV cache, a margin for activations), then FFN neurons
for the rest, placed by the MILP (`placement.py`) on a calibration's statistics, or spread
evenly over the layers without one.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import replace

import numpy as np

from drift.backends.base import Backend, DeviceInfo, HeldBytes, Program
from drift.backends.cpu.native import ColdFFN, RowPlanes
from drift.errors import InvalidArgumentError, UnsupportedError
from drift.hybrid.split import (
    DOWN_BLOCK,
    HybridPlan,
    SplitModelFile,
    cold_weights,
    cpu_weights,
    hot,
    predictor_weights,
    split_ffn,
)
from drift.ir import Graph, TensorSpec
from drift.passes import Capabilities, Compiled

ACTIVATION_MARGIN = 256 * 2**20  # left of the budget for the arenas and the CUDA context
EMBEDDING = "token_embd.weight"
# A call of at least this many tokens (prefill) runs the dense graph on the GPU, the FFN
# weights it does not hold streamed in layer by layer (`stream_weights`), as llama.cpp moves
# CPU weights to the GPU for batches: copying the split layers' FFNs (3.2 GB for Llama 3 8B
# when every layer is split) costs about what the CPU takes for two tokens of them (H200:
# 512 tokens in 99 ms, copies included).
STREAM_MIN_TOKENS = 8
_FFN = re.compile(r"blk\.(\d+)\.ffn_(gate|up|down)\.weight$")


class HybridBackend(Backend):
    name = "hybrid"

    def __init__(self, gpu: Backend, plan: HybridPlan, cpu_kernels: bool | None = None):
        """cpu_kernels: run ffn_cold on the CPU kernels (default: where `gpu` has no kernel
        for it; True on the numpy backend runs the compiled kernels in place of the op's
        reference, as the quality bench does)."""
        self.gpu, self.plan = gpu, plan
        self.kv_dtype = gpu.kv_dtype  # type: ignore[misc]  (the GPU's cache)
        self.cold: dict[int, ColdFFN] = {}  # layer -> its CPU kernel
        self.cold_seconds = 0.0  # wall time in the CPU kernels (bench reports it per token)
        self.cold_calls = 0
        self._cold_names: set[str] = set()
        self.cpu_runs_cold = (not gpu.supports("ffn_cold") if cpu_kernels is None
                              else cpu_kernels)
        if self.cpu_runs_cold and not gpu.host_calls:
            raise UnsupportedError(f"hybrid execution (--gpu-mem) runs on the cuda (triton) "
                                   f"backend; {gpu.name} cannot call CPU kernels yet")
        # the embedding table stays in host memory where the plan says so and the GPU backend
        # calls host kernels (the numpy backend, with cpu_kernels=True, keeps it)
        self.embedding_cpu = plan.embedding_cpu and self.cpu_runs_cold and cpu_kernels is None
        self.streaming = self.cpu_runs_cold and cpu_kernels is None and gpu.streams_weights
        self._table = None  # its TensorInfo (the file's blocks, mapped)
        if self.cpu_runs_cold:
            gpu.host_ops = {"ffn_cold": self._run_cold, "ffn_cold_gated": self._run_cold}
            if self.embedding_cpu:
                gpu.host_ops["embedding"] = self._run_embedding

    @classmethod
    def available(cls) -> bool:
        return True

    def device(self) -> DeviceInfo:
        info = self.gpu.device()
        return replace(info, backend=f"{info.backend}+cpu",
                       extra={**info.extra, "hybrid": self.plan.describe()})

    def capabilities(self) -> Capabilities:
        return self.gpu.capabilities()

    def supports(self, op: str) -> bool:
        return op in ("ffn_cold", "ffn_cold_gated") or self.gpu.supports(op)

    # -- weights: the split view of the file

    def load_weights(self, model_file, specs: list[TensorSpec], stacks=()) -> None:
        split = SplitModelFile(model_file, self.plan)
        gpu_specs: list[TensorSpec] = []
        cold_layers = set()
        for s in specs:
            if s.name == EMBEDDING and self.embedding_cpu:
                self._table = model_file.tensors[EMBEDDING]
                self._cold_names.add(EMBEDDING)
                continue
            m = _FFN.match(s.name)
            if m is None or self.plan.is_dense_gpu(int(m.group(1))):
                gpu_specs.append(s)
                continue
            layer, part = int(m.group(1)), m.group(2)
            k = self.plan.n_gpu[layer]
            if part == "gate" and self.plan.gate_on_gpu(layer):  # the cold rows too
                name = cold_weights(self.plan, layer)[0]
                shape = (self.plan.n_ffn - k, s.shape[1])
                gpu_specs.append(s if name == s.name else TensorSpec(name, shape, s.dtype, s.role))
            if k and part == "down":  # (D, k): the hot columns, re-quantized
                gpu_specs.append(TensorSpec(hot(layer, part), (s.shape[0], k), "Q8_0", s.role))
            elif k:  # (k, D): the hot rows, as stored
                gpu_specs.append(TensorSpec(hot(layer, part), (k, s.shape[1]), s.dtype, s.role))
            cold_layers.add(layer)
        role = specs[0].role
        def ir_dtype(info) -> str:
            return info.qtype.name.lower() if info.qtype.name == "F32" else info.qtype.name

        cold_specs = [TensorSpec(n, split.tensors[n].shape, ir_dtype(split.tensors[n]), role)
                      for layer in sorted(cold_layers)
                      for n in (*cpu_weights(self.plan, layer),
                                *predictor_weights(self.plan, layer))]
        if not self.cpu_runs_cold:  # the GPU backend runs ffn_cold itself: it holds all
            gpu_specs += cold_specs
        self.gpu.load_weights(split, gpu_specs, stacks)
        if self.streaming:  # the dense graph of a prefill reads the file's FFN weights
            self.gpu.stream_weights(model_file, [
                f"blk.{l}.ffn_{p}.weight" for l in sorted(cold_layers)
                for p in ("gate", "up", "down")])
        if self.cpu_runs_cold:
            act = "geglu" if _is_geglu(model_file) else "swiglu"
            for layer in sorted(cold_layers):
                names, down_rows = list(cpu_weights(self.plan, layer)), cold_weights(self.plan,
                                                                                    layer)[3]
                planes = []
                for name in names:
                    info = split.tensors[name]
                    planes.append(RowPlanes.from_blocks(np.asarray(info.data), info.qtype.name,
                                                        info.shape))
                if len(planes) == 2:  # the gate is the GPU's
                    planes.insert(0, None)
                pred = predictor_weights(self.plan, layer)
                factors = None
                if pred:
                    a, b = (np.asarray(split.tensors[n].data) for n in pred)
                    factors = (a, b, self.plan.predictor_margin)
                self.cold[layer] = ColdFFN(*planes, act, self.plan.thresholds[layer],
                                           down_rows=down_rows, predictor=factors)
                self._cold_names.update(names + list(pred))

    def has_weight(self, name: str) -> bool:
        return self.gpu.has_weight(name) or name in self._cold_names

    def alloc_state(self, specs: list[TensorSpec]) -> None:
        self.gpu.alloc_state(specs)

    def held_bytes(self) -> HeldBytes:
        """What the GPU holds (the CPU's share is `cpu_bytes`)."""
        return self.gpu.held_bytes()

    def free_memory(self) -> int | None:
        return self.gpu.free_memory()

    def cpu_bytes(self) -> int:
        return sum(c.nbytes for c in self.cold.values())

    def stored_dtypes(self) -> dict[str, str]:
        return self.gpu.stored_dtypes()

    # -- compiling and running: the GPU backend's, on the split graph

    def lower(self, graph: Graph, dump_dir=None) -> Compiled:
        if self._streams(graph):
            compiled = self.gpu.lower(graph, dump_dir)  # dense, FFNs streamed in
        else:
            compiled = self.gpu.lower(split_ffn(graph, self.plan), dump_dir)
        if self.embedding_cpu and any(EMBEDDING in n.inputs and n.op != "embedding"
                                      for n in compiled.graph.nodes):
            # the GPU reads the table for more than the lookup (a tied LM head, whose budget
            # counted it: embedding_stays_on_cpu): it stays there
            self.embedding_cpu = False
            self.gpu.host_ops = {k: v for k, v in self.gpu.host_ops.items() if k != "embedding"}
        return compiled

    def program(self, compiled: Compiled) -> Program:
        return self.gpu.program(compiled)

    def _streams(self, graph: Graph) -> bool:
        """Whether a call runs dense with the FFNs streamed in: a prompt of STREAM_MIN_TOKENS
        or more. Not a graph that scores every position (`drift perplexity`): that one
        computes each token as decode does, so it measures what the split and skipping cost."""
        out = [graph.tensors[o].shape for o in graph.outputs]
        every_position = any(len(shape) > 1 and shape[0] > 1 for shape in out)
        return (self.streaming and not every_position
                and int(graph.meta.get("n_tokens", 0)) >= STREAM_MIN_TOKENS)

    def _run_cold(self, node, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        layer = int(node.inputs[2].split(".")[1])  # up's name: blk.L.ffn_up...
        t0 = time.perf_counter()
        gate = inputs[node.inputs[1]] if node.op == "ffn_cold_gated" else None
        y = self.cold[layer](inputs[node.inputs[0]], gate)
        self.cold_seconds += time.perf_counter() - t0
        self.cold_calls += 1
        return [y]

    def _run_embedding(self, node, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The rows of the step's tokens, dequantized from the file's blocks (a few KB)."""
        from drift.formats import quants

        ids = np.asarray(inputs[node.inputs[1]]).reshape(-1).astype(np.int64)
        info = self._table
        rows = np.asarray(info.data)[ids]
        return [quants.dequantize(rows, info.qtype, (len(ids), info.shape[1]),
                                  tensor_name=EMBEDDING)]

    def sampler(self, config):
        return self.gpu.sampler(config)

    def synchronize(self) -> None:
        self.gpu.synchronize()

    def launch_counter(self):
        return self.gpu.launch_counter()

    def active_fraction(self) -> float:
        """Of the cold neurons, the fraction the last call computed in full (all layers)."""
        total = sum(c.n for c in self.cold.values())
        return sum(c.last_active for c in self.cold.values()) / total if total else 0.0

    def predictor_stats(self) -> tuple[float, float] | None:
        """With a predictor, over every call so far: the fraction of cold gate rows a token
        read, and the recall (of the neurons above threshold, the share the predictor let
        through; counted where the whole gate was computed anyway, calls of several tokens)."""
        with_pred = [c for c in self.cold.values() if c.predictor is not None]
        rows = sum(c.pred_tokens * c.n for c in with_pred)
        if not rows:
            return None
        total = sum(c.recall_total for c in with_pred)
        recall = sum(c.recall_hits for c in with_pred) / total if total else float("nan")
        return sum(c.pred_rows for c in with_pred) / rows, recall


def _is_geglu(model_file) -> bool:
    from drift.models import config_from_gguf

    cfg = config_from_gguf(model_file.metadata, {n: t.shape for n, t in model_file.tensors.items()},
                           "model")
    return cfg.ffn_act == "geglu"


# ---------------------------------------------------------------------------------------------
# the budget


def embedding_stays_on_cpu(model_file) -> bool:
    """Hybrid keeps the embedding table in host memory unless the LM head reuses it."""
    return EMBEDDING in model_file.tensors and "output.weight" in model_file.tensors


def fixed_gpu_bytes(model_file, config, ctx: int, kv_dtype: str,
                    embedding_on_cpu: bool = False) -> int:
    """What the GPU holds whatever the split: every weight outside the FFNs (but the
    embedding table, where it stays on the CPU), the KV cache."""
    weights = sum(t.nbytes for n, t in model_file.tensors.items()
                  if not _FFN.match(n) and not (embedding_on_cpu and n == EMBEDDING))
    per = 2 if kv_dtype == "f16" else 4
    kv = config.n_layers * ctx * config.n_kv_heads * (config.head_dim + config.v_head_dim) * per
    return int(weights + kv)


def ffn_bytes(model_file) -> int:
    return sum(t.nbytes for n, t in model_file.tensors.items() if _FFN.match(n))


def stream_bytes(model_file) -> int:
    """GPU memory a streamed prefill holds at most beyond the plan: the largest two FFN
    weights of one node (gate and up) and an upload slab."""
    sizes = sorted(t.nbytes for n, t in model_file.tensors.items() if _FFN.match(n))
    return int(2.5 * sizes[-1]) if sizes else 0


def plan_for_budget(model_file, config, budget: int, ctx: int, kv_dtype: str,
                    calibration=None, sparsity: float | None = None,
                    layers: bool = False, predictor: int = 0,
                    gates_first: bool | None = None, streams: bool = False) -> HybridPlan:
    """The plan that fits `budget` GPU bytes. sparsity: the CPU skips a cold neuron whose
    |act(gate)| is under the calibration's quantile for it (None or 0: dense). layers: the
    layer-offload baseline (whole FFNs, first layers on the GPU) instead of neurons.
    predictor: the rank of the gate predictor that spares the CPU most gate rows (0: none).
    gates_first (default: unless there is a predictor): the budget buys every layer's gate
    rows before any hot neuron (see `_plan_for_budget`). streams: the GPU backend streams
    the FFN weights it lacks for prefill (their transient copies are counted)."""
    if gates_first is None:
        gates_first = not predictor
    dense_fits = budget >= (fixed_gpu_bytes(model_file, config, ctx, kv_dtype)
                            + ACTIVATION_MARGIN + ffn_bytes(model_file))
    embedding_cpu = embedding_stays_on_cpu(model_file) and not dense_fits
    plan = _plan_for_budget(model_file, config, budget, ctx, kv_dtype, calibration, sparsity,
                            layers, gates_first and not layers, embedding_cpu,
                            stream_bytes(model_file) if streams and not dense_fits else 0)
    return replace(plan, predictor_rank=int(predictor), embedding_cpu=embedding_cpu)


def _plan_for_budget(model_file, config, budget, ctx, kv_dtype, calibration, sparsity,
                     layers, gates_first, embedding_cpu, streamed=0) -> HybridPlan:
    """Gates first: a cold neuron's gate row on the GPU spares the CPU that row on every
    token (the GPU computes the gate and the CPU then reads the up and down rows of the
    neurons over the threshold only), one byte of CPU reading per byte of GPU memory; moving a
    neuron's up and down rows too spares them only when the neuron is active, a fraction
    p <= 1 per byte. So the budget buys the layers' whole gates first (in layer order, while
    they fit), then hot neurons (their up and down rows; gate, up and down in a layer whose
    gate did not fit) by the MILP."""
    L, F = config.n_layers, config.d_ff
    fixed = (fixed_gpu_bytes(model_file, config, ctx, kv_dtype, embedding_cpu)
             + ACTIVATION_MARGIN + streamed)
    room = budget - fixed
    if room < 0:
        raise InvalidArgumentError(
            f"--gpu-mem {budget / 2**30:.2f} GiB is below what the GPU must hold besides the "
            f"FFNs ({fixed / 2**30:.2f} GiB: attention, LM head, KV cache at --ctx {ctx}, "
            f"activations, the copies a streamed prefill holds)")
    thresholds = np.zeros(L)
    if sparsity:
        if calibration is None:
            raise InvalidArgumentError("--sparsity needs a calibration: run `drift calibrate "
                                       "MODEL` first")
        thresholds = _gate_thresholds(calibration, sparsity, L, F)
    if layers:
        per_layer = [sum(model_file.tensors[f"blk.{l}.ffn_{p}.weight"].nbytes
                         for p in ("gate", "up", "down")) for l in range(L)]
        n = int(np.searchsorted(np.cumsum(per_layer), room, side="right"))
        return HybridPlan.layer_offload(L, F, n)
    from gguf import GGMLQuantizationType as Q

    from drift.hybrid.placement import ffn_neuron_bytes, solve_placement

    cost = ffn_neuron_bytes(model_file, L, down_type=Q.Q8_0)  # hot down columns are Q8_0
    if room >= ffn_bytes(model_file):  # everything fits: dense, the file's own weights
        return HybridPlan.uniform(L, F, F, thresholds)
    gate_gpu = [False] * L
    if gates_first:
        for l in range(L):
            gate = model_file.tensors[f"blk.{l}.ffn_gate.weight"].nbytes
            if gate <= room:
                gate_gpu[l], room = True, room - gate
                cost[l] -= gate / F
    if calibration is None:
        k = int(room / cost.sum()) // DOWN_BLOCK * DOWN_BLOCK
        return replace(HybridPlan.uniform(L, F, min(k, F), thresholds), gate_gpu=tuple(gate_gpu))
    if calibration.mean_abs.shape != (L, F):
        raise InvalidArgumentError(f"the calibration is of {calibration.mean_abs.shape} "
                                   f"neurons; this model has ({L}, {F})")
    # hotness: how often a neuron is active at the sparsity the CPU skips at (its mean
    # |act(gate) * up| when dense)
    if sparsity:
        k_index = int(np.argmin(np.abs(calibration.sparsities - sparsity)))
        mass = calibration.active_frac[:, :, k_index]
    else:
        mass = calibration.mean_abs
    placed = solve_placement(list(mass), cost, room, min_neurons=DOWN_BLOCK, gap=1e-3,
                             time_limit=20)
    n_gpu = []
    for l in range(L):
        k = int(placed.n_gpu[l])
        n_gpu.append(k if k == F else k // DOWN_BLOCK * DOWN_BLOCK)
    return HybridPlan(F, tuple(n_gpu), tuple(np.asarray(o) for o in placed.order),
                      tuple(float(t) for t in thresholds), gate_gpu=tuple(gate_gpu))


def hybrid_backend(gpu: Backend, model_file, path, config, ctx: int, gpu_mem: int | None,
                   sparsity: float, offload: str, predictor: int = 0) -> Backend:
    """`gpu` wrapped to run within `gpu_mem` bytes (None: what it has free, less a tenth),
    with the calibration of `path` where `drift calibrate` saved one. Prints the split."""
    from drift.hybrid.calibrate import Calibration, calibration_path

    if gpu_mem is None:
        free = gpu.free_memory()
        gpu_mem = int(0.9 * free) if free is not None else gpu.device().memory_bytes
    cal_path = calibration_path(path)
    calibration = Calibration.load(cal_path) if cal_path.exists() else None
    plan = plan_for_budget(model_file, config, gpu_mem, ctx, gpu.kv_dtype, calibration,
                           sparsity or None, layers=offload == "layers", predictor=predictor,
                           gates_first=offload == "neurons" and not predictor,
                           streams=gpu.streams_weights)
    where = "calibrated" if calibration is not None else "no calibration: even split"
    print(f"[hybrid: --gpu-mem {gpu_mem / 2**30:.2f} GiB: {plan.describe()}; {where}]",
          file=sys.stderr)
    return HybridBackend(gpu, plan)


def _gate_thresholds(calibration, sparsity: float, L: int, F: int) -> np.ndarray:
    if not 0 < sparsity < 1:
        raise InvalidArgumentError(f"--sparsity must be in (0, 1), got {sparsity}")
    g = calibration.gate_thresholds
    if g is None:
        raise InvalidArgumentError("the calibration predates gate thresholds: run "
                                   "`drift calibrate MODEL` again")
    s = np.asarray(calibration.sparsities, dtype=np.float64)
    if g.shape != (L, len(s)):
        raise InvalidArgumentError(f"the calibration is of {g.shape[0]} layers; the model "
                                   f"has {L}")
    # sparsity 0 is threshold 0; between the calibrated points, linear
    out = np.array([np.interp(sparsity, np.r_[0.0, s], np.r_[0.0, g[l]]) for l in range(L)])
    if sparsity > s[-1]:
        print(f"drift: --sparsity {sparsity} is above the calibrated {s[-1]}: using the "
              f"threshold of {s[-1]}", file=sys.stderr)
    return out
