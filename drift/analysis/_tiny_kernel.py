"""The smallest kernel `drift probe` launches on CUDA to measure the fixed cost of a launch:
one program storing one float. Kept in its own module because Triton compiles a kernel
from its module's source and globals; imported only by the CUDA probe."""

import triton
import triton.language as tl


@triton.jit
def tiny_kernel(p):
    tl.store(p, 1.0)
