"""Q, K and V projections of one input -> `qkv_matmul`.

    q = x @ Wq.T [+ bq];  k = x @ Wk.T [+ bk];  v = x @ Wv.T [+ bv]
 => q, k, v = qkv_matmul(x, Wq, Wk, Wv [, bq, bk, bv])

Three matmuls that share x are not a tree, so this rule finds them itself: exactly three
matmuls reading the same activation with weights of one width. The fused op keeps the three
weights as inputs (the graph still names GGUF tensors) and the backend concatenates them at
load, so one matmul reads x once and fills q, k and v. At decode that is one kernel launch
instead of three, over the same weight bytes.
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


def _find(root: Node, index: Index) -> Match | None:
    if root.op != "matmul" or index.spec(root.inputs[1]).role != Role.WEIGHT:
        return None
    x = root.inputs[0]
    if index.spec(x).role == Role.WEIGHT:
        return None
    mms = [n for n in index.consumers[x] if n.op == "matmul" and n.inputs[0] == x
           and index.spec(n.inputs[1]).role == Role.WEIGHT]
    if len(mms) != 3 or mms[0] is not root:  # found once, from the first of the three
        return None
    adds = [_bias_of(mm, index) for mm in mms]
    m = Match(root, nodes=list(mms), position=root)
    m.n.update(zip("qkv", mms))
    if all(adds):  # biases join only when all three have one
        m.nodes += adds
        m.t["bias"] = "1"
        m.n.update(zip(("bq", "bk", "bv"), adds))
    return m


def _rewrite(m: Match, graph) -> list:
    mms = [m.n[k] for k in "qkv"]
    x = mms[0].inputs[0]
    inputs = [x] + [mm.inputs[1] for mm in mms]
    if "bias" in m.t:
        adds = [m.n[k] for k in ("bq", "bk", "bv")]
        return [node("qkv_matmul", inputs + [a.inputs[1] for a in adds],
                     [a.outputs[0] for a in adds], bias=True)]
    return [node("qkv_matmul", inputs, [mm.outputs[0] for mm in mms], bias=False)]


RULES = [Rule("qkv", _rewrite, find=_find)]

PASS = rule_pass("fuse_qkv", RULES)
