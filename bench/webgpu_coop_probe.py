"""Whether WGSL's cooperative matrices (wgpu's experimental `cooperative-matrix` feature,
naga's `enable wgpu_cooperative_matrix;`) reach the adapter's matrix units: a plain GEMM
C = A B (row-major, M = N = K = 4096 unless given) per matrix type, each subgroup of 32
lanes one 32 x 32 block of C as 4 x 4 tiles, A and B read from storage; checked against
numpy in float64, timed over a few dispatches in one submission.

    python bench/webgpu_coop_probe.py [--size 4096] [--reps 5]
"""

from __future__ import annotations

import argparse

import numpy as np
from wgsl_timing import dispatch_seconds, submission_seconds  # (bench/)

VARIANTS = {  # name: (tile, operand type, accumulator type, enables)
    "f32 8x8": (8, "f32", "f32", "enable wgpu_cooperative_matrix;"),
    "f16 16x16 -> f32": (16, "f16", "f32", "enable f16;\nenable wgpu_cooperative_matrix;"),
    "f16 16x16 -> f16": (16, "f16", "f16", "enable f16;\nenable wgpu_cooperative_matrix;"),
    "f16 8x8 -> f32": (8, "f16", "f32", "enable f16;\nenable wgpu_cooperative_matrix;"),
}


def source(t: int, ab: str, acc: str, enables: str, M: int, N: int, K: int) -> str:
    per = 32 // t  # tiles along each side of a subgroup's 32 x 32 block
    tiles = [(i, j) for i in range(per) for j in range(per)]
    body = [f"var c{i}{j} = coop_mat{t}x{t}<{acc}, C>();" for i, j in tiles]
    body += [f"for (var k = 0u; k < {K}u; k += {t}u) {{"]
    body += [f"  let a{i} = coopLoadT<coop_mat{t}x{t}<{ab}, A>>(&A[(r0 + {i * t}u) * {K}u + k], {K}u);"
             for i in range(per)]
    body += [f"  let b{j} = coopLoadT<coop_mat{t}x{t}<{ab}, B>>(&B[k * {N}u + c0 + {j * t}u], {N}u);"
             for j in range(per)]
    body += [f"  c{i}{j} = coopMultiplyAdd(a{i}, b{j}, c{i}{j});" for i, j in tiles]
    body += ["}"]
    body += [f"coopStoreT(c{i}{j}, &C[(r0 + {i * t}u) * {N}u + c0 + {j * t}u], {N}u);"
             for i, j in tiles]
    return f"""{enables}
@group(0) @binding(0) var<storage, read> A: array<{ab}>;
@group(0) @binding(1) var<storage, read> B: array<{ab}>;
@group(0) @binding(2) var<storage, read_write> C: array<{acc}>;
@compute @workgroup_size(32)
fn main(@builtin(workgroup_id) wg: vec3<u32>) {{
    let r0 = wg.y * 32u;
    let c0 = wg.x * 32u;
    {chr(10).join('    ' + b for b in body)}
}}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    import wgpu

    adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    print(adapter.summary)
    want = [f for f in ("cooperative-matrix", "shader-f16", "subgroup") if f in adapter.features]
    print("features:", want)
    if "cooperative-matrix" not in want:
        print("no cooperative-matrix feature on this adapter")
        return
    try:
        dev = adapter.request_device_sync(required_features=want)
    except RuntimeError as e:  # wgpu-native 0.32: experimental features cannot be enabled
        print("no device with", want, "-", " ".join(str(e).split())[:300])
        return
    M = N = K = a.size
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((M, K)), rng.standard_normal((K, N))
    u = wgpu.BufferUsage
    for name, (t, ab, acc, enables) in VARIANTS.items():
        dt = np.float16 if ab == "f16" else np.float32
        Aq, Bq = A.astype(dt), B.astype(dt)
        try:
            mod = dev.create_shader_module(code=source(t, ab, acc, enables, M, N, K))
            pipe = dev.create_compute_pipeline(layout="auto",
                                               compute={"module": mod, "entry_point": "main"})
        except Exception as e:  # noqa: BLE001 (a probe: report what the driver says)
            print(f"{name}: does not compile: {str(e).splitlines()[0][:300]}")
            continue
        bufs = [dev.create_buffer_with_data(data=Aq.tobytes(), usage=u.STORAGE),
                dev.create_buffer_with_data(data=Bq.tobytes(), usage=u.STORAGE),
                dev.create_buffer(size=M * N * (2 if acc == "f16" else 4),
                                  usage=u.STORAGE | u.COPY_SRC)]
        group = dev.create_bind_group(layout=pipe.get_bind_group_layout(0), entries=[
            {"binding": i, "resource": {"buffer": b}} for i, b in enumerate(bufs)])

        grid = (N // 32, M // 32, 1)
        submission_seconds(dev, pipe, group, grid, bufs[2], 1)
        got = np.frombuffer(dev.queue.read_buffer(bufs[2]),
                            dtype=np.float16 if acc == "f16" else np.float32).reshape(M, N)
        ref = Aq.astype(np.float64) @ Bq.astype(np.float64)
        err = float(np.abs(got - ref).max() / np.abs(ref).max())
        secs = dispatch_seconds(dev, pipe, group, grid, bufs[2], a.reps)
        print(f"{name}: rel err {err:.2e}, {secs * 1e3:.3f} ms, "
              f"{2 * M * N * K / secs / 1e12:.1f} TFLOP/s")


if __name__ == "__main__":
    main()
