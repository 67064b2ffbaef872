"""RoPE fused with the change into attention's layout -> `rope_heads`, `rope_kv_write`.

    q = rope(reshape(xq, (S, H, Dh)) [-> rms_norm], pos)          => rope_heads(xq, pos, ...)
    cache' = kv_write(cache, rope(reshape(xk, (S, Hkv, Dh)) ...), pos)
                                                      => rope_kv_write(cache, xk, pos, ...)

The projection writes (S, H*Dh); attention reads heads. One kernel takes the projection's
rows, splits them into heads (with Gemma 3's per-head RMSNorm on the way), rotates them and
writes them where attention reads them: queries into their own (S, H, Dh) tensor, whose
storage the layout pass then picks, and keys straight into the KV cache, so the rotated keys
never exist as a tensor. MHA, GQA and MQA differ only in the head count of each side.

The key rule runs first, so the rope of K is taken with its cache write before the query
rule (which matches any rope of a reshape) could take it alone.
"""

from __future__ import annotations

from drift.ir import Role
from drift.passes.rewrite import Match, Op, Pat, Rule, T, W, node, rule_pass


def _flat_to_heads(n, index) -> bool:
    """(S, H*Dh) -> (S, H, Dh): the projection's rows split into heads, nothing else."""
    src, dst = index.spec(n.inputs[0]).shape, tuple(n.attrs["shape"])
    return len(src) == 2 and len(dst) == 3 and dst[0] == src[0]


def _heads(norm: bool) -> Pat:
    """reshape(x) -> (S, H, Dh), optionally followed by the per-head RMSNorm."""
    split = Op("reshape", T("x"), name="split", where=_flat_to_heads)
    if not norm:
        return split
    return Op("rms_norm", split, W("nw"), name="norm",
              where=lambda n, index: not n.attrs.get("unit_offset"))


def _rope(norm: bool) -> Pat:
    return Op("rope", _heads(norm), T("pos"), rest="freqs", name="rope")


def _attrs(m: Match, norm: bool) -> dict:
    attrs = dict(m.n["rope"].attrs)
    attrs["heads"] = m.n["split"].attrs["shape"][1]
    attrs["qk_norm"] = norm
    if norm:
        attrs["eps"] = m.n["norm"].attrs["eps"]
    return attrs


def _inputs(m: Match, norm: bool) -> list[str]:
    return [m.t["x"], m.t["pos"]] + ([m.t["nw"]] if norm else []) + list(m.rest["freqs"])


def _q_rule(norm: bool) -> Rule:
    def rewrite(m: Match, graph) -> list:
        return [node("rope_heads", _inputs(m, norm), [m.t["rope"]], **_attrs(m, norm))]

    return Rule(f"rope_heads{'+qk_norm' if norm else ''}", rewrite, _rope(norm),
                makes="rope_heads")


def _k_rule(norm: bool) -> Rule:
    def rewrite(m: Match, graph) -> list:
        out = m.root.outputs[0]
        return [node("rope_kv_write", [m.t["cache"]] + _inputs(m, norm), [out],
                     **_attrs(m, norm))]

    pattern = Op("kv_write", T("cache", Role.KV), _rope(norm), T("pos"))
    return Rule(f"rope_kv_write{'+qk_norm' if norm else ''}", rewrite, pattern,
                makes="rope_kv_write")


RULES = [_k_rule(True), _k_rule(False), _q_rule(True), _q_rule(False)]

PASS = rule_pass("fuse_rope", RULES)
