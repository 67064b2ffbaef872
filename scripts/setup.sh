#!/usr/bin/env bash
# Everything drift needs to generate on this machine: the package, and the GPU stack when a
# GPU is present. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras="analysis"  # matplotlib: the plots of `drift profile --html` and `drift analyze --html`
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    extras="triton,${extras}"  # torch with CUDA and triton: the fast path
fi
$PY -m pip install -q --disable-pip-version-check -e ".[${extras}]"
