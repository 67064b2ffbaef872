"""Matmuls that read one input -> `stacked_matmul` (Q/K/V; gate/up where the backend does
not fuse the activation in).

    q = x @ Wq.T [+ bq];  k = x @ Wk.T [+ bk];  v = x @ Wv.T [+ bv]
 => q, k, v = stacked_matmul(x, Wq, Wk, Wv [, bq, bk, bv])

Several matmuls that share x are not a tree, so this rule finds them itself: every matmul
reading the same activation with weights of one type and width, decided from the graph alone
(no weight names). The fused op keeps the weights as inputs (the graph still names GGUF
tensors); the backend lays them out as adjacent rows of one matrix at load (`weight_stacks`)
and the memory plan keeps the outputs adjacent, so at decode one GEMV reads x once and fills
every output: one launch instead of three, and a larger N that keeps every SM busy (K and V
alone are 1024 rows on an 8B model).
"""

from __future__ import annotations

from drift.ir import Node, Role
from drift.passes.rewrite import Index, Match, Rule, node, rule_pass


def _bias_of(mm: Node, index: Index) -> Node | None:
    """The `add` of a weight vector that is a matmul's only consumer (Qwen2's biases)."""
    users = index.consumers[mm.outputs[0]]
    if len(users) != 1 or mm.outputs[0] in index.outputs:
        return None
    add = users[0]
    if add.op != "add" or add.inputs[0] != mm.outputs[0]:
        return None
    b = index.spec(add.inputs[1])
    width = index.spec(mm.outputs[0]).shape[-1:]
    return add if b.role == Role.WEIGHT and b.shape == width else None


def _weight_kind(mm: Node, index: Index) -> tuple | None:
    w = index.spec(mm.inputs[1])
    return (w.dtype, w.shape[1]) if w.role == Role.WEIGHT and len(w.shape) == 2 else None


def _find(root: Node, index: Index) -> Match | None:
    if root.op != "matmul" or _weight_kind(root, index) is None:
        return None
    x = root.inputs[0]
    if index.spec(x).role == Role.WEIGHT:
        return None
    kind = _weight_kind(root, index)
    mms = [n for n in index.consumers[x] if n.op == "matmul" and n.inputs[0] == x
           and _weight_kind(n, index) == kind]
    if len(mms) < 2 or mms[0] is not root:  # found once, from the first of them
        return None
    if len({mm.inputs[1] for mm in mms}) != len(mms):  # one weight twice: nothing to stack
        return None
    adds = [_bias_of(mm, index) for mm in mms]
    m = Match(root, nodes=list(mms), position=root)
    m.n.update((f"mm{i}", mm) for i, mm in enumerate(mms))
    if all(adds):  # biases join only when every member has one
        m.nodes += adds
        m.t["bias"] = "1"
        m.n.update((f"b{i}", a) for i, a in enumerate(adds))
    return m


def _rewrite(m: Match, graph) -> list:
    mms = [m.n[f"mm{i}"] for i in range(sum(k.startswith("mm") for k in m.n))]
    x = mms[0].inputs[0]
    inputs = [x] + [mm.inputs[1] for mm in mms]
    if "bias" in m.t:
        adds = [m.n[f"b{i}"] for i in range(len(mms))]
        return [node("stacked_matmul", inputs + [a.inputs[1] for a in adds],
                     [a.outputs[0] for a in adds], n=len(mms), bias=True)]
    return [node("stacked_matmul", inputs, [mm.outputs[0] for mm in mms], n=len(mms),
                 bias=False)]


RULES = [Rule("stack", _rewrite, find=_find, makes="stacked_matmul")]

PASS = rule_pass("fuse_stack", RULES)
