"""Fusion as (pattern, rewrite) rules, and the engine that applies them.

A pattern is a small tree written from the fused op's point of view, root last:

    Op("rms_norm", Op("add", T("a"), T("b"), name="sum", keep=True), W("w"), name="out")

`T` matches any tensor and binds its name (a name bound twice must bind the same tensor, so
"both matmuls read the same x" is written by using `T("x")` twice); `W` matches a weight.
`Op` matches the node producing the tensor. A match is refused when a tensor inside it has a
consumer outside it (or is a graph output), since the fused op would no longer produce it;
`keep=True` marks an inner tensor the fused op does produce (add_rms_norm's sum).

Horizontal fusions (several nodes reading one input) are not trees; their rules bring a
`find` function instead of a pattern and return the same `Match`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from drift.ir import Attrs, Graph, Node, Role
from drift.passes.context import PassContext


@dataclass(frozen=True)
class Pat:
    op: str | tuple[str, ...] | None  # None: a leaf, any tensor
    args: tuple[Pat, ...] = ()
    name: str | None = None
    role: Role | None = None  # leaves only
    keep: bool = False  # ops only: the output may have consumers outside the match
    rest: str | None = None  # ops only: bind inputs past `args` (optional inputs) as a tuple
    where: Callable[[Node, Index], bool] | None = None  # a condition on the matched node


def T(name: str, role: Role | None = None) -> Pat:
    return Pat(None, name=name, role=role)


def W(name: str) -> Pat:
    return Pat(None, name=name, role=Role.WEIGHT)


def Op(op: str | tuple[str, ...], *args: Pat, name: str | None = None, keep: bool = False,
       rest: str | None = None, where: Callable[[Node, Index], bool] | None = None) -> Pat:
    return Pat(op, tuple(args), name, None, keep, rest, where)


@dataclass
class Match:
    root: Node
    nodes: list[Node] = field(default_factory=list)  # every matched node, removed on rewrite
    t: dict[str, str] = field(default_factory=dict)  # bound tensor names
    n: dict[str, Node] = field(default_factory=dict)  # nodes bound by their Op's name
    rest: dict[str, tuple[str, ...]] = field(default_factory=dict)
    kept: set[str] = field(default_factory=set)  # inner tensors the rewrite still produces
    position: Node | None = None  # where the fused node goes; the root's place by default


class Index:
    """Producers and consumers of a graph, computed once per sweep."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.producer = graph.producers()
        self.consumers = graph.consumers()
        self.outputs = set(graph.outputs)

    def spec(self, name: str):
        return self.graph.tensors[name]


@dataclass(frozen=True)
class Rule:
    name: str
    rewrite: Callable[[Match, Graph], list[Node]]
    pattern: Pat | None = None
    find: Callable[[Node, Index], Match | None] | None = None
    makes: str | None = None  # the fused op it writes: it fires where the backend runs that

    def match(self, node: Node, index: Index) -> Match | None:
        if self.find is not None:
            return self.find(node, index)
        assert self.pattern is not None
        if not _op_ok(self.pattern, node, index):
            return None
        m = Match(node)
        if not _match_node(self.pattern, node, index, m):
            return None
        return m if _closed(m, index) else None


def _op_ok(p: Pat, node: Node, index: Index) -> bool:
    ops = (p.op,) if isinstance(p.op, str) else p.op
    return node.op in ops and (p.where is None or p.where(node, index))


def _match_node(p: Pat, node: Node, index: Index, m: Match) -> bool:
    if p.rest is None and len(node.inputs) != len(p.args):
        return False
    if len(node.inputs) < len(p.args):
        return False
    for sub, tensor in zip(p.args, node.inputs):
        if not _match_tensor(sub, tensor, index, m):
            return False
    if p.rest is not None:
        m.rest[p.rest] = tuple(node.inputs[len(p.args):])
    if node not in m.nodes:
        m.nodes.append(node)
    if p.name:
        m.n[p.name] = node
        out = node.outputs[0]
        if len(node.outputs) == 1 and m.t.setdefault(p.name, out) != out:
            return False
    if p.keep:
        m.kept.update(node.outputs)
    return True


def _match_tensor(p: Pat, tensor: str, index: Index, m: Match) -> bool:
    if p.op is None:
        if p.role is not None and index.spec(tensor).role != p.role:
            return False
        return p.name is None or m.t.setdefault(p.name, tensor) == tensor
    node = index.producer.get(tensor)
    if node is None or not _op_ok(p, node, index) or node.outputs[0] != tensor:
        return False
    return _match_node(p, node, index, m)


def _closed(m: Match, index: Index) -> bool:
    """No tensor inside the match is needed outside it, except those the rewrite keeps."""
    inside = set(map(id, m.nodes))
    for node in m.nodes:
        if node is m.root:
            continue
        for out in node.outputs:
            if out in m.kept:
                continue
            if out in index.outputs:
                return False
            if any(id(c) not in inside for c in index.consumers[out]):
                return False
    return True


def node(op: str, inputs: Iterable[str], outputs: Iterable[str], **attrs) -> Node:
    return Node(op, tuple(inputs), tuple(outputs), Attrs(attrs))


# ---------------------------------------------------------------------------------------------
# applying rules


def apply_rules(graph: Graph, rules: list[Rule]) -> tuple[Graph, dict[str, int]]:
    """Each rule in turn, swept over the graph until it finds nothing more; earlier rules take
    precedence where two would claim the same nodes. Returns the new graph and match counts."""
    counts: dict[str, int] = {}
    for rule in rules:
        while True:
            index = Index(graph)
            taken: set[int] = set()
            matches = []
            for n in graph.nodes:
                m = rule.match(n, index)
                if m is None or any(id(x) in taken for x in m.nodes):
                    continue
                taken.update(map(id, m.nodes))
                matches.append(m)
            if not matches:
                break
            counts[rule.name] = counts.get(rule.name, 0) + len(matches)
            graph = _rewrite(graph, [(m, rule.rewrite(m, graph)) for m in matches])
    return graph, counts


def _rewrite(graph: Graph, edits: list[tuple[Match, list[Node]]]) -> Graph:
    removed: set[int] = set()
    insert_at: dict[int, list[Node]] = {}
    for m, new_nodes in edits:
        removed.update(map(id, m.nodes))
        insert_at.setdefault(id(m.position or m.root), []).extend(new_nodes)
    nodes: list[Node] = []
    for n in graph.nodes:
        nodes += insert_at.get(id(n), [])
        if id(n) not in removed:
            nodes.append(n)
    # Tensors no node produces any more (the fused chain's insides) leave the graph.
    produced = {o for n in nodes for o in n.outputs}
    tensors = {k: v for k, v in graph.tensors.items()
               if k in produced or v.role in (Role.WEIGHT, Role.INPUT, Role.KV)}
    used = {i for n in nodes for i in n.inputs} | set(graph.outputs)
    tensors = {k: v for k, v in tensors.items() if v.role != Role.WEIGHT or k in used}
    out = Graph(graph.name, tensors, stable_toposort(nodes, graph), list(graph.inputs),
                list(graph.outputs), dict(graph.meta))
    return out


def stable_toposort(nodes: list[Node], graph: Graph) -> list[Node]:
    """The nodes in an order where each input is defined before use, as close to the given
    order as that allows (a fused node placed at its root may produce a tensor that a node
    between the fused chain's first and last op reads)."""
    ready_tensors = {t.name for t in graph.tensors.values()
                     if t.role in (Role.WEIGHT, Role.INPUT)}
    ready_tensors |= {t.name for t in graph.tensors.values()
                      if t.role == Role.KV and not t.name.endswith("'")}
    waiting: dict[str, list[int]] = {}
    missing = []
    heap: list[int] = []
    for i, n in enumerate(nodes):
        need = {x for x in n.inputs if x not in ready_tensors}
        missing.append(len(need))
        for x in need:
            waiting.setdefault(x, []).append(i)
        if not need:
            heap.append(i)
    heapq.heapify(heap)
    order = []
    while heap:
        i = heapq.heappop(heap)
        order.append(nodes[i])
        for out in nodes[i].outputs:
            for j in waiting.pop(out, []):
                missing[j] -= 1
                if missing[j] == 0:
                    heapq.heappush(heap, j)
    assert len(order) == len(nodes), "graph has a cycle or an undefined input after rewriting"
    return order


def rule_pass(name: str, rules: list[Rule]):
    """A fusion pass made of rules: logs how many times each fired."""
    from drift.passes.pipeline import Pass

    def run(graph: Graph, ctx: PassContext) -> Graph:
        n_tokens = int(graph.meta.get("n_tokens", 0))
        chosen = [r for r in rules if r.makes is None or ctx.caps.fuses(r.makes, n_tokens)]
        if not chosen:
            ctx.log.append("the backend runs none of its ops")
            return graph
        out, counts = apply_rules(graph, chosen)
        ctx.log.append(", ".join(f"{k} x{v}" for k, v in counts.items()) or "nothing to fuse")
        return out

    return Pass(name, run, fusion=True)
