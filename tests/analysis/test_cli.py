"""`drift analyze`, `drift profile` and `drift probe` in-process, as a user runs them, on the
numpy backend; and every bad input ending in one line and a non-zero exit."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from drift.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def drift_home(tmp_path, monkeypatch):
    """Probes land in a temporary $DRIFT_HOME, never in the user's cache."""
    home = tmp_path / "home"
    monkeypatch.setenv("DRIFT_HOME", str(home))
    return home


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(capsys, *argv: str) -> str:
    rc, out, err = run(capsys, *argv)
    assert rc != 0, out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("drift: error:"), err
    return lines[0]


def check_png(path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000, path


def check_html(path) -> None:
    text = path.read_text()
    assert text.startswith("<!doctype html>") and text.count("data:image/png;base64,") == 2
    assert "<table>" in text and "</html>" in text
    assert "src='http" not in text  # self-contained


def test_analyze_preset_on_a_device(capsys):
    rc, out, err = run(capsys, "analyze", "llama-3.1-8b", "--quant", "Q4_K_M",
                       "--device-spec", "rtx4090")
    assert rc == 0, err
    assert "time to first token" in out and "NVIDIA GeForce RTX 4090" in out
    assert "matmul ffn_down" in out and "KV cache" in out


def test_analyze_json_and_csv(capsys, tmp_path):
    path = tmp_path / "ops.csv"
    rc, out, err = run(capsys, "analyze", "llama-3.2-1b", "--quant", "Q4_0", "--device-spec",
                       "h100", "--prompt-len", "64", "--gen-len", "16", "--json", "--csv",
                       str(path))
    assert rc == 0, err
    d = json.loads(out)
    assert d["quant"] == "Q4_0" and d["device"]["key"] == "h100-sxm"
    assert d["prefill"]["n_tokens"] == 64 and d["decode"]["kv_len"] == 64 + 8
    assert d["prediction"]["decode_tok_s"] > 1000
    assert d["weight_bytes_by_dtype"]["Q6_K"] > 0  # the tied head
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == len(d["ops"]) > 100
    assert {r["stage"] for r in rows} == {"prefill", "decode"}
    assert sum(int(r["flops"]) for r in rows if r["stage"] == "decode") == d["decode"]["flops"]


def test_analyze_without_device_lists_every_device(capsys):
    rc, out, _ = run(capsys, "analyze", "smollm2-135m", "--json")
    assert rc == 0
    d = json.loads(out)
    assert "prediction" not in d and len(d["devices"]) >= 20
    rc, out, _ = run(capsys, "analyze", "--list-devices")
    assert rc == 0 and "mali-g715" in out


def test_analyze_smollm2_file_with_plots_and_html(capsys, tmp_path, smollm2_path):
    plots, page = tmp_path / "plots", tmp_path / "report.html"
    rc, out, err = run(capsys, "analyze", str(smollm2_path), "--device-spec", "m2",
                       "--prompt-len", "128", "--plot-dir", str(plots), "--html", str(page))
    assert rc == 0, err
    assert "Q4_1" in out and "Apple M2" in out
    check_png(plots / "roofline.png")
    check_png(plots / "breakdown.png")
    check_html(page)


def test_analyze_gemma_file(capsys, gemma3_path):
    rc, out, err = run(capsys, "analyze", str(gemma3_path), "--device-spec", "adreno-750",
                       "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["arch"] == "gemma3" and d["quant"] == "Q4_K_M"
    assert set(d["weight_bytes_by_dtype"]) == {"Q5_0", "Q8_0", "Q4_K", "Q6_K", "f32"}


def test_profile_smollm2_json_and_probe_on_first_use(capsys, smollm2_path, drift_home):
    rc, out, err = run(capsys, "profile", str(smollm2_path), "--device", "cpu",
                       "--prompt-len", "8", "--decode-tokens", "2", "--repeat", "1", "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert (drift_home / "probe" / "cpu.json").exists()  # measured because none was saved
    assert d["device_spec"]["key"] == "local:cpu"
    assert d["ttft_s"] > 0 and len(d["itl_s"]) == 2
    for stage in ("prefill", "decode"):
        s = d[stage]
        assert s["measured_s"] > 0 and 0 < s["mbu"] and 0 < s["mfu"]
        assert s["energy_source"]  # a counter, or "not available: why"
    ops = [o for o in d["ops"] if o["stage"] == "decode"]
    assert all(o["measured_s"] >= 0 and o["predicted_s"] >= 0 for o in ops)
    assert any(o["mbu"] for o in ops if o["op"] == "matmul")


def test_profile_gemma_tables_plots_html(capsys, tmp_path, gemma3_path):
    plots, page = tmp_path / "plots", tmp_path / "profile.html"
    rc, out, err = run(capsys, "profile", str(gemma3_path), "--device", "cpu",
                       "--prompt-len", "4", "--decode-tokens", "1", "--repeat", "1",
                       "--plot-dir", str(plots), "--html", str(page), "--csv", str(tmp_path / "p.csv"))
    assert rc == 0, err
    assert "MBU" in out and "MFU" in out and "time to first token" in out
    assert "[cpu]" in out  # names in brackets are printed, not taken for rich markup
    check_png(plots / "roofline.png")
    check_png(plots / "breakdown.png")
    check_html(page)
    assert (tmp_path / "p.csv").read_text().count("\n") > 200


def test_probe_command(capsys, drift_home):
    rc, out, err = run(capsys, "probe", "--device", "cpu", "--quick", "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["backend"] == "cpu" and d["copy_gbs"] > 0
    assert (drift_home / "probe" / "cpu.json").exists()
    rc, out, _ = run(capsys, "analyze", "smollm2-135m", "--device-spec", "local", "--device",
                     "cpu", "--prompt-len", "32")
    assert rc == 0 and "(measured)" in out


# --- bad input: one line, non-zero exit --------------------------------------------------------


def test_unknown_device_spec(capsys):
    line = one_line_error(capsys, "analyze", "llama-3.1-8b", "--device-spec", "rtx9090")
    assert "unknown device spec 'rtx9090'" in line and "rtx4090" in line


def test_unknown_preset(capsys):
    line = one_line_error(capsys, "analyze", "llama-9.9-1t")
    assert "unknown model 'llama-9.9-1t'" in line and "llama-3.1-8b" in line


def test_bad_quant(capsys):
    line = one_line_error(capsys, "analyze", "llama-3.1-8b", "--quant", "Q4_X")
    assert "unknown quant 'Q4_X'" in line and "Q4_K_M" in line


def test_local_without_probe(capsys):
    line = one_line_error(capsys, "analyze", "llama-3.1-8b", "--device-spec", "local",
                          "--device", "cpu")
    assert "drift probe" in line


def test_bad_numbers(capsys):
    assert "--prompt-len must be >= 1" in one_line_error(capsys, "analyze", "llama-3.1-8b",
                                                         "--prompt-len", "0")
    assert "not a GGUF file" in one_line_error(capsys, "analyze", __file__)


def test_profile_needs_weights(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "drift.hub", None)  # as if no hub: a shape has no weights
    line = one_line_error(capsys, "profile", "llama-3.1-8b")
    assert "without weights" in line


def test_memory_report_wiring(capsys):
    """The memory report adds --prompt-len, --ctx, --json to the analyze parser; the shared
    flags must not conflict, and --memory hands over the parsed arguments."""
    rc, out, err = run(capsys, "analyze", "llama-3.1-8b", "--memory", "--prompt-len", "7",
                     "--ctx", "99", "--json")
    assert rc == 0, err
    report = json.loads(out)
    # KV cache at --ctx 99, from the closed form: K and V x 32 layers x 8 heads x 128 x f16
    assert report["ctx"] == 99 and report["kv_cache"]["bytes"] == 2 * 32 * 8 * 128 * 99 * 2
    # and the analysis itself still runs with the same flags
    rc, out, err = run(capsys, "analyze", "llama-3.1-8b", "--prompt-len", "7", "--json")
    assert rc == 0, err
    assert json.loads(out)["prompt_len"] == 7


@pytest.mark.parametrize("command,flag", [("analyze", "--html"), ("analyze", "--csv"),
                                          ("profile", "--html"), ("profile", "--csv"),
                                          ("profile", "--json-out")])
def test_unwritable_output_fails_before_the_work(capsys, tmp_path, command, flag):
    missing = tmp_path / "no-such-folder" / "report.out"
    line = one_line_error(capsys, command, "smollm2-135m", flag, str(missing))
    assert "not a folder drift can write to" in line and not missing.parent.exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    line = one_line_error(capsys, command, "smollm2-135m", "--plot-dir", str(blocker))
    assert "is not a folder" in line
