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
# The portable GPU APIs: wgpu-py where a Vulkan/Metal/D3D12 driver is present, pyopencl where an
# OpenCL platform (an ICD) is. Each backend reads its device at run time.
gpu_pkgs=""
if [ "$(uname)" = Darwin ] || ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json \
        >/dev/null 2>&1 || [ -n "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ]; then
    gpu_pkgs="$gpu_pkgs wgpu"
fi
if ls /etc/OpenCL/vendors/*.icd >/dev/null 2>&1 || [ -n "${OCL_ICD_VENDORS:-}" ]; then
    gpu_pkgs="$gpu_pkgs pyopencl"
fi
if [ -n "$gpu_pkgs" ]; then
    # shellcheck disable=SC2086
    $PY -m pip install -q --disable-pip-version-check -c scripts/constraints.txt $gpu_pkgs
fi
