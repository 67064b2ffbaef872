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
