"""Backends, found by name. Each lives in `backends/<name>/` and is imported only when asked
for, so a machine without torch or wgpu still runs the CPU backend."""

from __future__ import annotations

import glob
import importlib
import sys

from drift.backends.base import Backend, DeviceInfo, Program
from drift.errors import DeviceError

# Best first: the default device is the first available that is not a CPU emulation of a
# GPU API (lavapipe, PoCL: asked for by name only).
BACKENDS: dict[str, str] = {
    "triton": "drift.backends.triton",
    "webgpu": "drift.backends.webgpu",
    "opencl": "drift.backends.opencl",
    "cpu": "drift.backends.cpu",
}
ALIASES = {"numpy": "cpu", "cuda": "triton", "wgpu": "webgpu", "vulkan": "webgpu", "cl": "opencl"}


def backend_class(name: str) -> type[Backend]:
    name = ALIASES.get(name, name)
    if name not in BACKENDS:
        raise DeviceError(f"unknown device {name!r} (known: {', '.join(BACKENDS)})")
    module = importlib.import_module(BACKENDS[name])
    return module.BACKEND


# Where Linux shows a GPU to a process: NVIDIA's, AMD's compute, any render node (AMD, Intel,
# ARM; Vulkan and OpenCL drivers open these), WSL's. Lavapipe and PoCL need none of them.
GPU_DEVICE_NODES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dri/renderD*", "/dev/dxg")


def no_gpu_here() -> bool:
    """On Linux, whether no GPU device node exists: then every GPU API could only offer a CPU
    emulation, and `auto` is the CPU without importing torch or asking wgpu and OpenCL for
    their adapters (3-4 s of a CPU-only machine's start)."""
    return sys.platform.startswith("linux") and not any(glob.glob(p) for p in GPU_DEVICE_NODES)


def best_available() -> str:
    if no_gpu_here():
        return "cpu"
    for name in BACKENDS:
        try:
            cls = backend_class(name)
            if cls.available() and not cls.emulated():
                return name
        except ImportError:
            continue
    return "cpu"


def create_backend(name: str | None = None, **options) -> Backend:
    name = best_available() if name in (None, "auto") else name
    cls = backend_class(name)
    if not cls.available():
        raise DeviceError(f"device {name!r} is not available on this machine")
    return cls(**options)


__all__ = ["Backend", "BACKENDS", "DeviceInfo", "Program", "backend_class", "best_available",
           "create_backend"]
