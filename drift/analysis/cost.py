"""What a model costs, op by op, summed from the op registry.

Every number here comes from the IR graph the engine runs (`build_graph`) and each op's
`cost(inputs, outputs, attrs, kv_len)` in `drift/ir/ops.py`; nothing restates the network's
arithmetic a second time. What this module adds is bookkeeping:

- bytes split by class, from each tensor's role and dtype: weights (by storage type),
  activations (inputs, intermediates, logits) and the KV cache;
- MACs, for the two contractions (matmul, attention): the registry's FLOPs also count
  elementwise work (softmax, norms, RoPE), which has no multiply-accumulate;
- labels that name an op by what it does in the block ("matmul attn_q", "rms_norm
  ffn_norm"), so layers can be summed into one row;
- stages: prefill of S tokens (`n_tokens=S`, `kv_len=S`) and one decode step at context C
  (`n_tokens=1`, `kv_len=C`), and a request (prefill + N decode steps).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from math import prod

from drift.ir import Graph, Node, Role, TensorSpec, cost_of, storage_name
from drift.ir.ops import attended_pairs
from drift.models.config import ModelConfig
from drift.models.decoder import build_graph

ACT = "activation"
KV = "kv"
WEIGHT_PREFIX = "weight:"

# Weights that say nothing about where an op sits ("rope rope_freqs" would merely repeat).
_UNLABELLED = {"rope_freqs.weight"}
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+?)(\.weight|\.bias)?$")


def traffic_class(spec: TensorSpec) -> str:
    """The class a tensor's bytes are counted in: `weight:<dtype>`, `kv` or `activation`."""
    if spec.role == Role.WEIGHT:
        return WEIGHT_PREFIX + spec.dtype
    if spec.role == Role.KV:
        return KV
    return ACT  # inputs, intermediates and outputs all live in the activation arena


def macs_of(node: Node, inputs: list[TensorSpec], kv_len: int) -> int:
    """Multiply-accumulates of the contractions an op performs; 0 for ops that have none.

    Products with a weight matrix (matmul, and the fused ops that contain one: qkv_matmul,
    ffn_gate_up, rms_norm_matmul): one MAC per (row, output, input) triple of each matrix,
    i.e. the FLOPs of their matmuls / 2. Attention: (Dh + Dv) per attended (query, key) pair
    and head, the QK^T and PV products, with the pair count from the same
    `attended_pairs` the registry's cost uses. Elementwise work (softmax, norms, RoPE) has
    FLOPs but no MACs.
    """
    if node.op == "attention":
        q, _, v, _ = inputs
        S, H, Dh = q.shape
        pairs = attended_pairs(S, kv_len or S, node.attrs.get("window", 0))
        return H * pairs * (Dh + v.shape[2])
    x = inputs[0] if inputs else None
    if x is None or x.role == Role.WEIGHT or not x.shape:
        return 0
    rows, width = prod(x.shape[:-1]), x.shape[-1]
    return sum(rows * w.shape[0] * w.shape[1] for w in inputs[1:]
               if w.role == Role.WEIGHT and len(w.shape) == 2 and w.shape[1] == width)


@dataclass(frozen=True)
class OpCost:
    """One node's cost, split by traffic class."""

    index: int  # position in graph.nodes
    node: Node
    label: str  # the row layers are summed into: "matmul attn_q", "attention", ...
    layer: int | None  # block index, None outside the blocks (embedding, output head)
    flops: int
    macs: int
    reads: Mapping[str, int]  # traffic class -> bytes read
    writes: Mapping[str, int]  # traffic class -> bytes written
    dtype: str  # the dtype its arithmetic is defined on: weight type for a matmul, else data

    @property
    def bytes(self) -> int:
        return sum(self.reads.values()) + sum(self.writes.values())

    def bytes_of(self, prefix: str) -> int:
        """Bytes read and written of the classes starting with `prefix` ("weight:", "kv")."""
        return sum(v for d in (self.reads, self.writes) for k, v in d.items()
                   if k.startswith(prefix))

    @property
    def weight_bytes(self) -> int:
        return self.bytes_of(WEIGHT_PREFIX)

    @property
    def kv_bytes(self) -> int:
        return self.bytes_of(KV)

    @property
    def act_bytes(self) -> int:
        return self.bytes_of(ACT)

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved; inf for an op that moves nothing but computes."""
        return self.flops / self.bytes if self.bytes else (float("inf") if self.flops else 0.0)


def _label(node: Node, graph: Graph) -> tuple[str, int | None]:
    """The op and what it reads: "matmul attn_q", "qkv_matmul attn_q/attn_k/attn_v",
    "rms_norm ffn_norm"; the op alone when it reads no weight. Matrices name an op before
    vectors (a fused norm + matmul is named by its matrix). Returns (label, block index)."""
    weights = [n for n in node.inputs
               if graph.tensors[n].role == Role.WEIGHT and n not in _UNLABELLED]
    if not weights:
        return node.op, None
    mats = [n for n in weights if len(graph.tensors[n].shape) == 2]
    named = mats or weights[:1]
    parts, layer = [], None
    for name in named:
        m = _BLOCK.match(name)
        if m:
            parts.append(m.group(2))
            layer = int(m.group(1))
        else:
            parts.append(name.removesuffix(".weight"))
    return f"{node.op} {'/'.join(dict.fromkeys(parts))}", layer


def op_costs(graph: Graph, kv_len: int) -> list[OpCost]:
    """The cost of every node of `graph` when attention sees `kv_len` keys."""
    out: list[OpCost] = []
    layer: int | None = None
    for i, node in enumerate(graph.nodes):
        ins = [graph.tensors[n] for n in node.inputs]
        outs = [graph.tensors[n] for n in node.outputs]
        c = cost_of(node.op, ins, outs, node.attrs, kv_len)
        label, node_layer = _label(node, graph)
        # Weightless ops (rope, attention, add) belong to the block of the last weight seen:
        # nodes are in execution order, and each block starts with its norm.
        if node_layer is not None:
            layer = node_layer
        elif node.op == "last_row" or label != node.op:  # the head's norm and matmul
            layer = None
        reads: dict[str, int] = {}
        for spec, b in zip(ins, c.reads, strict=True):
            reads[traffic_class(spec)] = reads.get(traffic_class(spec), 0) + b
        writes: dict[str, int] = {}
        for spec, b in zip(outs, c.writes, strict=True):
            writes[traffic_class(spec)] = writes.get(traffic_class(spec), 0) + b
        out.append(OpCost(i, node, label, node_layer if node_layer is not None else layer,
                          c.flops, macs_of(node, ins, kv_len), reads, writes, _dtype(ins)))
    return out


def _dtype(ins: list[TensorSpec]) -> str:
    """The matmul's weight type, else the first KV input's, else the first activation's."""
    for role in (Role.WEIGHT, Role.KV):
        for s in ins:
            if s.role == role and len(s.shape) >= 2:
                return s.dtype
    for s in ins:
        if s.role != Role.WEIGHT and s.dtype != "i32":
            return s.dtype
    return ins[0].dtype if ins else "f32"


@dataclass(frozen=True)
class GroupCost:
    """Ops of one label summed over the layers."""

    label: str
    op: str
    count: int
    flops: int
    macs: int
    bytes: int
    weight_bytes: int
    kv_bytes: int
    act_bytes: int
    dtypes: tuple[str, ...]
    indices: tuple[int, ...]  # the OpCost indices summed

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else 0.0


def group(ops: Iterable[OpCost]) -> list[GroupCost]:
    """Sum ops by label, in order of first appearance."""
    acc: dict[str, list[OpCost]] = {}
    for o in ops:
        acc.setdefault(o.label, []).append(o)
    rows = []
    for label, os_ in acc.items():
        rows.append(GroupCost(
            label, os_[0].node.op, len(os_), sum(o.flops for o in os_), sum(o.macs for o in os_),
            sum(o.bytes for o in os_), sum(o.weight_bytes for o in os_),
            sum(o.kv_bytes for o in os_), sum(o.act_bytes for o in os_),
            tuple(sorted({o.dtype for o in os_})), tuple(o.index for o in os_),
        ))
    return rows


@dataclass
class StageCost:
    """One call of the graph: prefill of S tokens, or one decode step at context kv_len."""

    stage: str  # "prefill" | "decode"
    n_tokens: int
    kv_len: int
    graph: Graph
    ops: list[OpCost]

    @property
    def flops(self) -> int:
        return sum(o.flops for o in self.ops)

    @property
    def macs(self) -> int:
        return sum(o.macs for o in self.ops)

    @property
    def bytes(self) -> int:
        return sum(o.bytes for o in self.ops)

    @property
    def weight_bytes(self) -> int:
        return sum(o.weight_bytes for o in self.ops)

    @property
    def kv_bytes(self) -> int:
        return sum(o.kv_bytes for o in self.ops)

    @property
    def act_bytes(self) -> int:
        return sum(o.act_bytes for o in self.ops)

    def bytes_by_class(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.ops:
            for d in (o.reads, o.writes):
                for k, v in d.items():
                    out[k] = out.get(k, 0) + v
        return dict(sorted(out.items()))

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else 0.0

    def groups(self) -> list[GroupCost]:
        return group(self.ops)


def stage_cost(graph: Graph, kv_len: int) -> StageCost:
    n = int(graph.meta.get("n_tokens", graph.tensors[graph.inputs[0]].shape[0]))
    stage = str(graph.meta.get("stage", "decode" if n == 1 else "prefill"))
    return StageCost(stage, n, kv_len, graph, op_costs(graph, kv_len))


def retype(graph: Graph, dtypes: Mapping[str, str]) -> Graph:
    """The same graph with some tensors given another dtype: the weights as a backend stores
    them (the numpy backend holds small models dequantized to f32), or a what-if."""
    if not dtypes:
        return graph
    tensors = {n: TensorSpec(t.name, t.shape, dtypes.get(n, t.dtype), t.role)
               for n, t in graph.tensors.items()}
    return Graph(graph.name, tensors, graph.nodes, graph.inputs, graph.outputs, dict(graph.meta))


def kv_cache_bytes(graph: Graph) -> int:
    """Bytes of the persistent KV tensors a graph allocates (its capacity, not its use)."""
    return sum(t.nbytes for t in graph.by_role(Role.KV) if t.name == storage_name(t.name))


def weight_tensors(graph: Graph) -> list[TensorSpec]:
    return graph.by_role(Role.WEIGHT)


@dataclass
class ModelCost:
    """Prefill, decode and a whole request for one model under one set of dtypes."""

    label: str
    quant: str
    config: ModelConfig
    weight_dtypes: dict[str, str]
    prompt_len: int
    gen_len: int
    ctx: int  # the decode step's context (keys attended)
    kv_dtype: str
    act_dtype: str
    prefill: StageCost
    decode: StageCost
    kv_by_ctx: list[tuple[int, int]] = field(default_factory=list)  # (ctx, KV bytes)

    @property
    def params(self) -> int:
        return sum(t.numel for t in weight_tensors(self.decode.graph))

    def weight_bytes_by_dtype(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in weight_tensors(self.decode.graph):
            out[t.dtype] = out.get(t.dtype, 0) + t.nbytes
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in weight_tensors(self.decode.graph))

    @property
    def kv_bytes_per_token(self) -> int:
        return kv_cache_bytes(self.decode.graph) // max(1, _capacity(self.decode.graph))

    def request_totals(self) -> dict[str, float]:
        """Prefill of the prompt plus gen_len decode steps at the decode context.

        The default context is prompt_len + gen_len / 2, the mean context of the generated
        tokens, so for full attention (linear in the context) the total is exact.
        """
        p, d, n = self.prefill, self.decode, self.gen_len
        return {"flops": p.flops + n * d.flops, "macs": p.macs + n * d.macs,
                "bytes": p.bytes + n * d.bytes, "tokens": self.prompt_len + n}


def _capacity(graph: Graph) -> int:
    return int(graph.meta.get("ctx", 1))


KV_CONTEXTS = (512, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


def model_cost(label: str, quant: str, cfg: ModelConfig, weight_dtypes: dict[str, str],
               prompt_len: int, gen_len: int, ctx: int | None = None, kv_dtype: str = "f16",
               act_dtype: str = "f16",
               transform: Callable[[Graph], Graph] | None = None) -> ModelCost:
    """Cost of prefill at `prompt_len` tokens and of one decode step at context `ctx`.

    `transform` rewrites each stage's graph before it is costed: the fusion passes, to see
    what fusing saves (`drift analyze --fuse`).
    """
    ctx = ctx or prompt_len + gen_len // 2
    capacity = max(prompt_len, ctx)
    tf = transform or (lambda g: g)
    prefill = stage_cost(tf(build_graph(cfg, weight_dtypes, prompt_len, capacity,
                                        kv_dtype=kv_dtype, act_dtype=act_dtype)),
                         kv_len=prompt_len)
    decode = stage_cost(tf(build_graph(cfg, weight_dtypes, 1, capacity, kv_dtype=kv_dtype,
                                       act_dtype=act_dtype)), kv_len=ctx)
    kv_by_ctx = []
    for c in sorted({*(c for c in KV_CONTEXTS if c <= cfg.ctx_train), cfg.ctx_train, ctx}):
        g = build_graph(cfg, weight_dtypes, 1, c, kv_dtype=kv_dtype, act_dtype=act_dtype)
        kv_by_ctx.append((c, kv_cache_bytes(g)))
    return ModelCost(label, quant, cfg, weight_dtypes, prompt_len, gen_len, ctx, kv_dtype,
                     act_dtype, prefill, decode, kv_by_ctx)
