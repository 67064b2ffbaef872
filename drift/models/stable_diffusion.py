"""Stable Diffusion 1.x in the IR: the CLIP text encoder, the UNet and the VAE decoder.

Built from the published configurations (diffusers' `CompVis/stable-diffusion-v1-4` configs;
OpenAI CLIP ViT-L/14's text tower) for 512x512 images, with shapes, dtypes and costs from the
op registry. No weights are needed to build them: memory and cost analysis run on the graphs
alone, and every op has a numpy reference, so the graphs run once weights are loaded (the
tests run scaled-down configurations with random weights through the numpy backend).

Layout: images are channels-last, (N, H, W, C) (see `drift/ir/ops_diffusion.py`), so the
tokens a transformer block reads over an image are a reshape of it, not a transpose.

Weight names are the diffusers / transformers state-dict keys of each component, so a loader
maps checkpoint tensors one to one. One exception: GEGLU's projection `ff.net.0.proj` is one
(2F, C) matrix in the checkpoint whose first F rows make the value and last F rows the gate;
here its halves are two weights, `...proj.weight.hidden` and `...proj.weight.gate` (same for
the bias), which the FFN fusion puts back side by side at load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from drift.ir import Graph, GraphBuilder


@dataclass(frozen=True)
class ClipTextConfig:
    """CLIP ViT-L/14's text encoder (Stable Diffusion 1.x's)."""

    vocab_size: int = 49408
    max_positions: int = 77
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp: int = 3072
    eps: float = 1e-5
    act: str = "quick_gelu"


@dataclass(frozen=True)
class UNetConfig:
    """UNet2DConditionModel of Stable Diffusion 1.x (v1-4's config.json)."""

    in_channels: int = 4
    out_channels: int = 4
    sample_size: int = 64  # latent side: 512 / 8
    block_out: tuple[int, ...] = (320, 640, 1280, 1280)
    down_attn: tuple[bool, ...] = (True, True, True, False)  # CrossAttnDownBlock2D x3, DownBlock2D
    layers_per_block: int = 2
    cross_dim: int = 768
    heads: int = 8  # "attention_head_dim": 8 in SD 1.x's config is the head count
    groups: int = 32
    eps: float = 1e-5  # resnets' group norms
    attn_norm_eps: float = 1e-6  # the transformer's group norm
    ln_eps: float = 1e-5
    text_len: int = 77
    ff_mult: int = 4

    @property
    def temb_dim(self) -> int:
        return 4 * self.block_out[0]


@dataclass(frozen=True)
class VAEDecoderConfig:
    """AutoencoderKL's decoder of Stable Diffusion 1.x (with post_quant_conv)."""

    latent_channels: int = 4
    out_channels: int = 3
    sample_size: int = 64  # latent side
    block_out: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2  # each up block has layers_per_block + 1 resnets
    groups: int = 32
    eps: float = 1e-6
    scaling_factor: float = 0.18215


class _Builder:
    """A GraphBuilder with the layers diffusion models are made of."""

    def __init__(self, name: str, act_dtype: str, weight_dtype: str,
                 attention_scores: bool = False, **meta):
        self.b = GraphBuilder(name, **meta)
        self.act, self.wd = act_dtype, weight_dtype
        self.attention_scores = attention_scores

    def shape(self, x: str) -> tuple[int, ...]:
        return self.b.graph.tensors[x].shape

    def w(self, name: str, shape: tuple[int, ...]) -> str:
        return self.b.weight(name, shape, self.wd)

    def op(self, op: str, *inputs: str, **attrs) -> str:
        return self.b.op(op, *inputs, **attrs)

    def linear(self, x: str, name: str, n_out: int, bias: bool = True,
               weight: str | None = None) -> str:
        k = self.shape(x)[-1]
        y = self.op("matmul", x, self.w(weight or f"{name}.weight", (n_out, k)))
        if bias:
            bname = (weight or f"{name}.weight").replace(".weight", ".bias")
            y = self.op("add", y, self.w(bname, (n_out,)))
        return y

    def conv(self, x: str, name: str, c_out: int, k: int, stride: int = 1, padding: int = 0) -> str:
        c_in = self.shape(x)[-1]
        return self.op("conv2d", x, self.w(f"{name}.weight", (c_out, c_in, k, k)),
                       self.w(f"{name}.bias", (c_out,)), stride=stride, padding=padding)

    def group_norm(self, x: str, name: str, groups: int, eps: float) -> str:
        c = self.shape(x)[-1]
        return self.op("group_norm", x, self.w(f"{name}.weight", (c,)),
                       self.w(f"{name}.bias", (c,)), groups=groups, eps=eps)

    def layer_norm(self, x: str, name: str, eps: float) -> str:
        c = self.shape(x)[-1]
        return self.op("layer_norm", x, self.w(f"{name}.weight", (c,)),
                       self.w(f"{name}.bias", (c,)), eps=eps)

    def attention(self, q: str, k: str, v: str, heads: int, causal: bool = False) -> str:
        """(B, Lq, C) queries over (B, Lk, C) keys and values -> (B, Lq, C)."""
        B, Lq, C = self.shape(q)
        Lk = self.shape(k)[1]
        dh = C // heads
        qh = self.op("reshape", q, shape=(B, Lq, heads, dh))
        kh = self.op("reshape", k, shape=(B, Lk, heads, dh))
        vh = self.op("reshape", v, shape=(B, Lk, heads, dh))
        if self.attention_scores:  # the attention matrix as a tensor (only to measure it)
            p = self.op("attn_probs", qh, kh, scale=1.0 / math.sqrt(dh), causal=causal)
            a = self.op("attn_values", p, vh)
        else:
            a = self.op("mha", qh, kh, vh, scale=1.0 / math.sqrt(dh), causal=causal)
        return self.op("reshape", a, shape=(B, Lq, C))

    def resnet(self, x: str, temb: str | None, p: str, c_out: int, groups: int,
               eps: float) -> str:
        """diffusers' ResnetBlock2D: GN, SiLU, conv3x3 (+ time embedding), GN, SiLU, conv3x3,
        plus the input (through a 1x1 conv when the width changes)."""
        B, c_in = self.shape(x)[0], self.shape(x)[-1]
        h = self.op("silu", self.group_norm(x, f"{p}.norm1", groups, eps))
        h = self.conv(h, f"{p}.conv1", c_out, 3, padding=1)
        if temb is not None:
            t = self.linear(self.op("silu", temb), f"{p}.time_emb_proj", c_out)  # (B, Cout)
            h = self.op("add", h, self.op("reshape", t, shape=(B, 1, 1, c_out)))
        h = self.op("silu", self.group_norm(h, f"{p}.norm2", groups, eps))
        h = self.conv(h, f"{p}.conv2", c_out, 3, padding=1)
        skip = x if c_in == c_out else self.conv(x, f"{p}.conv_shortcut", c_out, 1)
        return self.op("add", skip, h)


# ---------------------------------------------------------------------------------------------
# CLIP text encoder


def build_text_encoder(cfg: ClipTextConfig = ClipTextConfig(), batch: int = 1,
                       dtype: str = "f16", weight_dtype: str | None = None,
                       attention_scores: bool = False) -> Graph:
    """Token ids (B*77,) -> last hidden state (B, 77, 768): CLIPTextModel's encoder."""
    L, C = cfg.max_positions, cfg.width
    sb = _Builder("sd.text_encoder", dtype, weight_dtype or dtype, attention_scores,
                  stage="text_encoder", batch=batch)
    ids = sb.b.input("input_ids", (batch * L,), "i32")
    h = sb.op("embedding", sb.w("embeddings.token_embedding.weight", (cfg.vocab_size, C)), ids,
              dtype=dtype)  # (B*L, C)
    h = sb.op("reshape", h, shape=(batch, L, C))
    h = sb.op("add", h, sb.w("embeddings.position_embedding.weight", (L, C)))
    for i in range(cfg.layers):
        p = f"encoder.layers.{i}"
        n = sb.layer_norm(h, f"{p}.layer_norm1", cfg.eps)
        q = sb.linear(n, f"{p}.self_attn.q_proj", C)
        k = sb.linear(n, f"{p}.self_attn.k_proj", C)
        v = sb.linear(n, f"{p}.self_attn.v_proj", C)
        a = sb.attention(q, k, v, cfg.heads, causal=True)
        h = sb.op("add", h, sb.linear(a, f"{p}.self_attn.out_proj", C))
        n = sb.layer_norm(h, f"{p}.layer_norm2", cfg.eps)
        m = sb.op(cfg.act, sb.linear(n, f"{p}.mlp.fc1", cfg.mlp))
        h = sb.op("add", h, sb.linear(m, f"{p}.mlp.fc2", C))
    out = sb.b.op("layer_norm", h, sb.w("final_layer_norm.weight", (C,)),
                  sb.w("final_layer_norm.bias", (C,)), eps=cfg.eps, name="last_hidden_state")
    sb.b.output(out)
    return sb.b.finish()


# ---------------------------------------------------------------------------------------------
# UNet


def _transformer(sb: _Builder, x: str, context: str, p: str, cfg: UNetConfig) -> str:
    """Transformer2DModel of SD 1.x: GN, 1x1 conv in, one BasicTransformerBlock (self-attention,
    cross-attention to the text, GEGLU feed-forward), 1x1 conv out, plus the input."""
    B, H, W, C = sb.shape(x)
    h = sb.group_norm(x, f"{p}.norm", cfg.groups, cfg.attn_norm_eps)
    h = sb.conv(h, f"{p}.proj_in", C, 1)
    h = sb.op("reshape", h, shape=(B, H * W, C))  # tokens: a view, the image is channels-last
    blk = f"{p}.transformer_blocks.0"
    # self-attention
    n = sb.layer_norm(h, f"{blk}.norm1", cfg.ln_eps)
    q, k, v = (sb.linear(n, f"{blk}.attn1.to_{c}", C, bias=False) for c in "qkv")
    a = sb.attention(q, k, v, cfg.heads)
    h = sb.op("add", sb.linear(a, f"{blk}.attn1.to_out.0", C), h)
    # cross-attention: queries from the image, keys and values from the text
    n = sb.layer_norm(h, f"{blk}.norm2", cfg.ln_eps)
    q = sb.linear(n, f"{blk}.attn2.to_q", C, bias=False)
    k = sb.linear(context, f"{blk}.attn2.to_k", C, bias=False)
    v = sb.linear(context, f"{blk}.attn2.to_v", C, bias=False)
    a = sb.attention(q, k, v, cfg.heads)
    h = sb.op("add", sb.linear(a, f"{blk}.attn2.to_out.0", C), h)
    # GEGLU feed-forward
    n = sb.layer_norm(h, f"{blk}.norm3", cfg.ln_eps)
    inner = cfg.ff_mult * C
    proj = f"{blk}.ff.net.0.proj"
    up = sb.linear(n, proj, inner, weight=f"{proj}.weight.hidden")
    gate = sb.linear(n, proj, inner, weight=f"{proj}.weight.gate")
    m = sb.op("geglu_erf", gate, up)
    h = sb.op("add", sb.linear(m, f"{blk}.ff.net.2", C), h)
    h = sb.op("reshape", h, shape=(B, H, W, C))
    return sb.op("add", sb.conv(h, f"{p}.proj_out", C, 1), x)


def build_unet(cfg: UNetConfig = UNetConfig(), batch: int = 1, dtype: str = "f16",
               weight_dtype: str | None = None, attention_scores: bool = False) -> Graph:
    """(noisy latent (B, 64, 64, 4), timestep (B,), text (B, 77, 768)) -> noise (B, 64, 64, 4).

    Batch 1 is one UNet evaluation; classifier-free guidance runs it at batch 2 (or twice)."""
    B, S, C0 = batch, cfg.sample_size, cfg.block_out[0]
    gn = {"groups": cfg.groups, "eps": cfg.eps}
    sb = _Builder("sd.unet", dtype, weight_dtype or dtype, attention_scores, stage="unet",
                  batch=B)
    sample = sb.b.input("sample", (B, S, S, cfg.in_channels), dtype)
    t = sb.b.input("timestep", (B,), "f32")
    context = sb.b.input("encoder_hidden_states", (B, cfg.text_len, cfg.cross_dim), dtype)

    temb = sb.op("timestep_embedding", t, dim=C0, flip_sin_to_cos=True, freq_shift=0,
                 max_period=10000, dtype=dtype)
    temb = sb.op("silu", sb.linear(temb, "time_embedding.linear_1", cfg.temb_dim))
    temb = sb.linear(temb, "time_embedding.linear_2", cfg.temb_dim)

    h = sb.conv(sample, "conv_in", C0, 3, padding=1)
    skips = [h]
    n_blocks = len(cfg.block_out)
    for i, c in enumerate(cfg.block_out):
        for j in range(cfg.layers_per_block):
            h = sb.resnet(h, temb, f"down_blocks.{i}.resnets.{j}", c, **gn)
            if cfg.down_attn[i]:
                h = _transformer(sb, h, context, f"down_blocks.{i}.attentions.{j}", cfg)
            skips.append(h)
        if i < n_blocks - 1:
            h = sb.conv(h, f"down_blocks.{i}.downsamplers.0.conv", c, 3, stride=2, padding=1)
            skips.append(h)

    c_mid = cfg.block_out[-1]
    h = sb.resnet(h, temb, "mid_block.resnets.0", c_mid, **gn)
    h = _transformer(sb, h, context, "mid_block.attentions.0", cfg)
    h = sb.resnet(h, temb, "mid_block.resnets.1", c_mid, **gn)

    up_attn = tuple(reversed(cfg.down_attn))
    for i, c in enumerate(reversed(cfg.block_out)):
        for j in range(cfg.layers_per_block + 1):
            h = sb.op("concat", h, skips.pop(), axis=-1)  # the skip connection, along channels
            h = sb.resnet(h, temb, f"up_blocks.{i}.resnets.{j}", c, **gn)
            if up_attn[i]:
                h = _transformer(sb, h, context, f"up_blocks.{i}.attentions.{j}", cfg)
        if i < n_blocks - 1:
            h = sb.op("upsample_nearest", h, scale=2)
            h = sb.conv(h, f"up_blocks.{i}.upsamplers.0.conv", c, 3, padding=1)
    assert not skips

    h = sb.op("silu", sb.group_norm(h, "conv_norm_out", **gn))
    c_in = sb.shape(h)[-1]
    out = sb.b.op("conv2d", h, sb.w("conv_out.weight", (cfg.out_channels, c_in, 3, 3)),
                  sb.w("conv_out.bias", (cfg.out_channels,)), padding=1, name="noise_pred")
    sb.b.output(out)
    return sb.b.finish()


# ---------------------------------------------------------------------------------------------
# VAE decoder


def _vae_attention(sb: _Builder, x: str, p: str, cfg: VAEDecoderConfig) -> str:
    """The mid block's single-head self-attention over all pixels, plus the input."""
    B, H, W, C = sb.shape(x)
    n = sb.group_norm(x, f"{p}.group_norm", cfg.groups, cfg.eps)
    t = sb.op("reshape", n, shape=(B, H * W, C))
    q, k, v = (sb.linear(t, f"{p}.to_{c}", C) for c in "qkv")
    a = sb.linear(sb.attention(q, k, v, heads=1), f"{p}.to_out.0", C)
    return sb.op("add", sb.op("reshape", a, shape=(B, H, W, C)), x)


def build_vae_decoder(cfg: VAEDecoderConfig = VAEDecoderConfig(), batch: int = 1,
                      dtype: str = "f16", weight_dtype: str | None = None,
                      attention_scores: bool = False) -> Graph:
    """Latent (B, 64, 64, 4) -> image (B, 512, 512, 3): 1/scaling, post_quant_conv, decoder."""
    B, S = batch, cfg.sample_size
    gn = {"groups": cfg.groups, "eps": cfg.eps}
    sb = _Builder("sd.vae_decoder", dtype, weight_dtype or dtype, attention_scores,
                  stage="vae_decoder", batch=B)
    z = sb.b.input("latent", (B, S, S, cfg.latent_channels), dtype)
    z = sb.op("scale", z, value=1.0 / cfg.scaling_factor)
    z = sb.conv(z, "post_quant_conv", cfg.latent_channels, 1)
    rev = tuple(reversed(cfg.block_out))
    h = sb.conv(z, "decoder.conv_in", rev[0], 3, padding=1)
    h = sb.resnet(h, None, "decoder.mid_block.resnets.0", rev[0], **gn)
    h = _vae_attention(sb, h, "decoder.mid_block.attentions.0", cfg)
    h = sb.resnet(h, None, "decoder.mid_block.resnets.1", rev[0], **gn)
    for i, c in enumerate(rev):
        for j in range(cfg.layers_per_block + 1):
            h = sb.resnet(h, None, f"decoder.up_blocks.{i}.resnets.{j}", c, **gn)
        if i < len(rev) - 1:
            h = sb.op("upsample_nearest", h, scale=2)
            h = sb.conv(h, f"decoder.up_blocks.{i}.upsamplers.0.conv", c, 3, padding=1)
    h = sb.op("silu", sb.group_norm(h, "decoder.conv_norm_out", **gn))
    out = sb.b.op("conv2d", h, sb.w("decoder.conv_out.weight", (cfg.out_channels, rev[-1], 3, 3)),
                  sb.w("decoder.conv_out.bias", (cfg.out_channels,)), padding=1, name="image")
    sb.b.output(out)
    return sb.b.finish()


COMPONENTS = ("text_encoder", "unet", "vae_decoder")


def sd_graphs(batch: int = 1, dtype: str = "f16", attention_scores: bool = False
              ) -> dict[str, Graph]:
    """The three graphs of one Stable Diffusion 1.4 text-to-image run at 512x512.

    attention_scores: attention as two ops (probabilities, values) whose (B, H, L, L) matrix
    is a tensor, rather than one `mha` op: only to measure what that costs."""
    kw = {"batch": batch, "dtype": dtype, "attention_scores": attention_scores}
    return {
        "text_encoder": build_text_encoder(**kw),
        "unet": build_unet(**kw),
        "vae_decoder": build_vae_decoder(**kw),
    }
