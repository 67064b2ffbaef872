"""The kernel-constant settings of the bench scripts (`bench/kernel_constants.py`, used by
`drift_with.py` and the kernel benches' `--set`): tuples parsed whole, a bad item or an
unknown constant refused with one line and a non-zero exit, the constants restored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import kernel_constants  # noqa: E402

from drift.backends.kernels import templates  # noqa: E402
from drift.backends.kernels.gpu import GPUBackend  # noqa: E402


def test_items_keep_tuples_whole_and_parse_literals():
    items = kernel_constants.items("GEMM_MMA_TILE=(128,64,32),GEMM_MMA='never',kernel_tile_rows=1")
    assert items == ["GEMM_MMA_TILE=(128,64,32)", "GEMM_MMA='never'", "kernel_tile_rows=1"]
    got = kernel_constants.parse(items)
    assert got == {"GEMM_MMA_TILE": (128, 64, 32), "GEMM_MMA": "never", "kernel_tile_rows": 1}
    before = (templates.GEMM_MMA_TILE, GPUBackend.kernel_tile_rows)
    saved = kernel_constants.apply(got)
    try:
        assert templates.GEMM_MMA_TILE == (128, 64, 32) and GPUBackend.kernel_tile_rows == 1
    finally:
        kernel_constants.apply(saved)
    assert (templates.GEMM_MMA_TILE, GPUBackend.kernel_tile_rows) == before


def test_profile_refuses_a_prefill_of_no_tokens():
    run = subprocess.run([sys.executable, str(BENCH / "gpuapi_profile.py"), "no-model.gguf",
                          "--device", "webgpu", "--tokens", "0"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "--tokens must be at least 1" in run.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("item,why", [("NO_SUCH=1", "no constant NO_SUCH"),
                                      ("ATTN_RUN_KEYS=two", "is not CONSTANT=python-literal"),
                                      ("ATTN_RUN_KEYS", "is not CONSTANT=python-literal")])
def test_bad_settings_are_refused(item, why):
    with pytest.raises(ValueError, match=why):
        kernel_constants.parse([item])
    run = subprocess.run([sys.executable, str(BENCH / "drift_with.py"), item, "--", "devices"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and why in lines[0] and "Traceback" not in run.stderr
    for script, args in (("gpuapi_attention.py", []), ("gpuapi_profile.py", ["no-model.gguf"])):
        run = subprocess.run([sys.executable, str(BENCH / script), *args, "--device", "webgpu",
                              "--set", item], capture_output=True, text=True, timeout=60)
        assert run.returncode != 0 and why in run.stderr and "Traceback" not in run.stderr
