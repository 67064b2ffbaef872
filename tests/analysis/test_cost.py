"""Costs summed from the op registry, checked against closed forms written from the shapes
alone: 2 FLOPs per matmul weight per token, the attention terms, KV bytes, weight bytes."""

from __future__ import annotations

from math import prod

import pytest

from drift.analysis.cost import KV, model_cost, retype, stage_cost
from drift.analysis.source import from_gguf, from_preset, resolve
from drift.ir import Role
from drift.models import build_graph, expected_tensors
from drift.models.presets import PRESETS

PLAIN_BYTES = {"f32": 4, "f16": 2, "bf16": 2}


def matmul_params(cfg) -> int:
    """Weights a matmul reads per token: every matrix but a lookup-only embedding table."""
    n = 0
    for name, shape in expected_tensors(cfg).items():
        if len(shape) == 2 and not (name == "token_embd.weight" and not cfg.tied_embeddings):
            n += prod(shape)
    return n


def head_params(cfg) -> int:
    return cfg.vocab_size * cfg.d_model


def pairs(n_queries: int, kv_len: int, window: int) -> int:
    """Attended (query, key) pairs, written independently of the registry's helper."""
    if not window:
        first = kv_len - n_queries  # position of the first query
        return sum(range(first + 1, kv_len + 1))
    return sum(min(p + 1, window) for p in range(kv_len - n_queries, kv_len))


def closed_form_flops(cfg, S: int, kv_len: int) -> tuple[int, int]:
    """(matmul FLOPs, attention contraction FLOPs) of a call over S tokens."""
    mm = 2 * S * (matmul_params(cfg) - head_params(cfg)) + 2 * head_params(cfg)  # last row only
    attn = sum(2 * cfg.n_heads * pairs(S, kv_len, cfg.layer_window(i))
               * (cfg.head_dim + cfg.v_head_dim) for i in range(cfg.n_layers))
    return mm, attn


def split_flops(stage) -> tuple[int, int]:
    mm = sum(o.flops for o in stage.ops if o.node.op == "matmul")
    attn_macs = sum(o.macs for o in stage.ops if o.node.op == "attention")
    return mm, 2 * attn_macs


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_flops_and_kv_closed_forms_on_presets(name):
    spec = from_preset(name, "Q4_0")
    cfg = spec.config
    S, gen = 128, 64
    c = model_cost(name, "Q4_0", cfg, spec.weight_dtypes, S, gen, kv_dtype="f16")
    ctx = S + gen // 2
    assert c.ctx == ctx
    # prefill: every matmul weight twice per prompt token, the head once (last row)
    assert split_flops(c.prefill) == closed_form_flops(cfg, S, S)
    # decode: the headline rule, 2 x matmul parameters per token, plus attention at C keys
    mm, attn = split_flops(c.decode)
    assert mm == 2 * matmul_params(cfg)
    assert attn == closed_form_flops(cfg, 1, ctx)[1]
    # matmul MACs are exactly half their FLOPs
    for o in c.decode.ops:
        if o.node.op == "matmul":
            assert 2 * o.macs == o.flops
    # KV cache: 2 (K and V) x layers x kv_heads x head_dim x ctx x bytes
    for ctx_, kv in c.kv_by_ctx:
        assert kv == 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * ctx_ * 2
    assert c.kv_bytes_per_token == 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 2
    # decode KV traffic: read the attended keys and values, write one row of each
    row = cfg.n_kv_heads * cfg.head_dim * 2
    keys = sum(min(ctx, cfg.layer_window(i)) if cfg.layer_window(i) else ctx
               for i in range(cfg.n_layers))
    assert c.decode.kv_bytes == 2 * row * keys + 2 * cfg.n_layers * row
    assert c.decode.bytes_by_class()[KV] == c.decode.kv_bytes


def test_classes_add_up_and_weights_read_once_per_decode():
    spec = from_preset("llama-3.2-1b", "Q4_K_M")
    c = model_cost(spec.label, spec.quant, spec.config, spec.weight_dtypes, 64, 16)
    for s in (c.prefill, c.decode):
        assert sum(s.bytes_by_class().values()) == s.bytes
        assert s.weight_bytes + s.kv_bytes + s.act_bytes == s.bytes
        for o in s.ops:
            assert o.weight_bytes + o.kv_bytes + o.act_bytes == o.bytes
    # Decode reads each weight once per op using it: the embedding table one row (and, tied
    # as in the 1B, once more whole as the head); rope_freqs once per rope op.
    g = c.decode.graph
    table = g.tensors["token_embd.weight"]
    one_row = table.nbytes // table.shape[0]
    users = g.consumers()
    extra = sum((len(users[t.name]) - 1) * t.nbytes for t in g.by_role(Role.WEIGHT)
                if t.name != "token_embd.weight")
    assert len(users["rope_freqs.weight"]) == 2 * spec.config.n_layers
    assert c.decode.weight_bytes == c.weight_bytes + one_row + extra
    # Every block op group appears once per layer
    groups = {gr.label: gr.count for gr in c.decode.groups()}
    L = spec.config.n_layers
    for label in ("matmul attn_q", "matmul ffn_down", "attention", "rms_norm attn_norm"):
        assert groups[label] == L
    assert groups["rope"] == 2 * L and groups["kv_write"] == 2 * L
    layers = {o.layer for o in c.decode.ops if o.label == "attention"}
    assert layers == set(range(L))


@pytest.mark.parametrize("name, quant, expected_mib", [
    # llama.cpp file sizes from ANCHORS.md; the files also hold ~5 MB of tokenizer metadata,
    # while our count is tensor data only, hence the 1 % tolerance.
    ("llama-3.2-1b", "Q4_0", 728), ("llama-3.2-1b", "Q8_0", 1.22 * 1024),
    ("llama-3.2-1b", "Q4_K_M", 763), ("llama-3.1-8b", "Q4_0", 4.33 * 1024),
    ("llama-3.1-8b", "Q8_0", 7.95 * 1024),
])
def test_weight_bytes_match_llama_cpp_files(name, quant, expected_mib):
    spec = from_preset(name, quant)
    g = build_graph(spec.config, spec.weight_dtypes, 1, 16)
    total = sum(t.nbytes for t in g.by_role(Role.WEIGHT)) / 2**20
    assert total == pytest.approx(expected_mib, rel=0.01)


def test_decode_reads_what_anchors_say_for_8b_q4_0():
    """ANCHORS.md: 8B Q4_0 reads about 4.36 GB per token (the embedding table not whole)."""
    spec = from_preset("llama-3.1-8b", "Q4_0")
    c = model_cost(spec.label, spec.quant, spec.config, spec.weight_dtypes, 512, 128)
    assert c.decode.weight_bytes / 1e9 == pytest.approx(4.36, abs=0.01)


def test_closed_forms_on_the_smollm2_file(smollm2_path):
    spec = resolve(str(smollm2_path))
    cfg = spec.config
    assert spec.quant == "Q4_1" and spec.weight_dtypes["blk.0.attn_q.weight"] == "Q4_1"
    c = model_cost(spec.label, spec.quant, cfg, spec.weight_dtypes, 16, 8, kv_dtype="f32",
                   act_dtype="f32")  # what the numpy engine runs
    assert split_flops(c.prefill) == closed_form_flops(cfg, 16, 16)
    # 30 x (4 attention + 3 FFN matrices) + the tied 49152 x 576 table as the head
    assert split_flops(c.decode)[0] == 2 * matmul_params(cfg) == 2 * 134_479_872
    assert c.params == 134_515_008
    assert c.kv_bytes_per_token == 2 * 30 * 3 * 64 * 4
    # the analysed graph is the engine's: same nodes as build_graph with the file's types
    g = build_graph(cfg, spec.weight_dtypes, 16, c.prefill.graph.meta["ctx"], kv_dtype="f32")
    assert [n for n in g.nodes] == c.prefill.graph.nodes


def test_gemma_file_sliding_window_attention(gemma3_path):
    spec = from_gguf(gemma3_path)
    cfg = spec.config
    assert cfg.sliding_window == 512 and any(cfg.swa_layers)
    c = model_cost(spec.label, spec.quant, cfg, spec.weight_dtypes, 64, 2048, kv_dtype="f16")
    assert split_flops(c.decode)[1] == closed_form_flops(cfg, 1, c.ctx)[1]
    assert split_flops(c.prefill) == closed_form_flops(cfg, 64, 64)


def test_retype_counts_stored_bytes():
    spec = from_preset("smollm2-135m", "Q4_0")
    g = build_graph(spec.config, spec.weight_dtypes, 1, 32)
    as_f32 = retype(g, {t.name: "f32" for t in g.by_role(Role.WEIGHT)})
    q, f = stage_cost(g, 8), stage_cost(as_f32, 8)
    assert f.flops == q.flops
    assert f.weight_bytes > 5 * q.weight_bytes  # 4 B vs ~0.6 B per weight
    assert g.tensors["blk.0.attn_q.weight"].dtype == "Q4_0"  # the original is untouched
