"""The pre-norm decoder-only transformer every supported architecture is a variant of.

`expected_tensors` lists the GGUF tensor names and shapes a config implies (the weight-name
mapping, kept apart from the builder); `build_graph` writes the IR for one call of S tokens:
S = prompt length for prefill, S = 1 for decode. Both read the KV cache, which persists
between calls, and take token positions as an input, so one graph serves every step.
"""

from __future__ import annotations

import math

from drift.ir import Graph, GraphBuilder
from drift.models.config import ModelConfig


def expected_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> numpy shape, for every tensor the graph reads."""
    D, F, V = cfg.d_model, cfg.d_ff, cfg.vocab_size
    Dv = cfg.n_heads * cfg.v_head_dim
    names: dict[str, tuple[int, ...]] = {"token_embd.weight": (V, D), "output_norm.weight": (D,)}
    if not cfg.tied_embeddings:
        names["output.weight"] = (V, D)
    if cfg.has_rope_freqs:
        names["rope_freqs.weight"] = (cfg.rope_dims // 2,)
    for i in range(cfg.n_layers):
        b = f"blk.{i}."
        names |= {
            b + "attn_norm.weight": (D,),
            b + "attn_q.weight": (cfg.q_dim, D),
            b + "attn_k.weight": (cfg.kv_dim, D),
            b + "attn_v.weight": (cfg.n_kv_heads * cfg.v_head_dim, D),
            b + "attn_output.weight": (D, Dv),
            b + "ffn_norm.weight": (D,),
            b + "ffn_gate.weight": (F, D),
            b + "ffn_up.weight": (F, D),
            b + "ffn_down.weight": (D, F),
        }
        if cfg.qkv_bias:
            names |= {
                b + "attn_q.bias": (cfg.q_dim,),
                b + "attn_k.bias": (cfg.kv_dim,),
                b + "attn_v.bias": (cfg.n_kv_heads * cfg.v_head_dim,),
            }
        if cfg.qk_norm:
            names |= {b + "attn_q_norm.weight": (cfg.head_dim,), b + "attn_k_norm.weight": (cfg.head_dim,)}
        if cfg.post_norms:
            names |= {b + "post_attention_norm.weight": (D,), b + "post_ffw_norm.weight": (D,)}
    return names


def build_graph(
    cfg: ModelConfig,
    weight_dtypes: dict[str, str],
    n_tokens: int,
    ctx: int,
    kv_dtype: str = "f32",
    act_dtype: str = "f32",
    all_logits: bool = False,
) -> Graph:
    """The IR for one call over `n_tokens` tokens with a KV cache of `ctx` positions.

    weight_dtypes maps each GGUF tensor name to its stored type ("Q4_0", "f32", ...).
    Returns logits (1, V) for the last token, or (S, V) with all_logits.
    """
    S, D, H, Hkv, Dh, Dv = (n_tokens, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                            cfg.v_head_dim)
    shapes = expected_tensors(cfg)
    stage = "decode" if S == 1 else "prefill"
    b = GraphBuilder(f"{cfg.arch}.{stage}{S}", stage=stage, n_tokens=S, ctx=ctx, arch=cfg.arch)

    def w(name: str) -> str:
        return b.weight(name, shapes[name], weight_dtypes[name])

    def norm(x: str, name: str) -> str:
        return b.op("rms_norm", x, w(name), eps=cfg.norm_eps)

    tokens = b.input("tokens", (S,), "i32")
    pos = b.input("positions", (S,), "i32")
    rope_freqs = [w("rope_freqs.weight")] if cfg.has_rope_freqs else []

    h = b.op("embedding", w("token_embd.weight"), tokens, dtype=act_dtype)  # (S, D)
    if cfg.embed_scale:
        h = b.op("scale", h, value=cfg.embed_scale)

    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        # --- attention
        x = norm(h, p + "attn_norm.weight")
        q = b.op("matmul", x, w(p + "attn_q.weight"))  # (S, H*Dh)
        k = b.op("matmul", x, w(p + "attn_k.weight"))  # (S, Hkv*Dh)
        v = b.op("matmul", x, w(p + "attn_v.weight"))  # (S, Hkv*Dv)
        if cfg.qkv_bias:
            q = b.op("add", q, w(p + "attn_q.bias"))
            k = b.op("add", k, w(p + "attn_k.bias"))
            v = b.op("add", v, w(p + "attn_v.bias"))
        q = b.op("reshape", q, shape=(S, H, Dh))
        k = b.op("reshape", k, shape=(S, Hkv, Dh))
        v = b.op("reshape", v, shape=(S, Hkv, Dv))
        if cfg.qk_norm:
            q = norm(q, p + "attn_q_norm.weight")
            k = norm(k, p + "attn_k_norm.weight")
        rope = dict(mode=cfg.rope_mode, n_dims=cfg.rope_dims, theta=cfg.layer_rope_theta(i),
                    freq_scale=cfg.layer_rope_freq_scale(i))
        q = b.op("rope", q, pos, *rope_freqs, **rope)
        k = b.op("rope", k, pos, *rope_freqs, **rope)
        k_cache = b.state(f"k_cache.{i}", (ctx, Hkv, Dh), kv_dtype)
        v_cache = b.state(f"v_cache.{i}", (ctx, Hkv, Dv), kv_dtype)
        k_cache = b.op("kv_write", k_cache, k, pos)
        v_cache = b.op("kv_write", v_cache, v, pos)
        a = b.op("attention", q, k_cache, v_cache, pos,
                 scale=cfg.attn_scale or 1.0 / math.sqrt(Dh),
                 window=cfg.layer_window(i), softcap=cfg.attn_softcap)  # (S, H, Dv)
        a = b.op("reshape", a, shape=(S, H * Dv))
        o = b.op("matmul", a, w(p + "attn_output.weight"))  # (S, D)
        if cfg.post_norms:
            o = norm(o, p + "post_attention_norm.weight")
        h = b.op("add", h, o)
        # --- feed-forward
        x = norm(h, p + "ffn_norm.weight")
        gate = b.op("matmul", x, w(p + "ffn_gate.weight"))  # (S, F)
        up = b.op("matmul", x, w(p + "ffn_up.weight"))  # (S, F)
        m = b.op(cfg.ffn_act, gate, up)
        d = b.op("matmul", m, w(p + "ffn_down.weight"))  # (S, D)
        if cfg.post_norms:
            d = norm(d, p + "post_ffw_norm.weight")
        h = b.op("add", h, d)

    if not all_logits:
        h = b.op("last_row", h)  # (1, D): generation needs the last position only
    h = norm(h, "output_norm.weight")
    head = "token_embd.weight" if cfg.tied_embeddings else "output.weight"
    logits = b.op("matmul", h, w(head), name="logits")  # (S or 1, V)
    if cfg.final_softcap:
        logits = b.op("softcap", logits, cap=cfg.final_softcap)
    b.output(logits)
    return b.finish()
