#!/usr/bin/env bash
# One device call: kernel tests on the GPU, real-weights greedy check, make-random + bench.
#   run(command="bash bench/gpu_run.sh [1b|8b|all]", carry=[".whl", ".carry"])
# .whl holds the gguf wheel (the device lacks gguf); .carry/smollm2-12l.gguf is SmolLM2-135M
# Q4_1 cut to its first 12 blocks by bench/truncate_gguf.py (the whole file is over the
# 64 MiB a call may carry). Everything lands in $OUT.
set -o pipefail
WHAT="${*:-all}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  nproc; } 2>&1 | tee "$OUT/env.txt"

if [[ $WHAT == all || " $WHAT " == *" tests "* ]]; then
  echo "== (a) kernel and model tests on the GPU"
  DRIFT_TEST_GPU=1 timeout 240 python3 -m pytest -q -p no:cacheprovider \
    tests/backends/test_triton_kernels.py tests/backends/test_triton_backend.py 2>&1 \
    | tee "$OUT/tests.log" | tail -15
  echo "== (b) SmolLM2-135M Q4_1 (first 12 blocks, real weights): triton vs numpy greedy"
  timeout 240 python3 bench/smollm2_check.py .carry/smollm2-12l.gguf --steps 8 \
    --text "The capital of France is" 2>&1 | tee "$OUT/smollm2.log" | tail -12
fi

bench() {  # preset quant
  local f=/tmp/$1-$2.gguf
  [[ -f $f ]] || python3 -m drift make-random "$1" "$2" "$f" 2>/dev/null | tail -1
  timeout 400 python3 -m drift bench "$f" -p 512 -n 128 -r 5 --device cuda --json \
    > "$OUT/bench-$1-$2.json" 2> "$OUT/bench-$1-$2.err"
  echo "rc=$? $1 $2"; tail -3 "$OUT/bench-$1-$2.err"
  python3 - "$OUT/bench-$1-$2.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
pp = [k for k in r if k.startswith("pp")][0]; tg = [k for k in r if k.startswith("tg")][0]
print(f"{r['model']}: {pp} median {r[pp]['median']:.0f} tok/s (mean {r[pp]['mean']:.0f} ± {r[pp]['sd']:.0f}); "
      f"{tg} median {r[tg]['median']:.1f} tok/s (mean {r[tg]['mean']:.1f} ± {r[tg]['sd']:.1f}); "
      f"MBU {100*r.get('mbu',0):.1f}% MFU {100*r.get('mfu',0):.1f}%; load {r['load_s']:.1f}s warm {r['warmup_s']:.1f}s")
print("memory", {k: round(v / 2**20) for k, v in r["memory"].items()}, "MiB; ceilings",
      {k: (round(v / 1e9) if isinstance(v, float) else v) for k, v in r.get("ceilings", {}).items()})
PY
}
if [[ " $WHAT " == *" profile "* ]]; then
  echo "== tests"; DRIFT_TEST_GPU=1 timeout 200 python3 -m pytest -q -p no:cacheprovider \
    tests/backends/test_triton_kernels.py 2>&1 | tail -2
  python3 -m drift make-random llama-3.1-8b Q4_0 /tmp/llama-3.1-8b-Q4_0.gguf 2>/dev/null | tail -1
  echo "== profile 8b"; timeout 300 python3 bench/profile_ops.py /tmp/llama-3.1-8b-Q4_0.gguf \
    --sweep --out "$OUT/profile-8b.json" 2>&1 | tee "$OUT/profile-8b.log" | grep -v "^  gemm .*Error"
fi
if [[ $WHAT == all || " $WHAT " == *" 1b "* ]]; then echo "== (c) llama-3.2-1b Q4_0"; bench llama-3.2-1b Q4_0; fi
if [[ $WHAT == all || " $WHAT " == *" 8b "* ]]; then echo "== (c) llama-3.1-8b Q4_0"; bench llama-3.1-8b Q4_0; fi
