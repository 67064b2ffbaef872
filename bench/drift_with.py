"""Run a `drift` command with kernel constants set, to compare variants end to end in one
device session (the constants of `bench/gpuapi_kernels.py --variants`):

    python bench/drift_with.py kernel_tile_rows=1 GEMV_ROW_TILE=4 -- bench M.gguf --device opencl

`kernel_tile_rows` is GPUBackend's (the quant planes' tile), the others the templates'.
"""

from __future__ import annotations

import ast
import sys

from drift.backends.kernels import templates
from drift.backends.kernels.gpu import GPUBackend
from drift.cli import entry


def main() -> None:
    if "--" not in sys.argv:
        sys.exit(__doc__)
    cut = sys.argv.index("--")
    for item in sys.argv[1:cut]:
        key, _, value = item.partition("=")
        owner = GPUBackend if key == "kernel_tile_rows" else templates
        if not hasattr(owner, key):
            sys.exit(f"drift_with: no constant {key}")
        try:
            setattr(owner, key, ast.literal_eval(value))
        except (ValueError, SyntaxError):
            sys.exit(f"drift_with: {item!r} is not CONSTANT=python-literal")
        print(f"drift_with: {key} = {value}", file=sys.stderr)
    sys.argv = ["drift", *sys.argv[cut + 1 :]]
    entry()


if __name__ == "__main__":
    main()
