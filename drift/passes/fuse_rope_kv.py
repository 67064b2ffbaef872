"""One decode step's RoPE and cache writes -> `rope_qkv_write`.

    q' = rope(q, pos);  k' = rope(k, pos)
    kc' = kv_write(kc, k', pos);  vc' = kv_write(vc, v, pos);  attention(q', kc', vc', pos)
 => kc', vc', q' = rope_qkv_write(kc, vc, q, k, v, pos [, freqs])

For a backend whose one kernel rotates the token's query and key heads and writes keys and
values into the cache (`Capabilities.decode_fused_ops`: a single token, one program per head):
four launches become one and the rotated key never exists outside the cache. Found from the
attention that reads all three, so the query and key of one layer are paired by the graph,
not by names or positions in the node list.
"""

from __future__ import annotations

from drift.ir import Node
from drift.passes.rewrite import Index, Match, Rule, node, rule_pass


def _find(root: Node, index: Index) -> Match | None:
    if root.op != "attention":
        return None
    qr, wk, wv = (index.producer.get(x) for x in root.inputs[:3])
    if qr is None or wk is None or wv is None:
        return None
    if qr.op != "rope" or wk.op != "kv_write" or wv.op != "kv_write":
        return None
    kr = index.producer.get(wk.inputs[1])
    pos = root.inputs[3]
    if (kr is None or kr.op != "rope" or kr.attrs != qr.attrs or kr.inputs[1:] != qr.inputs[1:]
            or qr.inputs[1] != pos or wk.inputs[2] != pos or wv.inputs[2] != pos):
        return None
    if index.consumers[kr.outputs[0]] != [wk] or kr.outputs[0] in index.outputs:
        return None
    m = Match(root, nodes=[qr, kr, wk, wv], position=root)
    m.n.update(qr=qr, kr=kr, wk=wk, wv=wv)
    return m


def _rewrite(m: Match, graph) -> list:
    qr, kr, wk, wv = (m.n[k] for k in ("qr", "kr", "wk", "wv"))
    inputs = [wk.inputs[0], wv.inputs[0], qr.inputs[0], kr.inputs[0], wv.inputs[1],
              qr.inputs[1], *qr.inputs[2:]]
    return [node("rope_qkv_write", inputs, [wk.outputs[0], wv.outputs[0], qr.outputs[0]],
                 **dict(qr.attrs))]


RULES = [Rule("rope+kv_write", _rewrite, find=_find, makes="rope_qkv_write")]

PASS = rule_pass("fuse_rope_kv", RULES)
