"""Permuting an FFN's neurons (gate/up rows and down columns together) keeps its output."""

from __future__ import annotations

import numpy as np
import pytest

from drift.errors import InvalidArgumentError
from drift.hybrid.permute import permute_ffn, permute_rows
from drift.ir import REGISTRY


def _ffn(x, g, u, d, act="swiglu"):
    m = REGISTRY[act].reference([x @ g.T, x @ u.T], {})[0]
    return m @ d.T


@pytest.mark.parametrize("act", ["swiglu", "geglu"])
def test_permuted_ffn_computes_the_same(act):
    rng = np.random.default_rng(0)
    F, D = 48, 16
    g, u = rng.standard_normal((2, F, D))
    d = rng.standard_normal((D, F))
    x = rng.standard_normal((5, D))
    perm = rng.permutation(F)
    pg, pu, pd = permute_ffn(g, u, d, perm)
    np.testing.assert_allclose(_ffn(x, pg, pu, pd, act), _ffn(x, g, u, d, act), rtol=1e-10)
    assert np.array_equal(pg[0], g[perm[0]]) and np.array_equal(pd[:, 0], d[:, perm[0]])


def test_quantized_rows_permute_as_bytes(tmp_path):
    from drift.formats.gguf import open_gguf
    from drift.formats.writer import write_random
    from drift.models.presets import Preset, _llama

    tiny = Preset("tiny", "llama", _llama(1, 64, 4, 2, 96, ctx=128), 300, False, True)
    f = open_gguf(write_random(tiny, "Q4_0", tmp_path / "t.gguf", workers=1))
    info = f.tensors["blk.0.ffn_gate.weight"]
    raw = np.asarray(info.data).reshape(96, -1)
    perm = np.random.default_rng(1).permutation(96)
    from drift.formats import quants

    back = quants.dequantize(permute_rows(raw, perm), info.qtype, (96, 64), info.name)
    np.testing.assert_array_equal(back, f.dequantize(info.name)[perm])


def test_not_a_permutation():
    z = np.zeros((4, 2))
    with pytest.raises(InvalidArgumentError):
        permute_ffn(z, z, z.T, [0, 1, 1, 2])
