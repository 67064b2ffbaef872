"""Which FFN neurons go to the GPU: PowerInfer's placement as a small MILP.

Given per layer l the activation mass of each neuron (`mass[l][j]`: a calibration statistic,
e.g. its activation frequency at a sparsity or its mean |act(gate)*up|), the bytes one neuron
costs on the GPU (`cost[l]`: its gate row + up row + down column at the file's quant types,
`ffn_neuron_bytes`), a GPU byte budget B, a minimum count m_l for a layer that uses the GPU at
all, and a per-layer synchronization cost s_l (in mass units: what merging the GPU's partial
sum into the CPU's costs, paid once per layer that has GPU neurons), choose the GPU neurons
maximizing

    sum of the GPU neurons' mass  -  sum over GPU layers of s_l

subject to: GPU bytes <= B; each layer has 0 or >= m_l GPU neurons. (PowerInfer derives m_l
from the synchronization time: a layer is worth splitting only when the GPU's share outlasts
the transfer.)

Formulation over per-layer prefix counts. All neurons of a layer cost the same (a layer's
gate, up and down each have one quant type), so for any count k the best k neurons of a layer
are its k largest by mass (exchanging a chosen neuron for a heavier unchosen one keeps the
cost and does not lower the mass). The problem is then: choose k_l in {0} U [m_l, F_l]
maximizing sum_l P_l(k_l) - s_l z_l, P_l the prefix sums of the layer's sorted masses. P_l is
concave, so it is written with one continuous u_lj in [0, 1] per sorted neuron and
k_l = sum_j u_lj: for integer k_l an LP optimum fills u in mass order, so the MILP has only 2L
integer variables (k_l, and the binary z_l with m_l z_l <= k_l <= F_l z_l) and the budget
sum_l cost_l k_l <= B. HiGHS (`scipy.optimize.milp`) solves it to proven optimality (about a second for 30 x 1536
neurons; masses with many ties, like activation frequencies that are multiples of 1/N, can
take tens of seconds at small budgets: `time_limit` returns the best placement found by then); a final
greedy pass spends any budget left on the next-heaviest neurons of the GPU layers (it never
lowers the objective: masses are >= 0), so a budget that covers the model puts it all on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from drift.errors import InvalidArgumentError


@dataclass(frozen=True)
class Placement:
    order: list[np.ndarray]  # per layer, a permutation of its neurons: GPU ones first, by mass
    n_gpu: np.ndarray  # (L,) GPU neurons per layer
    gpu_bytes: float
    gpu_mass: float  # mass served by the GPU
    total_mass: float
    objective: float  # gpu_mass - sync costs of the GPU layers

    def gpu_neurons(self, layer: int) -> np.ndarray:
        return self.order[layer][: self.n_gpu[layer]]

    @property
    def gpu_fraction(self) -> float:
        return self.gpu_mass / self.total_mass if self.total_mass else 0.0


def _per_layer(value, L: int, what: str, dtype=float) -> np.ndarray:
    a = np.broadcast_to(np.asarray(value, dtype=dtype), (L,)).copy()
    if np.any(a < 0) or not np.all(np.isfinite(a)):
        raise InvalidArgumentError(f"{what} must be finite and >= 0")
    return a


def solve_placement(mass: Sequence[np.ndarray] | np.ndarray, cost, budget: float,
                    min_neurons=0, sync_cost=0.0, gap: float = 0.0,
                    time_limit: float | None = None) -> Placement:
    """The placement maximizing GPU mass minus sync costs under `budget` bytes (see above).
    mass: per layer (F_l,) >= 0; cost, min_neurons, sync_cost: scalars or per layer. gap: the
    relative optimality gap HiGHS may stop at (default 0: proven optimal; 30 layers x 1536
    neurons take about a second)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    masses = [np.asarray(m, dtype=np.float64).reshape(-1) for m in mass]
    L = len(masses)
    if L == 0 or any(m.size == 0 or np.any(m < 0) or not np.all(np.isfinite(m)) for m in masses):
        raise InvalidArgumentError("mass: one non-empty array of finite values >= 0 per layer")
    cost = _per_layer(cost, L, "cost")
    sync = _per_layer(sync_cost, L, "sync_cost")
    F = np.array([m.size for m in masses])
    minimum = np.maximum(_per_layer(min_neurons, L, "min_neurons", np.int64), 1)
    if budget < 0:
        raise InvalidArgumentError(f"budget must be >= 0, got {budget}")
    order = [np.argsort(-m, kind="stable") for m in masses]
    sorted_mass = [m[o] for m, o in zip(masses, order)]
    prefix = [np.concatenate([[0.0], np.cumsum(s)]) for s in sorted_mass]

    # variables: u (sum F, continuous [0,1]) | k (L, integer) | z (L, binary)
    nu = int(F.sum())
    n = nu + 2 * L
    kk, zz = nu + np.arange(L), nu + L + np.arange(L)
    c = np.concatenate([-np.concatenate(sorted_mass), np.zeros(L), sync])
    rows, cols, vals = [], [], []
    lo, hi = [], []
    start = np.concatenate([[0], np.cumsum(F)])
    r = 0
    for l in range(L):  # k_l - sum_j u_lj = 0
        rows += [r] * (F[l] + 1)
        cols += list(range(start[l], start[l + 1])) + [kk[l]]
        vals += [-1.0] * F[l] + [1.0]
        lo.append(0.0), hi.append(0.0)
        r += 1
    for l in range(L):  # m_l z_l <= k_l <= F_l z_l
        rows += [r, r, r + 1, r + 1]
        cols += [kk[l], zz[l], kk[l], zz[l]]
        vals += [1.0, -float(minimum[l]), 1.0, -float(F[l])]
        lo += [0.0, -np.inf]
        hi += [np.inf, 0.0]
        r += 2
    rows += [r] * L  # sum_l cost_l k_l <= B
    cols += list(kk)
    vals += list(cost)
    lo.append(-np.inf), hi.append(float(budget))
    r += 1
    A = coo_matrix((vals, (rows, cols)), shape=(r, n)).tocsr()
    upper = np.concatenate([np.ones(nu), F.astype(float), np.where(minimum <= F, 1.0, 0.0)])
    integrality = np.concatenate([np.zeros(nu), np.ones(2 * L)])
    # HiGHS's presolve takes ~20x the solve on model-sized inputs (tens of seconds for 30 x
    # 1536 neurons) and finds nothing to remove in this formulation: off.
    options = {"mip_rel_gap": float(gap), "presolve": False}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    res = milp(c, constraints=LinearConstraint(A, lo, hi), integrality=integrality,
               bounds=Bounds(np.zeros(n), upper), options=options)
    if res.x is None:
        raise RuntimeError(f"placement MILP failed: {res.message}")  # z = 0 is always feasible
    k = np.rint(res.x[kk]).astype(np.int64)
    k[k < np.minimum(minimum, F)] = 0

    def used() -> float:
        return float((cost * k).sum())

    # Rounding within the solver's tolerance may overshoot the budget by a hair: give back.
    while used() > budget * (1 + 1e-12) + 1e-9:
        l = min((l for l in range(L) if k[l] > 0), key=lambda l: sorted_mass[l][k[l] - 1])
        k[l] -= 1
        if k[l] < minimum[l]:
            k[l] = 0
    # Spend what is left on the heaviest next neurons of the layers already on the GPU.
    while True:
        left = budget - used()
        cand = [l for l in range(L) if 0 < k[l] < F[l] and cost[l] <= left + 1e-9]
        if not cand:
            break
        l = max(cand, key=lambda l: sorted_mass[l][k[l]])
        k[l] += 1
    gpu_mass = float(sum(prefix[l][k[l]] for l in range(L)))
    objective = gpu_mass - float(sync[k > 0].sum())
    return Placement(order, k, used(), gpu_mass, float(sum(p[-1] for p in prefix)), objective)


def ffn_neuron_bytes(model_file, n_layers: int, down_type=None) -> np.ndarray:
    """Bytes one FFN neuron of each layer costs: a row of gate, a row of up (D elements each,
    at the file's types) and a column of down (D elements, at down's type in the file, or at
    `down_type`: the split holds a hot neuron's down column as Q8_0)."""
    from gguf import GGML_QUANT_SIZES

    out = np.empty(n_layers)
    for l in range(n_layers):
        total = 0.0
        for part in ("gate", "up", "down"):
            info = model_file.tensors[f"blk.{l}.ffn_{part}.weight"]
            qtype = down_type if part == "down" and down_type is not None else info.qtype
            block, size = GGML_QUANT_SIZES[qtype]
            d = info.shape[1] if part != "down" else info.shape[0]  # numpy (F, D) / (D, F)
            total += d * size / block
        out[l] = total
    return out
