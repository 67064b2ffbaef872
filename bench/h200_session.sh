#!/usr/bin/env bash
# The device calls behind BENCHMARKS.md's H200 figures for issue 8 (one lease, back-to-back
# calls: a machine stays warm 30 s after each, and /tmp on it lives as long as the machine).
#   start    install the gguf wheel, start make-random of the four benchmark models in the
#            background (setsid: it outlives the call), store chunk 1 of the reference models
#   chunk N  store .chunkN/part (the two reference models, cat'ed and split in 58 MiB pieces:
#            a call carries at most 64 MiB)
#   check    assemble + sha256 the reference models; the Triton tests on the GPU; greedy 32
#            tokens triton vs numpy on both reference models
#   bench    drift bench -p 512 -n 128 -r 5 on each model, the tree before the change (.old,
#            `git archive <commit>`) and this one alternately, on the same GPU
#   tune     drift tune on the benchmark shapes, then bench 8B Q4_0 with the table
# run(command="bash bench/h200_session.sh VERB [N]", carry=[".whl", ".old", ".chunkN"])
set -o pipefail
VERB=$1; N=$2
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/parts /tmp/m
if [[ ! -f /tmp/site/.ok ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && touch /tmp/site/.ok || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
MODELS="llama-3.1-8b-Q4_0 llama-3.2-1b-Q4_0 llama-3.1-8b-Q8_0 llama-3.1-8b-Q4_K"
bench_one() {  # tree label model
  local tree=$1 label=$2 m=$3
  (cd "$tree" && PYTHONPATH=/tmp/site:$PWD timeout 240 python3 -m drift bench /tmp/m/$m.gguf \
     -p 512 -n 128 -r 5 --device cuda --json > "$OUT/bench-$label-$m.json" \
     2> "$OUT/bench-$label-$m.err"); echo "rc=$? $label $m"
  python3 - "$OUT/bench-$label-$m.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
pp = next(v for k, v in r.items() if k.startswith("pp")); tg = next(v for k, v in r.items() if k.startswith("tg"))
print(f"  pp512 median {pp['median']:.1f} samples {[round(x) for x in pp['samples']]}; "
      f"tg128 median {tg['median']:.1f} samples {[round(x, 1) for x in tg['samples']]}; memory {r['memory']}")
EOF
}
case $VERB in
start)
  { nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    nproc; } 2>&1 | tee /tmp/m/env.txt
  setsid nohup bash -c "cd $PWD; for m in 'llama-3.2-1b Q4_0' 'llama-3.1-8b Q4_0' 'llama-3.1-8b Q8_0' 'llama-3.1-8b Q4_K'; do
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
  echo "== Triton tests on the GPU"
  DRIFT_TEST_GPU=1 timeout 200 python3 -m pytest -q -p no:cacheprovider \
    tests/backends/test_triton_kernels.py tests/backends/test_triton_backend.py \
    tests/backends/test_conformance.py 2>&1 | tee "$OUT/tests.log" | tail -6
  for m in smollm2 gemma3; do
    echo "== $m: greedy 32 tokens, triton vs numpy"
    timeout 150 python3 bench/smollm2_check.py /tmp/m/$m.gguf --steps 32 --json "$OUT/check-$m.json" \
      2>&1 | tee "$OUT/check-$m.log" | tail -4
  done
  tail -c 400 /tmp/m/gen.log; ls -la /tmp/m ;;
bench)
  for m in $MODELS; do
    [[ -f /tmp/m/$m.gguf ]] || { echo "missing $m"; tail -3 /tmp/m/gen.log; continue; }
    bench_one .old before "$m"
    bench_one . after "$m"
  done ;;
tune)  # this tree with any-type dense entries, then drift tune on the Q4_K shapes, each benched
  [[ -n $DENSE_ANY ]] && bench_one . dense-any llama-3.1-8b-Q4_K
  timeout 240 python3 -m drift tune /tmp/m/llama-3.1-8b-Q4_K.gguf --budget 150 2>&1 | tail -25
  cp ~/.cache/drift/tuned/*.json "$OUT/" 2>/dev/null
  for m in $MODELS; do bench_one . tuned "$m"; done ;;
esac
