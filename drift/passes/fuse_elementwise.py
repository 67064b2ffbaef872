"""Chains of elementwise ops -> one `fused_elementwise`, after an anchor op where there is one.

    y = silu(group_norm(x));  z = conv2d(y) + bias + skip;  logits' = softcap(logits)

A chain is grown backwards from its last op through producers whose only consumer is in the
chain. If what feeds the chain is a single-output op that is not elementwise (a matmul, a
convolution, a norm) and the chain is its only consumer, it becomes the anchor: the chain is
then its epilogue, applied to each value the anchor computes before it is stored. Of several
such producers the latest to run is taken, so the others' results are the inputs the chain
reads elementwise, which the memory planner may overwrite in place (a ResNet block's
shortcut). Nothing in a chain is written to memory but its last result.
"""

from __future__ import annotations

from drift.ir import REGISTRY, Node
from drift.ir.ops_fused import make_program, program_steps
from drift.passes.rewrite import Index, Match, Rule, node, rule_pass

VIEWS = ("reshape", "last_row")  # outputs alias inputs: nothing to compute, nothing to fuse
# ops hybrid execution may run on another device (a host kernel): no epilogue runs inside them
ELSEWHERE = ("ffn_cold", "ffn_cold_gated")


def is_elementwise(n: Node) -> bool:
    if n.op == "fused_elementwise":
        return all(REGISTRY[op].elementwise for op, _, _ in program_steps(n.attrs))
    return REGISTRY[n.op].elementwise and len(n.outputs) == 1


def _can_anchor(n: Node) -> bool:
    d = REGISTRY[n.op]
    return (len(n.outputs) == 1 and not d.writes_state and not d.elementwise
            and n.op not in VIEWS and n.op not in ELSEWHERE and n.op != "fused_elementwise")


def _sole_consumer(t: str, index: Index) -> Node | None:
    users = {id(u): u for u in index.consumers[t]}
    if len(users) != 1 or t in index.outputs:
        return None
    return next(iter(users.values()))


def _find(root: Node, index: Index) -> Match | None:
    if not is_elementwise(root):
        return None
    nxt = _sole_consumer(root.outputs[0], index)
    if nxt is not None and is_elementwise(nxt):
        return None  # not the end of its chain: the chain is found from its last op
    group = {id(root): root}
    stack = [root]
    while stack:
        n = stack.pop()
        for t in n.inputs:
            p = index.producer.get(t)
            if p is None or id(p) in group or not is_elementwise(p):
                continue
            user = _sole_consumer(t, index)
            if user is not None and id(user) in group:
                group[id(p)] = p
                stack.append(p)
    order = {id(n): i for i, n in enumerate(index.graph.nodes)}
    members = sorted(group.values(), key=lambda n: order[id(n)])
    anchors = []
    for n in members:
        for t in n.inputs:
            p = index.producer.get(t)
            if p is not None and _can_anchor(p) and _sole_consumer(t, index) is n:
                anchors.append(p)
    anchor = max(anchors, key=lambda n: order[id(n)]) if anchors else None
    if anchor is None and len(members) == 1:
        return None  # a lone elementwise op: nothing to fuse it with
    nodes = ([anchor] if anchor else []) + members
    return Match(root, nodes=nodes)


def _rewrite(m: Match, graph) -> list:
    """The matched nodes as one program; fused_elementwise members are inlined."""
    inputs: list[str] = []
    refs: dict[str, str] = {}  # tensor -> "x<i>" | "t<j>"
    steps: list[tuple[str, list[str], dict]] = []

    def ref(t: str) -> str:
        if t not in refs:
            refs[t] = f"x{len(inputs)}"
            inputs.append(t)
        return refs[t]

    for n in m.nodes:
        if n.op == "fused_elementwise":  # inline: its x<i> are n.inputs, its t<j> renumbered
            local: dict[str, str] = {f"x{i}": ref(t) for i, t in enumerate(n.inputs)}
            for j, (op, args, a) in enumerate(program_steps(n.attrs)):
                steps.append((op, [local[r] for r in args], a))
                local[f"t{j}"] = f"t{len(steps) - 1}"
            refs[n.outputs[0]] = f"t{len(steps) - 1}"
            continue
        args = [ref(t) for t in n.inputs]
        steps.append((n.op, args, dict(n.attrs)))
        refs[n.outputs[0]] = f"t{len(steps) - 1}"
    return [node("fused_elementwise", inputs, [m.root.outputs[0]], program=make_program(steps))]


RULES = [Rule("elementwise", _rewrite, find=_find, makes="fused_elementwise")]

PASS = rule_pass("fuse_elementwise", RULES)
