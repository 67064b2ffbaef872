"""The sampling chain, against distributions computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from drift.errors import InvalidArgumentError
from drift.runtime.sampler import Sampler, SamplerConfig, apply_repeat_penalty, candidates


def test_greedy_is_argmax():
    rng = np.random.default_rng()
    logits = rng.standard_normal(1000)
    assert Sampler(SamplerConfig(temperature=0))(logits) == int(np.argmax(logits))


def test_repeat_penalty_divides_positive_and_multiplies_negative():
    out = apply_repeat_penalty(np.array([2.0, -2.0, 1.0]), [0, 1, 1], 2.0)
    np.testing.assert_allclose(out, [1.0, -4.0, 1.0])


def test_top_k_top_p_min_p_cut_as_defined():
    logits = np.log(np.array([0.5, 0.25, 0.15, 0.07, 0.03]))
    ids, _ = candidates(logits, SamplerConfig(top_k=3, top_p=1.0, min_p=0.0))
    assert list(ids) == [0, 1, 2]
    ids, _ = candidates(logits, SamplerConfig(top_k=0, top_p=0.8, min_p=0.0))
    assert list(ids) == [0, 1, 2]  # 0.5 + 0.25 < 0.8 <= 0.9
    ids, _ = candidates(logits, SamplerConfig(top_k=0, top_p=1.0, min_p=0.2))
    assert list(ids) == [0, 1, 2]  # p >= 0.2 * 0.5


def test_sampling_frequencies_follow_temperature():
    logits = np.log(np.array([0.6, 0.3, 0.1]))
    s = Sampler(SamplerConfig(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1))
    counts = np.bincount([s(logits) for _ in range(6000)], minlength=3) / 6000
    np.testing.assert_allclose(counts, [0.6, 0.3, 0.1], atol=0.03)
    # T = 0.5 squares the probabilities before renormalising
    s = Sampler(SamplerConfig(temperature=0.5, top_k=0, top_p=1.0, min_p=0.0, seed=2))
    counts = np.bincount([s(logits) for _ in range(6000)], minlength=3) / 6000
    p = np.array([0.36, 0.09, 0.01]) / 0.46
    np.testing.assert_allclose(counts, p, atol=0.03)


def test_seed_makes_draws_repeatable():
    logits = np.random.default_rng().standard_normal(50)
    cfg = SamplerConfig(temperature=1.5, seed=1234)
    a = [Sampler(cfg)(logits) for _ in range(1)] + [Sampler(cfg)(logits)]
    assert a[0] == a[1]


@pytest.mark.parametrize("kwargs", [
    {"temperature": -1}, {"temperature": float("nan")}, {"top_k": -3}, {"top_p": 0.0},
    {"top_p": 1.5}, {"min_p": -0.1}, {"min_p": 2}, {"repeat_penalty": 0}, {"seed": -1},
])
def test_invalid_values_raise_one_clear_error(kwargs):
    with pytest.raises(InvalidArgumentError, match="invalid sampler setting"):
        SamplerConfig(**kwargs)


def _candidates_by_full_sort(logits, c):
    """The definition, written the slow way: sort everything, then cut."""
    order = np.argsort(-logits, kind="stable")
    if c.top_k:
        order = order[: c.top_k]
    kept = logits[order]
    probs = np.exp(kept - kept[0])
    probs /= probs.sum()
    n = len(order)
    if c.top_p < 1.0:
        n = min(n, int(np.searchsorted(np.cumsum(probs), c.top_p) + 1))
    if c.min_p > 0.0:
        n = min(n, max(1, int(np.sum(probs >= c.min_p * probs[0]))))
    return order[:n]


@pytest.mark.parametrize("top_k", [0, 1, 7, 40, 2000])
@pytest.mark.parametrize("top_p,min_p", [(1.0, 0.0), (0.9, 0.0), (0.5, 0.05), (0.999, 0.0),
                                         (1.0, 0.01)])
def test_partial_selection_equals_a_full_sort(top_k, top_p, min_p):
    """The host path sorts only the best few; it must cut exactly where a full sort does,
    ties (quantized logits repeat values) and flat distributions (the cut beyond the
    preselection) included."""
    rng = np.random.default_rng()
    c = SamplerConfig(top_k=top_k, top_p=top_p, min_p=min_p)
    for scale in (0.05, 1.0, 8.0):
        logits = np.round(rng.standard_normal(5000) * scale, 1)  # many equal values
        ids, kept = candidates(logits, c)
        want = _candidates_by_full_sort(logits, c)
        np.testing.assert_array_equal(ids, want)
        np.testing.assert_array_equal(kept, logits[want])


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_draw_by_one_uniform_is_numpys_choice(seed, temperature):
    """`Sampler.draw` takes one uniform and walks the cdf (so a device given that uniform
    draws the same): the picks, and the generator's state after, those of `rng.choice`."""
    sampler = Sampler(SamplerConfig(temperature=temperature, seed=seed))
    reference = np.random.default_rng(seed)
    logits_rng = np.random.default_rng(100 + seed)
    for _ in range(200):
        n = int(logits_rng.integers(1, 70))
        kept = np.sort(logits_rng.normal(0, 3, n))[::-1]
        ids = logits_rng.permutation(1000)[:n]
        probs = np.exp((kept - kept.max()) / temperature)
        expected = ids[reference.choice(n, p=probs / probs.sum())]
        assert sampler.draw(ids, kept) == expected
    assert sampler.rng.random() == reference.random()
