"""Final norm + LM head -> `rms_norm_matmul`.

    logits = rms_norm(h, w_norm) @ W.T      => rms_norm_matmul(h, w_norm, W)

The head's kernel normalises each row of h as it loads it (a row is D values, the statistic
one reduction), so the normed row is never written. The rule asks only for the shape of the
pattern; inside a layer the norm's output feeds several projections (or, after the earlier
fusions, a fused op), so in practice it finds the LM head.
"""

from __future__ import annotations

from drift.passes.rewrite import Match, Op, Rule, T, W, node, rule_pass


def _rewrite(m: Match, graph) -> list:
    norm = m.n["norm"]
    return [node("rms_norm_matmul", [m.t["x"], m.t["wn"], m.t["w"]], [m.t["out"]],
                 **dict(norm.attrs))]


RULES = [Rule("norm+lm_head", _rewrite,
              Op("matmul", Op("rms_norm", T("x"), W("wn"), name="norm"), W("w"), name="out"),
              makes="rms_norm_matmul")]

PASS = rule_pass("fuse_lm_head", RULES)
