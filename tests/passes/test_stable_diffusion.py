"""Stable Diffusion 1.4's graphs: their published sizes (parameter counts, output shapes), the
memory plan against ML Drift's figures, and scaled-down configurations run through the numpy
backend (fused, virtualized, planned) against the plain evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from drift.backends.cpu import CPUBackend
from drift.ir import Role
from drift.models.stable_diffusion import (
    ClipTextConfig,
    UNetConfig,
    VAEDecoderConfig,
    build_text_encoder,
    build_unet,
    build_vae_decoder,
    sd_graphs,
)
from drift.passes import Capabilities

from .helpers import TIGHT, random_feeds, random_weights, rel_err, run_plain


@pytest.fixture(scope="module")
def graphs():
    return sd_graphs()


def test_published_parameter_counts_and_shapes(graphs):
    params = {k: sum(w.numel for w in g.by_role(Role.WEIGHT)) for k, g in graphs.items()}
    # CLIPTextModel (ViT-L/14), UNet2DConditionModel and AutoencoderKL's decoder +
    # post_quant_conv, as the checkpoints count them
    assert params == {"text_encoder": 123_060_480, "unet": 859_520_964,
                      "vae_decoder": 49_490_199}
    shape = {k: g.tensors[g.outputs[0]].shape for k, g in graphs.items()}
    assert shape == {"text_encoder": (1, 77, 768), "unet": (1, 64, 64, 4),
                     "vae_decoder": (1, 512, 512, 3)}
    assert all(t.dtype == "f16" for g in graphs.values() for t in g.tensors.values()
               if t.role == Role.ACTIVATION)


def test_memory_at_or_under_ml_drift(graphs):
    from drift.passes.memory_report import ML_DRIFT_SD_MIB, component_memory

    MiB = 2**20
    for name, g in graphs.items():
        row = component_memory(g)
        planned = row["fused"]["greedy_by_size"] / MiB
        assert planned <= ML_DRIFT_SD_MIB[name][1], (name, planned)
        assert row["fused"]["greedy_by_size"] >= row["fused"]["lower_bound"]
        assert row["fused"]["naive"] <= row["unfused"]["naive"]  # fusion removes tensors


def _run_tiny(g, tol):
    w, f = random_weights(g, scale=0.15), random_feeds(g, vocab=20)
    if "timestep" in f:
        f["timestep"] = np.array([7.0], np.float32)
    ref = run_plain(g, w, f)
    backend = CPUBackend(capabilities=TIGHT)
    backend.load_arrays(w)
    prog = backend.compile(g)
    got = prog.run(f)
    for o in g.outputs:
        assert got[o].shape == ref[o].shape
        assert rel_err(got[o], ref[o]) <= tol, o
    return prog


def test_tiny_unet_runs_fused_and_planned():
    cfg = UNetConfig(block_out=(8, 16), down_attn=(True, False), layers_per_block=1,
                     cross_dim=12, heads=2, groups=4, text_len=5, sample_size=8)
    g = build_unet(cfg, dtype="f32")
    prog = _run_tiny(g, 1e-5)
    ops = {n.op for n in prog.graph.nodes}
    assert {"stacked_matmul", "ffn_gate_up", "fused_elementwise", "mha", "concat"} <= ops
    assert any("phwc4" in str(s) for s in prog.storages.values())  # images in channel slices
    assert prog.plan.inplace  # residual adds and activations over dying inputs


def test_tiny_vae_decoder_runs_fused_and_planned():
    cfg = VAEDecoderConfig(block_out=(8, 16), groups=4, sample_size=4, out_channels=3)
    g = build_vae_decoder(cfg, dtype="f32")
    prog = _run_tiny(g, 1e-5)
    assert prog.graph.tensors["image"].shape == (1, 8, 8, 3)
    assert str(prog.storages["image"]).startswith("multi")  # past TIGHT's 256-byte objects


def test_tiny_text_encoder_runs_fused_and_planned():
    cfg = ClipTextConfig(vocab_size=20, max_positions=6, width=16, layers=2, heads=4, mlp=24)
    g = build_text_encoder(cfg, dtype="f32")
    _run_tiny(g, 1e-5)


def test_tiny_unet_in_half_precision():
    cfg = UNetConfig(block_out=(8, 16), down_attn=(True, False), layers_per_block=1,
                     cross_dim=12, heads=2, groups=4, text_len=5, sample_size=8)
    g = build_unet(cfg, dtype="f16", weight_dtype="f32")
    _run_tiny(g, 2e-2)


def test_generic_gpu_capabilities_keep_outputs_whole(graphs):
    from drift.passes import PassContext, run_pipeline

    c = run_pipeline(graphs["vae_decoder"], PassContext(Capabilities(channel_slices=True)))
    # 3 RGB channels become one padded slice of 4
    assert c.plan.sizes["image"] == 512 * 512 * 4 * 2
