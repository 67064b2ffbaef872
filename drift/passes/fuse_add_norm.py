"""Residual add + RMSNorm -> `add_rms_norm`, two outputs.

    h = a + b;  x = rms_norm(h, w)          => h, x = add_rms_norm(a, b, w)

The sum is still an output (the residual stream continues from it), so the add's result may
have consumers outside the match (`keep`). One pass over each row writes both and reads the
sum back from registers rather than memory; the memory planner may then write h over a
(in place), since a row is read before it is written.
"""

from __future__ import annotations

from drift.passes.rewrite import Match, Op, Rule, T, W, node, rule_pass


def _same_shape(n, index) -> bool:
    a, b = (index.spec(i) for i in n.inputs)
    return a.shape == b.shape


def _rewrite(m: Match, graph) -> list:
    norm = m.root
    return [node("add_rms_norm", [m.t["a"], m.t["b"], m.t["w"]], [m.t["sum"], m.t["out"]],
                 **dict(norm.attrs))]


RULES = [Rule("add+rms_norm", _rewrite, makes="add_rms_norm", pattern=
              Op("rms_norm", Op("add", T("a"), T("b"), name="sum", keep=True, where=_same_shape),
                 W("w"), name="out"))]

PASS = rule_pass("fuse_add_norm", RULES)
