#!/usr/bin/env bash
# Hybrid CPU-GPU execution on the H200 machine (issue 10): Llama-3.1-8B Q4_0 (drift
# make-random shapes) within a GPU memory budget, neuron placement against drift's own layer
# offload, next to llama.cpp's -ngl 16 / -ngl 24 (../shared/ANCHORS.md).
# run(command="STEP=kernels bash bench/hybrid_session.sh", carry=[".whl"]) the CPU kernels alone
#   (KERNEL_SWEEP=1 with another STEP: the same first, then that step)
# run(command="STEP=cal bash bench/hybrid_session.sh", carry=[".whl"])     make the file, calibrate
# run(command="STEP=bench CONFIGS='2.05G:layers:0 ...' bash bench/hybrid_session.sh", carry=[".whl"])
#   each config is BUDGET:OFFLOAD:SPARSITY (drift bench --gpu-mem --offload --sparsity)
# run(command="STEP=all CONFIGS=... bash bench/hybrid_session.sh", carry=[".whl"])
#   the file (if missing), the calibration (if missing), then the configs: one call
#   (TIMELINE="2.98G:0.9 ...": bench/hybrid_timeline.py first; CONFIGS=none: nothing else)
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/m
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 DRIFT_HOME=/tmp/drift-home; mkdir -p $DRIFT_HOME
M=/tmp/m/llama-3.1-8b-Q4_0.gguf
echo "cpus $(nproc); $(lscpu | grep 'Model name')"
lscpu | grep -E "^(CPU\(s\)|Thread|Core|Socket|NUMA node\(s\)|L2|L3|CPU max MHz)" | tr -s " "
if [[ $STEP == kernels || -n $KERNEL_SWEEP ]]; then
  # the CPU kernels alone, the gates given (the GPU's), a fresh x each token: instruction set
  # (AVX-512 paths or AVX2 only) x layout (a record per neuron or four planes) x threads;
  # then the loops' own cost, cache-resident (one thread, 2 x 128 neurons all active)
  for isa in native avx2; do for lay in records planes; do for t in ${THREADS:-16 8}; do
    r=$(DRIFT_CPU_ISA=$isa OMP_NUM_THREADS=$t python3 bench/hybrid_kernels.py --gate-given \
        --layout $lay --sparsity 0.9 --tokens 6 2>&1 | tail -1)
    echo "isa $isa layout $lay threads $t: $r" | tee -a "$OUT/kernels.txt"
  done; done
    r=$(DRIFT_CPU_ISA=$isa OMP_NUM_THREADS=1 python3 bench/hybrid_kernels.py --gate-given \
        --layers 2 --cold 128 --same-x --sparsity 0 --tokens 50 2>&1 | tail -1)
    echo "isa $isa resident, 1 thread, 256 neurons: $r" | tee -a "$OUT/kernels.txt"
  done
  [[ $STEP == kernels ]] && exit
fi
if [[ -n $PREFETCH_SWEEP ]]; then  # the skipping loops' prefetch (ROWS,LEVEL ...), then the best
  python3 bench/hybrid_kernels.py --gate-given --tokens 6 --sparsity 0.9 \
    --prefetch $PREFETCH_SWEEP 2>&1 | tee -a "$OUT/prefetch.txt" | tail -$((2 * $(wc -w <<< "$PREFETCH_SWEEP")))
  best=$(awk '/^prefetch/ {s=$2","$6} /^sparsity/ {if (!b || $3 < m) {m=$3; b=s}} END {print b}' "$OUT/prefetch.txt")
  export DRIFT_CPU_PREFETCH=$best; echo "benches with DRIFT_CPU_PREFETCH=$best (${SECONDS}s)"
fi
[[ -f $M ]] || python3 -m drift make-random llama-3.1-8b Q4_0 $M 2>&1 | tail -1; echo "file at ${SECONDS}s"
if [[ $STEP == cal || ( $STEP == all && ! -f $DRIFT_HOME/calibrated ) ]]; then
  # thresholds of |act(gate)| for the random file (no real hotness: they set the sparsity)
  timeout 400 python3 -m drift calibrate $M --tokens ${TOKENS:-256} --ctx 256 --device cuda \
    2>&1 | tail -6 | tee "$OUT/calibrate.txt" && touch $DRIFT_HOME/calibrated
  [[ $STEP == cal ]] && exit
fi
for cfg in ${TIMELINE}; do  # MEM:SPARSITY: where a decode token's time goes (host and GPU)
  IFS=: read -r mem sp <<< "$cfg"
  timeout ${BENCH_TIMEOUT:-240} python3 bench/hybrid_timeline.py $M --gpu-mem $mem \
    --sparsity $sp 2>&1 | tee "$OUT/timeline-$mem-$sp.txt" | tail -14
done
[[ $CONFIGS == none ]] && exit
for cfg in ${CONFIGS:-"2.05G:layers:0 2.05G:neurons:0.9"}; do
  IFS=: read -r mem off sp <<< "$cfg"
  f="$OUT/bench-$mem-$off-$sp.txt"
  timeout ${BENCH_TIMEOUT:-240} python3 -m drift bench $M -p ${P:-512} -n ${N:-32} -r ${R:-2} \
    --gpu-mem $mem --offload $off --sparsity $sp --no-ceilings > "$f" 2>&1
  echo "rc=$? $cfg (${SECONDS}s)"; grep -E "^\| |memory|hybrid|Error|error" "$f" | head -8
done
