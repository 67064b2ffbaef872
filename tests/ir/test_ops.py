"""The op registry's numpy references against independent implementations (torch), on fresh
random inputs of awkward shapes; shape inference and costs against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from drift.ir import GraphBuilder, TensorSpec, Role, cost_of, run_reference
from drift.ir.ops import attended_pairs

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.fixture
def rng():
    return np.random.default_rng()


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x)).double()


def test_rms_norm_matches_torch(rng):
    x = rng.standard_normal((5, 3, 37)).astype(np.float32)
    w = rng.standard_normal(37).astype(np.float32)
    (ours,) = run_reference("rms_norm", [x, w], {"eps": 1e-6})
    ref = F.rms_norm(t(x), (37,), t(w), eps=1e-6).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    (unit,) = run_reference("rms_norm", [x, w], {"eps": 1e-6, "unit_offset": True})
    np.testing.assert_allclose(unit, F.rms_norm(t(x), (37,), 1 + t(w), eps=1e-6).numpy(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op,fn", [
    ("silu", lambda x: F.silu(x)),
    ("gelu", lambda x: F.gelu(x, approximate="tanh")),
])
def test_activations_match_torch(rng, op, fn):
    x = (rng.standard_normal((7, 33)) * 4).astype(np.float32)
    (ours,) = run_reference(op, [x], {})
    np.testing.assert_allclose(ours, fn(t(x)).numpy(), rtol=1e-5, atol=1e-6)


def test_gated_ffn_ops(rng):
    g, u = (rng.standard_normal((3, 29)).astype(np.float32) for _ in range(2))
    (sw,) = run_reference("swiglu", [g, u], {})
    (ge,) = run_reference("geglu", [g, u], {})
    np.testing.assert_allclose(sw, (F.silu(t(g)) * t(u)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ge, (F.gelu(t(g), approximate="tanh") * t(u)).numpy(),
                               rtol=1e-5, atol=1e-6)


def rope_neox_torch(x, pos, theta, n_dims):
    """transformers' rotate_half formulation, written out independently."""
    inv = 1.0 / theta ** (torch.arange(0, n_dims, 2, dtype=torch.float64) / n_dims)
    ang = torch.tensor(pos, dtype=torch.float64)[:, None] * inv[None]  # (S, n/2)
    emb = torch.cat([ang, ang], dim=-1)[:, None, :]  # (S, 1, n)
    xr = x[..., :n_dims]
    x1, x2 = xr[..., : n_dims // 2], xr[..., n_dims // 2 :]
    rotated = torch.cat([-x2, x1], dim=-1)
    out = x.clone()
    out[..., :n_dims] = xr * emb.cos() + rotated * emb.sin()
    return out


def test_rope_neox_matches_transformers_formulation(rng):
    x = rng.standard_normal((6, 3, 40)).astype(np.float32)
    pos = rng.integers(0, 5000, 6).astype(np.int32)
    attrs = {"mode": "neox", "n_dims": 32, "theta": 10000.0}
    (ours,) = run_reference("rope", [x, pos], attrs)
    ref = rope_neox_torch(t(x), pos, 10000.0, 32).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_rope_norm_is_neox_on_permuted_rows(rng):
    """GGUF's llama converter permutes Q/K rows so that interleaved ("norm") RoPE on the file's
    layout equals NeoX RoPE on the checkpoint's: check that identity."""
    S, H, D = 4, 2, 16
    x = rng.standard_normal((S, H, D)).astype(np.float32)
    pos = rng.integers(0, 100, S).astype(np.int32)
    interleave = np.stack([np.arange(D // 2), np.arange(D // 2) + D // 2], -1).reshape(-1)
    (norm,) = run_reference("rope", [x[..., interleave], pos],
                            {"mode": "norm", "n_dims": D, "theta": 500000.0})
    (neox,) = run_reference("rope", [x, pos], {"mode": "neox", "n_dims": D, "theta": 500000.0})
    np.testing.assert_allclose(norm, neox[..., interleave], rtol=1e-5, atol=1e-5)


def test_rope_freq_factors_divide_frequencies(rng):
    x = rng.standard_normal((3, 1, 8)).astype(np.float32)
    pos = np.array([1, 7, 30], dtype=np.int32)
    factors = rng.uniform(1, 8, 4).astype(np.float32)
    attrs = {"mode": "neox", "n_dims": 8, "theta": 10000.0}
    (ours,) = run_reference("rope", [x, pos, factors], attrs)
    inv = 10000.0 ** (-np.arange(0, 8, 2) / 8) / factors
    ang = pos[:, None] * inv
    a, b = x[:, 0, :4], x[:, 0, 4:]
    ref = np.concatenate([a * np.cos(ang) - b * np.sin(ang), a * np.sin(ang) + b * np.cos(ang)], -1)
    np.testing.assert_allclose(ours[:, 0], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("H,Hkv,window,softcap", [(6, 2, 0, 0.0), (4, 1, 3, 0.0),
                                                  (5, 5, 0, 20.0)])
def test_attention_matches_torch_sdpa(rng, H, Hkv, window, softcap):
    S, C, D, start = 5, 16, 12, 4
    q = rng.standard_normal((S, H, D)).astype(np.float32)
    k = rng.standard_normal((C, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((C, Hkv, D)).astype(np.float32)
    pos = np.arange(start, start + S, dtype=np.int32)
    scale = 1 / math.sqrt(D)
    (ours,) = run_reference("attention", [q, k, v, pos],
                            {"scale": scale, "window": window, "softcap": softcap})
    T = start + S
    kk = t(k[:T]).repeat_interleave(H // Hkv, dim=1).permute(1, 0, 2)  # (H, T, D)
    vv = t(v[:T]).repeat_interleave(H // Hkv, dim=1).permute(1, 0, 2)
    qq = t(q).permute(1, 0, 2)  # (H, S, D)
    scores = qq @ kk.transpose(1, 2) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    qp, kp = torch.tensor(pos)[:, None], torch.arange(T)[None, :]
    allowed = (kp <= qp) & ((qp - kp < window) if window else True)
    scores = scores.masked_fill(~allowed, float("-inf"))
    ref = (scores.softmax(-1) @ vv).permute(1, 0, 2).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_kv_write_updates_rows_in_place(rng):
    cache = rng.standard_normal((8, 2, 4)).astype(np.float32)
    before = cache.copy()
    x = rng.standard_normal((2, 2, 4)).astype(np.float32)
    (out,) = run_reference("kv_write", [cache, x, np.array([3, 4], dtype=np.int32)], {})
    assert out is cache
    np.testing.assert_array_equal(cache[3:5], x)
    np.testing.assert_array_equal(np.delete(cache, [3, 4], 0), np.delete(before, [3, 4], 0))


def test_matmul_cost_is_two_flops_per_mac_and_weight_bytes_quantized():
    x = TensorSpec("x", (7, 4096), "f32", Role.ACTIVATION)
    w = TensorSpec("w", (14336, 4096), "Q4_0", Role.WEIGHT)
    y = TensorSpec("y", (7, 14336), "f32", Role.ACTIVATION)
    c = cost_of("matmul", [x, w], [y], {})
    assert c.flops == 2 * 7 * 4096 * 14336
    assert c.reads == (7 * 4096 * 4, 14336 * 4096 // 32 * 18)
    assert c.writes == (7 * 14336 * 4,)


def test_attended_pairs_closed_form():
    # full causal prefill of S tokens: S(S+1)/2 pairs; decode at kv_len T: T pairs
    assert attended_pairs(10, 10, 0) == 55
    assert attended_pairs(1, 300, 0) == 300
    assert attended_pairs(1, 300, 128) == 128


def test_graph_builder_infers_shapes_and_rejects_mismatch():
    b = GraphBuilder("g")
    x = b.input("x", (3, 8), "f32")
    w = b.weight("w", (5, 8), "Q8_0")
    y = b.op("matmul", x, w)
    assert b.graph.spec(y).shape == (3, 5)
    bad = b.weight("w2", (5, 7), "f32")
    with pytest.raises(AssertionError):
        b.op("matmul", x, bad)
