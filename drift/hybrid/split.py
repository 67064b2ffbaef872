"""The split: each FFN's neurons between the GPU (hot) and the CPU (cold), by a plan.

A `HybridPlan` says, per layer, how many neurons run on the GPU, in which order (the
placement's permutation, hottest first) and the CPU's skip threshold. Two things follow from
it, and nothing else changes:

- the graph (`split_ffn`): a layer's `matmul(x, gate)`, `matmul(x, up)`, `swiglu`,
  `matmul(., down)` become the same four ops over the hot weights, plus
  `ffn_cold(x, gate.cold, up.cold, down_t.cold)` (drift/ir/ops_hybrid.py), added to the hot
  result (where the plan puts a layer's cold gate rows on the GPU too, `g = matmul(x,
  gate.cold)` stays on the GPU and the CPU's op is `ffn_cold_gated(x, g, up.cold,
  down_t.cold)`). A layer wholly on the GPU is left as it is (so a plan covering everything is
  exactly dense); a layer wholly on the CPU is just the `ffn_cold`, over the file's own
  tensors when it computes every neuron (the layer-offload baseline reads what the file holds). The GPU backend compiles
  the result with its own passes (the hot ops fuse as the dense ones do) and binds `ffn_cold`
  to the CPU kernel (`drift/hybrid/backend.py`).
- the weights (`SplitModelFile`): the model file plus the derived tensors those names refer
  to. Gate and up rows permute as raw quant rows (a row is whole blocks). Down's columns cut
  across its blocks, so down is dequantized, permuted and re-quantized to Q8_0: its hot
  columns as a (D, k) matrix (k a multiple of 32), its cold columns transposed, (F - k, D),
  one row per neuron (what the CPU's axpy reads). Q8_0 holds the file's values to within
  ~0.4 % of each block's largest; that is the only numerical change of the split.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np
from gguf import GGMLQuantizationType as Q

from drift.errors import InvalidArgumentError
from drift.formats import quants
from drift.formats.gguf import TensorInfo
from drift.ir import Graph, Node, Role, TensorSpec

DOWN_BLOCK = 32  # the hot down matrix is Q8_0 along its neuron axis: k in multiples of 32
GATED = ("swiglu", "geglu")


def weight(layer: int, part: str) -> str:
    return f"blk.{layer}.ffn_{part}.weight"


def hot(layer: int, part: str) -> str:
    """The GPU's rows of gate/up, or columns of down, of a split layer."""
    return f"blk.{layer}.ffn_{part}.hot"


def cold(layer: int, part: str) -> str:
    """The CPU's rows of gate/up, or (part "down_t") transposed columns of down."""
    return f"blk.{layer}.ffn_{part}.cold"


@dataclass(frozen=True)
class HybridPlan:
    n_ffn: int  # neurons per layer (F)
    n_gpu: tuple[int, ...]  # per layer: neurons on the GPU, 0..F (a multiple of 32 below F)
    order: tuple[np.ndarray, ...]  # per layer: a permutation of the F neurons, GPU ones first
    thresholds: tuple[float, ...]  # per layer: |act(gate)| at or below which the CPU skips
    # a rank-r factorization of each skipping layer's cold gate picks the neurons whose gate
    # the CPU computes at all (0: none; see ops_hybrid.py); margin scales the threshold for it
    predictor_rank: int = 0
    predictor_margin: float = 0.5
    # per layer (empty: none): the cold neurons' gate rows are on the GPU too, which computes
    # their gate and hands the CPU the pre-activations (ffn_cold_gated): the CPU then reads
    # the up and down rows of the neurons over the threshold only
    gate_gpu: tuple[bool, ...] = ()
    # the embedding table in host memory (a row per token is all a step reads of it, as
    # llama.cpp keeps it); not where the LM head reuses it (tied embeddings)
    embedding_cpu: bool = False

    def __post_init__(self):
        L, F = len(self.n_gpu), self.n_ffn
        if len(self.order) != L or len(self.thresholds) != L:
            raise InvalidArgumentError("hybrid plan: one count, order and threshold per layer")
        for k in self.n_gpu:
            if not (0 <= k <= F and (k == F or k % DOWN_BLOCK == 0)):
                raise InvalidArgumentError(
                    f"hybrid plan: {k} GPU neurons of {F} (0..F, a multiple of 32 below F)")
        for o in self.order:
            if o.shape != (F,) or not np.array_equal(np.sort(o), np.arange(F)):
                raise InvalidArgumentError(f"hybrid plan: not a permutation of {F} neurons")
        if any(not np.isfinite(t) or t < 0 for t in self.thresholds):
            raise InvalidArgumentError("hybrid plan: thresholds must be finite and >= 0")
        if self.predictor_rank < 0 or not 0 <= self.predictor_margin <= 1:
            raise InvalidArgumentError("hybrid plan: predictor rank >= 0, margin in [0, 1]")
        if self.gate_gpu and len(self.gate_gpu) != L:
            raise InvalidArgumentError("hybrid plan: one gate placement per layer (or none)")
        if self.predictor_rank and any(self.gate_gpu):
            raise InvalidArgumentError("hybrid plan: the predictor stands in for a gate on the "
                                       "CPU; with the gate on the GPU there is nothing to predict")

    @property
    def n_layers(self) -> int:
        return len(self.n_gpu)

    def is_dense_gpu(self, layer: int) -> bool:
        return self.n_gpu[layer] == self.n_ffn

    def gate_on_gpu(self, layer: int) -> bool:
        """Whether the GPU computes this layer's cold neurons' gate (a split layer only)."""
        return bool(self.gate_gpu) and self.gate_gpu[layer] and not self.is_dense_gpu(layer)

    @classmethod
    def uniform(cls, n_layers: int, n_ffn: int, n_gpu, thresholds=0.0) -> HybridPlan:
        """The same count (and threshold) per layer, neurons in file order: what a model
        without a calibration (random weights: no real hotness) gets."""
        k = np.broadcast_to(np.asarray(n_gpu, dtype=np.int64), (n_layers,))
        t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (n_layers,))
        return cls(n_ffn, tuple(int(v) for v in k), tuple(np.arange(n_ffn) for _ in k),
                   tuple(float(v) for v in t))

    @classmethod
    def layer_offload(cls, n_layers: int, n_ffn: int, gpu_layers: int) -> HybridPlan:
        """The baseline: the FFNs of the first `gpu_layers` layers on the GPU, the rest dense
        on the CPU (llama.cpp's `-ot` placement of whole FFNs; attention stays on the GPU)."""
        return cls.uniform(n_layers, n_ffn, [n_ffn if l < gpu_layers else 0
                                             for l in range(n_layers)])

    def describe(self) -> str:
        F = self.n_ffn
        full = sum(k == F for k in self.n_gpu)
        none = sum(k == 0 for k in self.n_gpu)
        frac = sum(self.n_gpu) / (F * self.n_layers)
        skip = "skipping" if any(t > 0 for t in self.thresholds) else "dense"
        if self.predictor_rank and skip == "skipping":
            skip += f", rank-{self.predictor_rank} predictor"
        gates = sum(self.gate_on_gpu(l) for l in range(self.n_layers))
        if gates:
            skip += f"; the GPU computes the cold gates of {gates} layers"
        if self.embedding_cpu:
            skip += "; embeddings on the CPU"
        return (f"{frac:.0%} of FFN neurons on the GPU ({full} layers whole, "
                f"{self.n_layers - full - none} split, {none} on the CPU; CPU {skip})")


def cold_weights(plan: HybridPlan, layer: int) -> tuple[str, str, str, bool]:
    """The weights a layer's `ffn_cold` reads, and whether its down is rows per neuron: a layer
    wholly on the CPU and dense reads the file's own three tensors, as stored."""
    if plan.n_gpu[layer] == 0 and plan.thresholds[layer] == 0:
        return weight(layer, "gate"), weight(layer, "up"), weight(layer, "down"), False
    return cold(layer, "gate"), cold(layer, "up"), cold(layer, "down_t"), True


def cpu_weights(plan: HybridPlan, layer: int) -> tuple[str, ...]:
    """The weights the CPU holds for a split layer (its kernel's order: [gate,] up, down)."""
    wg, wu, wd, _ = cold_weights(plan, layer)
    return (wu, wd) if plan.gate_on_gpu(layer) else (wg, wu, wd)


def predictor_weights(plan: HybridPlan, layer: int) -> tuple[str, ...]:
    """The predictor's two factors of a layer's cold gate, where it has one."""
    if not plan.predictor_rank or plan.thresholds[layer] <= 0 or not cold_weights(plan, layer)[3]:
        return ()
    return cold(layer, "gate_pred_a"), cold(layer, "gate_pred_b")


def predictor_rank(plan: HybridPlan, layer: int, D: int) -> int:
    return min(plan.predictor_rank, plan.n_ffn - plan.n_gpu[layer], D)


def _ffn_nodes(graph: Graph) -> dict[int, tuple[int, int, int, int]]:
    """Per layer, the indices of its gate matmul, up matmul, gated activation and down matmul."""
    producer = {o: i for i, n in enumerate(graph.nodes) for o in n.outputs}
    found: dict[int, tuple[int, int, int, int]] = {}
    for i, n in enumerate(graph.nodes):
        if n.op != "matmul" or not n.inputs[1].endswith(".ffn_down.weight"):
            continue
        layer = int(n.inputs[1].split(".")[1])
        a = producer.get(n.inputs[0])
        if a is None or graph.nodes[a].op not in GATED:
            continue
        g, u = (producer.get(t) for t in graph.nodes[a].inputs)
        if g is None or u is None:
            continue
        if (graph.nodes[g].inputs[1], graph.nodes[u].inputs[1]) != (weight(layer, "gate"),
                                                                    weight(layer, "up")):
            continue
        found[layer] = (g, u, a, i)
    return found


def split_ffn(graph: Graph, plan: HybridPlan) -> Graph:
    """`graph` with each layer's FFN split by `plan` (see above)."""
    ffns = _ffn_nodes(graph)
    if len(ffns) != plan.n_layers:
        raise InvalidArgumentError(
            f"hybrid plan for {plan.n_layers} layers; {graph.name} has {len(ffns)} gated FFNs")
    tensors = dict(graph.tensors)
    replace: dict[int, list[Node]] = {}  # index of the down matmul -> the nodes in its place
    drop: set[int] = set()
    for layer, (g, u, a, dn) in sorted(ffns.items()):
        k = plan.n_gpu[layer]
        if k == plan.n_ffn:
            continue
        gate_n, up_n, act_n, down_n = (graph.nodes[i] for i in (g, u, a, dn))
        x = gate_n.inputs[0]
        D = graph.tensors[x].shape[-1]
        out = down_n.outputs[0]
        dtype = {p: graph.tensors[weight(layer, p)].dtype for p in ("gate", "up")}
        Fc = plan.n_ffn - k
        wg, wu, wd, down_rows = cold_weights(plan, layer)
        if down_rows:
            for name, p in ((wg, "gate"), (wu, "up")):
                tensors[name] = TensorSpec(name, (Fc, D), dtype[p], Role.WEIGHT)
            tensors[wd] = TensorSpec(wd, (Fc, D), "Q8_0", Role.WEIGHT)
        pred = predictor_weights(plan, layer)
        if pred:
            r = predictor_rank(plan, layer, D)
            tensors[pred[0]] = TensorSpec(pred[0], (Fc, r), "f32", Role.WEIGHT)
            tensors[pred[1]] = TensorSpec(pred[1], (r, D), "f32", Role.WEIGHT)
        S = graph.tensors[x].shape[:-1]
        attrs = {"act": act_n.op, "threshold": float(plan.thresholds[layer]),
                 "down_rows": down_rows}
        first: list[Node] = []  # the GPU's cold gate, ahead of the hot part
        if plan.gate_on_gpu(layer):
            gc = f"{out}.cold_gate"
            tensors[gc] = TensorSpec(gc, S + (Fc,), graph.tensors[out].dtype, Role.ACTIVATION)
            first = [Node("matmul", (x, wg), (gc,), gate_n.attrs)]
            cold_node = partial(Node, "ffn_cold_gated", (x, gc, wu, wd), attrs=attrs)
        else:
            cold_node = partial(Node, "ffn_cold", (x, wg, wu, wd, *pred),
                                attrs={**attrs, "margin": float(plan.predictor_margin)})
        if k == 0:
            replace[dn] = [*first, cold_node(outputs=(out,))]
        else:
            for p in ("gate", "up"):
                tensors[hot(layer, p)] = TensorSpec(hot(layer, p), (k, D), dtype[p], Role.WEIGHT)
            tensors[hot(layer, "down")] = TensorSpec(hot(layer, "down"), (D, k), "Q8_0",
                                                     Role.WEIGHT)
            names = [f"{out}.{s}" for s in ("hot_gate", "hot_up", "hot_act", "hot", "cold")]
            for name, shape in zip(names, [S + (k,)] * 3 + [S + (D,)] * 2):
                tensors[name] = TensorSpec(name, shape, graph.tensors[out].dtype,
                                           Role.ACTIVATION)
            hg, hu, ha, hd, cd = names
            replace[dn] = [  # the hot part first: the GPU runs it while the CPU runs the cold
                *first,
                Node("matmul", (x, hot(layer, "gate")), (hg,), gate_n.attrs),
                Node("matmul", (x, hot(layer, "up")), (hu,), up_n.attrs),
                Node(act_n.op, (hg, hu), (ha,), act_n.attrs),
                Node("matmul", (ha, hot(layer, "down")), (hd,), down_n.attrs),
                cold_node(outputs=(cd,)),
                Node("add", (hd, cd), (out,)),
            ]
        drop.update((g, u, a))
        for t in (gate_n.outputs[0], up_n.outputs[0], act_n.outputs[0]):
            tensors.pop(t, None)
    nodes: list[Node] = []
    for i, n in enumerate(graph.nodes):
        if i in drop:
            continue
        nodes.extend(replace.get(i, [n]))
    used = {t for n in nodes for t in n.inputs + n.outputs} | set(graph.inputs)
    tensors = {k: v for k, v in tensors.items() if k in used}
    return Graph(graph.name, tensors, nodes, list(graph.inputs), list(graph.outputs),
                 {**graph.meta, "hybrid": plan.describe()})


class SplitModelFile:
    """A model file as the split sees it: every tensor of `file`, plus the hot and cold
    tensors of `plan`, derived on first access (gate/up rows permuted; down re-quantized)."""

    def __init__(self, file, plan: HybridPlan):
        self.file, self.plan = file, plan
        self.path, self.metadata = file.path, file.metadata
        self.tensors = _DerivedTensors(self)
        self._down: dict[int, tuple[TensorInfo | None, TensorInfo]] = {}
        self._pred: dict[int, tuple[TensorInfo, TensorInfo]] = {}

    @property
    def architecture(self) -> str:
        return self.file.architecture

    def dequantize(self, name: str) -> np.ndarray:
        info = self.tensors[name]
        return quants.dequantize(info.data, info.qtype, info.shape, tensor_name=name)

    def dequantize_rows(self, name: str, rows) -> np.ndarray:
        info = self.tensors[name]
        raw = np.asarray(info.data)[np.asarray(rows, dtype=np.int64)]
        return quants.dequantize(raw, info.qtype, (len(raw), info.shape[-1]), tensor_name=name)

    def derive(self, name: str) -> TensorInfo:
        parts = name.split(".")  # blk.L.ffn_PART.hot|cold
        layer, part, side = int(parts[1]), parts[2][4:], parts[3]
        k = self.plan.n_gpu[layer]
        order = self.plan.order[layer]
        if part.startswith("gate_pred_"):
            if layer not in self._pred:
                self._pred = {layer: self._factor_gate(layer)}  # one layer held at a time
            return self._pred[layer][part == "gate_pred_b"]
        if part in ("gate", "up"):
            src = self.file.tensors[weight(layer, part)]
            rows = order[:k] if side == "hot" else order[k:]
            data = np.ascontiguousarray(np.asarray(src.data)[rows])
            return TensorInfo(name, (len(rows), src.shape[1]), src.qtype, data)
        if not self._down:
            self._split_all_downs()
        hot_info, cold_info = self._down[layer]
        info = hot_info if side == "hot" else cold_info
        assert info is not None
        return info

    def _factor_gate(self, layer: int) -> tuple[TensorInfo, TensorInfo]:
        """A (F', r) and B (r, D) with A B ~ the cold gate: randomized SVD (one power step),
        seeded by the layer so a model loads the same factors every time."""
        k = self.plan.n_gpu[layer]
        w = self.file.dequantize(weight(layer, "gate"))[self.plan.order[layer][k:]]
        r = predictor_rank(self.plan, layer, w.shape[1])
        rng = np.random.default_rng(layer)
        y = w @ rng.standard_normal((w.shape[1], min(r + 16, min(w.shape))), dtype=np.float32)
        y = w @ (w.T @ y)
        q, _ = np.linalg.qr(y)
        u, sv, vt = np.linalg.svd(q.T @ w, full_matrices=False)
        a = np.ascontiguousarray((q @ u[:, :r]) * sv[:r], dtype=np.float32)
        b = np.ascontiguousarray(vt[:r], dtype=np.float32)
        return (TensorInfo(cold(layer, "gate_pred_a"), a.shape, Q.F32, a),
                TensorInfo(cold(layer, "gate_pred_b"), b.shape, Q.F32, b))

    def _split_all_downs(self) -> None:
        """Every split layer's down projection, re-quantized on a thread per core (numpy
        releases the GIL): about a second per 8B layer on one."""
        from concurrent.futures import ThreadPoolExecutor

        layers = [l for l in range(self.plan.n_layers) if not self.plan.is_dense_gpu(l)
                  and (self.plan.n_gpu[l] or cold_weights(self.plan, l)[3])]
        workers = max(1, min(len(layers), os.cpu_count() or 1, 16))
        with ThreadPoolExecutor(workers) as pool:
            self._down = dict(zip(layers, pool.map(self._split_down, layers)))

    def _split_down(self, layer: int):
        k, order = self.plan.n_gpu[layer], self.plan.order[layer]
        w_t = np.ascontiguousarray(self.file.dequantize(weight(layer, "down")).T)  # (F, D)
        D = w_t.shape[1]
        hot_info = None
        if k:
            hot_info = TensorInfo(hot(layer, "down"), (D, k), Q.Q8_0,
                                  quants.quantize(np.ascontiguousarray(w_t[order[:k]].T),
                                                  Q.Q8_0))
        cold_t = w_t[order[k:]]  # a neuron's down column is a row here
        cold_info = TensorInfo(cold(layer, "down_t"), cold_t.shape, Q.Q8_0,
                               quants.quantize(cold_t, Q.Q8_0))
        return hot_info, cold_info


class _DerivedTensors(Mapping):
    def __init__(self, owner: SplitModelFile):
        self.owner = owner

    def __getitem__(self, name: str) -> TensorInfo:
        base = self.owner.file.tensors
        if name in base:
            return base[name]
        if name.startswith("blk.") and name.endswith((".hot", ".cold")):
            return self.owner.derive(name)  # gate/up: a row gather; down: cached per layer
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.owner.file.tensors)

    def __len__(self) -> int:
        return len(self.owner.file.tensors)
