"""The diffusion ops' numpy references against torch.nn.functional on small random inputs of
awkward shapes (channels-last in drift, channels-first in torch)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from drift.ir import Role, TensorSpec, cost_of, infer, run_reference

torch = pytest.importorskip("torch")
F = torch.nn.functional
rng = np.random.default_rng(0)


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x)).double()


def nchw(x):  # drift (N, H, W, C) -> torch (N, C, H, W)
    return t(x).permute(0, 3, 1, 2)


def nhwc(y):
    return y.permute(0, 2, 3, 1).numpy()


def spec(x, name="x", role=Role.ACTIVATION):
    return TensorSpec(name, x.shape, {np.float32: "f32", np.float16: "f16"}[x.dtype.type], role)


def check(op, inputs, attrs, ref, rtol=1e-5, atol=1e-5):
    (ours,) = run_reference(op, inputs, attrs)
    ((shape, _),) = infer(op, [spec(x) for x in inputs], attrs)
    assert ours.shape == shape and ours.dtype == inputs[0].dtype
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol)
    return ours


@pytest.mark.parametrize("k,stride,pad,bias", [(3, 1, 1, True), (3, 2, 1, True), (1, 1, 0, True),
                                               (3, 1, 0, False), (5, 2, 2, True)])
def test_conv2d(k, stride, pad, bias):
    x = rng.standard_normal((2, 9, 7, 5)).astype(np.float32)
    w = rng.standard_normal((6, 5, k, k)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    ref = nhwc(F.conv2d(nchw(x), t(w), t(b) if bias else None, stride=stride, padding=pad))
    check("conv2d", [x, w, b] if bias else [x, w], {"stride": stride, "padding": pad}, ref)


def test_conv2d_cost_counts_macs():
    x = TensorSpec("x", (1, 8, 8, 4), "f16", Role.ACTIVATION)
    w = TensorSpec("w", (16, 4, 3, 3), "f16", Role.WEIGHT)
    ((shape, _),) = infer("conv2d", [x, w], {"padding": 1})
    out = TensorSpec("y", shape, "f16", Role.ACTIVATION)
    c = cost_of("conv2d", [x, w], [out], {"padding": 1})
    assert c.flops == 2 * 8 * 8 * 16 * 4 * 9 and c.writes == (8 * 8 * 16 * 2,)


@pytest.mark.parametrize("groups", [1, 4, 12])
def test_group_norm(groups):
    x = (rng.standard_normal((2, 5, 3, 12)) * 3 + 1).astype(np.float32)
    g, b = rng.standard_normal(12).astype(np.float32), rng.standard_normal(12).astype(np.float32)
    ref = nhwc(F.group_norm(nchw(x), groups, t(g), t(b), eps=1e-6))
    check("group_norm", [x, g, b], {"groups": groups, "eps": 1e-6}, ref)


def test_layer_norm():
    x = (rng.standard_normal((2, 7, 24)) * 2 + 0.5).astype(np.float32)
    w, b = rng.standard_normal(24).astype(np.float32), rng.standard_normal(24).astype(np.float32)
    ref = F.layer_norm(t(x), (24,), t(w), t(b), eps=1e-5).numpy()
    check("layer_norm", [x, w, b], {"eps": 1e-5}, ref)


def test_upsample_nearest():
    x = rng.standard_normal((1, 3, 5, 6)).astype(np.float32)
    ref = nhwc(F.interpolate(nchw(x), scale_factor=2.0, mode="nearest"))
    check("upsample_nearest", [x], {"scale": 2}, ref, rtol=0, atol=0)


def test_concat_along_channels():
    a = rng.standard_normal((1, 3, 3, 5)).astype(np.float32)
    b = rng.standard_normal((1, 3, 3, 7)).astype(np.float32)
    ref = nhwc(torch.cat([nchw(a), nchw(b)], dim=1))
    check("concat", [a, b], {"axis": -1}, ref, rtol=0, atol=0)


@pytest.mark.parametrize("causal,lq,lk", [(False, 9, 5), (True, 7, 7), (False, 6, 6)])
def test_mha(causal, lq, lk):
    B, H, D, Dv = 2, 3, 8, 5
    q = rng.standard_normal((B, lq, H, D)).astype(np.float32)
    k = rng.standard_normal((B, lk, H, D)).astype(np.float32)
    v = rng.standard_normal((B, lk, H, Dv)).astype(np.float32)
    scale = 1 / math.sqrt(D)
    ref = F.scaled_dot_product_attention(t(q).transpose(1, 2), t(k).transpose(1, 2),
                                         t(v).transpose(1, 2), is_causal=causal, scale=scale)
    check("mha", [q, k, v], {"scale": scale, "causal": causal}, ref.transpose(1, 2).numpy())


@pytest.mark.parametrize("op,fn", [
    ("gelu_erf", lambda x: F.gelu(x)),
    ("quick_gelu", lambda x: x * torch.sigmoid(1.702 * x)),
])
def test_activations(op, fn):
    x = (rng.standard_normal((7, 33)) * 4).astype(np.float32)
    check(op, [x], {}, fn(t(x)).numpy(), atol=1e-6)


def test_geglu_erf_is_diffusers_geglu():
    """diffusers: hidden, gate = proj(x).chunk(2, -1); hidden * gelu(gate)."""
    proj = rng.standard_normal((4, 2 * 11)).astype(np.float32)
    hidden, gate = proj[:, :11], proj[:, 11:]
    ref = (t(hidden) * F.gelu(t(gate))).numpy()
    check("geglu_erf", [gate, hidden], {}, ref, atol=1e-6)


def test_timestep_embedding_matches_diffusers_formula():
    steps = np.array([0.0, 1.0, 999.0, 500.5], dtype=np.float32)
    dim, shift = 320, 0
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float64) / (half - shift)
    emb = t(steps)[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(emb), torch.sin(emb)], dim=-1)  # flip_sin_to_cos
    (ours,) = run_reference("timestep_embedding", [steps],
                            {"dim": dim, "flip_sin_to_cos": True, "freq_shift": 0})
    np.testing.assert_allclose(ours, emb.numpy(), rtol=1e-5, atol=1e-5)


def test_references_keep_half_precision():
    x = rng.standard_normal((1, 4, 4, 8)).astype(np.float16)
    w = rng.standard_normal((4, 8, 3, 3)).astype(np.float16)
    (y,) = run_reference("conv2d", [x, w], {"padding": 1})
    assert y.dtype == np.float16
    ref = nhwc(F.conv2d(nchw(x), t(w), padding=1))
    np.testing.assert_allclose(y, ref, rtol=1e-2, atol=2e-2)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matrix_ops_compose_to_mha(causal):
    q = rng.standard_normal((1, 6, 2, 4)).astype(np.float32)
    k = rng.standard_normal((1, 6, 2, 4)).astype(np.float32)
    v = rng.standard_normal((1, 6, 2, 3)).astype(np.float32)
    attrs = {"scale": 0.5, "causal": causal}
    (p,) = run_reference("attn_probs", [q, k], attrs)
    assert p.shape == (1, 2, 6, 6)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    (a,) = run_reference("attn_values", [p, v], {})
    (ref,) = run_reference("mha", [q, k, v], attrs)
    np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-6)
