#!/usr/bin/env bash
# One device call for issue 4 item 4 (prefill: dequantized fp16 tiles vs int8 x int8):
#   run(command="bash bench/int8_session.sh", carry=[".whl"], kind="nvidia-h100-x1")
# 1. make-random 1B Q4_0/Q8_0 and 8B Q4_0/Q8_0 in the background
# 2. the int8 GEMM's interpreter tests (and the other matmul tests) compiled on the GPU
# 3. bench/int8_prefill.py: every prefill variant at M = 512 on the 8B shapes, with errors;
#    writes the tuned table with the accurate fastest path per shape to /tmp/m/tuned.json
# 4. bench/int8_logits.py: logits of each path vs the numpy backend (1B, 128-token prompt)
# 5. drift bench 8B Q4_0 / Q8_0: default (dense), the new table, the fastest int8 forced
# Everything lands in $OUT; the whole stays under BUDGET (430) s + one bench.
set -o pipefail
T0=$SECONDS
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/m
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  nproc; } 2>&1 | tee "$OUT/env.txt"
gen() { /usr/bin/time -f "$1 $2 %e s" python3 -m drift make-random "$1" "$2" "$3.part" --workers 5 \
          > /dev/null 2>> /tmp/m/gen.log && mv "$3.part" "$3"; }
( gen llama-3.2-1b Q4_0 /tmp/m/1b-Q4_0.gguf; gen llama-3.2-1b Q8_0 /tmp/m/1b-Q8_0.gguf ) &
gen llama-3.1-8b Q4_0 /tmp/m/8b-Q4_0.gguf &
gen llama-3.1-8b Q8_0 /tmp/m/8b-Q8_0.gguf &

echo "== GPU tests (int8 GEMM and the other matmuls) $((SECONDS - T0)) s"
DRIFT_TEST_GPU=1 timeout 70 python3 -m pytest -q -p no:cacheprovider \
  tests/backends/test_triton_kernels.py -k "int8 or unpack or prefill_path or matmul_dequant" 2>&1 \
  | tee "$OUT/tests.log" | tail -4

echo "== prefill GEMM variants, M = 512 $((SECONDS - T0)) s"
timeout 150 python3 bench/int8_prefill.py --out "$OUT/int8_prefill.json" --table /tmp/m/tuned.json \
  2>&1 | tee "$OUT/int8_prefill.log" | grep -v "^  " | tail -12
cp /tmp/m/tuned.json "$OUT/tuned.json" 2>/dev/null

echo "== logits vs numpy, 1B, 128-token prompt $((SECONDS - T0)) s"
for q in Q4_0 Q8_0; do
  for i in $(seq 60); do [[ -f /tmp/m/1b-$q.gguf ]] && break; sleep 2; done
  timeout 75 python3 bench/int8_logits.py /tmp/m/1b-$q.gguf --prompt-len 128 --steps 2 \
    --paths dense,i8,i8x2 --json "$OUT/logits-1b-$q.json" 2>&1 | tee -a "$OUT/logits.log" | grep "rel diff"
done

echo "== drift bench 8B $((SECONDS - T0)) s"; cat /tmp/m/gen.log
fastest() {  # the fastest int8 variant at 14336x4096 for quant $1, whatever its error
  python3 - "$OUT/int8_prefill.json" "$1" <<'PY'
import json, sys
rows = [r for r in json.load(open(sys.argv[1]))["rows"] if r["kind"] == sys.argv[2]
        and r["N"] == 14336 and r["variant"].startswith("i8")]
print(min(rows, key=lambda r: r["us"])["variant"] if rows else "i8")
PY
}
for q in Q4_0 Q8_0; do
  f=/tmp/m/8b-$q.gguf
  for i in $(seq 90); do [[ -f $f ]] && break; sleep 2; done
  [[ -f $f ]] || { echo "missing $f"; continue; }
  F=$(fastest $q)
  modes="dense $F"  # and the new table, where it picked an int8 path for this quant
  python3 -c "import json,sys; b=json.load(open('/tmp/m/tuned.json'))['best']; sys.exit(not any(
    k.startswith('prefill $q') and v[0].startswith('i8') for k, v in b.items()))" 2>/dev/null \
    && modes="$modes table"
  for mode in $modes; do
    left=$((${BUDGET:-430} - (SECONDS - T0))); (( left < 30 )) && { echo "out of time before $q $mode"; break; }
    env=(DRIFT_TRITON_PREFILL=$mode); [[ $mode == table ]] && env=(DRIFT_TRITON_TUNED=/tmp/m/tuned.json)
    nc=--no-ceilings; [[ $mode == dense ]] && nc=
    env "${env[@]}" timeout $((left < 50 ? left : 50)) python3 -m drift bench $f -p 512 -n 128 -r 5 \
      --device cuda --json $nc > "$OUT/bench-8b-$q-$mode.json" 2> "$OUT/bench-8b-$q-$mode.err"
    echo "rc=$? 8B $q prefill=$mode"; python3 bench/bench_summary.py "$OUT/bench-8b-$q-$mode.json" 2>&1 | tail -3
  done
done
echo "done $((SECONDS - T0)) s"
