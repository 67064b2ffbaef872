"""Sampling on the GPU against the host sampler, the specification (drift/runtime/sampler.py).

The device draws with its own random stream (Gumbel-max), so draws are compared as
distributions; everything else (greedy, the penalty, the top-k / top-p / min-p survivors)
must be the same ids. Under Triton's interpreter without a GPU, as the other kernel tests.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("DRIFT_TEST_GPU") != "1":
    os.environ["TRITON_INTERPRET"] = "1"

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from drift.backends.triton import TritonBackend
from drift.backends.triton.device import read_device
from drift.backends.triton.sampling import KC, DeviceSampler
from drift.runtime.sampler import Sampler, SamplerConfig, apply_repeat_penalty, candidates

DEV, _ = read_device()
BLOCK = 256  # small blocks, so the vocabularies below span several and end on a partial one


def on_device(logits: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(logits.astype(np.float32)).to(DEV)


@pytest.mark.parametrize("vocab", [1000, 64, 777])
def test_greedy_is_the_host_argmax(vocab):
    rng = np.random.default_rng()
    for _ in range(3):
        logits = rng.standard_normal(vocab).astype(np.float32) * 4
        s = DeviceSampler(SamplerConfig(temperature=0), DEV, block=BLOCK)
        assert s(on_device(logits)) == int(np.argmax(logits))


def test_ties_go_to_the_smaller_id_and_negative_logits_order_right():
    logits = np.full(900, -7.5, dtype=np.float32)
    logits[[611, 37, 450]] = -0.25  # three equal maxima, all negative
    s = DeviceSampler(SamplerConfig(temperature=0), DEV, block=BLOCK)
    assert s(on_device(logits)) == 37


def test_repeat_penalty_as_the_host_applies_it():
    rng = np.random.default_rng()
    logits = rng.standard_normal(1200).astype(np.float32)
    top = np.argsort(-logits)[:5]
    history = [int(top[0]), int(top[1]), int(top[0]), 3, 3]  # repeats counted once
    cfg = SamplerConfig(temperature=0, repeat_penalty=3.0)
    dev = on_device(logits)
    got = DeviceSampler(cfg, DEV, block=BLOCK)(dev, history)
    assert got == Sampler(cfg)(logits, history)
    assert got != int(top[0])  # the penalty changed the answer
    np.testing.assert_array_equal(dev.cpu().numpy(), logits)  # the input is left as it was
    penalised = apply_repeat_penalty(logits.astype(np.float64), history, 3.0)
    assert got == int(np.argmax(penalised))


@pytest.mark.parametrize("top_k,top_p,min_p", [
    (1, 1.0, 0.0), (5, 1.0, 0.0), (40, 0.9, 0.0), (KC, 0.5, 0.0), (40, 1.0, 0.05),
    (KC, 0.95, 0.05), (17, 0.7, 0.3),
])
def test_survivors_are_the_host_candidates(top_k, top_p, min_p):
    rng = np.random.default_rng()
    cfg = SamplerConfig(temperature=0.8, top_k=top_k, top_p=top_p, min_p=min_p)
    for scale in (0.5, 2.0, 6.0):  # flat to peaked: the cuts fall at different ranks
        logits = (rng.standard_normal(1500) * scale).astype(np.float32)
        s = DeviceSampler(cfg, DEV, block=BLOCK)
        token = s(on_device(logits))
        want, _ = candidates(logits.astype(np.float64), cfg)
        assert s.survivors() == [int(i) for i in want]
        assert token in want


def test_draws_follow_the_temperature_distribution():
    """Gumbel-max draws against softmax(logit / T) over the survivors. Each interpreted draw
    costs ~0.2 s, so few draws and a tolerance of four standard deviations."""
    rng = np.random.default_rng()
    ids = rng.choice(64, size=3, replace=False)
    logits = np.full(64, -30.0, dtype=np.float32)
    logits[ids] = np.log([0.5, 0.3, 0.2]) + rng.uniform(-5, 5)  # a shift changes nothing
    seed = int(rng.integers(2**31))
    cfg = SamplerConfig(temperature=0.5, top_k=10, top_p=1.0, min_p=0.0, seed=seed)
    s = DeviceSampler(cfg, DEV, block=64)
    dev = on_device(logits)
    n = 250
    draws = np.array([s(dev) for _ in range(n)])
    p = np.array([0.5, 0.3, 0.2]) ** 2  # T = 0.5 squares, then renormalise
    p /= p.sum()
    freq = np.array([(draws == i).mean() for i in ids])
    assert np.all(np.abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / n)), (freq, p, seed)
    assert set(draws.tolist()) <= set(ids.tolist())
    # the same seed replays the same tokens
    again = DeviceSampler(cfg, DEV, block=64)
    assert [again(dev) for _ in range(10)] == draws[:10].tolist()


def test_backend_samples_on_device_only_where_it_is_exact():
    backend = TritonBackend.__new__(TritonBackend)  # no weights needed for this question
    backend.torch_device = DEV
    assert backend.sampler(SamplerConfig(temperature=0)) is not None
    assert backend.sampler(SamplerConfig(top_k=40)) is not None
    assert backend.sampler(SamplerConfig(top_k=0)) is None  # top-k off: the host's
    assert backend.sampler(SamplerConfig(top_k=KC + 1)) is None


def test_generation_samples_on_the_device(tmp_path, monkeypatch):
    """generate() on the Triton backend takes the device path (logits never reach the host)
    and gives the numpy backend's greedy tokens."""
    from drift.formats.writer import write_random
    from drift.models.presets import Preset, _llama
    from drift.runtime.engine import Engine
    from drift.runtime.generate import generate_tokens

    preset = Preset("tiny-llama", "llama", _llama(2, 64, 4, 2, 96, ctx=128), 300, False, True)
    path = write_random(preset, "Q4_0", tmp_path / "tiny.gguf", seed=1, workers=1)
    prompt = [5, 17, 260, 3, 99, 42, 7]
    greedy = SamplerConfig(temperature=0)
    want = list(generate_tokens(Engine(path, device="cpu", ctx=32), prompt, Sampler(greedy), 4))

    gpu = Engine(path, backend=TritonBackend(), ctx=32)
    calls = []
    real = DeviceSampler.__call__

    def spy(self, logits, history=()):
        calls.append(type(logits))
        return real(self, logits, history)

    monkeypatch.setattr(DeviceSampler, "__call__", spy)
    got = list(generate_tokens(gpu, prompt, Sampler(greedy), 4))
    assert got == want
    assert calls and all(c is torch.Tensor for c in calls)
