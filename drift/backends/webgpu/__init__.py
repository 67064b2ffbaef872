"""The WebGPU backend, on wgpu-py (Vulkan, Metal, D3D12; Mesa's lavapipe without a GPU).

Kernels are the shared templates (`backends/kernels/`) rendered as WGSL. A decode step is one
command buffer: the inputs written with `queue.write_buffer`, one compute pass of every
dispatch (bind groups built once, when the program is bound), the outputs copied into a
mappable buffer in the same command buffer, then mapped.
"""

from __future__ import annotations

import itertools
import os
import time
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import numpy as np

from drift.backends.base import DeviceInfo
from drift.backends.kernels.gpu import GPUBackend, Runtime, Timing
from drift.backends.kernels.renderer import KernelSource
from drift.backends.kernels.templates import MAX_GROUPS
from drift.backends.webgpu.renderer import WGSLRenderer
from drift.errors import InvalidArgumentError

# The limits drift asks the device for (WebGPU's defaults are lower than most adapters').
_LIMITS = ("max-storage-buffer-binding-size", "max-buffer-size",
           "max-storage-buffers-per-shader-stage", "max-compute-workgroup-storage-size")
# Device timestamps (`Runtime.timed`, for profiling): requested wherever the adapter has them;
# they cost nothing until a timed call writes them. Inside passes (a wgpu-native feature) a
# timestamp goes between two dispatches of one pass, as a real call runs; without it each
# dispatch gets a pass of its own, its start and end stamped.
_TIMESTAMPS = ("timestamp-query", "timestamp-query-inside-passes")
_QUERIES_PER_SET = 4096  # wgpu's limit on one query set


@lru_cache(maxsize=1)
def _gpu():
    """wgpu's entry point, on the APIs drift targets: Vulkan, Metal, D3D12 (not GL, whose EGL
    probing only prints errors on a machine without a display)."""
    import wgpu

    try:
        from wgpu.backends.wgpu_native.extras import set_instance_extras

        set_instance_extras(backends=["Vulkan", "Metal", "DX12"])
    except Exception:  # another wgpu build, or the instance exists already: all backends
        pass
    return wgpu.gpu


def _shader_module(device: Any, code: str) -> Any:
    """The module of WGSL `code` without naga's run-time checks (wgpu's default: every index
    clamped into its buffer and every loop given an iteration counter, in each kernel's
    innermost loops), where drift's templates keep their own indices in bounds: through
    wgpu-native's trusted module call. DRIFT_WGSL_CHECKS=1 keeps the checks (a kernel under
    suspicion), as does a wgpu build without that call."""
    checks = os.environ.get("DRIFT_WGSL_CHECKS", "0")
    if checks not in ("0", "1"):
        raise InvalidArgumentError(f"DRIFT_WGSL_CHECKS={checks!r}: 0 or 1")
    from wgpu.backends.wgpu_native import _api

    ffi, lib = _api.ffi, _api.lib
    if checks == "1" or not hasattr(lib, "wgpuDeviceCreateShaderModuleTrusted"):
        return device.create_shader_module(code=code)
    text = ffi.new("char[]", code.encode())
    source = ffi.new("WGPUShaderSourceWGSL *")
    source.chain.sType = lib.WGPUSType_ShaderSourceWGSL
    source.code.data, source.code.length = text, len(text) - 1
    desc = ffi.new("WGPUShaderModuleDescriptor *")
    desc.nextInChain = ffi.cast("WGPUChainedStruct *", source)
    handle = _api.libf.wgpuDeviceCreateShaderModuleTrusted(device._internal, desc,
                                                            lib.WGPUShaderRuntimeChecks_None)
    if handle == ffi.NULL:
        raise RuntimeError("wgpu could not create a shader module")
    return _api.GPUShaderModule("", handle, device)


@contextmanager
def _quiet_stderr():
    """Mesa's Vulkan drivers probe for a Wayland display when the instance starts and print
    'XDG_RUNTIME_DIR is invalid' on a machine without one: harmless for compute, silenced."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@lru_cache(maxsize=1)
def _adapter():
    with _quiet_stderr():
        return _gpu().request_adapter_sync(power_preference="high-performance")


def subgroup_sizes(adapter) -> tuple[int, int]:
    """(min, max) subgroup lanes the adapter reports (wgpu-py 0.32 spells the keys
    'stackgroup_*')."""
    info = adapter.info
    lo = info.get("subgroup_min_size", info.get("stackgroup_min_size", 0))
    return lo, info.get("subgroup_max_size", info.get("stackgroup_max_size", lo))


def adapters() -> list[dict[str, Any]]:
    """Every WebGPU adapter, with what drift specializes on (`drift devices`)."""
    out = []
    with _quiet_stderr():
        found = _gpu().enumerate_adapters_sync()
    for a in found:
        info, lim = a.info, a.limits
        out.append({"api": "webgpu", "name": a.summary, "type": info.get("adapter_type", ""),
                    "max_binding": lim["max-storage-buffer-binding-size"],
                    "binding_alignment": lim["min-storage-buffer-offset-alignment"],
                    "workgroup_storage": lim["max-compute-workgroup-storage-size"],
                    "subgroup": subgroup_sizes(a),
                    "shader_f16": "shader-f16" in a.features,
                    "int8_dot": True,  # dot4I8Packed: core WGSL (lowered by naga)
                    "subgroups": "subgroup" in a.features})
    return out


class WGPURuntime(Runtime):
    def __init__(self):
        import wgpu

        self.wgpu = wgpu
        self.adapter = _adapter()
        lim = self.adapter.limits
        features = [f for f in _TIMESTAMPS if f in self.adapter.features]
        if "subgroup" in self.adapter.features:  # shuffles in the reductions (probed)
            features.append("subgroup")
        if "shader-f16" in self.adapter.features:  # prefill's GEMM on packed halves
            features.append("shader-f16")
        self.device = self.adapter.request_device_sync(
            required_features=features, required_limits={k: lim[k] for k in _LIMITS})
        stamps = [f for f in features if f in _TIMESTAMPS]
        self.timestamps = ("inside-passes" if len(stamps) == 2 else
                           "pass-per-dispatch" if stamps else None)
        if self.timestamps is None:
            self.timing_unavailable = "the adapter has no 'timestamp-query' feature"
        self.renderer = WGSLRenderer()
        self.renderer.workgroup_storage = lim["max-compute-workgroup-storage-size"]
        # halves computed on where the device has them; prefill's GEMM on them by default
        # on a GPU (lavapipe's halves are floats converted on the CPU: the tests ask for it)
        self.renderer.f16_math = "shader-f16" in features
        self.renderer.f16_gemm = (self.renderer.f16_math
                                  and self.adapter.info.get("adapter_type", "") != "CPU")
        # WGSL's dot4I8Packed is core (naga: OpSDot where the driver has integer dot
        # products, byte arithmetic else), so every adapter has it
        self.int8 = "dot4I8Packed"
        self.binding_alignment = lim["min-storage-buffer-offset-alignment"]
        self.max_binding = lim["max-storage-buffer-binding-size"]
        lo, hi = subgroup_sizes(self.adapter)
        self.subgroup_size = lo if lo == hi else 0  # a range: not known until a kernel runs
        # shuffle lanes to try, from the largest a reduction uses (probe_subgroups)
        self.subgroup_lanes = min(hi, 64) if "subgroup" in features else 0
        self._staging: dict[int, list[Any]] = {}  # free mappable buffers by size
        self._fence: Any = None

    def buffer(self, nbytes: int) -> Any:
        u = self.wgpu.BufferUsage
        return self.device.create_buffer(size=max(4, nbytes),
                                         usage=u.STORAGE | u.COPY_DST | u.COPY_SRC)

    def write(self, buf, offset, data):
        raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        if raw.nbytes % 4:  # copies are whole words
            raw = np.concatenate([raw, np.zeros(4 - raw.nbytes % 4, np.uint8)])
        self.device.queue.write_buffer(buf, offset, raw)

    def compile(self, k: KernelSource) -> Any:
        src = self.renderer.render(k)
        module = _shader_module(self.device, src)
        bt = self.wgpu.BufferBindingType
        layout = self.device.create_bind_group_layout(entries=[
            {"binding": i, "visibility": self.wgpu.ShaderStage.COMPUTE,
             "buffer": {"type": bt.storage if p.writable else bt.read_only_storage}}
            for i, p in enumerate(k.params)])
        pipeline = self.device.create_compute_pipeline(
            layout=self.device.create_pipeline_layout(bind_group_layouts=[layout]),
            compute={"module": module, "entry_point": "main"})
        return pipeline, layout

    def launch(self, kernel, params, places, groups):
        pipeline, layout = kernel
        group = self.device.create_bind_group(layout=layout, entries=[
            {"binding": i, "resource": {"buffer": buf, "offset": off, "size": size}}
            for i, (buf, off, size) in enumerate(places)])
        gx = min(groups, MAX_GROUPS)
        return pipeline, group, (gx, -(-groups // gx), 1)

    def sync(self) -> None:
        # reading a word back waits for the queue (wgpu-py 0.32's on_submitted_work_done_sync
        # fails in its cffi binding)
        if self._fence is None:
            self._fence = self.buffer(4)
        self.device.queue.read_buffer(self._fence, 0, 4)

    def timed(self, launches, writes):
        if self.timestamps is None:
            return None
        wgpu, inside = self.wgpu, self.timestamps == "inside-passes"
        n = len(launches)
        count = n + 1 if inside else 2 * n
        sets = [self.device.create_query_set(type=wgpu.QueryType.timestamp,
                                             count=min(_QUERIES_PER_SET, count - at))
                for at in range(0, count, _QUERIES_PER_SET)]

        def stamp(k):
            return sets[k // _QUERIES_PER_SET], k % _QUERIES_PER_SET

        for buf, off, data in writes:
            self.write(buf, off, data)
        t0 = time.perf_counter()
        enc = self.device.create_command_encoder()
        if inside:  # stamp k: after dispatch k - 1 (stamp 0: before the first)
            from wgpu.backends.wgpu_native.extras import write_timestamp

            cpass = enc.begin_compute_pass()
            write_timestamp(cpass, *stamp(0))
            for k, (pipeline, group, dims) in enumerate(launches):
                cpass.set_pipeline(pipeline)
                cpass.set_bind_group(0, group)
                cpass.dispatch_workgroups(*dims)
                write_timestamp(cpass, *stamp(k + 1))
            cpass.end()
        else:  # stamps 2k, 2k + 1 (one query set: its size is even): dispatch k's own pass
            for k, (pipeline, group, dims) in enumerate(launches):
                (qa, a), (_, b) = stamp(2 * k), stamp(2 * k + 1)
                cpass = enc.begin_compute_pass(timestamp_writes={
                    "query_set": qa, "beginning_of_pass_write_index": a,
                    "end_of_pass_write_index": b})
                cpass.set_pipeline(pipeline)
                cpass.set_bind_group(0, group)
                cpass.dispatch_workgroups(*dims)
                cpass.end()
        u = wgpu.BufferUsage
        set_bytes = _QUERIES_PER_SET * 8  # a multiple of 256, as resolve offsets must be
        resolved = self.device.create_buffer(size=set_bytes * len(sets),
                                             usage=u.QUERY_RESOLVE | u.COPY_SRC)
        staged = self.device.create_buffer(size=set_bytes * len(sets),
                                           usage=u.MAP_READ | u.COPY_DST)
        for i, qs in enumerate(sets):
            enc.resolve_query_set(qs, 0, qs.count, resolved, i * set_bytes)
        enc.copy_buffer_to_buffer(resolved, 0, staged, 0, set_bytes * len(sets))
        self.device.queue.submit([enc.finish()])
        t1 = time.perf_counter()
        staged.map_sync(mode=wgpu.MapMode.READ)
        raw = np.frombuffer(staged.read_mapped(), dtype=np.uint64).copy()
        staged.unmap()
        wall = time.perf_counter() - t0
        ticks = np.concatenate([raw[i * _QUERIES_PER_SET : i * _QUERIES_PER_SET + qs.count]
                                for i, qs in enumerate(sets)]).astype(np.float64)
        ns = ticks * self._timestamp_period()
        if inside:
            seconds, span = np.diff(ns) * 1e-9, (ns[-1] - ns[0]) * 1e-9
            how = "timestamps between the dispatches of one compute pass"
        else:
            seconds = (ns[1::2] - ns[0::2]) * 1e-9
            span = (ns[-1] - ns[0]) * 1e-9
            how = ("each dispatch in a compute pass of its own, its start and end stamped "
                   "(no 'timestamp-query-inside-passes')")
        return Timing([float(x) for x in seconds], float(span), t1 - t0, wall, how)

    def _timestamp_period(self) -> float:
        """Nanoseconds per timestamp tick (wgpu-native resolves raw ticks)."""
        try:
            from wgpu.backends.wgpu_native._api import libf

            return float(libf.wgpuQueueGetTimestampPeriod(self.device.queue._internal))
        except Exception:  # another wgpu build: WebGPU's own unit, nanoseconds
            return 1.0

    def run(self, launches, writes, reads):
        return self.collect(self.submit(launches, writes, reads))

    def submit(self, launches, writes, reads):
        """Writes, one compute pass of every launch and the reads' copies into mappable
        buffers, in one command buffer; queued with its submission index and the copies'
        maps requested, nothing waited for."""
        for buf, off, data in writes:
            self.write(buf, off, data)
        enc = self.device.create_command_encoder()
        if launches:
            cpass = enc.begin_compute_pass()
            _encode(cpass, launches)
            cpass.end()
        staged = []
        for buf, off, nbytes in reads:
            st = self._staging_buffer(nbytes)
            enc.copy_buffer_to_buffer(buf, off, st, 0, nbytes)
            staged.append(st)
        return _Submission(self, enc.finish(), staged)

    def collect(self, ticket):
        return ticket.wait()

    def _staging_buffer(self, nbytes: int) -> Any:
        """A mappable buffer of `nbytes` that no submission in flight reads into."""
        free = self._staging.setdefault(nbytes, [])
        if free:
            return free.pop()
        u = self.wgpu.BufferUsage
        return self.device.create_buffer(size=nbytes, usage=u.MAP_READ | u.COPY_DST)


# wgpu-native's functions the runtime calls itself, past wgpu-py's methods (wgpu 0.32's C
# API, the version scripts/constraints.txt pins): a wgpu without them is not used
_NATIVE_CALLS = ("wgpuQueueSubmitForIndex", "wgpuDevicePoll", "wgpuBufferMapAsync",
                 "wgpuBufferGetConstMappedRange", "wgpuBufferUnmap",
                 "wgpuComputePassEncoderSetPipeline", "wgpuComputePassEncoderSetBindGroup",
                 "wgpuComputePassEncoderDispatchWorkgroups")


def _has_native_calls() -> bool:
    from wgpu.backends.wgpu_native._api import lib

    return all(hasattr(lib, name) for name in _NATIVE_CALLS)


def _encode(cpass: Any, launches: list) -> None:
    """Each launch's pipeline, bind group and dispatch into compute pass `cpass`, through
    wgpu-native's functions themselves: wgpu-py's methods (argument checks, an error scope
    around each call) cost about 10 us a launch of the host's time where these cost 4, and a
    decode step is hundreds of launches (an error here invalidates the encoder, and wgpu-py
    reports it when the command buffer is finished)."""
    from wgpu.backends.wgpu_native._api import ffi, lib

    pass_, null = cpass._internal, ffi.NULL
    set_pipeline = lib.wgpuComputePassEncoderSetPipeline
    set_group = lib.wgpuComputePassEncoderSetBindGroup
    dispatch = lib.wgpuComputePassEncoderDispatchWorkgroups
    for pipeline, group, (x, y, z) in launches:
        set_pipeline(pass_, pipeline._internal)
        set_group(pass_, 0, group._internal, 0, null)
        dispatch(pass_, x, y, z)


# Staging buffers' map requests, by key: wgpu-native's callback records each one's outcome
# here. One callback serves every request and lives as long as the module, so a request
# whose submission is never waited for (a decode step queued for an answer that ended)
# cannot call back into freed memory.
_MAP_STATUS: dict[int, int] = {}
_MAP_KEYS = itertools.count(1)


@lru_cache(maxsize=1)
def _map_callback() -> Any:
    from wgpu.backends.wgpu_native._api import ffi

    @ffi.callback("void(WGPUMapAsyncStatus, WGPUStringView, void *, void *)")
    def mapped(status, _message, key, _unused):
        _MAP_STATUS[int(ffi.cast("uintptr_t", key))] = status

    return mapped


class _Submission:
    """A command buffer queued by `WGPURuntime.submit`, its staging buffers' maps requested
    through wgpu-native directly: wgpu-py's `map_sync` waits on a thread that polls until
    every submission is done, where a decode step queued behind this one must keep running
    (`wgpuDevicePoll` given this submission's index waits for it alone)."""

    def __init__(self, rt: WGPURuntime, commands: Any, staged: list[Any]):
        from wgpu.backends.wgpu_native._api import ffi, lib, libf

        self.rt, self.staged, self.ffi, self.libf = rt, staged, ffi, libf
        self.index = libf.wgpuQueueSubmitForIndex(
            rt.device.queue._internal, 1, ffi.new("WGPUCommandBuffer[]", [commands._internal]))
        self.keys = [next(_MAP_KEYS) for _ in staged]
        for key, st in zip(self.keys, staged):
            info = ffi.new("WGPUBufferMapCallbackInfo *")
            info.mode, info.callback = lib.WGPUCallbackMode_AllowProcessEvents, _map_callback()
            info.userdata1 = ffi.cast("void *", key)
            libf.wgpuBufferMapAsync(st._internal, lib.WGPUMapMode_Read, 0, st.size, info[0])
        self.ok = lib.WGPUMapAsyncStatus_Success

    def wait(self) -> list[np.ndarray]:
        ffi, libf, device = self.ffi, self.libf, self.rt.device._internal
        libf.wgpuDevicePoll(device, True, ffi.new("WGPUSubmissionIndex *", self.index))
        while any(k not in _MAP_STATUS for k in self.keys):  # called back from a poll
            libf.wgpuDevicePoll(device, True, ffi.NULL)
        out = []
        for st, key in zip(self.staged, self.keys):
            status = _MAP_STATUS.pop(key)
            if status != self.ok:
                raise RuntimeError(f"wgpu could not map a staging buffer (status {status})")
            ptr = libf.wgpuBufferGetConstMappedRange(st._internal, 0, st.size)
            out.append(np.frombuffer(ffi.buffer(ptr, st.size), dtype=np.uint8).copy())
            libf.wgpuBufferUnmap(st._internal)
            self.rt._staging[st.size].append(st)
        return out


class WebGPUBackend(GPUBackend):
    name = "webgpu"

    @classmethod
    def available(cls) -> bool:
        try:
            return _adapter() is not None and _has_native_calls()
        except Exception:  # no wgpu, no driver, no adapter
            return False

    @classmethod
    def emulated(cls) -> bool:
        return _adapter().info.get("adapter_type", "") == "CPU"

    def make_runtime(self) -> Runtime:
        return WGPURuntime()

    def device(self) -> DeviceInfo:
        a = self.rt.adapter
        kind = "cpu" if a.info.get("adapter_type", "") == "CPU" else "gpu"
        return DeviceInfo("webgpu", a.summary, kind, 0, 0,
                          {"max_binding": self.rt.max_binding,
                           "features": sorted(str(f) for f in a.features)})


BACKEND = WebGPUBackend
