"""drift make-random's writer: exact preset shapes, a valid tokenizer, and the CPU engine runs
the file it writes."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from drift.cli import main
from drift.errors import InvalidArgumentError
from drift.formats.gguf import open_gguf
from drift.formats.writer import llama3_rope_factors, write_random
from drift.models import config_from_gguf, expected_tensors
from drift.models.presets import PRESETS, Preset, _llama
from drift.runtime.engine import Engine

TINY = Preset("tiny", "llama", _llama(2, 64, 4, 2, 96, ctx=128), 300, False, True)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0", "F16", "Q4_K"])
def test_tiny_file_reopens_with_exact_shapes_and_runs(tmp_path, qtype):
    path = write_random(TINY, qtype, tmp_path / "tiny.gguf", seed=3, workers=1)
    f = open_gguf(path)
    cfg = config_from_gguf(f.metadata, {n: t.shape for n, t in f.tensors.items()}, path.name)
    assert {n: t.shape for n, t in f.tensors.items()} == expected_tensors(cfg)
    assert cfg.norm_eps == pytest.approx(1e-5)  # stored as float32
    assert cfg.with_(norm_eps=1e-5) == TINY.config()
    want = {"Q4_K": Q.Q5_0}.get(qtype, Q[qtype])  # Q4_K rows of 64 fall back, as llama.cpp
    assert f.tensors["blk.0.ffn_up.weight"].qtype == want
    assert f.tensors["blk.1.attn_norm.weight"].qtype == Q.F32
    assert np.all(f.dequantize("blk.1.attn_norm.weight") == 1.0)
    w = f.dequantize("blk.0.ffn_gate.weight")
    assert 0.015 < w.std() < 0.025 and abs(w.mean()) < 0.005  # N(0, 0.02)
    np.testing.assert_allclose(f.dequantize("rope_freqs.weight"),
                               llama3_rope_factors(8, 16, 500000.0))
    tokens = f.metadata["tokenizer.ggml.tokens"]
    assert f.metadata["tokenizer.ggml.model"] == "gpt2" and len(tokens) == 300
    assert tokens[ord("a")] == "a" and tokens[32] == "Ġ"  # GPT-2 byte-level map
    assert all(m.split(" ")[0] + m.split(" ")[1] in tokens
               for m in f.metadata["tokenizer.ggml.merges"])
    logits = Engine(path, device="cpu", ctx=16).prefill([1, 2, 3])
    assert logits.shape == (300,) and np.isfinite(logits).all() and logits.std() > 0


def test_same_seed_same_bytes(tmp_path):
    a = write_random(TINY, "Q4_0", tmp_path / "a.gguf", seed=5, workers=1)
    b = write_random(TINY, "Q4_0", tmp_path / "b.gguf", seed=5, workers=2)
    assert a.read_bytes() == b.read_bytes()


def test_presets_have_their_published_shapes():
    cfg = PRESETS["llama-3.1-8b"].config()
    shapes = expected_tensors(cfg)
    assert shapes["blk.31.ffn_down.weight"] == (4096, 14336)
    assert shapes["output.weight"] == (128256, 4096)
    assert sum(np.prod(s) for s in shapes.values()) == 8_030_261_312  # Llama-3.1-8B


def test_cli_make_random(tmp_path, capsys):
    out = tmp_path / "t.gguf"
    with pytest.raises(InvalidArgumentError):
        write_random(TINY, "IQ2_XS", out)
    assert main(["make-random", "no-such-model", "Q4_0", str(out)]) != 0
    assert "unknown model shape" in capsys.readouterr().err


def test_bench_on_a_random_file(tmp_path, capsys, monkeypatch):
    """drift bench end to end on the CPU: speeds from repeated runs, MBU and MFU against the
    probe's ceilings (measured quick and saved the first time), memory; bad counts refused."""
    import json

    monkeypatch.setenv("DRIFT_HOME", str(tmp_path / "home"))
    path = write_random(TINY, "Q8_0", tmp_path / "tiny.gguf", seed=4, workers=1)
    assert main(["bench", str(path), "-p", "16", "-n", "4", "-r", "2", "--device", "cpu",
                 "--json"]) == 0
    out = capsys.readouterr()
    res = json.loads(out.out)
    assert "measured one (--quick)" in out.err
    for test in ("pp16", "tg4"):
        assert len(res[test]["samples"]) == 2 and min(res[test]["samples"]) > 0
    probe = json.loads((tmp_path / "home" / "probe" / "cpu.json").read_text())
    assert res["ceilings"]["bandwidth"] == pytest.approx(probe["copy_gbs"] * 1e9)
    # MBU from its parts: registry bytes per token x median tok/s / probed bandwidth
    assert res["mbu"] == pytest.approx(res["decode_bytes_per_token"] * res["tg4"]["median"]
                                       / res["ceilings"]["bandwidth"])
    assert 0 < res["mbu"] < 1 and 0 < res["mfu"] < 1
    assert res["memory"]["weights"] > 0 and res["memory"]["kv_cache"] > 0
    # a second bench reuses the saved probe
    assert main(["bench", str(path), "-p", "8", "-n", "2", "-r", "1", "--device", "cpu",
                 "--json"]) == 0
    assert "measured one" not in capsys.readouterr().err
    assert main(["bench", str(path), "-p", "0", "--device", "cpu"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must be >= 1" in err[0]


def test_bench_on_opencl_exits_cleanly(tmp_path):
    """`python -m drift bench --device opencl` as a process: its table, exit status 0. (The
    process ends without the interpreter's teardown, in which NVIDIA's OpenCL crashed after the
    results: `drift.cli.entry`.)"""
    import os
    import subprocess
    import sys

    from drift.backends.opencl import OpenCLBackend

    if not OpenCLBackend.available():
        pytest.skip("no OpenCL platform here")
    path = write_random(TINY, "Q4_0", tmp_path / "tiny.gguf", seed=5, workers=1)
    env = {**os.environ, "DRIFT_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "drift", "bench", str(path), "-p", "8", "-n",
                           "2", "-r", "1", "--device", "opencl", "--no-ceilings"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if "| opencl |" in line]
    assert [r.split("|")[4].strip() for r in rows] == ["pp8", "tg2"]
