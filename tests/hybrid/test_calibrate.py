"""drift calibrate on a tiny random model: the captured activations are the forward's (checked
against a plain numpy FFN on the reference interpretation of the graph), the statistics match
a direct computation, and the thresholds give the stated sparsity on the calibration data."""

from __future__ import annotations

import numpy as np
import pytest

from drift.cli import main
from drift.formats.writer import write_random
from drift.hybrid.calibrate import (
    SPARSITIES,
    ActivationEngine,
    Calibration,
    act_name,
    calibrate,
    calibration_path,
    expose_ffn_activations,
    statistics,
)
from drift.ir import REGISTRY, Role
from drift.models import build_graph
from drift.models.presets import Preset, _llama

TINY = Preset("tiny", "llama", _llama(2, 64, 4, 2, 96, ctx=128), 300, False, True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_random(TINY, "Q8_0", tmp_path_factory.mktemp("cal") / "tiny.gguf", seed=1,
                        workers=1)


def _silu(x):
    return x / (1 + np.exp(-x))


def _numpy_ffn_acts(engine: ActivationEngine, tokens: list[int]) -> list[np.ndarray]:
    """act(gate)*up per layer by numpy: the graph interpreted node by node through the
    registry's references (no passes, no arena), the FFN itself computed by hand from the
    ffn_norm output."""
    cfg = engine.config
    g = build_graph(cfg, engine.weight_dtypes, len(tokens), engine.ctx)
    vals = {t.name: engine.file.dequantize(t.name) for t in g.by_role(Role.WEIGHT)}
    vals |= {t.name: np.zeros(t.shape, np.float32) for t in g.by_role(Role.KV)
             if not t.name.endswith("'")}
    vals["tokens"] = np.asarray(tokens, np.int32)
    vals["positions"] = np.arange(len(tokens), dtype=np.int32)
    normed = {}
    for n in g.nodes:
        for o, v in zip(n.outputs, REGISTRY[n.op].reference([vals[i] for i in n.inputs], n.attrs)):
            vals[o] = v
        if n.op == "rms_norm" and n.inputs[1].endswith("ffn_norm.weight"):
            normed[int(n.inputs[1].split(".")[1])] = vals[n.outputs[0]]
    out = []
    for i in range(cfg.n_layers):
        x = normed[i].astype(np.float64)
        wg = engine.file.dequantize(f"blk.{i}.ffn_gate.weight").astype(np.float64)
        wu = engine.file.dequantize(f"blk.{i}.ffn_up.weight").astype(np.float64)
        out.append(_silu(x @ wg.T) * (x @ wu.T))
    return out


def test_exposed_graph_returns_each_layer(tiny):
    engine = ActivationEngine(tiny, device="cpu", ctx=32)
    g = expose_ffn_activations(build_graph(engine.config, engine.weight_dtypes, 5, 32))
    assert g.outputs[1:] == [act_name(0), act_name(1), "ffn_gate.0", "ffn_gate.1"]
    acts = engine.ffn_activations(list(range(1, 6)))
    assert [a.shape for a in acts] == [(5, 96), (5, 96)]


def test_statistics_match_numpy(tiny):
    engine = ActivationEngine(tiny, device="cpu", ctx=16)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, TINY.vocab_size, 70).tolist()
    bos = 1
    cal = calibrate(engine, ids, 60, 16, bos)  # windows of BOS + 15 tokens
    assert cal.n_tokens == 60
    assert cal.mean_abs.shape == (2, 96) and cal.active_frac.shape == (2, 96, 4)
    assert cal.thresholds.shape == (2, 4)
    ref: list[list[np.ndarray]] = [[], []]
    for s in range(0, 60, 15):
        acts = _numpy_ffn_acts(engine, [bos] + ids[s : s + 15])
        for i in range(2):
            ref[i].append(acts[i][1:])
    ref_acts = [np.concatenate(r) for r in ref]
    assert ref_acts[0].shape == (60, 96)
    for i in range(2):
        a = np.abs(ref_acts[i])
        np.testing.assert_allclose(cal.mean_abs[i], a.mean(0), rtol=1e-4, atol=1e-7)
        for k, s in enumerate(SPARSITIES):
            t = cal.thresholds[i, k]
            # the stated sparsity on the calibration data: a fraction s at or below threshold
            assert abs((a <= t).mean() - s) <= 2 / a.size
            # the counts: only values within float error of the threshold may disagree
            near = np.abs(a - t) <= 1e-4 * t
            counted = cal.active_frac[i, :, k] * 60
            direct = (a > t).sum(0)
            assert np.all(np.abs(counted - direct) <= near.sum(0) + 1e-6)


def test_statistics_thresholds_exact():
    rng = np.random.default_rng(3)
    acts = [rng.standard_normal((200, 40)).astype(np.float32) for _ in range(3)]
    cal = statistics(acts)
    for i, m in enumerate(acts):
        for k, s in enumerate(SPARSITIES):
            assert abs(1 - cal.active_frac[i, :, k].mean() - s) <= 1 / m.size
            np.testing.assert_allclose(cal.active_frac[i, :, k],
                                       (np.abs(m) > cal.thresholds[i, k]).mean(0), rtol=1e-6)


def test_command_saves_npz_by_sha256(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DRIFT_HOME", str(tmp_path / "home"))
    text = tmp_path / "cal.txt"
    text.write_text("the quick brown fox jumps over the lazy dog " * 20)
    assert main(["calibrate", str(tiny), "--text", str(text), "--tokens", "40", "--ctx", "16",
                 "--device", "cpu"]) == 0
    path = calibration_path(tiny)
    assert path.parent == tmp_path / "home" / "calibration" and path.exists()
    cal = Calibration.load(path)
    assert cal.n_tokens == 40 and cal.meta["sha256"] == path.stem
    assert str(path) in capsys.readouterr().out


def test_command_bad_input(tiny, tmp_path, capsys):
    assert main(["calibrate", str(tiny), "--tokens", "0"]) == 2
    assert main(["calibrate", str(tiny), "--text", str(tmp_path / "none.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no such file" in err[1]


def test_gate_thresholds_are_quantiles_of_act_gate(tmp_path):
    """What the CPU's skip test reads: per layer, the sparsities' quantiles of |act(gate)|,
    kept through save and load."""
    rng = np.random.default_rng()
    acts = [rng.standard_normal((120, 32)).astype(np.float32) for _ in range(2)]
    gates = [rng.standard_normal((120, 32)).astype(np.float32) for _ in range(2)]
    cal = statistics(acts, gates=gates)
    for i, g in enumerate(gates):
        for k, s in enumerate(SPARSITIES):
            t = cal.gate_thresholds[i, k]
            assert abs((np.abs(g) <= t).mean() - s) <= 1 / g.size
    back = Calibration.load(cal.save(tmp_path / "c.npz"))
    np.testing.assert_array_equal(back.gate_thresholds, cal.gate_thresholds)
    assert statistics(acts).gate_thresholds is None
