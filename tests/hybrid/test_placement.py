"""The placement MILP: optimal against brute force on small instances, and its edge cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from drift.hybrid.placement import ffn_neuron_bytes, solve_placement


def _brute(masses, cost, budget, minimum, sync):
    best = 0.0
    len(masses)
    for picks in itertools.product(*[range(1 << m.size) for m in masses]):
        value, used = 0.0, 0.0
        ok = True
        for l, bits in enumerate(picks):
            chosen = [j for j in range(masses[l].size) if bits >> j & 1]
            if chosen and len(chosen) < minimum[l]:
                ok = False
                break
            used += cost[l] * len(chosen)
            value += masses[l][chosen].sum() - (sync[l] if chosen else 0.0)
        if ok and used <= budget + 1e-9:
            best = max(best, value)
    return best


def _check(p, masses, cost, budget, minimum):
    used = sum(cost[l] * p.n_gpu[l] for l in range(len(masses)))
    assert used <= budget + 1e-9 and used == pytest.approx(p.gpu_bytes)
    for l, m in enumerate(masses):
        assert sorted(p.order[l].tolist()) == list(range(m.size))
        assert p.n_gpu[l] == 0 or p.n_gpu[l] >= minimum[l]
        gpu = m[p.gpu_neurons(l)]
        cpu = m[p.order[l][p.n_gpu[l]:]]
        assert gpu.size == 0 or cpu.size == 0 or gpu.min() >= cpu.max()


@pytest.mark.parametrize("seed", range(12))
def test_optimal_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    masses = [rng.exponential(1.0, 5) for _ in range(2)]
    cost = rng.uniform(1, 4, 2)
    minimum = rng.integers(0, 4, 2)
    sync = rng.uniform(0, 1.5, 2)
    budget = rng.uniform(0, cost.sum() * 5)
    p = solve_placement(masses, cost, budget, minimum, sync)
    _check(p, masses, cost, budget, np.maximum(minimum, 1))
    assert p.objective == pytest.approx(_brute(masses, cost, budget, minimum, sync), abs=1e-7)


def test_whole_budget_puts_everything_on_gpu():
    rng = np.random.default_rng(1)
    masses = [rng.exponential(1.0, 40) for _ in range(3)] + [np.zeros(40)]
    cost = np.array([3.0, 4.5, 3.0, 3.0])
    p = solve_placement(masses, cost, float((cost * 40).sum()), min_neurons=8)
    assert p.n_gpu[:3].tolist() == [40, 40, 40]
    assert p.gpu_fraction == pytest.approx(1.0)


def test_zero_budget_and_too_small_budget_put_nothing_on_gpu():
    masses = [np.ones(10), np.ones(10)]
    p = solve_placement(masses, 2.0, 0.0, min_neurons=4)
    assert p.n_gpu.tolist() == [0, 0] and p.gpu_bytes == 0
    p = solve_placement(masses, 2.0, 7.9, min_neurons=4)  # 3 neurons fit, the minimum is 4
    assert p.n_gpu.tolist() == [0, 0]


def test_minimum_count_moves_the_budget_to_one_layer():
    # 10 neurons' worth of budget; the minimum of 6 forbids 5 + 5
    masses = [np.linspace(2, 1, 10), np.linspace(2, 1, 10) * 0.99]
    p = solve_placement(masses, 1.0, 10.0, min_neurons=6)
    assert sorted(p.n_gpu.tolist()) == [0, 10]
    p = solve_placement(masses, 1.0, 10.0, min_neurons=1)
    assert p.n_gpu.tolist() == [5, 5]


def test_model_sized_instance_is_fast():
    import time

    rng = np.random.default_rng(0)
    masses = [rng.exponential(1.0, 1536) ** 2 for _ in range(30)]
    cost = np.full(30, 1728 * 0.5625)
    t0 = time.perf_counter()
    p = solve_placement(masses, cost, cost.sum() * 1536 * 0.3, min_neurons=64, sync_cost=1.0)
    assert time.perf_counter() - t0 < 10
    assert p.gpu_bytes <= cost.sum() * 1536 * 0.3 and p.gpu_fraction > 0.3


def test_neuron_bytes_of_a_file(tmp_path):
    from drift.formats.gguf import open_gguf
    from drift.formats.writer import write_random
    from drift.models.presets import Preset, _llama

    tiny = Preset("tiny", "llama", _llama(2, 64, 4, 2, 96, ctx=128), 300, False, True)
    f = open_gguf(write_random(tiny, "Q8_0", tmp_path / "t.gguf", workers=1))
    # Q8_0: 34 bytes per 32 elements; gate row + up row + down column, 64 elements each
    np.testing.assert_allclose(ffn_neuron_bytes(f, 2), 3 * 64 * 34 / 32)
