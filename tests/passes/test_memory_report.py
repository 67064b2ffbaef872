"""The memory report (`drift analyze MODEL --memory`, here through its standalone entry) and
`drift compile MODEL --dump DIR`."""

from __future__ import annotations

import argparse
import json

import pytest

from drift.cli import main as drift_main
from drift.ir import REGISTRY, Graph, Role
from drift.passes import Capabilities
from drift.passes.memory_report import (
    add_memory_arguments,
    intermediates,
    main,
    resolve_llm,
    run_memory_report,
)
from drift.passes.strategies import STRATEGIES

# Storages that are the logical tensors and nothing more: no alignment, no channel padding,
# no in-place sharing. Every figure of the report is then computable from the graph alone.
PLAIN = Capabilities(alignment=1, channel_slices=False, max_object_bytes=0, inplace=False)


def brute_force(graph: Graph) -> tuple[int, int]:
    """From the graph's tensors alone: (bytes of all intermediates, most bytes alive at one
    step). A view has no bytes of its own and keeps its input alive; inputs are alive from
    the start, outputs to the end (the runtime copies them out)."""
    arena = {t.name for t in graph.tensors.values()
             if t.role in (Role.INPUT, Role.ACTIVATION, Role.OUTPUT)}
    root: dict[str, str] = {}
    first: dict[str, int] = {name: 0 for name in graph.inputs}
    last: dict[str, int] = dict(first)
    for i, n in enumerate(graph.nodes):
        for x in n.inputs:
            if x in arena:
                r = root.get(x, x)
                last[r] = max(last[r], i)
        if REGISTRY[n.op].view:
            root[n.outputs[0]] = root.get(n.inputs[0], n.inputs[0])
            continue
        for o in n.outputs:
            if o in arena:
                first[o] = last[o] = i
    for o in graph.outputs:
        last[root.get(o, o)] = len(graph.nodes)
    size = {name: graph.tensors[name].nbytes for name in first}
    peak = max(sum(size[t] for t in first if first[t] <= step <= last[t])
               for step in range(len(graph.nodes) + 1))
    return sum(size.values()), peak


def check_against_brute_force(graph: Graph) -> None:
    naive, peak = brute_force(graph)
    m = intermediates(graph, fuse=False, caps=PLAIN)
    assert m["naive"] == naive and m["lower_bound"] == peak
    for name in STRATEGIES:  # a placement never beats the peak nor loses to one tensor each
        assert peak <= m[name] <= naive, name
    assert m["greedy_by_size"] < naive


def test_figures_are_the_graphs_own():
    from drift.models import build_graph

    _, cfg, dtypes = resolve_llm("llama-3.2-1b", None)
    for n_tokens in (64, 1):
        check_against_brute_force(build_graph(cfg, dtypes, n_tokens, 2048, kv_dtype="f16",
                                              act_dtype="f16"))


def test_sd_figures_are_the_graphs_own():
    from drift.models.stable_diffusion import sd_graphs

    for g in sd_graphs(batch=1, dtype="f16").values():
        check_against_brute_force(g)


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
    for c in comps.values():
        assert set(c["ml_drift_mib"]) == {"naive", "greedy_by_size"}  # shown side by side
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


def test_compile_refuses_an_unknown_device(capsys):
    assert drift_main(["compile", "smollm2-135m", "--device", "tpu9"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device 'tpu9'" in err[0], err
