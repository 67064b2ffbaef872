"""Which measured table a device gets (`device.tables_for`), and `drift tune`'s sweep under
the interpreter on a tiny shape set (the timings mean nothing there; the plumbing does)."""

from __future__ import annotations

import json
import os

import pytest

if os.environ.get("DRIFT_TEST_GPU") != "1":
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated, at import

pytest.importorskip("torch")
pytest.importorskip("triton")

from drift.backends.base import DeviceInfo
from drift.backends.triton import device
from drift.backends.triton.device import tables_for, tune

H100 = "NVIDIA H100 80GB HBM3"


def gpu(name: str, capability=(9, 0), sms: int = 132, smem: int = 232448,
        vendor: str = "nvidia") -> DeviceInfo:
    """A DeviceInfo as read_device makes it for a CUDA device, without one."""
    return DeviceInfo("triton", name, "gpu", 141 * 2**30, sms,
                      {"interpreter": False, "vendor": vendor, "sm_count": sms,
                       "capability": capability, "shared_memory": smem, "l2_bytes": 60 << 20,
                       "warp_size": 32})


@pytest.fixture(autouse=True)
def no_user_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("DRIFT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DRIFT_TRITON_TUNED", raising=False)


def shipped(name: str) -> dict:
    return json.loads((device.TUNED_DIR / device.table_file(name)).read_text())


def test_exact_name_gets_its_shipped_table():
    table, source = tables_for(gpu(H100))
    assert table["best"] == shipped(H100)["best"]
    assert source == "shipped NVIDIA_H100_80GB_HBM3.json"
    table, source = tables_for(gpu("NVIDIA H200"))  # measured there (BENCHMARKS.md, issue 8)
    assert source == "shipped NVIDIA_H200.json" and "dense Q4_K 14336 4096" in table["best"]


def test_same_capability_gets_the_nearest_shipped_table():
    """A GH200 (no table of its own: same SMs, capability and shared memory as the H100 and
    H200, whose tables are shipped) runs the first such table's measured configurations, and
    says so."""
    tu = tune(gpu("NVIDIA GH200 480GB"))
    assert tu.table == shipped(H100)["best"] and tu.table
    assert tu.qgemv_bn == shipped(H100)["qgemv_default"][0]
    assert tu.table_source.startswith("shipped NVIDIA_H100_80GB_HBM3.json")
    assert "same compute capability 9.0" in tu.table_source


@pytest.mark.parametrize("info", [gpu("NVIDIA A100-SXM4-80GB", (8, 0), 108, 166912),
                                  gpu("AMD Instinct MI300X", (9, 0), 304, 65536, "amd")],
                         ids=["other-capability", "other-vendor"])
def test_no_similar_device_gets_the_defaults(info):
    tu = tune(info)
    assert tu.table == {} and tu.table_source == ""
    assert tu.qgemv(4096, 4096, "Q4_0")[1:] == (256, 4, 1)


def test_nearest_sm_count_wins(tmp_path, monkeypatch):
    for name, sms, smem in (("GPU A", 114, 232448), ("GPU B", 144, 232448),
                            ("GPU C", 114, 101376)):
        (tmp_path / device.table_file(name)).write_text(json.dumps(
            {"device": name, "vendor": "nvidia", "capability": [9, 0], "sm_count": sms,
             "shared_memory": smem, "best": {"qgemv Q4_0 64 64": [1, 2, 3, sms]}}))
    monkeypatch.setattr(device, "TUNED_DIR", tmp_path)
    table, source = tables_for(gpu("GPU X", sms=120, smem=232448))
    assert table["best"]["qgemv Q4_0 64 64"][3] == 114 and source.startswith("shipped GPU_A.json")
    assert "114 SMs vs 120" in source
    assert tables_for(gpu("GPU Y", sms=140))[1].startswith("shipped GPU_B.json")


def test_user_table_over_shipped(tmp_path):
    """`drift tune`'s output in $DRIFT_HOME/tuned wins where it measured a shape; the shipped
    (or derived) table still answers the others."""
    user = tmp_path / "home" / "tuned"
    user.mkdir(parents=True)
    key = next(iter(shipped(H100)["best"]))
    (user / "NVIDIA_GH200_480GB.json").write_text(json.dumps(
        {"device": "NVIDIA GH200 480GB",
         "best": {key: [1, 64, 1, 1], "qgemv Q4_0 1 1": [2, 2, 2, 2]}}))
    table, source = tables_for(gpu("NVIDIA GH200 480GB"))
    assert table["best"][key] == [1, 64, 1, 1]
    assert table["best"]["qgemv Q4_0 1 1"] == [2, 2, 2, 2]
    assert len(table["best"]) == len(shipped(H100)["best"]) + 1
    assert source.startswith(f"{user / 'NVIDIA_GH200_480GB.json'} (drift tune) over shipped "
                             "NVIDIA_H100_80GB_HBM3.json")


def test_forced_table_and_unknown_format(tmp_path, monkeypatch):
    f = tmp_path / "t.json"
    f.write_text(json.dumps({"best": {"qgemv Q4_0 1 1": [2, 2, 2, 2]}}))
    monkeypatch.setenv("DRIFT_TRITON_TUNED", str(f))
    assert tables_for(gpu(H100)) == ({"best": {"qgemv Q4_0 1 1": [2, 2, 2, 2]}},
                                     f"{f} (DRIFT_TRITON_TUNED)")
    f.write_text(json.dumps({"format": 99, "best": {"qgemv Q4_0 1 1": [2, 2, 2, 2]}}))
    assert tables_for(gpu(H100)) == ({}, "")


# --- the sweep (drift tune) under the interpreter -------------------------------------------


def tiny_sweep():
    from drift.backends.triton import sweep as sw
    from drift.backends.triton.device import read_device

    dev, info = read_device()
    s = sw.Sweep(tune(info), dev)
    s.gemv_configs = ((8, 64, 1), (16, 32, 1))
    s.gemv_stages = (2,)
    s.dequant_configs = ((8, 128),)
    s.dense_configs = ((16, 32, 32, 1, 1),)
    return sw, s, info


GEMV_SHAPES = [("Q4_0", 64, 256), ("Q8_0", 48, 128)]
GEMM_SHAPES = [("Q4_0", 40, 128)]


def test_sweep_writes_the_table_tune_reads(tmp_path):
    sw, s, info = tiny_sweep()
    steps = []
    best = sw.run_sweep(s, GEMV_SHAPES, GEMM_SHAPES, budget_s=600, m=16, advance=steps.append)
    assert sum(steps) == 2 * s.gemv_jobs() + s.gemm_jobs()  # the progress bar ends full
    assert set(best) == {"qgemv Q4_0 64 256", "qgemv Q8_0 48 128", "dequant Q4_0 40 128",
                         "dense Q4_0 40 128"}
    # every configuration measured, the default first
    gemv_rows = [r for r in s.rows if r["kernel"] == "qgemv" and r["qtype"] == "Q4_0"]
    assert gemv_rows[0]["cfg"] == list(s.tu.qgemv(64, 256, "Q4_0"))
    assert len(gemv_rows) == 1 + 2 + 1 and all(r["us"] > 0 for r in s.rows)
    assert best["qgemv Q4_0 64 256"] == min(gemv_rows, key=lambda r: r["us"])["cfg"]
    path = sw.write_table(info, best, s.rows, "in a test")
    assert path == tmp_path / "home" / "tuned" / "triton_interpreter_CPU.json"
    written = json.loads(path.read_text())
    assert written["best"] == best and written["format"] == device.TABLE_FORMAT
    assert written["device"] == info.name and len(written["rows"]) == len(s.rows)
    # a later run for other shapes keeps these entries
    sw.write_table(info, {"qgemv Q4_0 8 8": [1, 1, 1, 1]}, [], "again")
    assert json.loads(path.read_text())["best"] == {**best, "qgemv Q4_0 8 8": [1, 1, 1, 1]}
    # the backend of a GPU by that name runs it (the interpreter itself reads no table)
    tu = tune(gpu(info.name, capability=(8, 6)))
    assert tu.table_source == f"{path} (drift tune)"
    assert tu.qgemv(64, 256, "Q4_0") == tuple(best["qgemv Q4_0 64 256"])
    assert tu.dense_tiles(512, 40, 128, "Q4_0") == tuple(best["dense Q4_0 40 128"])
    assert tune(info).table == {}


def test_sweep_budget():
    """A shape whose share of the budget is spent still has its default measured; with the
    whole budget spent nothing more is measured, and the progress bar ends full either way."""
    sw, s, _ = tiny_sweep()
    steps = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sw.Budget, "share", lambda self, n: 0.0)  # every deadline already past
        best = sw.run_sweep(s, GEMV_SHAPES, GEMM_SHAPES, budget_s=600, m=16,
                            advance=steps.append)
    assert sum(steps) == 2 * s.gemv_jobs() + s.gemm_jobs()
    assert [r["kernel"] for r in s.rows] == ["qgemv", "qgemv", "dequant", "dense"]
    assert best["qgemv Q8_0 48 128"] == list(s.tu.qgemv(48, 128, "Q8_0"))
    sw, s, _ = tiny_sweep()
    steps = []
    assert sw.run_sweep(s, GEMV_SHAPES, GEMM_SHAPES, budget_s=1e-9, advance=steps.append) == {}
    assert s.rows == [] and sum(steps) == 2 * s.gemv_jobs() + s.gemm_jobs()


def test_model_shapes_stack_for_decode(tmp_path):
    """Decode runs one GEMV per stack (Q/K/V, gate/up), prefill one GEMM per member."""
    from drift.backends.triton.sweep import model_shapes
    from drift.formats.writer import write_random
    from drift.models.presets import Preset, _llama

    tiny = Preset("tiny", "llama", _llama(2, 64, 4, 2, 96, ctx=128), 300, False, True)
    gemv, gemm = model_shapes(write_random(tiny, "Q8_0", tmp_path / "t.gguf", workers=1))
    # head_dim 16: q 64 rows, k and v 32 each; gate and up 96 each
    assert sorted(gemv) == sorted([("Q8_0", 128, 64), ("Q8_0", 64, 64), ("Q8_0", 192, 64),
                                   ("Q8_0", 64, 96), ("Q8_0", 300, 64)])
    assert sorted(gemm) == sorted([("Q8_0", 64, 64), ("Q8_0", 32, 64), ("Q8_0", 96, 64),
                                   ("Q8_0", 64, 96), ("Q8_0", 300, 64)])


def test_drift_tune_command(tmp_path, monkeypatch, capsys):
    """`drift tune MODEL` end to end on the interpreter: a table in $DRIFT_HOME/tuned."""
    from drift.backends.triton import sweep as sw
    from drift.cli import main
    from drift.formats.writer import write_random
    from drift.models.presets import Preset, _llama

    monkeypatch.setenv("DRIFT_TRITON_CPU", "1")
    for name in ("gemv_configs", "gemv_stages", "dequant_configs", "dense_configs"):
        monkeypatch.setattr(sw.Sweep, name, ())  # the defaults only: the interpreter is slow
    monkeypatch.setattr(sw, "PREFILL_M", 16)
    tiny = Preset("tiny", "llama", _llama(1, 64, 4, 2, 96, ctx=128), 300, True, True)
    model = write_random(tiny, "Q4_0", tmp_path / "t.gguf", workers=1)
    assert main(["tune", str(model), "--budget", "600"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "home" / "tuned" / "triton_interpreter_CPU.json"
    table = json.loads(path.read_text())
    assert f"wrote {path}" in out and "on the shapes of t.gguf" in table["source"]
    # tied embeddings: token_embd is the output matrix
    assert "qgemv Q4_0 300 64" in table["best"] and "dense Q4_0 300 64" in table["best"]
    assert main(["tune", "--show"]) == 0
    assert main(["tune", "--budget", "0"]) != 0


@pytest.mark.parametrize("argv, says", [
    (["tune", "--budget", "0"], "--budget must be > 0"),
    (["tune", "--budget", "nan"], "--budget must be > 0"),
    (["tune", "--budget", "5"], "found none"),  # no GPU here, and not interpreting
])
def test_tune_bad_input_is_one_line(argv, says, monkeypatch, capsys):
    from drift.cli import main as drift_main

    monkeypatch.delenv("DRIFT_TRITON_CPU", raising=False)
    if says == "found none":
        from drift.backends.triton import TritonBackend

        if TritonBackend.available():
            pytest.skip("a GPU is present: drift tune would measure it")
    assert drift_main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
