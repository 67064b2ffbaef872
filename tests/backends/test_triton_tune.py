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


def test_same_capability_gets_the_nearest_shipped_table():
    """An H200 (no table of its own: same SMs, capability and shared memory as the H100)
    runs the H100's measured configurations, and says so."""
    tu = tune(gpu("NVIDIA H200"))
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
    (user / "NVIDIA_H200.json").write_text(json.dumps(
        {"device": "NVIDIA H200", "best": {key: [1, 64, 1, 1], "qgemv Q4_0 1 1": [2, 2, 2, 2]}}))
    table, source = tables_for(gpu("NVIDIA H200"))
    assert table["best"][key] == [1, 64, 1, 1]
    assert table["best"]["qgemv Q4_0 1 1"] == [2, 2, 2, 2]
    assert len(table["best"]) == len(shipped(H100)["best"]) + 1
    assert source.startswith(f"{user / 'NVIDIA_H200.json'} (drift tune) over shipped "
                             "NVIDIA_H100_80GB_HBM3.json")


def test_forced_table_and_unknown_format(tmp_path, monkeypatch):
    f = tmp_path / "t.json"
    f.write_text(json.dumps({"best": {"qgemv Q4_0 1 1": [2, 2, 2, 2]}}))
    monkeypatch.setenv("DRIFT_TRITON_TUNED", str(f))
    assert tables_for(gpu(H100)) == ({"best": {"qgemv Q4_0 1 1": [2, 2, 2, 2]}},
                                     f"{f} (DRIFT_TRITON_TUNED)")
    f.write_text(json.dumps({"format": 99, "best": {"qgemv Q4_0 1 1": [2, 2, 2, 2]}}))
    assert tables_for(gpu(H100)) == ({}, "")
