"""The FFN neuron permutation a placement implies: GPU neurons first.

Neuron j of a gated FFN is row j of gate, row j of up and column j of down; permuting the
three together leaves down(act(gate x) * up x) unchanged (the sum over neurons is reordered).
Gate and up rows are whole quant rows in a GGUF file (each row is its own blocks), so they
permute as raw bytes too (`permute_rows`); down's columns cut across its blocks (32 or 256
neurons per block), so down permutes dequantized, or re-quantized transposed as PowerInfer
stores it: that choice belongs to the split pass, not here.
"""

from __future__ import annotations

import numpy as np

from drift.errors import InvalidArgumentError


def _check(perm: np.ndarray, n: int) -> np.ndarray:
    perm = np.asarray(perm, dtype=np.int64)
    if perm.shape != (n,) or not np.array_equal(np.sort(perm), np.arange(n)):
        raise InvalidArgumentError(f"not a permutation of {n} neurons")
    return perm


def permute_rows(rows: np.ndarray, perm) -> np.ndarray:
    """Rows of a (F, ...) array (floats, or a quantized tensor's raw (F, row_bytes)) in
    `perm` order."""
    return rows[_check(perm, rows.shape[0])]


def permute_ffn(gate: np.ndarray, up: np.ndarray, down: np.ndarray, perm
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """gate (F, D), up (F, D), down (D, F) with neuron perm[i] moved to position i."""
    F = gate.shape[0]
    if up.shape[0] != F or down.shape[1] != F:
        raise InvalidArgumentError(f"gate {gate.shape}, up {up.shape}, down {down.shape}: "
                                   "not one FFN")
    perm = _check(perm, F)
    return gate[perm], up[perm], down[:, perm]
