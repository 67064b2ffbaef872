"""The OpenCL backend, on pyopencl (NVIDIA, AMD, Intel, Adreno, Mali; PoCL without a GPU).

Kernels are the shared templates (`backends/kernels/`) rendered as OpenCL C. Each tensor
argument is a sub-buffer of the arena (or a weight/cache buffer), set once when the program
is bound; a call enqueues the input copies, every kernel and the output copies on one queue
and waits once, on the last read.

A decode step is a few hundred launches, and pyopencl's `enqueue_nd_range_kernel` makes an
Event object for each. The launches go instead to the ICD loader's `clEnqueueNDRangeKernel`
with no event: all of a call's in one call from Python into a loop in C (`enqueue.c`,
compiled at first use like the cpu backend's kernels), else one ctypes call each where there
is no C compiler, else (no loader found) through pyopencl: `CLRuntime.enqueue_path`.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import gc
import glob
import hashlib
import os
import platform
import subprocess
import time
import weakref
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from drift.backends.base import DeviceInfo
from drift.backends.kernels.gpu import GPUBackend, Runtime, Timing
from drift.backends.kernels.renderer import KernelSource
from drift.backends.kernels.templates import MAX_GROUPS
from drift.backends.opencl.renderer import OpenCLRenderer


@lru_cache(maxsize=1)
def _device():
    import pyopencl as cl

    devs = [d for p in cl.get_platforms() for d in p.get_devices()]
    if not devs:
        return None
    gpus = [d for d in devs if d.type & cl.device_type.GPU]
    return (gpus or devs)[0]


def adapters() -> list[dict[str, Any]]:
    """Every OpenCL device, with what drift specializes on (`drift devices`)."""
    import pyopencl as cl

    out = []
    for p in cl.get_platforms():
        for d in p.get_devices():
            ext = d.extensions.split()
            out.append({"api": "opencl", "name": f"{p.name} / {d.name}",
                        "type": cl.device_type.to_string(d.type), "version": d.version,
                        "compute_units": d.max_compute_units, "memory": d.global_mem_size,
                        "max_binding": d.max_mem_alloc_size,
                        "binding_alignment": d.mem_base_addr_align // 8,
                        "workgroup_storage": d.local_mem_size,
                        "fp16": "cl_khr_fp16" in ext,
                        "int8_dot": ("cl_khr_integer_dot_product" in ext
                                     or "cl_nv_device_attribute_query" in ext),  # dp4a: PTX
                        "subgroups": "cl_khr_subgroups" in ext,
                        "matrix_units": ("cl_nv_device_attribute_query" in ext
                                         and d.compute_capability_major_nv >= 8)})
    return out


def _icd_loaders() -> list[str]:
    """Where the OpenCL ICD loader may be, the one pyopencl itself calls first (its wheels
    carry a copy, in `pyopencl/.libs` or `pyopencl.libs`), then the system's."""
    import pyopencl

    here = os.path.dirname(pyopencl.__file__)
    found = sorted(glob.glob(os.path.join(here, ".libs", "libOpenCL*")) +
                   glob.glob(os.path.join(here + ".libs", "libOpenCL*")))
    system = ctypes.util.find_library("OpenCL")
    return found + ([system] if system else [])


@lru_cache(maxsize=1)
def icd_loader() -> Any:
    """The first of `_icd_loaders` that loads and has `clEnqueueNDRangeKernel`, as a ctypes
    library; None where none does."""
    for path in _icd_loaders():
        try:
            lib = ctypes.CDLL(path)
            lib.clEnqueueNDRangeKernel.restype = ctypes.c_int32
        except (OSError, AttributeError):
            continue
        return lib
    return None


def _direct_enqueue() -> Any:
    """`clEnqueueNDRangeKernel` of the ICD loader, through ctypes (argument types left to
    the caller's ctypes objects: no conversion per call); None where it is not found."""
    lib = icd_loader()
    return lib.clEnqueueNDRangeKernel if lib is not None else None


LOOP_SOURCE = Path(__file__).with_name("enqueue.c")


@lru_cache(maxsize=1)
def launch_loop() -> Any:
    """`enqueue.c`'s `enqueue_all`, compiled at first use with the system's C compiler into
    `$DRIFT_HOME/kernels/` (keyed by the source's and compiler's hash, as the cpu backend's
    kernels); None where there is no compiler or it fails."""
    from drift.backends.cpu.native import _compiler
    from drift.hub import models_dir

    cc = _compiler()
    if cc is None:
        return None
    try:  # (an install without the source: no loop either)
        key = hashlib.sha256(LOOP_SOURCE.read_bytes() + cc.encode()
                             + platform.machine().encode()).hexdigest()[:16]
        path = models_dir().parent / "kernels" / f"opencl_enqueue-{key}.so"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(LOOP_SOURCE)],
                           capture_output=True, check=True)
            os.replace(tmp, path)
        fn = ctypes.CDLL(str(path)).enqueue_all
    except (OSError, subprocess.CalledProcessError):
        return None
    p = ctypes.c_void_p
    fn.argtypes = [p, p, ctypes.c_int, p, p, p]
    fn.restype = ctypes.c_int
    return fn


_RUNTIMES: weakref.WeakSet = weakref.WeakSet()  # the live runtimes, closed at exit
_opened = False  # whether this process made one


def runtimes_opened() -> bool:
    """Whether this process made a runtime (`drift.cli.entry` then ends it with os._exit)."""
    return _opened


@atexit.register
def _close_runtimes() -> None:
    """Every live runtime's queues drained and its sub-buffers released ahead of the buffers
    they view, before the interpreter tears its modules down (objects in reference cycles
    freed in any order). On NVIDIA's OpenCL a process still ended in a segmentation fault
    after drift bench's results with this in place (session 15), so the command line skips
    teardown altogether there (`drift.cli.entry`); this serves in-process users."""
    gc.collect()
    for rt in list(_RUNTIMES):
        rt.close()


class CLRuntime(Runtime):
    def __init__(self):
        import pyopencl as cl

        self.cl = cl
        self.dev = _device()
        self.ctx = cl.Context([self.dev])
        self.queue = cl.CommandQueue(self.ctx)
        self.renderer = OpenCLRenderer()
        self.renderer.workgroup_storage = self.dev.local_mem_size
        if "Portable Computing Language" in self.dev.platform.name:
            # PoCL 3.1 (LLVM 15) runs the guarded-off output stores of the tiled GEMM (rows
            # past S written: wrong rows, or a corrupted heap), whatever form the guard takes
            self.renderer.tiled_gemm = False
        ext = self.dev.extensions.split()
        if "cl_khr_subgroup_shuffle" in ext:
            # sizes vary by kernel on some devices (Intel: 8 to 32): 8, which all of them reach
            self.renderer.shuffles, self.subgroup_lanes = "khr", 8
        elif "cl_nv_device_attribute_query" in ext:  # NVIDIA: warps, reached through PTX
            self.renderer.shuffles, self.subgroup_lanes = "ptx", self.dev.warp_size_nv
        if "cl_nv_device_attribute_query" in ext and self.dev.compute_capability_major_nv >= 8:
            self.renderer.mma = "ptx"  # mma.m16n8k8 on tf32: Ampere (sm_80) and later
        if "cl_khr_integer_dot_product" in ext:
            self.int8 = "khr"
        elif "cl_nv_device_attribute_query" in ext:  # NVIDIA: dp4a, through PTX
            self.int8 = "ptx"
        self.int8_emulated = "bytes"
        self.binding_alignment = max(4, self.dev.mem_base_addr_align // 8)
        self.max_binding = self.dev.max_mem_alloc_size
        self._keep: list[np.ndarray] = []
        self._profiling_queue: Any = None  # made at the first timed call
        # sub-buffers by (buffer, offset, bytes): one per region however many launches bind
        # it (the same arena regions serve every layer), released before their buffers
        self._views: dict[tuple[int, int, int], tuple[Any, Any]] = {}
        # launches through the loader's clEnqueueNDRangeKernel (None: pyopencl's call), all
        # of a call's in one call into the C loop where it builds
        self.enqueue = _direct_enqueue()
        self.loop = launch_loop() if self.enqueue is not None else None
        self._queue_handle = ctypes.c_void_p(self.queue.int_ptr)
        self._enqueue_address = (ctypes.cast(self.enqueue, ctypes.c_void_p)
                                 if self.enqueue is not None else None)
        # the C loop's arrays (kernel handles, sizes) per sequence of launches seen, with the
        # launches themselves: held, their ids are not reused while the key stands
        self._batches: dict[tuple[int, ...], tuple[list, np.ndarray, np.ndarray]] = {}
        _RUNTIMES.add(self)
        global _opened
        _opened = True

    def buffer(self, nbytes: int) -> Any:
        buf = self.cl.Buffer(self.ctx, self.cl.mem_flags.READ_WRITE, max(4, nbytes))
        self.cl.enqueue_fill_buffer(self.queue, buf, np.zeros(1, np.uint8), 0, max(4, nbytes))
        return buf

    def write(self, buf, offset, data):
        self.cl.enqueue_copy(self.queue, buf, np.ascontiguousarray(data), dst_offset=offset,
                             is_blocking=True)

    def compile(self, k: KernelSource) -> Any:
        return self.cl.Program(self.ctx, self.renderer.render(k)).build(), k.workgroup

    def launch(self, kernel, params, places, groups):
        program, wg = kernel
        k = self.cl.Kernel(program, "main_k")
        args = []
        for buf, off, size in places:
            whole = off == 0 and size >= buf.size
            args.append(buf if whole else self._view(buf, off, min(size, buf.size - off)))
        k.set_args(*args)
        gx = min(groups, MAX_GROUPS)
        gsize, lsize = (gx * wg, -(-groups // gx)), (wg, 1)
        # clEnqueueNDRangeKernel's arguments after the queue, made once: the kernel, 2
        # dimensions, no offset, the sizes, no events waited for, no event made
        sizes = ctypes.c_size_t * 2
        direct = (ctypes.c_void_p(k.int_ptr), ctypes.c_uint32(2), None, sizes(*gsize),
                  sizes(*lsize), ctypes.c_uint32(0), None, None)
        return k, gsize, lsize, args, direct

    @property
    def enqueue_path(self) -> str:
        """How `run` enqueues kernels: "c loop", "ctypes" or "pyopencl"."""
        return "pyopencl" if self.enqueue is None else "ctypes" if self.loop is None else "c loop"

    def run(self, launches, writes, reads):
        out = self.collect(self.submit(launches, writes, reads))
        if not reads:
            self.queue.finish()
        return out

    def submit(self, launches, writes, reads):
        """Writes, launches and reads enqueued without blocking (the host arrays held by the
        ticket until `collect`), the queue flushed so that the device starts on them."""
        cl, q = self.cl, self.queue
        held = [np.ascontiguousarray(data) for _, _, data in writes]
        for (buf, off, _), data in zip(writes, held):  # small (token ids, positions)
            cl.enqueue_copy(q, buf, data, dst_offset=off, is_blocking=False)
        self._enqueue_all(launches)
        out, last = [], None
        for buf, off, nbytes in reads:
            host = np.empty(nbytes, dtype=np.uint8)
            last = cl.enqueue_copy(q, host, buf, src_offset=off, is_blocking=False)
            out.append(host)
        q.flush()
        return out, last, held

    def collect(self, ticket):
        out, last, _held = ticket
        if last is not None:  # an in-order queue: the last read done, everything before is
            last.wait()
        return out

    def _enqueue_all(self, launches) -> None:
        if not launches:
            return
        if self.enqueue is None:
            for k, gsize, lsize, *_ in launches:
                self.cl.enqueue_nd_range_kernel(self.queue, k, gsize, lsize)
            return
        if self.loop is None:
            enqueue, q = self.enqueue, self._queue_handle
            for *_, direct in launches:
                err = enqueue(q, *direct)
                if err:
                    raise RuntimeError(f"clEnqueueNDRangeKernel failed: OpenCL error {err}")
            return
        key = tuple(map(id, launches))
        if key not in self._batches:
            if len(self._batches) >= 16:  # programs come and go (one per prompt length)
                self._batches.pop(next(iter(self._batches)))
            kernels = np.array([k.int_ptr for k, *_ in launches], dtype=np.uintp)
            sizes = np.array([(*g, *lo) for _, g, lo, *_ in launches], dtype=np.uintp)
            self._batches[key] = (list(launches), kernels, sizes)
        _, kernels, sizes = self._batches[key]
        err = ctypes.c_int32(0)
        done = self.loop(self._enqueue_address, self._queue_handle, len(launches),
                         kernels.ctypes.data, sizes.ctypes.data, ctypes.byref(err))
        if done != len(launches):
            raise RuntimeError(f"clEnqueueNDRangeKernel failed on launch {done} of "
                               f"{len(launches)}: OpenCL error {err.value}")

    def sync(self) -> None:
        self.queue.finish()

    def _view(self, buf, off: int, size: int) -> Any:
        key = (id(buf), off, size)
        if key not in self._views:  # (the buffer kept with it: its id stays its own)
            self._views[key] = (buf, buf.get_sub_region(off, size))
        return self._views[key][1]

    def forget(self, buf) -> None:
        """A buffer the backend no longer uses (an arena outgrown): its views released (and
        the C loop's arrays dropped: their launches bound them)."""
        self._batches.clear()
        for key in [k for k in self._views if k[0] == id(buf)]:
            self._views.pop(key)[1].release()

    def close(self) -> None:
        """Drain the queues, release the sub-buffers (ahead of their buffers)."""
        for q in (self.queue, self._profiling_queue):
            if q is not None:
                q.finish()
        self._batches.clear()
        for _, view in self._views.values():
            view.release()
        self._views.clear()

    def timed(self, launches, writes):
        """On a second queue of the same context, made with profiling on (events carry
        device start and end times; the calls' own queue stays without that cost)."""
        cl = self.cl
        if self._profiling_queue is None:
            self._profiling_queue = cl.CommandQueue(
                self.ctx, properties=cl.command_queue_properties.PROFILING_ENABLE)
        q = self._profiling_queue
        for buf, off, data in writes:
            cl.enqueue_copy(self.queue, buf, np.ascontiguousarray(data), dst_offset=off,
                            is_blocking=True)
        self.queue.finish()
        t0 = time.perf_counter()
        events = [cl.enqueue_nd_range_kernel(q, k, gsize, lsize)
                  for k, gsize, lsize, *_ in launches]
        t1 = time.perf_counter()
        q.finish()
        wall = time.perf_counter() - t0
        start = [e.profile.start for e in events]
        end = [e.profile.end for e in events]
        return Timing([(b - a) * 1e-9 for a, b in zip(start, end)],
                      (max(end) - min(start)) * 1e-9 if events else 0.0, t1 - t0, wall,
                      "OpenCL profiling events (start to end of each kernel)")

    def nbytes(self, buf) -> int:
        return buf.size


class OpenCLBackend(GPUBackend):
    name = "opencl"

    @classmethod
    def available(cls) -> bool:
        try:
            return _device() is not None
        except Exception:  # no pyopencl, no ICD, no platform
            return False

    @classmethod
    def emulated(cls) -> bool:
        import pyopencl as cl

        return not _device().type & (cl.device_type.GPU | cl.device_type.ACCELERATOR)

    def make_runtime(self) -> Runtime:
        return CLRuntime()

    def device(self) -> DeviceInfo:
        d = self.rt.dev
        kind = "gpu" if d.type & self.rt.cl.device_type.GPU else "cpu"
        return DeviceInfo("opencl", d.name, kind, d.global_mem_size, d.max_compute_units,
                          {"version": d.version, "max_binding": self.rt.max_binding})


BACKEND = OpenCLBackend
