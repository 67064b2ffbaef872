"""Would prefill's GEMM run faster on int8 dot products than on packed halves through WGSL?
A standalone kernel of the structure an int8 GEMM in drift would have (llama.cpp's MMQ
without tensor cores): x quantized to int8 per block of 32 along K (one level, a scale and
the block's integer sum), Q4_0-like weights (nibbles 0..15, w = d (q - 8), an f32 scale a
block), one workgroup a TM x TN tile of the output, each step staging BLOCKS blocks of K of
x's int8 words and the weights' nibbles widened to int8 words in workgroup memory (runs of
four rows / columns as vec4<u32>), every thread an RM x RN register tile of i32 sums of
`dot4I8Packed`, folded into f32 once a block: acc += f32(isum - 8 xsum) * dx * dw.

The module is made as drift's are, without naga's run-time checks (session 23's call 4 ran
it with them). Checked against float64 numpy on the same integers and scales, timed over a
few dispatches in one submission (medians), against the half GEMM's figures in BENCHMARKS.md
(the 8B's shapes at 512 rows).

    python bench/webgpu_int8_gemm_probe.py [--shapes 4096x4096,14336x4096,4096x14336]
        [--tiles 64x128x1x8x8,...] [--rows 512] [--reps 5]
"""

from __future__ import annotations

import argparse

import numpy as np
from wgsl_timing import dispatch_seconds, submission_seconds  # (bench/)


def source(M: int, N: int, K: int, TM: int, TN: int, BLOCKS: int, RM: int, RN: int) -> str:
    TX, TY = TN // RN, TM // RM
    wg = TX * TY
    KW = 8 * BLOCKS  # x's int8 words along K a step
    XS, WS = TM // 4 + 1, TN // 4 + 1  # padded rows of the staged runs
    KB = K // 32
    xw = TM * KW // wg  # x words each thread stages a step
    ww = TN * 4 * BLOCKS // wg  # weight nibble words each thread stages a step
    assert xw * wg == TM * KW and ww * wg == TN * 4 * BLOCKS, (TM, TN, BLOCKS, wg)
    L = []
    L.append(f"""
@group(0) @binding(0) var<storage, read> xq: array<u32>;     // (M, K/4) int8 words
@group(0) @binding(1) var<storage, read> xd: array<f32>;     // (M, K/32) scale
@group(0) @binding(2) var<storage, read> xs8: array<f32>;    // (M, K/32) 8 * sum of xq
@group(0) @binding(3) var<storage, read> wq: array<u32>;     // (N, K/8) nibble words
@group(0) @binding(4) var<storage, read> wd: array<f32>;     // (N, K/32) scale
@group(0) @binding(5) var<storage, read_write> y: array<f32>;  // (M, N)
var<workgroup> xt: array<vec4<u32>, {KW * XS}>;
var<workgroup> wt: array<vec4<u32>, {KW * WS}>;
var<workgroup> xdt: array<f32, {BLOCKS * TM}>;
var<workgroup> xst: array<f32, {BLOCKS * TM}>;
var<workgroup> wdt: array<f32, {BLOCKS * TN}>;
@compute @workgroup_size({wg})
fn main(@builtin(workgroup_id) gid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {{
    let n0 = gid.x * {TN}u;
    let m0 = gid.y * {TM}u;
    let tx = lid % {TX}u;
    let ty = lid / {TX}u;
    var acc: array<f32, {RM * RN}>;
    var isum: array<i32, {RM * RN}>;
    for (var kb = 0u; kb < {KB}u; kb += {BLOCKS}u) {{""")
    for u in range(xw):  # x: consecutive threads along a row's words
        L.append(f"""        {{ let at = lid + {u * wg}u; let m = at / {KW}u; let kw = at % {KW}u;
          let v = xq[min(m0 + m, {M - 1}u) * {K // 4}u + kb * 8u + kw];
          xt[kw * {XS}u + m / 4u][m % 4u] = v; }}""")
    for u in range(ww):  # weights: a column's four nibble words of a block, widened
        L.append(f"""        {{ let at = lid + {u * wg}u; let n = at / {4 * BLOCKS}u;
          let j = at % {4 * BLOCKS}u; let b = j / 4u; let jj = j % 4u;
          let q = wq[min(n0 + n, {N - 1}u) * {K // 8}u + kb * 4u + j];
          wt[(b * 8u + jj) * {WS}u + n / 4u][n % 4u] = q & 252645135u;
          wt[(b * 8u + 4u + jj) * {WS}u + n / 4u][n % 4u] = (q >> 4u) & 252645135u; }}""")
    L.append(f"""        for (var i = lid; i < {BLOCKS * TM}u; i += {wg}u) {{
            let b = i / {TM}u; let m = min(m0 + i % {TM}u, {M - 1}u);
            xdt[i] = xd[m * {KB}u + kb + b]; xst[i] = xs8[m * {KB}u + kb + b]; }}
        for (var i = lid; i < {BLOCKS * TN}u; i += {wg}u) {{
            let b = i / {TN}u; let n = min(n0 + i % {TN}u, {N - 1}u);
            wdt[i] = wd[n * {KB}u + kb + b]; }}
        workgroupBarrier();""")
    for b in range(BLOCKS):
        L.append(f"        for (var kw = {8 * b}u; kw < {8 * b + 8}u; kw++) {{")
        L += [f"            let a{j} = xt[kw * {XS}u + ty + {j * TY}u];" for j in range(RM // 4)]
        L += [f"            let b{j} = wt[kw * {WS}u + tx + {j * TX}u];" for j in range(RN // 4)]
        for a in range(RM):
            for c in range(RN):
                e = a * RN + c
                L.append(f"            isum[{e}] = isum[{e}] + dot4I8Packed(a{a // 4}[{a % 4}], "
                         f"b{c // 4}[{c % 4}]);")
        L.append("        }")
        for a in range(RM):
            row = f"{b * TM}u + (ty + {a // 4 * TY}u) * 4u + {a % 4}u"
            L.append(f"        {{ let dx = xdt[{row}]; let sx = xst[{row}];")
            for c in range(RN):
                col = f"{b * TN}u + (tx + {c // 4 * TX}u) * 4u + {c % 4}u"
                e = a * RN + c
                L.append(f"          acc[{e}] = fma(f32(isum[{e}]) - sx, dx * wdt[{col}], "
                         f"acc[{e}]); isum[{e}] = 0;")
            L.append("        }")
    L.append("        workgroupBarrier();\n    }")
    for a in range(RM):
        for c in range(RN):
            row = f"m0 + (ty + {a // 4 * TY}u) * 4u + {a % 4}u"
            col = f"n0 + (tx + {c // 4 * TX}u) * 4u + {c % 4}u"
            L.append(f"    if ({row} < {M}u && {col} < {N}u) {{ y[({row}) * {N}u + {col}] = "
                     f"acc[{a * RN + c}]; }}")
    L.append("}")
    return "\n".join(L)


def data(M: int, N: int, K: int, rng):
    xq = rng.integers(-127, 128, (M, K), dtype=np.int8)
    xd = rng.uniform(0.001, 0.01, (M, K // 32)).astype(np.float32)
    wq = rng.integers(0, 16, (N, K), dtype=np.uint8)
    wd = rng.uniform(0.001, 0.01, (N, K // 32)).astype(np.float32)
    # nibble words: word j of a block holds elements 4j..4j+3 (low) and 16+4j.. (high)
    blk = wq.reshape(N, K // 32, 2, 16)
    packed = (blk[:, :, 0, :] | (blk[:, :, 1, :] << 4)).reshape(N, K // 2)
    xs8 = (8 * xq.reshape(M, K // 32, 32).astype(np.int32).sum(-1)).astype(np.float32)
    ref = np.einsum("mbk,nbk,mb,nb->mn", xq.reshape(M, K // 32, 32).astype(np.float64),
                    wq.reshape(N, K // 32, 32).astype(np.float64) - 8, xd, wd,
                    optimize=True) if M * N * K <= 512 * 4096 * 4096 else None
    return (xq.view(np.uint32), xd, xs8, packed.view(np.uint32), wd), ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="4096x4096,14336x4096,4096x14336", help="NxK,..")
    ap.add_argument("--tiles", default="64x128x1x8x8,64x128x2x8x8,64x64x1x8x4,64x64x2x8x4,"
                    "128x128x1x8x8", help="TMxTNxBLOCKSxRMxRN,..")
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    import wgpu

    from drift.backends.webgpu import _shader_module as module  # naga's checks off, as drift's

    adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    print(adapter.summary)
    lim = adapter.limits
    dev = adapter.request_device_sync(required_limits={
        k: lim[k] for k in ("max-storage-buffer-binding-size", "max-buffer-size",
                            "max-compute-workgroup-storage-size")})
    u = wgpu.BufferUsage
    rng = np.random.default_rng(0)
    M = a.rows
    print("| N x K | tile | us | TFLOP/s | error |")
    print("| --- | --- | --- | --- | --- |")
    for shape in a.shapes.split(","):
        N, K = map(int, shape.split("x"))
        arrays, ref = data(M, N, K, rng)
        bufs = [dev.create_buffer_with_data(data=np.ascontiguousarray(v).tobytes(),
                                            usage=u.STORAGE) for v in arrays]
        out = dev.create_buffer(size=M * N * 4, usage=u.STORAGE | u.COPY_SRC)
        for tile in a.tiles.split(","):
            TM, TN, BLOCKS, RM, RN = map(int, tile.split("x"))
            try:
                mod = module(dev, source(M, N, K, TM, TN, BLOCKS, RM, RN))
                pipe = dev.create_compute_pipeline(
                    layout="auto", compute={"module": mod, "entry_point": "main"})
            except Exception as e:  # noqa: BLE001 (a probe: report what the compiler says)
                print(f"| {shape} | {tile} | does not compile: "
                      f"{' '.join(str(e).split())[:200]} | | |")
                continue
            group = dev.create_bind_group(layout=pipe.get_bind_group_layout(0), entries=[
                {"binding": i, "resource": {"buffer": b}} for i, b in enumerate([*bufs, out])])

            grid = (-(-N // TN), -(-M // TM), 1)
            submission_seconds(dev, pipe, group, grid, out, 1)  # compiled, touched: checked
            err = ""
            if ref is not None:
                got = np.frombuffer(dev.queue.read_buffer(out), np.float32).reshape(M, N)
                err = f"{np.abs(got - ref).max() / np.abs(ref).max():.1e}"
            secs = dispatch_seconds(dev, pipe, group, grid, out, a.reps)
            print(f"| {shape} | {tile} | {secs * 1e6:.1f} | {2 * M * N * K / secs / 1e12:.1f} "
                  f"| {err} |")


if __name__ == "__main__":
    main()
