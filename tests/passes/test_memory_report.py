"""The memory report (`drift analyze MODEL --memory`, here through its standalone entry) and
`drift compile MODEL --dump DIR`."""

from __future__ import annotations

import argparse
import json

import pytest

from drift.cli import main as drift_main
from drift.passes.memory_report import add_memory_arguments, main, run_memory_report


def report(capsys, *argv) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_preset_report(capsys):
    r = report(capsys, "llama-3.2-1b", "--prompt-len", "64", "--ctx", "2048")
    assert set(r["weights"]) == {"Q4_0", "f32"}
    # 16 layers x (K and V) x 2048 positions x 8 KV heads x 64 x f16
    assert r["kv_cache"]["bytes"] == 16 * 2 * 2048 * 8 * 64 * 2
    for stage in ("prefill", "decode"):
        for kind in ("unfused", "fused"):
            m = r["intermediates"][stage][kind]
            assert m["lower_bound"] <= m["greedy_by_size"] <= m["naive"]
        st = r["intermediates"][stage]
        assert st["fused"]["naive"] < st["unfused"]["naive"]
    assert r["intermediates"]["prefill"]["tokens"] == 64


def test_quant_option_and_tables(capsys):
    assert main(["llama-3.1-8b", "--quant", "q8_0", "--prompt-len", "16"]) == 0
    out = capsys.readouterr().out
    assert "Q8_0" in out and "greedy by size" in out and "KV cache" in out


def test_sd_report(capsys):
    r = report(capsys, "sd-1.4")
    comps = r["components"]
    assert set(comps) == {"text_encoder", "unet", "vae_decoder"}
    assert comps["unet"]["ml_drift_mib"] == {"naive": 2075, "greedy_by_size": 65}
    for c in comps.values():
        # the attention matrix as a tensor only adds memory
        assert c["fused_attention_matrix"]["naive"] >= c["fused"]["naive"]
    assert main(["sd-1.4"]) == 0
    assert "ML Drift" in capsys.readouterr().out


def test_file_report(capsys, smollm2_path):
    r = report(capsys, str(smollm2_path), "--prompt-len", "32", "--ctx", "256")
    assert "Q4_1" in r["weights"] and r["arch"] == "llama"


def test_arguments_fit_a_parser_that_has_model_arguments():
    from drift.commands._common import add_model_arguments

    p = argparse.ArgumentParser()
    add_model_arguments(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--memory", action="store_true")
    add_memory_arguments(p)  # no clash over --ctx or --json
    args = p.parse_args(["sd-1.4", "--memory", "--json", "--ctx", "64", "--prompt-len", "4"])
    assert args.prompt_len == 4 and args.ctx == 64


def test_bad_arguments_are_user_errors():
    from drift.errors import DriftError

    with pytest.raises(DriftError):
        run_memory_report(argparse.Namespace(model=None))
    with pytest.raises(DriftError):
        main(["llama-3.2-1b", "--quant", "Q9_9"])
    with pytest.raises(DriftError):
        main(["llama-3.2-1b", "--prompt-len", "0"])


def test_compile_dumps_the_graph_after_each_pass(tmp_path, capsys):
    assert drift_main(["compile", "smollm2-135m", "--dump", str(tmp_path), "--prompt-len",
                       "4", "--ctx", "64"]) == 0
    out = capsys.readouterr().out
    assert "fuse_stack" in out and "memory_plan" in out
    files = sorted(p.name for p in (tmp_path / "decode").iterdir())
    assert files[0] == "00_input.txt" and files[-1] == "11_memory_plan.txt"
    assert "stacked_matmul" not in (tmp_path / "decode" / "01_fuse_gate_up.txt").read_text()
    assert "stacked_matmul" in (tmp_path / "decode" / "02_fuse_stack.txt").read_text()
    planned = (tmp_path / "prefill4" / "11_memory_plan.txt").read_text()
    assert "arena: greedy_by_size" in planned and "phwc4" in planned and "@" in planned


def test_compile_sd_without_fusion(tmp_path, capsys):
    assert drift_main(["compile", "sd-1.4", "--no-fuse", "--device", "gpu"]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "vae_decoder" in out
