"""Whole decoder graphs (llama, qwen2 and gemma variants) at tiny sizes with random weights:
the full pipeline (fusion, storages, arena) against the plain evaluation, prefill and decode
through the cache; which fusions fire on each architecture."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from drift.backends.cpu import CPUBackend
from drift.models.config import ModelConfig
from drift.models.decoder import build_graph, expected_tensors
from drift.passes import PassContext, run_pipeline

from .helpers import TIGHT, rel_err, run_plain


def tiny_config(kind: str) -> ModelConfig:
    base = ModelConfig(arch="llama", n_layers=2, d_model=32, d_ff=48, n_heads=4, n_kv_heads=2,
                       head_dim=8, v_head_dim=8, vocab_size=40, ctx_train=64, norm_eps=1e-5,
                       rope_theta=10000.0, rope_dims=8)
    if kind == "llama":
        return base.with_(has_rope_freqs=True)
    if kind == "qwen2":
        return base.with_(arch="qwen2", rope_mode="neox", qkv_bias=True, n_kv_heads=1)
    if kind == "gemma3":
        return base.with_(arch="gemma3", rope_mode="neox", ffn_act="geglu", embed_scale=5.6,
                          post_norms=True, qk_norm=True, sliding_window=3,
                          swa_layers=(True, False), rope_theta_local=100.0, tied_embeddings=True,
                          n_kv_heads=1, attn_scale=0.3)
    if kind == "gemma2":
        return base.with_(arch="gemma2", rope_mode="neox", ffn_act="geglu", post_norms=True,
                          attn_softcap=50.0, final_softcap=30.0, tied_embeddings=True,
                          sliding_window=4, swa_layers=(True, False))
    raise KeyError(kind)


def tiny_weights(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_tensors(cfg).items():
        w = rng.standard_normal(shape) * (0.3 if len(shape) == 2 else 0.1)
        if name.endswith("norm.weight") or name == "rope_freqs.weight":
            w = 1.0 + np.abs(w)
        out[name] = w.astype(np.float32)
    return out


KINDS = ["llama", "qwen2", "gemma3", "gemma2"]


@pytest.mark.parametrize("kind", KINDS)
def test_fused_planned_graph_matches_plain_evaluation(kind):
    cfg = tiny_config(kind)
    w = tiny_weights(cfg)
    dtypes = {k: "f32" for k in w}
    backend = CPUBackend(capabilities=TIGHT)
    backend.load_arrays(w)
    state: dict = {}
    for S, start in [(5, 0), (1, 5), (1, 6), (3, 7)]:  # prefill, decode, decode, a chunk
        g = build_graph(cfg, dtypes, S, 16)
        feeds = {"tokens": np.arange(start, start + S, dtype=np.int32) % cfg.vocab_size,
                 "positions": np.arange(start, start + S, dtype=np.int32)}
        out = g.outputs[0]  # "logits", or Gemma 2's soft-capped logits
        ref = run_plain(g, w, feeds, state)[out]
        got = backend.compile(g).run(feeds)[out]
        assert rel_err(got, ref) <= 1e-5, (kind, S, start)


@pytest.mark.parametrize("kind", KINDS)
def test_which_fusions_fire(kind):
    cfg = tiny_config(kind)
    g = build_graph(cfg, {k: "f32" for k in tiny_weights(cfg)}, 4, 16)
    c = run_pipeline(g, PassContext(TIGHT))
    ops = Counter(n.op for n in c.graph.nodes)
    programs = [[step[0] for step in n.attrs["program"]] for n in c.graph.nodes
                if n.op == "fused_elementwise"]
    L = cfg.n_layers
    assert ops["stacked_matmul"] == L and ops["ffn_gate_up"] == L
    assert ops["rope_heads"] == L and ops["rope_kv_write"] == L
    assert ops["kv_write"] == L and "rope" not in ops  # only V's cache write stays plain
    assert "swiglu" not in ops and "geglu" not in ops
    # the LM head takes the final norm (Gemma 2's logit soft-cap is then its epilogue)
    if cfg.final_softcap:
        assert ["rms_norm_matmul", "softcap"] in programs
    else:
        assert ops["rms_norm_matmul"] == 1
    # every residual add meets the next norm, but the last one (no norm follows it)
    assert ops["add_rms_norm"] == 2 * L - 1
    if cfg.post_norms:  # the post-norms stay apart; the last one anchors the last residual add
        assert ["rms_norm", "add"] in programs
        assert ops["matmul"] == 2 * L
    else:  # the last down projection anchors the last residual add
        assert ["matmul", "add"] in programs
        assert ops["matmul"] == 2 * L - 1
    if cfg.embed_scale:
        assert ["embedding", "scale"] in programs
