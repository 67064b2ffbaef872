"""Timing one WGSL pipeline's dispatches on a wgpu device, for the standalone probes
(`webgpu_alu_probe.py`, `webgpu_int8_gemm_probe.py`, `webgpu_coop_probe.py`): n dispatches in
one compute pass and one submission, timed to the read of 4 bytes that waits for them."""

from __future__ import annotations

import time
from typing import Any


def submission_seconds(dev: Any, pipe: Any, group: Any, grid: tuple[int, int, int], out: Any,
                       n: int) -> float:
    """Wall seconds of one submission of `n` dispatches of `pipe` over `grid` workgroups."""
    enc = dev.create_command_encoder()
    cp = enc.begin_compute_pass()
    for _ in range(n):
        cp.set_pipeline(pipe)
        cp.set_bind_group(0, group)
        cp.dispatch_workgroups(*grid)
    cp.end()
    t0 = time.perf_counter()
    dev.queue.submit([enc.finish()])
    dev.queue.read_buffer(out, 0, 4)
    return time.perf_counter() - t0


def dispatch_seconds(dev: Any, pipe: Any, group: Any, grid: tuple[int, int, int], out: Any,
                     reps: int) -> float:
    """Seconds a dispatch: (a submission of reps + 1 less one of 1) / reps, the median of three
    (the submission's own cost cancels; the first run, compiling and touching, is apart)."""
    submission_seconds(dev, pipe, group, grid, out, 1)
    runs = [(submission_seconds(dev, pipe, group, grid, out, reps + 1)
             - submission_seconds(dev, pipe, group, grid, out, 1)) / reps for _ in range(3)]
    return sorted(runs)[1]
