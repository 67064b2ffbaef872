"""Run a `drift` command with kernel constants set, to compare variants end to end in one
device session (the constants of `bench/gpuapi_kernels.py --variants`):

    python bench/drift_with.py kernel_tile_rows=1 GEMV_ROW_TILE=4 -- bench M.gguf --device opencl

`kernel_tile_rows` (the quant planes' tile) and `render_memo` are GPUBackend's, the others the
templates'.
"""

from __future__ import annotations

import sys

import kernel_constants as constants  # (bench/, the script's folder)
from drift.cli import entry


def main() -> None:
    if "--" not in sys.argv:
        sys.exit(__doc__)
    cut = sys.argv.index("--")
    try:
        settings = constants.parse(sys.argv[1:cut])
    except ValueError as e:
        sys.exit(f"drift_with: {e}")
    constants.apply(settings)
    for key, value in settings.items():
        print(f"drift_with: {key} = {value!r}", file=sys.stderr)
    sys.argv = ["drift", *sys.argv[cut + 1 :]]
    entry()


if __name__ == "__main__":
    main()
