#!/usr/bin/env bash
# Issue 5 on the GPU in one device call: drift probe --device cuda (ceilings and the launch
# latency), then drift profile of a random-weight Llama-3.1-8B Q4_0 (made here, in the
# background while the probe runs), JSON / HTML / PNG into $OUT (8 files).
# It runs the committed tree (git archive HEAD, carried in .carry-analysis/src) so that other
# engineers' uncommitted edits in the working tree do not change what is measured:
#   rm -rf .carry-analysis && mkdir -p .carry-analysis/src &&
#     git archive HEAD | tar -x -C .carry-analysis/src
#   run(command="bash .carry-analysis/src/bench/analysis_gpu.sh", carry=[".whl", ".carry-analysis"])
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/m
SRC=$(cd "$(dirname "$0")/.." && pwd)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$SRC PYTHONUNBUFFERED=1 DRIFT_HOME=/tmp/dh
M=/tmp/m/llama-3.1-8b-Q4_0.gguf
( cd "$SRC" && /usr/bin/time -f "make-random %e s" python3 -m drift make-random llama-3.1-8b Q4_0 $M ) \
  > /tmp/m/gen.log 2>&1 &
GEN=$!
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem,power.draw,power.limit --format=csv
  python3 -c "import torch, triton, pynvml; print('torch', torch.__version__, 'triton', triton.__version__, 'pynvml ok')"
  (cd "$SRC" && git log -1 --oneline 2>/dev/null); } > "$OUT/env.txt" 2>&1
echo "== probe"
( cd "$SRC" && timeout 150 python3 -m drift probe --device cuda ) 2>&1 | tee "$OUT/probe.txt"
cp /tmp/dh/probe/cuda.json "$OUT/probe-cuda.json"
wait $GEN; cat /tmp/m/gen.log | tail -3 | tee -a "$OUT/env.txt"
echo "== profile"
( cd "$SRC" && timeout 360 python3 -m drift profile $M --device cuda --prompt-len 512 \
    --decode-tokens 16 --all-ops --json-out "$OUT/profile-8b.json" --html "$OUT/profile-8b.html" \
    --plot-dir "$OUT" ) > "$OUT/profile-8b.txt" 2>&1
echo "rc=$?"
tail -c 9000 "$OUT/profile-8b.txt"
