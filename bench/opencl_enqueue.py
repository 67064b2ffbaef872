"""What one OpenCL kernel launch costs the host, by the ways `CLRuntime` can enqueue it
(issue 9: 262 launches a decode token of Llama-3.1-8B, 27 us each through pyopencl on
NVIDIA's OpenCL, the device waiting for the host).

A trivial kernel (one workgroup of 64 threads adding 1 to a float of each argument) is
enqueued `--n` times on one queue, bound by `CLRuntime.launch` to `--args` whole buffers or
sub-buffers of one buffer (as drift binds the arena's regions), each of these ways:

    pyopencl         `pyopencl.enqueue_nd_range_kernel` (an Event object per launch)
    ctypes           the loader's clEnqueueNDRangeKernel, one ctypes call a launch, no event
    ctypes + event   the same with an event made and released (what an event costs)
    ctypes alone     the ctypes call with a NULL queue, refused by the loader at once: the
                     Python side of a ctypes launch, no driver work
    c loop           `enqueue.c`: all n launches in one call from Python, no event

Printed per launch: the host time of the enqueueing alone, and with the `finish` after it
(when the device is slower than the host, that is its rate).

    python bench/opencl_enqueue.py            # the first GPU (else any device)
    python bench/opencl_enqueue.py --n 20000 --args 6
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time

import numpy as np

from drift.backends.kernels.renderer import Param
from drift.backends.opencl import CLRuntime, icd_loader


def kernel_source(n_args: int) -> str:
    params = ", ".join(f"__global float* a{i}" for i in range(n_args))
    body = " ".join(f"a{i}[get_local_id(0)] += 1.0f;" for i in range(n_args))
    return f"__kernel void main_k({params}) {{ {body} }}\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=5000, help="launches per measurement")
    p.add_argument("--args", type=int, default=4, help="buffer arguments of the kernel")
    p.add_argument("--reps", type=int, default=5, help="measurements (median)")
    a = p.parse_args()

    rt = CLRuntime()
    cl, q, n = rt.cl, rt.queue, a.n
    print(f"# {rt.dev.platform.name} / {rt.dev.name} ({rt.dev.version}); CLRuntime enqueues "
          f"through: {rt.enqueue_path}")
    kernel = (cl.Program(rt.ctx, kernel_source(a.args)).build(), 64)
    params = [Param(f"a{i}", "f32", True) for i in range(a.args)]
    align = max(256, rt.binding_alignment)
    arena = rt.buffer(2 * align * a.args)
    whole = [rt.buffer(64 * 4) for _ in range(a.args)]
    fn, qh = rt.enqueue, ctypes.c_void_p(q.int_ptr)

    def pyopencl(launch):
        k, gsize, lsize, *_ = launch
        for _ in range(n):
            cl.enqueue_nd_range_kernel(q, k, gsize, lsize)

    def direct(launch):
        d = launch[-1]
        for _ in range(n):
            if fn(qh, *d):
                raise RuntimeError("clEnqueueNDRangeKernel failed")

    def direct_event(launch):
        d, evt, release = launch[-1], ctypes.c_void_p(), icd_loader().clReleaseEvent
        for _ in range(n):
            if fn(qh, *d[:-1], ctypes.byref(evt)):
                raise RuntimeError("clEnqueueNDRangeKernel failed")
            release(evt)

    def alone(launch):
        d = launch[-1]
        for _ in range(n):
            fn(None, *d)

    def c_loop(launch):
        rt._enqueue_all(batch)  # (the same launch n times: its arrays made at the warm-up)

    ways = [("pyopencl", pyopencl)]
    if fn is not None:
        ways += [("ctypes", direct), ("ctypes + event", direct_event),
                 ("ctypes alone", alone)]
    if rt.loop is not None:
        ways.append(("c loop", c_loop))
    print(f"\n{n} launches of a 64-thread kernel of {a.args} buffer arguments, median of "
          f"{a.reps}")
    print("| arguments | enqueue | host us/launch (enqueue) | us/launch (+ finish) |")
    print("| --- | --- | --- | --- |")
    for label, places in (("whole buffers", [(b, 0, b.size) for b in whole]),
                          ("sub-buffers", [(arena, i * 2 * align, 256)
                                           for i in range(a.args)])):
        launch = rt.launch(kernel, params, places, 1)
        batch = [launch] * n
        for name, way in ways:
            way(launch)  # warm
            q.finish()
            enq, tot = [], []
            for _ in range(a.reps):
                t0 = time.perf_counter()
                way(launch)
                t1 = time.perf_counter()
                q.finish()
                t2 = time.perf_counter()
                enq.append((t1 - t0) / n)
                tot.append((t2 - t0) / n)
            print(f"| {label} | {name} | {statistics.median(enq) * 1e6:.2f} "
                  f"| {statistics.median(tot) * 1e6:.2f} |")
    host = np.empty(64, np.float32)
    cl.enqueue_copy(q, host, whole[0])
    runs = (a.reps + 1) * sum(name != "ctypes alone" for name, _ in ways)
    print(f"\n(check: the first argument was added to {int(host[0])} times, "
          f"{n * runs} expected)")
    rt.close()


if __name__ == "__main__":
    main()
