"""TEMPORARY: delegates to gguf-py until the hand-written numpy dequantizers land."""
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants as _q

SUPPORTED = frozenset([Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0,
                       Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K])


def dequantize(raw, qtype, shape, tensor_name=None):
    return np.asarray(_q.dequantize(np.asarray(raw), qtype), dtype=np.float32).reshape(shape)
