"""How the OpenCL backend enqueues its kernels (`CLRuntime.enqueue_path`): the C loop over the
loader's clEnqueueNDRangeKernel where it builds, one ctypes call a launch where there is no
compiler, pyopencl's call where no loader is found; the same results every way."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from drift.backends import backend_class
from drift.models.decoder import build_graph
from tests.passes.helpers import run_plain
from tests.passes.test_model_graphs import tiny_config, tiny_weights


@pytest.fixture
def backend():
    cls = backend_class("opencl")
    if not cls.available():
        pytest.skip("no OpenCL device (scripts/test.sh installs PoCL)")
    return cls()


def _decode(be):
    """A tiny llama's prefill then decode: (logits of each call, the reference's)."""
    cfg = tiny_config("llama")
    w = tiny_weights(cfg)
    be.load_arrays(w)
    state: dict = {}
    got, ref = [], []
    for S, start in ((5, 0), (1, 5)):
        g = build_graph(cfg, {k: "f32" for k in w}, S, 16)
        feeds = {"tokens": np.arange(S, dtype=np.int32) + 3,
                 "positions": np.arange(start, start + S, dtype=np.int32)}
        ref.append(run_plain(g, w, feeds, state)[g.outputs[0]])
        got.append(be.compile(g).run(feeds)[g.outputs[0]])
    return got, ref


def test_the_c_loop_enqueues_where_it_builds(backend, monkeypatch):
    from drift.backends.opencl import icd_loader, launch_loop

    if icd_loader() is None or launch_loop() is None:
        pytest.skip("no ICD loader found, or no C compiler")
    assert backend.rt.enqueue_path == "c loop"

    def refuse(*a, **k):
        raise AssertionError("a kernel went through pyopencl")

    monkeypatch.setattr(backend.rt.cl, "enqueue_nd_range_kernel", refuse)
    got, ref = _decode(backend)
    for x, y in zip(got, ref):
        assert np.abs(x - y).max() <= 1e-4 * max(1.0, np.abs(y).max())


@pytest.mark.parametrize("path", ["ctypes", "pyopencl"])
def test_every_enqueue_path_gives_the_same_logits(backend, path):
    cls = backend_class("opencl")
    want, _ = _decode(cls())  # the fastest path found here
    backend.rt.loop = None
    if path == "pyopencl":
        backend.rt.enqueue = None
    elif backend.rt.enqueue is None:
        pytest.skip("no ICD loader found")
    assert backend.rt.enqueue_path == path
    got, _ = _decode(backend)
    for x, y in zip(got, want):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("loop", [True, False])
def test_a_refused_launch_raises(backend, loop):
    """The loader refuses a launch on a NULL queue (CL_INVALID_COMMAND_QUEUE, -36): an
    error naming it, not a silent skip."""
    rt = backend.rt
    if rt.enqueue is None or (loop and rt.loop is None):
        pytest.skip("that path is not available here")
    if not loop:
        rt.loop = None
    cfg = tiny_config("llama")
    w = tiny_weights(cfg)
    backend.load_arrays(w)
    prog = backend.compile(build_graph(cfg, {k: "f32" for k in w}, 1, 16))
    handle, rt._queue_handle = rt._queue_handle, ctypes.c_void_p(0)
    try:
        with pytest.raises(RuntimeError, match="clEnqueueNDRangeKernel failed.*-36"):
            rt._enqueue_all(prog.launches)
    finally:
        rt._queue_handle = handle


def test_without_a_loader_or_a_compiler_it_falls_back(monkeypatch):
    import drift.backends.opencl as ocl

    if not backend_class("opencl").available():
        pytest.skip("no OpenCL device")
    monkeypatch.setattr(ocl, "launch_loop", lambda: None)
    assert ocl.CLRuntime().enqueue_path == ("ctypes" if ocl.icd_loader() else "pyopencl")
    monkeypatch.setattr(ocl, "_icd_loaders", lambda: [])
    ocl.icd_loader.cache_clear()
    try:
        assert ocl.CLRuntime().enqueue_path == "pyopencl"
    finally:
        ocl.icd_loader.cache_clear()
