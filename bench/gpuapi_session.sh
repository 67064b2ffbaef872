#!/usr/bin/env bash
# The portable GPU APIs on the H200 machine (issue 9): NVIDIA's Vulkan driver under wgpu and
# NVIDIA's OpenCL ICD under pyopencl, next to the Triton backend, on drift make-random files.
# ../shared/GPU-APIS.md says how the drivers are reached there.
# run(command="bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])             # bench
# run(command="CHUNK_ONLY=1 bash bench/gpuapi_session.sh", carry=[".chunkN"])      # N = 1..5
# run(command="CHECK=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl", ".chunk6"])
#   the reference models (six 58 MiB chunks) greedy on cpu, cuda, webgpu and opencl
# run(command="KERNELS=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   the matmul kernels alone on Llama-3.1-8B's shapes, and their tile variants
# run(command="SPEED=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   drift bench -p 512 -n 64 -r 2 on both models and APIs, their decode profiles, the GEMV
#   alone on the 8B's shapes: about 4 minutes
# run(command="PROFILE=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   where a decode token's time goes (bench/gpuapi_profile.py, device timestamps), both
#   models on both APIs, about 4 minutes
# run(command="INT8=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   the int8-x GEMV against f32 x: greedy check of the 1B, drift bench both ways on both
#   models and APIs, the GEMVs alone, 8B decode profiles: about 8 minutes
# run(command="MICRO=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   an OpenCL launch's host cost each way (bench/opencl_enqueue.py), and decode attention
#   alone on the 8B's heads, one workgroup against split-K variants, both APIs
#   (bench/gpuapi_attention.py): about a minute
# (session 17's call 1, the 16-byte GEMV loads at tile 1, was bench/gpuapi_kernels.py
#  --shapes 8b --types Q4_0 --rows 1 --reps 20 --variants when tile 1 was the default)
# run(command="LANES=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   the GEMV with rows on lanes (quant planes tiled by 32 rows; the kernel variants ran at
#   32, the default then, and run at the default now) against a row's threads on
#   consecutive words (kernel_tile_rows=1): the matmul kernels' variants (decode and
#   prefill, f32 and int8 x), drift bench both ways (and int8 x) on both models and APIs,
#   the 1B greedy check, the 8B OpenCL profile, the OpenCL release bisect: about 9 minutes
# run(command="TILES=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   the quant planes' tile (8, 16, 32 rows: the GEMV's rows on lanes) against one row
#   (a row's threads on consecutive words): the matmul kernels alone, each setting in a
#   fresh process (OpenCL), drift bench on both models (OpenCL with f32 and int8 x, WebGPU
#   f32), then the OpenCL release bisect: about 8 minutes
# run(command="FINAL=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   the committed defaults: the 1B greedy check, drift bench -r 3 on both models and APIs,
#   the 8B decode profile on both APIs: about 5 minutes
# run(command="FINAL2=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   session 21: the committed defaults, the 1B greedy check over a 60-token prompt, drift
#   bench -r 3 greedy and --sample on both models and APIs: about 5 minutes
# run(command="AHEAD=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   session 19: decode ahead (each step queued before the last token is read) against
#   DRIFT_DECODE_AHEAD=0, the prefill GEMM on f16 tensor cores against tf32, both models on
#   both APIs and the Triton backend under the same tg loop; the 1B greedy check over a
#   200-token prompt (the GEMMs), the 8B's prefill matmuls checked: about 9 minutes
# run(command="ENCODE=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl", ".base"])
#   session 19: WebGPU's launches encoded through wgpu-native's functions against wgpu-py's
#   methods (.base/webgpu__init__.py: the backend before, run from a copy of the tree),
#   alternating, both models; then the committed defaults on opencl and cuda, the 1B greedy
#   check, the 8B's WebGPU profile, the adapters' features: about 7 minutes
# run(command="WTILE=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   session 19: the f32 tiled GEMM on WebGPU (no matrix units there), its tiles and the next
#   step's loads in registers (GEMM_PREFETCH): the kernels alone at each, then drift bench on
#   both models at the default and at (32, 64, 32, 4, 8) with prefetch: about 4 minutes
# run(command="SAMPLE=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   session 20: sampled decode (drift run's defaults) drawn on the device and decoding ahead,
#   against DRIFT_DECODE_AHEAD=0 (the host draws, a step at a time) and greedy, both models
#   on both APIs; the device's draw against the host's on the 1B: about 8 minutes
# run(command="SAMPLE2=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   SAMPLE again after a change, with the 1B's decode profile (--sample) on both APIs
# run(command="VEC4=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   session 21: the f32 GEMM (WebGPU's prefill) with its tiles as f32x4 (GEMM_VEC4), at
#   several tiles: the kernels alone (and on OpenCL with GEMM_MMA='never'), the 1B end to end
# run(command="VEC4B=1 SETTINGS='GEMM_VEC4=False;GEMM_VEC4=True' bash bench/gpuapi_session.sh", ...)
#   the 1B and (twice, alternating) the 8B end to end at each setting, then the 1B's greedy
#   check against the cpu backend at the tree's defaults
# run(command="VEC4C=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   the tile choice then (GEMM_TILES by GEMM_MIN_GROUPS, now GEMM_MIN_THREADS) on the 1B:
#   its matmuls alone at each tile, the 8B's with and without prefetch, the 1B end to end
#   three times alternating
# run(command="VEC4D=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   GEMM_MAX_ACC (32: fused gate/up on the narrow tile) against 64 and one tile everywhere,
#   both models end to end (the 8B twice, alternating), the 1B greedy check
# run(command="VEC4E=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   128-thread f32x4 tiles: the 8B's kernels alone at each, both models end to end with
#   them as GEMM_TILES' first (the 8B twice, alternating): about 6 minutes. (Run in session
#   21 with GEMM_MIN_GROUPS=512, which GEMM_MIN_THREADS' default now is for 128 threads, and
#   the (32, 64) tile as the default then)
# run(command="VEC4F=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   the committed tile choice: the 8B's kernels alone, the 1B greedy check, drift bench -r 3
#   on both models (WebGPU): about 3 minutes
# run(command="WTILE2=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   WTILE's short form (three settings of the kernels, the 1B end to end): about 2 minutes
# run(command="COOP=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   session 19: WGSL's cooperative matrices on NVIDIA's Vulkan (bench/webgpu_coop_probe.py)
# run(command="CHECKS=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   session 19: WGSL kernels without naga's run-time checks (the default) against
#   DRIFT_WGSL_CHECKS=1, alternating, both models; the WebGPU matmul kernels both ways and
#   the tiled GEMM's tiles: about 7 minutes
# run(command="NORM=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   the 8B's decode with the norm's workgroup at 256 (the default), 512 and 1024 threads on
#   OpenCL, WebGPU at the default, and the OpenCL profile: about 3 minutes
# run(command="HALF=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   session 22: prefill's GEMM on packed halves (GEMM_HALF, WebGPU's shader-f16) against the
#   f32 GEMM: the 8B's kernels alone at several tiles, the 1B greedy check over a 60-token
#   prompt, both models end to end both ways (alternating); then a fresh process's load and
#   time to first token with the drivers' shader caches empty and then warm: about 9 minutes
# run(command="HALF2=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   HALF's follow-up: the half GEMM's next-step loads in registers (GEMM_PREFETCH) and
#   wider tiles, the kernels alone (prefetch first this time), both models end to end with
#   and without prefetch (alternating): about 6 minutes
# run(command="HALF3=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   the half GEMM's own tile list (GEMM_HALF_TILES: 64 x 128 first, on grids of 32 768
#   threads, 64 accumulators) against HALF's choice (the f32 GEMM's list): the 1B greedy
#   check, both models end to end both ways (alternating): about 5 minutes
# run(command="HALF4=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   more half-GEMM tiles alone (128 x 128 of 256 threads, K steps of 16, 64 x 64 at 32
#   accumulators), then the 8B end to end with fused gate/up on (64, 64, 32, 8, 4) against
#   the default (32, 128, 32, 4, 8), alternating: about 4 minutes
# run(command="FINAL3=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   session 22's committed defaults: the 1B greedy check over a 60-token prompt, drift bench
#   -r 3 on both models and APIs, the 1B on WebGPU against HALF3's tile list (alternating),
#   the 8B greedy check (cuda and webgpu against cpu): about 7 minutes
# run(command="HALF5=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   the half GEMM's staged tiles in two buffers (one barrier a step) against one: the 8B's
#   kernels alone both ways (checked), both models end to end (alternating): about 5 minutes
# run(command="MEMO=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   a fresh process's first token with each node's kernels rendered once for all the nodes
#   alike (GPUBackend.render_memo) against rendering each: a first run warms the drivers'
#   shader caches, then the two alternate, both models and APIs: about 4 minutes
#   (MEMO_MODELS=llama-3.1-8b-Q4_0 MEMO_APIS=webgpu MEMO_8B_PAIRS=2: the 8B on WebGPU again)
# run(command="PREF=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   session 23: where a 512-token prefill's time goes (bench/gpuapi_profile.py --tokens 512,
#   device timestamps), WebGPU at the defaults and at $PREF_SETTINGS ("K=V,..;K=V,.."), both
#   models, OpenCL's 8B at its defaults: about 6 minutes
# run(command="ALU=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   the shader ALUs' rates through WGSL (bench/webgpu_alu_probe.py): f32 and packed-half
#   fmas, dot4I8Packed and its polyfill: seconds
# run(command="I8GEMM=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   a standalone int8 (dot4I8Packed) prefill GEMM at several tiles on the 8B's shapes
#   (bench/webgpu_int8_gemm_probe.py), checked against numpy: under a minute
# run(command="INT8GEMM=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   session 23's int8 GEMM for prefill (GEMM_INT8='always') against the default (halves on
#   WebGPU): the ALU and int8-GEMM probes with naga's checks off, the 8B's matmuls alone both
#   ways and at two more of its tiles (checked), the 1B's greedy text both ways, both models
#   end to end alternating, the 8B's prefill profile on it: about 9 minutes (not yet run: no
#   device was left in session 23)
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/m /tmp/parts
for c in .chunk*; do [[ -f $c/part ]] && cp $c/part /tmp/parts/${c#.chunk}; done
[[ -n $CHUNK_ONLY ]] && { ls -la /tmp/parts; exit 0; }
if [[ -z $SKIP_SETUP ]]; then  # SKIP_SETUP=1: a machine whose drivers and packages are in place
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
if [[ -z $SKIP_SETUP ]]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  mkdir -p /tmp/icd && echo /usr/local/nvidia/lib64/libnvidia-opencl.so.1 > /tmp/icd/nvidia.icd
  export OCL_ICD_VENDORS=/tmp/icd
fi
if [[ -n $INT8 ]]; then  # the int8-x GEMV (DRIFT_INT8_DOT=1) against f32 x (=0), one lease
  python3 -m drift make-random llama-3.1-8b Q4_0 /tmp/m/llama-3.1-8b-Q4_0.gguf >/dev/null 2>&1 &
  big=$!
  python3 -m drift make-random llama-3.2-1b Q4_0 /tmp/m/llama-3.2-1b-Q4_0.gguf 2>&1 | tail -1
  bench() {  # model api int8
    DRIFT_INT8_DOT=$3 timeout ${BENCH_TIMEOUT:-60} python3 -m drift bench /tmp/m/$1.gguf \
      -p 512 -n 64 -r ${R:-3} --device $2 --no-ceilings > /tmp/run.txt 2>&1
    rc=$?; { echo "## bench $2 $1 int8=$3 (rc=$rc)"; cat /tmp/run.txt; } >> "$OUT/benches.txt"
    echo "rc=$rc $2 $1 int8=$3"; grep -E "^\| |Error|error" /tmp/run.txt | grep -v -- "---" | head -4
  }
  timeout 100 python3 bench/smollm2_check.py /tmp/m/llama-3.2-1b-Q4_0.gguf --steps 6 \
    --devices webgpu,opencl 2>&1 | tail -9 | tee "$OUT/check.txt"
  for dev in opencl webgpu; do for i8 in 1 0; do bench llama-3.2-1b-Q4_0 $dev $i8; done; done
  timeout 120 python3 bench/gpuapi_kernels.py --shapes 8b --types Q4_0,Q6_K --rows 1 \
    --x f32,int8 --reps 20 > "$OUT/kernels.txt" 2>&1; echo "rc=$? kernels"; cat "$OUT/kernels.txt"
  wait $big
  for dev in opencl webgpu; do for i8 in 1 0; do bench llama-3.1-8b-Q4_0 $dev $i8; done; done
  for dev in opencl webgpu; do
    timeout 60 python3 bench/gpuapi_profile.py /tmp/m/llama-3.1-8b-Q4_0.gguf --device $dev \
      --pos 384 --reps 5 --top 12 > /tmp/run.txt 2>&1
    rc=$?; { echo "## profile $dev (rc=$rc)"; cat /tmp/run.txt; } >> "$OUT/profiles.txt"
    echo "rc=$rc profile $dev"; grep -v "^device properties" /tmp/run.txt | head -30
  done
  exit
fi
# session 17's modes share these: the random models (the 8B written in the background: $big),
# a drift bench with kernel constants set (bench/drift_with.py; int8 x where the label says
# so), the 8B's decode profile
models() {
  python3 -m drift make-random llama-3.1-8b Q4_0 /tmp/m/llama-3.1-8b-Q4_0.gguf >/dev/null 2>&1 &
  big=$!
  python3 -m drift make-random llama-3.2-1b Q4_0 /tmp/m/llama-3.2-1b-Q4_0.gguf 2>&1 | tail -1
}
bench_with() {  # model api label [constant=value ...]
  local m=$1 dev=$2 label=$3 i8=0; shift 3
  [[ $label == *int8* ]] && i8=1
  DRIFT_INT8_DOT=$i8 timeout ${BENCH_TIMEOUT:-50} python3 bench/drift_with.py "$@" -- bench \
    /tmp/m/$m.gguf -p 512 -n 64 -r ${R:-3} --device $dev --no-ceilings $BENCH_ARGS \
    > /tmp/run.txt 2>&1
  rc=$?; { echo "## bench $dev $m $label $* (rc=$rc)"; cat /tmp/run.txt; } >> "$OUT/benches.txt"
  echo "rc=$rc $dev $m $label $*"
  grep -E "^\| |decode loop" /tmp/run.txt | grep -v -- "---" | tail -3
}
profile_8b() {  # api
  timeout 60 python3 bench/gpuapi_profile.py /tmp/m/llama-3.1-8b-Q4_0.gguf --device $1 \
    --pos 384 --reps 5 --top 12 > /tmp/run.txt 2>&1
  rc=$?; { echo "## profile $1 (rc=$rc)"; cat /tmp/run.txt; } >> "$OUT/profiles.txt"
  echo "rc=$rc profile $1"; grep -v "^device properties" /tmp/run.txt | sed -n 8,45p
}
check_1b() {  # REPEAT=R: the prompt R times over (a prefill long enough for the GEMMs)
  timeout 200 python3 bench/smollm2_check.py /tmp/m/llama-3.2-1b-Q4_0.gguf --steps 6 \
    --repeat ${REPEAT:-1} --devices webgpu,opencl 2>&1 | tail -9 | tee "$OUT/check.txt"
}
release() {
  OPENCL_RELEASE_MODEL=/tmp/m/llama-3.2-1b-Q4_0.gguf timeout 150 python3 bench/opencl_release.py \
    2>&1 | tee "$OUT/release.txt"
}
cold_start() {  # a fresh process's load and time to first token, the drivers' caches empty
  # (NVIDIA's Vulkan shader cache, its OpenCL/CUDA compute cache: fresh folders), then warm
  local dev m rc
  for m in llama-3.2-1b-Q4_0 llama-3.1-8b-Q4_0; do for dev in webgpu opencl; do
    rm -rf /tmp/shadercache; mkdir -p /tmp/shadercache
    for state in cold warm warm; do
      __GL_SHADER_DISK_CACHE_PATH=/tmp/shadercache CUDA_CACHE_PATH=/tmp/shadercache \
        timeout 120 python3 -m drift run /tmp/m/$m.gguf --device $dev --raw --temp 0 -n 8 \
        "The capital of France is" > /tmp/run.txt 2>&1
      rc=$?; { echo "## start $dev $m $state (rc=$rc)"; cat /tmp/run.txt; } >> "$OUT/starts.txt"
      echo "rc=$rc start $dev $m $state: $(grep -E '^\[' /tmp/run.txt | tail -1)"
    done
    du -sh /tmp/shadercache
  done; done
}
kernels() {  # api flags...: bench/gpuapi_kernels.py on the 8B's Q4_0 shapes
  local api=$1; shift
  timeout ${KERNELS_TIMEOUT:-170} python3 bench/gpuapi_kernels.py --apis $api --shapes ${SHAPES:-8b} \
    --types Q4_0 "$@" > /tmp/run.txt 2>&1
  rc=$?; { echo "## kernels $api $* (rc=$rc)"; cat /tmp/run.txt; } >> "$OUT/kernels.txt"
  echo "rc=$rc kernels $api $*"; grep "^| $api" /tmp/run.txt |
    awk -F'|' '{printf "%s S=%s %s x %s: %s us (device) %s GB/s\n", $3, $5, $6, $7, $9, $11}'
}
attn() {  # api head_dim kv_heads [constant=value,...]: decode attention alone, one setting a process
  timeout 60 python3 bench/gpuapi_attention.py --device $1 --head-dim $2 --kv-heads $3 --ctx 4096 \
    --pos 392,1024,4000 --variants ${ATTN_VARIANT:-1024/64} --reps 20 ${4:+--set $4} > /tmp/run.txt 2>&1
  rc=$?; { echo "## attention $* (rc=$rc)"; cat /tmp/run.txt; } >> "$OUT/attention.txt"
  echo "rc=$rc attention $*"; grep -E "^\| (split|one)" /tmp/run.txt | awk -F'|' '{printf "  pos %s: %s us\n", $5, $6}' | tr '\n' ' '; echo
}
# run(command="RUNS=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   session 18: decode attention by runs (templates._attend_runs) against one key a thread
#   (ATTN_RUN_LANES=1): the kernel alone on the 8B's and the 1B's heads over its settings,
#   the 1B greedy check, drift bench both ways on both models and APIs, the 8B profiles
if [[ -n $RUNS ]]; then
  models
  for api in opencl webgpu; do
    for set in "" ATTN_RUN_LANES=1 ATTN_RUN_LANES=4 ATTN_RUN_LANES=16 ATTN_RUN_LANES=32 \
               ATTN_RUN_KEYS=1 ATTN_RUN_KEYS=4 ATTN_RUN_WG=64 ATTN_RUN_WG=256; do
      [[ $api == webgpu && $set == *WG* ]] && continue
      attn $api 128 8 $set
    done
    ATTN_VARIANT=512/64 attn $api 128 8 ATTN_SPLIT_GROUPS=512
    attn $api 64 8; attn $api 64 8 ATTN_RUN_LANES=1
  done
  check_1b
  for dev in opencl webgpu; do
    bench_with llama-3.2-1b-Q4_0 $dev runs
    bench_with llama-3.2-1b-Q4_0 $dev key-a-thread ATTN_RUN_LANES=1
  done
  wait $big
  for dev in opencl webgpu; do
    bench_with llama-3.1-8b-Q4_0 $dev runs
    bench_with llama-3.1-8b-Q4_0 $dev key-a-thread ATTN_RUN_LANES=1
    bench_with llama-3.1-8b-Q4_0 $dev runs-decode-only ATTN_RUN_PREFILL=False
  done
  for dev in opencl webgpu; do profile_8b $dev; done
  exit
fi
# run(command="MMA=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   session 18: the prefill GEMM on tensor cores (templates._gemm_mma, PTX mma on OpenCL)
#   against the f32 tiled GEMM (GEMM_MMA='never'): the matmul kernels alone at 512 rows with
#   their errors, the 1B greedy check, drift bench both ways on both models (OpenCL)
if [[ -n $MMA ]]; then
  models
  for set in "" "GEMM_MMA='never'"; do
    kernels opencl --rows 512 --reps 10 --check ${set:+--set $set}
  done
  grep -E "^\| opencl" "$OUT/kernels.txt" | head -12
  check_1b
  for m in llama-3.2-1b-Q4_0 llama-3.1-8b-Q4_0; do
    [[ $m == llama-3.1-8b-Q4_0 ]] && wait $big
    bench_with $m opencl mma
    bench_with $m opencl f32-gemm "GEMM_MMA='never'"
  done
  exit
fi
# run(command="MMA2=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   session 18: the tensor-core GEMM's variants (the next step's loads prefetched or not,
#   tiles of 64 x 64, 128 x 64, 64 x 128): kernels alone at 512 rows with their errors, drift
#   bench of the 8B on each (OpenCL), the 1B greedy check, both models on both APIs
if [[ -n $MMA2 ]]; then
  models
  for set in "" "GEMM_MMA_PREFETCH=False" "GEMM_MMA_TILE=(128,64,32)" "GEMM_MMA_TILE=(64,128,32)"; do
    kernels opencl --rows 512 --reps 10 --check ${set:+--set $set}
  done
  check_1b
  for dev in opencl webgpu; do bench_with llama-3.2-1b-Q4_0 $dev default; done
  wait $big
  for set in "" "GEMM_MMA_PREFETCH=False" "GEMM_MMA_TILE=(128,64,32)" "GEMM_MMA_TILE=(64,128,32)"; do
    bench_with llama-3.1-8b-Q4_0 opencl variant $set
  done
  bench_with llama-3.1-8b-Q4_0 webgpu default
  exit
fi
# run(command="MMA3=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   session 18: the tensor-core GEMM's tile (128 x 64 x 32 the default now) against 64 x 64,
#   128 x 128 and 256 x 64 at K steps of 16, 128 x 64 x 16: kernels alone with their errors,
#   drift bench of both models (OpenCL), then the defaults: the greedy check, drift bench
#   on both APIs, the 8B OpenCL profile
if [[ -n $MMA3 ]]; then
  models
  tiles=("" "GEMM_MMA_TILE=(64,64,32)" "GEMM_MMA_TILE=(128,128,16)" "GEMM_MMA_TILE=(256,64,16)" "GEMM_MMA_TILE=(128,64,16)")
  for set in "${tiles[@]}"; do kernels opencl --rows 512 --reps 10 --check ${set:+--set $set}; done
  check_1b
  for set in "${tiles[@]}"; do bench_with llama-3.2-1b-Q4_0 opencl tile $set; done
  bench_with llama-3.2-1b-Q4_0 webgpu default
  wait $big
  for set in "${tiles[@]}"; do bench_with llama-3.1-8b-Q4_0 opencl tile $set; done
  bench_with llama-3.1-8b-Q4_0 webgpu default
  profile_8b opencl
  exit
fi
# run(command="MMA4=1 bash bench/gpuapi_session.sh", carry=[".whl", ".gl"])
#   session 18: the tensor-core GEMM's tile chosen per matmul (GEMM_MMA_TILES, the default
#   now) against 128 x 64 x 32 for all: the greedy check, drift bench of both models (OpenCL)
if [[ -n $MMA4 ]]; then
  models; check_1b
  for m in llama-3.2-1b-Q4_0 llama-3.1-8b-Q4_0; do
    [[ $m == llama-3.1-8b-Q4_0 ]] && wait $big
    bench_with $m opencl per-matmul
    bench_with $m opencl fixed "GEMM_MMA_TILE=(128,64,32)"
  done
  exit
fi
if [[ -n $NORM ]]; then
  models; wait $big
  for set in NORM_WG=256 NORM_WG=512 NORM_WG=1024; do
    bench_with llama-3.1-8b-Q4_0 opencl f32 $set
  done
  bench_with llama-3.1-8b-Q4_0 webgpu f32
  profile_8b opencl
  exit
fi
if [[ -n $SAMPLE ]]; then  # session 20: sampled decode drawn on the device, decoding ahead
  models
  timeout 150 python3 bench/sampled_check.py /tmp/m/llama-3.2-1b-Q4_0.gguf --steps 32 \
    --seeds 0,1,2 2>&1 | tail -7 | tee "$OUT/sampled_check.txt"
  for m in llama-3.2-1b-Q4_0 llama-3.1-8b-Q4_0; do
    [[ $m == llama-3.1-8b-Q4_0 ]] && wait $big
    for dev in webgpu opencl; do
      BENCH_ARGS=--sample bench_with $m $dev sampled
      BENCH_ARGS=--sample DRIFT_DECODE_AHEAD=0 bench_with $m $dev sampled-step
      bench_with $m $dev greedy
    done
  done
  exit
fi
if [[ -n $SAMPLE2 ]]; then  # SAMPLE after the draw's logits were staged: where the time goes
  models
  timeout 150 python3 bench/sampled_check.py /tmp/m/llama-3.2-1b-Q4_0.gguf --steps 32 \
    --seeds 0,1,2 2>&1 | tail -7 | tee "$OUT/sampled_check.txt"
  for dev in webgpu opencl; do
    timeout 60 python3 bench/gpuapi_profile.py /tmp/m/llama-3.2-1b-Q4_0.gguf --device $dev \
      --pos 384 --reps 5 --top 12 --sample > /tmp/run.txt 2>&1
    rc=$?; { echo "## profile 1b $dev --sample (rc=$rc)"; cat /tmp/run.txt; } >> "$OUT/profiles.txt"
    echo "rc=$rc profile $dev"; grep -E "^\| (wall|device|idle|top-k|argmax)" /tmp/run.txt
  done
  for m in llama-3.2-1b-Q4_0 llama-3.1-8b-Q4_0; do
    [[ $m == llama-3.1-8b-Q4_0 ]] && wait $big
    for dev in webgpu opencl; do
      BENCH_ARGS=--sample bench_with $m $dev sampled
      bench_with $m $dev greedy
    done
    BENCH_ARGS=--sample DRIFT_DECODE_AHEAD=0 bench_with $m opencl sampled-step
  done
  exit
fi
if [[ -n $VEC4 ]]; then  # session 21: the f32 GEMM's tiles as f32x4 (GEMM_VEC4), WebGPU
  models
  for t in "GEMM_VEC4=False" "GEMM_VEC4=False,GEMM_PREFETCH=True" \
      "GEMM_VEC4=False,GEMM_TILE=(32, 64, 32, 4, 8),GEMM_PREFETCH=True" \
      "GEMM_VEC4=True" "GEMM_VEC4=True,GEMM_PREFETCH=True" \
      "GEMM_VEC4=True,GEMM_TILE=(32, 64, 32, 4, 8),GEMM_PREFETCH=True" \
      "GEMM_VEC4=True,GEMM_TILE=(64, 64, 16, 8, 8),GEMM_PREFETCH=True" \
      "GEMM_VEC4=True,GEMM_TILE=(64, 32, 32, 8, 4),GEMM_PREFETCH=True"; do
    KERNELS_TIMEOUT=60 kernels webgpu --rows 512 --reps 5 --check --set "$t"
  done
  for t in "GEMM_MMA='never',GEMM_VEC4=False" "GEMM_MMA='never',GEMM_VEC4=True"; do
    KERNELS_TIMEOUT=60 kernels opencl --rows 512 --reps 5 --check --set "$t"
  done
  # end to end: each setting's constants apart by "|"
  for t in "GEMM_VEC4=False" "GEMM_VEC4=True" \
      "GEMM_VEC4=True|GEMM_TILE=(32, 64, 32, 4, 8)|GEMM_PREFETCH=True" \
      "GEMM_VEC4=True|GEMM_TILE=(64, 64, 16, 8, 8)|GEMM_PREFETCH=True"; do
    IFS='|' read -r -a kv <<< "$t"
    R=2 bench_with llama-3.2-1b-Q4_0 webgpu vec4 "${kv[@]}"
  done
  exit
fi
if [[ -n $VEC4B ]]; then  # each of $SETTINGS ("K=V|K=V;K=V"): the 1B once, the 8B twice,
  models                  # alternating; then the 1B greedy on a 60-token prompt (defaults)
  IFS=';' read -r -a sets <<< "$SETTINGS"
  for m in llama-3.2-1b-Q4_0 llama-3.1-8b-Q4_0 llama-3.1-8b-Q4_0; do
    [[ $m == llama-3.1-8b-Q4_0 ]] && wait $big
    for t in "${sets[@]}"; do
      IFS='|' read -r -a kv <<< "$t"
      R=2 bench_with $m webgpu vec4 "${kv[@]}"
    done
  done
  REPEAT=12 check_1b
  exit
fi
if [[ -n $VEC4C ]]; then  # the tile choice on the 1B: its matmuls alone at each tile (and the
  models                  # 8B's at the default, with and without prefetch), then the 1B end
  for t in "GEMM_PREFETCH=False" "GEMM_TILE=(32, 32, 32, 4, 4)" "GEMM_TILE=(32, 64, 32, 4, 8)" \
      "GEMM_VEC4=False,GEMM_TILE=(32, 32, 32, 4, 4)"; do  # to end alternating three times
    SHAPES=1b KERNELS_TIMEOUT=60 kernels webgpu --rows 512 --reps 5 --check --set "$t"
  done
  wait $big
  for t in "GEMM_PREFETCH=False" "GEMM_PREFETCH=True"; do
    KERNELS_TIMEOUT=60 kernels webgpu --rows 512 --reps 5 --set "$t"
  done
  for r in 1 2 3; do
    R=2 bench_with llama-3.2-1b-Q4_0 webgpu vec4 GEMM_VEC4=False "GEMM_TILE=(32, 32, 32, 4, 4)"
    R=2 bench_with llama-3.2-1b-Q4_0 webgpu vec4 "GEMM_TILE=(32, 32, 32, 4, 4)"
    R=2 bench_with llama-3.2-1b-Q4_0 webgpu vec4 GEMM_PREFETCH=False
  done
  exit
fi
if [[ -n $VEC4D ]]; then  # the accumulator cap (GEMM_MAX_ACC: fused gate/up on the narrow
  models                  # tile) against the cap off (64) and one tile everywhere, both models
  wait $big               # end to end, the 8B twice, alternating; then the 1B greedy check
  for m in llama-3.1-8b-Q4_0 llama-3.1-8b-Q4_0 llama-3.2-1b-Q4_0; do
    R=2 bench_with $m webgpu vec4 GEMM_VEC4=False "GEMM_TILE=(32, 32, 32, 4, 4)"
    R=2 bench_with $m webgpu vec4 "GEMM_TILE=(32, 32, 32, 4, 4)"
    R=2 bench_with $m webgpu vec4 GEMM_MAX_ACC=64
    R=2 bench_with $m webgpu vec4 GEMM_MAX_ACC=32
  done
  REPEAT=12 check_1b
  exit
fi
if [[ -n $VEC4E ]]; then  # 128-thread f32x4 tiles (TM = 64, 4 x 8 or 4 x 4 a thread; and TN
  models                  # = 128): the 8B's kernels alone at each, then both models end to
  for t in "GEMM_PREFETCH=False" "GEMM_TILE=(64, 64, 32, 4, 8)" "GEMM_TILE=(64, 32, 32, 4, 4)" \
      "GEMM_TILE=(64, 64, 16, 4, 8)" "GEMM_TILE=(32, 128, 32, 4, 8)"; do  # end with each as
    KERNELS_TIMEOUT=60 kernels webgpu --rows 512 --reps 5 --check --set "$t"  # the wide tile
  done                    # (GEMM_TILES), the 8B twice, alternating
  wait $big
  for m in llama-3.1-8b-Q4_0 llama-3.1-8b-Q4_0 llama-3.2-1b-Q4_0; do
    R=2 bench_with $m webgpu vec4 GEMM_PREFETCH=False
    R=2 bench_with $m webgpu vec4 "GEMM_TILES=((64, 64, 32, 4, 8), (32, 32, 32, 4, 4))"
    R=2 bench_with $m webgpu vec4 "GEMM_TILES=((32, 128, 32, 4, 8), (32, 32, 32, 4, 4))"
    R=2 bench_with $m webgpu vec4 "GEMM_TILES=((64, 32, 32, 4, 4), (32, 32, 32, 4, 4))"
  done
  exit
fi
if [[ -n $HALF ]]; then  # session 22: the GEMM on packed halves against the f32 GEMM
  models
  for t in "GEMM_HALF='never'" "GEMM_HALF='always'" "GEMM_HALF='always',GEMM_PREFETCH=True" \
      "GEMM_HALF='always',GEMM_TILE=(32, 64, 32, 4, 8)" \
      "GEMM_HALF='always',GEMM_TILE=(64, 64, 16, 8, 8)"; do
    KERNELS_TIMEOUT=60 kernels webgpu --rows 512 --reps 5 --check --set "$t"
  done
  REPEAT=12 check_1b
  wait $big
  for m in llama-3.2-1b-Q4_0 llama-3.1-8b-Q4_0; do for i in 1 2; do
    R=3 bench_with $m webgpu half
    R=3 bench_with $m webgpu f32 "GEMM_HALF='never'"
  done; done
  cold_start
  exit
fi
if [[ -n $HALF2 ]]; then  # the half GEMM's prefetch and wider tiles
  models
  for t in "GEMM_HALF='always',GEMM_PREFETCH=True" "GEMM_HALF='always'" \
      "GEMM_HALF='always',GEMM_TILE=(64, 256, 32, 8, 8)" \
      "GEMM_HALF='always',GEMM_TILE=(64, 128, 32, 8, 8),GEMM_PREFETCH=True" \
      "GEMM_HALF='always',GEMM_TILE=(64, 128, 32, 8, 8)" \
      "GEMM_HALF='always',GEMM_TILE=(64, 128, 32, 8, 4)"; do
    KERNELS_TIMEOUT=60 kernels webgpu --rows 512 --reps 5 --check --set "$t"
  done
  wait $big
  for m in llama-3.1-8b-Q4_0 llama-3.2-1b-Q4_0; do for i in 1 2; do
    R=3 bench_with $m webgpu half
    R=3 bench_with $m webgpu half-prefetch GEMM_PREFETCH=True
  done; done
  exit
fi
if [[ -n $HALF3 ]]; then  # the half GEMM's tile list against the f32 GEMM's
  models
  REPEAT=12 check_1b
  wait $big
  f32tiles="GEMM_HALF_TILES=((32, 128, 32, 4, 8), (32, 64, 32, 4, 8), (32, 32, 32, 4, 4))"
  for m in llama-3.1-8b-Q4_0 llama-3.2-1b-Q4_0; do for i in 1 2; do
    R=3 bench_with $m webgpu half-tiles
    R=3 bench_with $m webgpu f32-tiles "$f32tiles" GEMM_HALF_MIN_THREADS=65536 GEMM_HALF_MAX_ACC=32
  done; done
  exit
fi
if [[ -n $ALU ]]; then
  for g in 2112 528; do
    timeout 60 python3 bench/webgpu_alu_probe.py --groups $g 2>&1 | tee -a "$OUT/alu.txt"
  done
  exit
fi
if [[ -n $I8GEMM ]]; then
  timeout 300 python3 bench/webgpu_int8_gemm_probe.py ${I8GEMM_ARGS:-} 2>&1 | tee "$OUT/i8gemm.txt"
  exit
fi
profile_prefill() {  # model api label [constants]
  timeout ${PROFILE_TIMEOUT:-90} python3 bench/gpuapi_profile.py /tmp/m/$1.gguf --device $2 \
    --pos 0 --tokens 512 --reps 5 --warmup 2 --top 14 --set "$4" > /tmp/run.txt 2>&1
  rc=$?; { echo "## prefill profile $2 $1 $3 $4 (rc=$rc)"; cat /tmp/run.txt; } \
    >> "$OUT/prefill_profiles.txt"
  echo "rc=$rc prefill profile $2 $1 $3"
  grep -E "^\| (wall, argmax|device span|ffn_gate_up|matmul|stacked|attention|add_rms|rope)" \
    /tmp/run.txt | grep -v "S=1 " | head -16
}
if [[ -n $INT8GEMM ]]; then
  models
  timeout 60 python3 bench/webgpu_alu_probe.py 2>&1 | tee "$OUT/alu.txt"
  timeout 200 python3 bench/webgpu_int8_gemm_probe.py 2>&1 | tee "$OUT/i8gemm.txt"
  for t in "GEMM_INT8='always'" "GEMM_INT8='never'" \
      "GEMM_INT8='always',GEMM_INT8_TILE=(64, 64, 2, 8, 4)" \
      "GEMM_INT8='always',GEMM_INT8_TILE=(64, 128, 2, 8, 8)"; do
    KERNELS_TIMEOUT=90 kernels webgpu --rows 512 --reps 5 --check --set "$t"
  done
  for t in "GEMM_INT8='always'" "GEMM_INT8='never'"; do
    timeout 90 python3 bench/drift_with.py "$t" -- run /tmp/m/llama-3.2-1b-Q4_0.gguf \
      --device webgpu --raw --temp 0 -n 16 "$(python3 -c 'print("The capital of France is " * 12)')" \
      2>&1 | tail -3 | tee -a "$OUT/text.txt"
  done
  wait $big
  for m in llama-3.1-8b-Q4_0 llama-3.2-1b-Q4_0; do for i in 1 2; do
    bench_with $m webgpu q8-gemm "GEMM_INT8='always'"  # (a label with "int8" sets DRIFT_INT8_DOT)
    bench_with $m webgpu default
  done; done
  profile_prefill llama-3.1-8b-Q4_0 webgpu q8-gemm "GEMM_INT8='always'"
  exit
fi
if [[ -n $PREF ]]; then
  models
  IFS=';' read -ra sets <<< "${PREF_SETTINGS:-GEMM_HALF_MIN_THREADS=65536;GEMM_PREFETCH=True}"
  for m in llama-3.2-1b-Q4_0 llama-3.1-8b-Q4_0; do
    [[ $m == llama-3.1-8b-Q4_0 ]] && wait $big
    profile_prefill $m webgpu default ""
    for s in "${sets[@]}"; do profile_prefill $m webgpu set "$s"; done
    profile_prefill $m webgpu default-again ""
  done
  profile_prefill llama-3.1-8b-Q4_0 opencl default ""
  exit
fi
if [[ -n $HALF4 ]]; then  # more half-GEMM tiles; fused gate/up's tile end to end
  models
  for t in "GEMM_HALF='always',GEMM_TILE=(128, 128, 32, 8, 8)" \
      "GEMM_HALF='always',GEMM_TILE=(64, 128, 16, 8, 8)" \
      "GEMM_HALF='always',GEMM_TILE=(64, 64, 32, 8, 4)"; do
    KERNELS_TIMEOUT=60 kernels webgpu --rows 512 --reps 5 --check --set "$t"
  done
  wait $big
  gu="GEMM_HALF_TILES=((64, 128, 32, 8, 8), (64, 64, 32, 8, 4), (32, 128, 32, 4, 8), (32, 64, 32, 4, 8), (32, 32, 32, 4, 4))"
  for i in 1 2; do
    R=3 bench_with llama-3.1-8b-Q4_0 webgpu default
    R=3 bench_with llama-3.1-8b-Q4_0 webgpu gate-up-64x64 "$gu"
  done
  exit
fi
if [[ -n $FINAL3 ]]; then  # session 22's committed defaults
  models
  REPEAT=12 check_1b
  wait $big
  for m in llama-3.1-8b-Q4_0 llama-3.2-1b-Q4_0; do for dev in webgpu opencl; do
    bench_with $m $dev default
  done; done
  half3="GEMM_HALF_TILES=((64, 128, 32, 8, 8), (32, 128, 32, 4, 8), (32, 64, 32, 4, 8), (32, 32, 32, 4, 4))"
  for i in 1 2; do
    bench_with llama-3.2-1b-Q4_0 webgpu half3-tiles "$half3"
    bench_with llama-3.2-1b-Q4_0 webgpu default
  done
  timeout 170 python3 bench/smollm2_check.py /tmp/m/llama-3.1-8b-Q4_0.gguf --steps 3 \
    --repeat 12 --devices cuda,webgpu 2>&1 | tail -7 | tee "$OUT/check_8b.txt"
  exit
fi
if [[ -n $HALF5 ]]; then  # the half GEMM's staged tiles in two buffers
  models
  for t in "GEMM_HALF_BUFFERS=2" "GEMM_HALF_BUFFERS=1"; do
    KERNELS_TIMEOUT=50 kernels webgpu --rows 512 --reps 5 --check --set "$t"
  done
  wait $big
  for m in llama-3.1-8b-Q4_0 llama-3.2-1b-Q4_0; do for i in 1 2; do
    R=3 bench_with $m webgpu two-buffers GEMM_HALF_BUFFERS=2
    R=3 bench_with $m webgpu one-buffer GEMM_HALF_BUFFERS=1
  done; done
  exit
fi
if [[ -n $MEMO ]]; then  # the render memo's effect on a fresh process's first token
  models
  start_with() {  # model api label constant
    timeout 60 python3 bench/drift_with.py $4 -- run /tmp/m/$1.gguf --device $2 --raw --temp 0 \
      -n 8 "The capital of France is" > /tmp/run.txt 2>&1
    rc=$?; { echo "## start $2 $1 $3 $4 (rc=$rc)"; cat /tmp/run.txt; } >> "$OUT/starts.txt"
    echo "rc=$rc start $2 $1 $3: $(grep -E '^\[' /tmp/run.txt | tail -1)"
  }
  for m in ${MEMO_MODELS:-llama-3.2-1b-Q4_0 llama-3.1-8b-Q4_0}; do
    [[ $m == llama-3.1-8b-Q4_0 ]] && wait $big
    n=2; [[ $m == llama-3.1-8b-Q4_0 ]] && n=${MEMO_8B_PAIRS:-1}
    for dev in ${MEMO_APIS:-webgpu opencl}; do
      start_with $m $dev warm-up render_memo=True
      for i in $(seq $n); do
        start_with $m $dev memo render_memo=True
        start_with $m $dev each render_memo=False
      done
    done
  done
  exit
fi
if [[ -n $VEC4F ]]; then  # the committed tile choice (GEMM_TILES from (32, 128)): the 8B's
  models                  # kernels alone, the 1B greedy check, both models end to end
  KERNELS_TIMEOUT=60 kernels webgpu --rows 512 --reps 5 --check
  REPEAT=12 check_1b
  wait $big
  for m in llama-3.1-8b-Q4_0 llama-3.2-1b-Q4_0; do bench_with $m webgpu default; done
  exit
fi
if [[ -n $WTILE2 ]]; then  # WTILE's short form: three settings, the 1B end to end
  python3 -m drift make-random llama-3.2-1b Q4_0 /tmp/m/llama-3.2-1b-Q4_0.gguf 2>&1 | tail -1
  for t in "GEMM_PREFETCH=False" "GEMM_PREFETCH=True" "GEMM_TILE=(32, 64, 32, 4, 8),GEMM_PREFETCH=True"; do
    KERNELS_TIMEOUT=40 kernels webgpu --rows 512 --reps 3 --check --set "$t"
  done
  R=2 bench_with llama-3.2-1b-Q4_0 webgpu default
  R=2 bench_with llama-3.2-1b-Q4_0 webgpu wide-prefetch "GEMM_TILE=(32, 64, 32, 4, 8)" GEMM_PREFETCH=True
  exit
fi
if [[ -n $WTILE ]]; then
  models
  for t in "GEMM_PREFETCH=False" "GEMM_PREFETCH=True" "GEMM_TILE=(32, 64, 32, 4, 8)" \
      "GEMM_TILE=(32, 64, 32, 4, 8),GEMM_PREFETCH=True" "GEMM_TILE=(32, 64, 16, 4, 8),GEMM_PREFETCH=True" \
      "GEMM_TILE=(64, 64, 16, 4, 8),GEMM_PREFETCH=True"; do
    KERNELS_TIMEOUT=60 kernels webgpu --rows 512 --reps 5 --check --set "$t"
  done
  for m in llama-3.2-1b-Q4_0 llama-3.1-8b-Q4_0; do
    [[ $m == llama-3.1-8b-Q4_0 ]] && wait $big
    R=2 bench_with $m webgpu default
    R=2 bench_with $m webgpu wide-prefetch "GEMM_TILE=(32, 64, 32, 4, 8)" GEMM_PREFETCH=True
  done
  exit
fi
if [[ -n $CHECKS ]]; then
  models; check_1b
  for m in llama-3.2-1b-Q4_0 llama-3.1-8b-Q4_0; do
    [[ $m == llama-3.1-8b-Q4_0 ]] && wait $big
    for rep in 1 2; do
      bench_with $m webgpu unchecked
      DRIFT_WGSL_CHECKS=1 bench_with $m webgpu checked
    done
  done
  KERNELS_TIMEOUT=100 kernels webgpu --rows 1,512 --reps 10 --check
  DRIFT_WGSL_CHECKS=1 KERNELS_TIMEOUT=100 kernels webgpu --rows 1,512 --reps 10
  for t in "(64, 64, 16, 8, 8)" "(64, 32, 32, 8, 4)" "(32, 64, 32, 4, 8)" "(64, 64, 32, 8, 8)"; do
    KERNELS_TIMEOUT=60 kernels webgpu --rows 512 --reps 5 --check --set "GEMM_TILE=$t"
  done
  exit
fi
if [[ -n $COOP ]]; then
  timeout 120 python3 bench/webgpu_coop_probe.py 2>&1 | tee "$OUT/coop.txt"
  exit
fi
if [[ -n $ENCODE ]]; then
  models; check_1b
  mkdir -p /tmp/base && cp -r drift /tmp/base/ && cp .base/webgpu__init__.py /tmp/base/drift/backends/webgpu/__init__.py
  python3 -m drift devices 2>&1 | tee "$OUT/devices.txt"
  python3 -c "import wgpu; a = wgpu.gpu.request_adapter_sync(power_preference='high-performance'); print(a.summary); print(sorted(a.features))" 2>&1 | tee -a "$OUT/devices.txt"
  for m in llama-3.2-1b-Q4_0 llama-3.1-8b-Q4_0; do
    [[ $m == llama-3.1-8b-Q4_0 ]] && wait $big
    for rep in 1 2; do
      bench_with $m webgpu raw-encode
      PYTHONPATH=/tmp/site:/tmp/base bench_with $m webgpu wgpu-py-encode
    done
    bench_with $m opencl final
    BENCH_TIMEOUT=150 bench_with $m cuda final
  done
  profile_8b webgpu
  exit
fi
if [[ -n $AHEAD ]]; then
  models; REPEAT=40 check_1b
  for m in llama-3.2-1b-Q4_0 llama-3.1-8b-Q4_0; do
    [[ $m == llama-3.1-8b-Q4_0 ]] && wait $big
    for dev in opencl webgpu; do
      bench_with $m $dev ahead
      DRIFT_DECODE_AHEAD=0 bench_with $m $dev ahead-off
    done
    bench_with $m opencl tf32 "GEMM_MMA_TYPE='tf32'"
    BENCH_TIMEOUT=150 bench_with $m cuda triton
  done
  kernels opencl --rows 512 --check --reps 10
  kernels opencl --rows 512 --check --reps 10 --set "GEMM_MMA_TYPE='tf32'"
  exit
fi
if [[ -n $FINAL2 ]]; then  # the committed defaults, greedy and sampled (drift run's default
  models; REPEAT=12 check_1b  # top-k sampling, seed 0), both models on both APIs
  for m in llama-3.2-1b-Q4_0 llama-3.1-8b-Q4_0; do
    [[ $m == llama-3.1-8b-Q4_0 ]] && wait $big
    for dev in opencl webgpu; do
      bench_with $m $dev greedy
      BENCH_ARGS=--sample bench_with $m $dev sampled
    done
  done
  exit
fi
if [[ -n $FINAL ]]; then
  models; check_1b
  for dev in opencl webgpu; do bench_with llama-3.2-1b-Q4_0 $dev f32; done
  wait $big
  for dev in opencl webgpu; do bench_with llama-3.1-8b-Q4_0 $dev f32; done
  for dev in opencl webgpu; do profile_8b $dev; done
  exit
fi
if [[ -n $TILES ]]; then
  models
  for set in kernel_tile_rows=1 kernel_tile_rows=8 kernel_tile_rows=16 kernel_tile_rows=32; do
    kernels opencl --rows 1 --x f32,int8 --reps 10 --set $set
    kernels opencl --rows 512 --reps 10 --set $set
  done
  for m in llama-3.2-1b-Q4_0 llama-3.1-8b-Q4_0; do
    [[ $m == llama-3.1-8b-Q4_0 ]] && wait $big
    for t in 1 8 16 32; do
      R=2 bench_with $m opencl f32 kernel_tile_rows=$t
      R=2 bench_with $m opencl int8 kernel_tile_rows=$t
      R=2 bench_with $m webgpu f32 kernel_tile_rows=$t
    done
  done
  release
  exit
fi
if [[ -n $LANES ]]; then  # (session 17, call 3: every kernel variant in one process)
  models
  for api in opencl webgpu; do kernels $api --rows 1,512 --x f32,int8 --reps 10 --variants; done
  check_1b
  for m in llama-3.2-1b-Q4_0 llama-3.1-8b-Q4_0; do
    [[ $m == llama-3.1-8b-Q4_0 ]] && wait $big
    for dev in opencl webgpu; do
      bench_with $m $dev lanes kernel_tile_rows=32
      bench_with $m $dev words kernel_tile_rows=1
      bench_with $m $dev lanes-int8 kernel_tile_rows=32
    done
  done
  profile_8b opencl
  release
  exit
fi
if [[ -n $MICRO ]]; then
  timeout 120 python3 bench/opencl_enqueue.py --n 20000 2>&1 | tee "$OUT/enqueue.txt"
  for dev in opencl webgpu; do
    timeout 150 python3 bench/gpuapi_attention.py --device $dev --ctx 4096 \
      --pos ${POS:-392,1024,4000} 2>&1 | tee "$OUT/attention-$dev.txt"
  done
  exit
fi
if [[ -n $KERNELS ]]; then
  timeout 560 python3 bench/gpuapi_kernels.py --shapes 8b --types Q4_0 --reps 20 --variants \
    2>&1 | tee "$OUT/kernels.txt"
  exit
fi
if [[ -n $SPEED ]]; then  # drift bench first (the figures), then where the time went
  python3 -m drift make-random llama-3.1-8b Q4_0 /tmp/m/llama-3.1-8b-Q4_0.gguf >/dev/null 2>&1 &
  big=$!
  python3 -m drift make-random llama-3.2-1b Q4_0 /tmp/m/llama-3.2-1b-Q4_0.gguf 2>&1 | tail -1
  # one file per kind under $OUT, each run's output appended under a header: $OUT brings back
  # a handful of files only (session 15 lost its four profile files to that limit)
  bench() {  # model api
    timeout ${BENCH_TIMEOUT:-45} python3 -m drift bench /tmp/m/$1.gguf -p 512 -n 64 -r 2 \
      --device $2 --no-ceilings > /tmp/run.txt 2>&1
    rc=$?; { echo "## bench $2 $1 (rc=$rc)"; cat /tmp/run.txt; } >> "$OUT/benches.txt"
    echo "rc=$rc $2 $1"; grep -E "^\| |Error|error" /tmp/run.txt | grep -v -- "---" | head -4
  }
  prof() {  # model api
    timeout ${PROFILE_TIMEOUT:-35} python3 bench/gpuapi_profile.py /tmp/m/$1.gguf --device $2 \
      --pos ${POS:-384} --reps ${REPS:-5} --top 16 > /tmp/run.txt 2>&1
    rc=$?; { echo "## profile $2 $1 (rc=$rc)"; cat /tmp/run.txt; } >> "$OUT/profiles.txt"
    echo "rc=$rc profile $2 $1"; grep -E "^subgroup|^\| (wall, logits|host time|device span|device time)" \
      /tmp/run.txt
  }
  for dev in webgpu opencl; do bench llama-3.2-1b-Q4_0 $dev; done
  wait $big
  for dev in webgpu opencl; do bench llama-3.1-8b-Q4_0 $dev; done
  for m in llama-3.2-1b-Q4_0 llama-3.1-8b-Q4_0; do for dev in webgpu opencl; do prof $m $dev; done; done
  timeout ${KERNELS_TIMEOUT:-30} python3 bench/gpuapi_kernels.py --shapes 8b --types Q4_0 --rows 1 \
    --reps 20 > "$OUT/kernels.txt" 2>&1; echo "rc=$? kernels"; tail -12 "$OUT/kernels.txt"
  exit
fi
if [[ -n $PROFILE ]]; then
  python3 -m drift make-random llama-3.1-8b Q4_0 /tmp/m/llama-3.1-8b-Q4_0.gguf >/dev/null 2>&1 &
  big=$!
  python3 -m drift make-random llama-3.2-1b Q4_0 /tmp/m/llama-3.2-1b-Q4_0.gguf 2>&1 | tail -1
  prof() {  # model api [flags]: one profile into $OUT, its tail on stdout
    local m=$1 dev=$2; shift 2
    timeout ${PROFILE_TIMEOUT:-70} python3 bench/gpuapi_profile.py /tmp/m/$m.gguf --device $dev \
      --pos ${POS:-384} --reps ${REPS:-10} "$@" > "$OUT/profile-$dev-$m$*.txt" 2>&1
    echo "rc=$? $dev $m $*"; grep -v "^device properties" "$OUT/profile-$dev-$m$*.txt" | head -33
  }
  for dev in webgpu opencl; do prof llama-3.2-1b-Q4_0 $dev; done
  wait $big; ls -la /tmp/m
  for dev in webgpu opencl; do prof llama-3.1-8b-Q4_0 $dev; done
  prof llama-3.1-8b-Q4_0 webgpu --pass-per-dispatch  # the same with no barrier-free stamps
  exit
fi
if [[ -n $CHECK ]]; then  # greedy 32 tokens on the reference models: cpu, cuda, webgpu, opencl
  cat /tmp/parts/{1,2,3,4,5,6} > /tmp/all && head -c 98362432 /tmp/all > /tmp/m/smollm2.gguf &&
    tail -c +98362433 /tmp/all > /tmp/m/gemma3.gguf && rm /tmp/all
  sha256sum /tmp/m/*.gguf | head -2
  for m in smollm2 gemma3; do timeout 300 python3 bench/smollm2_check.py /tmp/m/$m.gguf --steps 32 --devices cuda,webgpu,opencl 2>&1 | tail -10 | tee "$OUT/check4-$m.txt"; done
  # (session 19) the prompt 12 times over: a 60-token prefill, on the GEMMs (OpenCL's on f16
  # tensor cores)
  for m in smollm2 gemma3; do timeout 300 python3 bench/smollm2_check.py /tmp/m/$m.gguf --steps 16 --repeat 12 --devices cuda,webgpu,opencl 2>&1 | tail -10 | tee "$OUT/check4-long-$m.txt"; done
  exit
fi
for m in "llama-3.2-1b Q4_0" "llama-3.1-8b Q4_0"; do
  set -- $m; python3 -m drift make-random $1 $2 /tmp/m/$1-$2.gguf 2>/dev/null | tail -1
done
timeout 60 python3 -m drift devices 2>&1 | tee "$OUT/devices.txt"
for m in llama-3.2-1b-Q4_0 llama-3.1-8b-Q4_0; do
  for dev in webgpu opencl; do
    timeout ${BENCH_TIMEOUT:-200} python3 -m drift bench /tmp/m/$m.gguf -p ${P:-512} -n ${N:-128} -r ${R:-5} \
      --device $dev --no-ceilings > "$OUT/bench-$dev-$m.txt" 2>&1; echo "rc=$? $dev $m"
    grep -E "^\| |memory|device|Error|error" "$OUT/bench-$dev-$m.txt" | head -8
  done
done
