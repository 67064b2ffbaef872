#!/usr/bin/env bash
# One lease, several back-to-back device calls (a machine stays warm 30 s after each; /tmp
# on it lives as long as the machine):
#   start  - install the gguf wheel into /tmp/site, start make-random of the three benchmark
#            models in the background (setsid: it outlives the call), store chunk 1
#   chunk N - store .chunkN/part (the two reference models, cat'ed and split in 58 MiB pieces
#            since a call carries at most 64 MiB) under /tmp/parts
#   check  - assemble + sha256 the reference models; GPU kernel tests; greedy 32 tokens
#            triton vs numpy on both; the GEMV/GEMM sweep
#   bench  - drift bench -p 512 -n 128 -r 5 --json on the three models; drift profile (8B)
# run(command="bash bench/gpu_session.sh VERB [N]", carry=[".whl", ".chunkN"])
set -o pipefail
VERB=$1; N=$2
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/parts /tmp/m
if [[ ! -f /tmp/site/.ok ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && touch /tmp/site/.ok || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
case $VERB in
start)
  { nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    nproc; } 2>&1 | tee /tmp/m/env.txt
  setsid nohup bash -c "cd $PWD; for m in 'llama-3.2-1b Q4_0' 'llama-3.1-8b Q4_0' 'llama-3.1-8b Q8_0'; do
      set -- \$m; f=/tmp/m/\$1-\$2.gguf
      /usr/bin/time -f \"\$1 \$2 %e s\" python3 -m drift make-random \$1 \$2 \$f.part && mv \$f.part \$f
    done" > /tmp/m/gen.log 2>&1 < /dev/null &
  cp .chunk1/part /tmp/parts/1; ls -la /tmp/parts ;;
chunk)
  cp .chunk$N/part /tmp/parts/$N; ls -la /tmp/parts /tmp/m; tail -c 300 /tmp/m/gen.log ;;
check)
  cp /tmp/m/env.txt "$OUT/"
  cat /tmp/parts/{1,2,3,4,5,6} > /tmp/all && head -c 98362432 /tmp/all > /tmp/m/smollm2.gguf &&
    tail -c +98362433 /tmp/all > /tmp/m/gemma3.gguf && rm /tmp/all
  sha256sum /tmp/m/smollm2.gguf /tmp/m/gemma3.gguf | tee "$OUT/sha.txt"
  echo "== GPU kernel tests"
  DRIFT_TEST_GPU=1 timeout 150 python3 -m pytest -q -p no:cacheprovider tests/backends/test_triton_kernels.py \
    tests/backends/test_triton_backend.py 2>&1 | tee "$OUT/tests.log" | tail -4
  for m in smollm2 gemma3; do
    echo "== $m: greedy 32 tokens, triton vs numpy"
    timeout 150 python3 bench/smollm2_check.py /tmp/m/$m.gguf --steps 32 --json "$OUT/check-$m.json" \
      2>&1 | tee "$OUT/check-$m.log" | tail -5
  done
  echo "== gemma3 with the float GEMV (where does the logits error come from?)"
  DRIFT_TRITON_INTGEMV=0 timeout 100 python3 bench/smollm2_check.py /tmp/m/gemma3.gguf --steps 32 \
    2>&1 | tee "$OUT/check-gemma3-floatgemv.log" | grep "max logits"
  [[ -n $NOSWEEP ]] || echo "== sweep"; [[ -n $NOSWEEP ]] || timeout 280 python3 -m drift tune --budget 240 --out "$OUT/sweep.json" 2>&1 | tee "$OUT/sweep.log"
  tail -c 400 /tmp/m/gen.log; ls -la /tmp/m ;;
bench)
  for m in llama-3.1-8b-Q4_0 llama-3.2-1b-Q4_0 llama-3.1-8b-Q8_0; do
    [[ -f /tmp/m/$m.gguf ]] || { echo "missing $m"; tail -5 /tmp/m/gen.log; continue; }
    timeout 200 python3 -m drift bench /tmp/m/$m.gguf -p 512 -n 128 -r 5 --device cuda --json \
      > "$OUT/bench-$m.json" 2> "$OUT/bench-$m.err"; echo "rc=$? $m"; tail -2 "$OUT/bench-$m.err"
    python3 bench/bench_summary.py "$OUT/bench-$m.json"
  done ;;
profile)
  timeout 300 python3 -m drift profile /tmp/m/llama-3.1-8b-Q4_0.gguf --device cuda --prompt-len 512 \
    --decode-tokens 16 --all-ops --json > "$OUT/profile-8b.json" 2> "$OUT/profile-8b.err"; echo "rc=$?"
  tail -3 "$OUT/profile-8b.err"
  timeout 200 python3 -m drift profile /tmp/m/llama-3.1-8b-Q4_0.gguf --device cuda --prompt-len 512 \
    --decode-tokens 16 2>&1 | tee "$OUT/profile-8b.txt" | tail -60 ;;
esac
