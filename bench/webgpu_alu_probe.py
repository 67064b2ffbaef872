"""What the adapter's shader ALUs do through WGSL (naga, then the driver's compiler): the
throughput of long chains of f32 fmas, packed-half fmas (`vec2<f16>`, NVIDIA's HFMA2) and
`dot4I8Packed` (a hardware int8 dot product, or naga's byte-by-byte polyfill where the
driver lacks one), and of that polyfill written out, so a prefill GEMM's arithmetic can be
chosen from measured rates, not assumed ones.

Each thread runs ITERS iterations of CHAINS independent accumulators (dependent chains: no
op can be hoisted), a grid of GROUPS workgroups of 256; the operands come from a buffer and
the sums go back to one (nothing folds away); modules made as drift's are, without naga's
run-time checks; the loop-variant operand changes sign an iteration (a multiplier that
decays would reach f16's subnormals). Timed over a few dispatches in one submission
(medians), reported as operations a second (a multiply-add is 2, a 4-wide dot product 8) and
per SM per clock at `--clock` GHz over `--sms` multiprocessors (the H200's 1.98 and 132).

    python bench/webgpu_alu_probe.py [--iters 4096] [--groups 2112] [--reps 5]
"""

from __future__ import annotations

import argparse

import numpy as np
from wgsl_timing import dispatch_seconds  # (bench/, the script's folder)

CHAINS = 16
# name: (ops an accumulator update counts, WGSL enables, accumulator type, its zero, one
# update of accumulator i from the loop-variant operand `b`)
VARIANTS = {
    "f32 fma": (2, "", "f32", "0.0", "acc{i} = fma(acc{i}, bf, w{i}f);"),
    "f16x2 fma (HFMA2)": (4, "enable f16;", "vec2<f16>", "vec2<f16>(0.0h)",
                          "acc{i} = fma(acc{i}, bh, w{i}h);"),
    "f16x2 a * b + c": (4, "enable f16;", "vec2<f16>", "vec2<f16>(0.0h)",
                        "acc{i} = acc{i} * bh + w{i}h;"),
    "f16 fma (scalar)": (2, "enable f16;", "f16", "0.0h", "acc{i} = fma(acc{i}, bh.x, w{i}h.x);"),
    "dot4I8Packed": (8, "", "i32", "0", "acc{i} = acc{i} + dot4I8Packed(w{i}, b);"),
    "dot4I8Packed polyfill": (8, "", "i32", "0",
                              "acc{i} = acc{i} + dot(unpack4xI8(w{i}), unpack4xI8(b));"),
}


def source(enables: str, acc_ty: str, zero: str, update: str, iters: int) -> str:
    ws = "\n".join(f"    let w{i} = src[{i}u + lid % 7u];" for i in range(CHAINS))
    wf = "\n".join(f"    let w{i}f = f32(w{i} & 255u) * 0.001;" for i in range(CHAINS))
    wh = "\n".join(f"    let w{i}h = vec2<f16>(f16(w{i} & 15u) * 0.01h, f16(w{i} >> 28u));"
                   for i in range(CHAINS))
    if "bh" not in update:
        wh = ""
    if "w{i}f" not in update:
        wf = ""
    accs = "\n".join(f"    var acc{i} = {acc_ty}({zero});" for i in range(CHAINS))
    ups = "\n".join("        " + update.format(i=i) for i in range(CHAINS))
    total = " + ".join(f"acc{i}" for i in range(CHAINS))
    if acc_ty == "f32":  # the loop-variant operand, and its change an iteration
        operand, step = "    var bf = f32(b & 255u) * 0.0001;", "        bf = -bf;"
    elif acc_ty == "i32":
        operand, step = "", "        b = b + 16843009u;"
    else:
        operand = "    var bh = vec2<f16>(f16(b & 7u) * 0.001h, f16(b >> 29u) * 0.001h);"
        step = "        bh = -bh;"
    out = {"f32": "total", "i32": "f32(total)", "vec2<f16>": "f32(total.x + total.y)",
           "f16": "f32(total)"}[acc_ty]
    return f"""{enables}
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {{
{ws}
{wf}
{wh}
{accs}
    var b = src[32u + lid % 5u];
{operand}
    for (var it = 0u; it < {iters}u; it++) {{
{ups}
{step}
    }}
    let total = {total};
    dst[gid.x] = {out};
}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=4096)
    ap.add_argument("--groups", type=int, default=2112, help="workgroups of 256 (16 per SM)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--clock", type=float, default=1.98, help="GHz, for ops per SM per clock")
    ap.add_argument("--sms", type=int, default=132)
    a = ap.parse_args()
    import wgpu

    from drift.backends.webgpu import _shader_module as module  # naga's checks off, as drift's

    adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    print(adapter.summary)
    feats = [f for f in ("shader-f16",) if f in adapter.features]
    dev = adapter.request_device_sync(required_features=feats)
    u = wgpu.BufferUsage
    rng = np.random.default_rng(0)
    src = dev.create_buffer_with_data(data=rng.integers(0, 2**32, 64, dtype=np.uint32).tobytes(),
                                      usage=u.STORAGE)
    threads = a.groups * 256
    dst = dev.create_buffer(size=threads * 4, usage=u.STORAGE | u.COPY_SRC)
    print("| variant | ms a dispatch | T ops/s | ops / SM / clock |")
    print("| --- | --- | --- | --- |")
    for name, (ops, enables, acc_ty, zero, update) in VARIANTS.items():
        if "f16" in enables and "shader-f16" not in feats:
            print(f"| {name} | no shader-f16 | | |")
            continue
        try:
            mod = module(dev, source(enables, acc_ty, zero, update, a.iters))
            pipe = dev.create_compute_pipeline(layout="auto",
                                               compute={"module": mod, "entry_point": "main"})
        except Exception as e:  # noqa: BLE001 (a probe: report what the compiler says)
            print(f"| {name} | does not compile: {' '.join(str(e).split())[:200]} | | |")
            continue
        group = dev.create_bind_group(layout=pipe.get_bind_group_layout(0), entries=[
            {"binding": 0, "resource": {"buffer": src}},
            {"binding": 1, "resource": {"buffer": dst}}])

        secs = dispatch_seconds(dev, pipe, group, (a.groups, 1, 1), dst, a.reps)
        total = threads * a.iters * CHAINS * ops
        per_clock = total / secs / (a.sms * a.clock * 1e9)
        print(f"| {name} | {secs * 1e3:.3f} | {total / secs / 1e12:.1f} | {per_clock:.0f} |")


if __name__ == "__main__":
    main()
