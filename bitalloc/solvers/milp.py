"""The multiple-choice knapsack as a 0/1 program, shared by every ILP backend.

One binary x_j per allowed (row, candidate) cell; Σ_k x_mk = 1 for each row m; for each
constraint i, Σ_j a_ij x_j <= cap_i. For numerical range the objective has each row's minimum
subtracted (a constant) and is divided by its largest entry; each constraint row is divided by
its largest coefficient.

Objective `max` (min-max): one more column t, minimized, and one more row per unit,
Σ_k s_mk x_mk − t ≤ 0 (tighter in the LP than one row per cell, s_mk x_mk ≤ t). For numerical
range s is the score minus a lower bound of t (the largest row minimum, or a certified bound
given to `build`; so t ≥ 0, and scores below it become 0) over its largest entry.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..problem import Compiled


@dataclass
class Milp:
    """row, cand: (J,) cell of each variable; cost: (J,) scaled objective; A: (n_cons, J) scaled
    coefficients; caps: (n_cons,) scaled caps; raw_A / raw_caps unscaled; offset, obj_scale:
    true objective = scaled · obj_scale + offset; M rows, K candidates."""

    row: np.ndarray
    cand: np.ndarray
    cost: np.ndarray
    A: np.ndarray
    caps: np.ndarray
    raw_A: np.ndarray
    raw_caps: np.ndarray
    offset: float
    obj_scale: float
    M: int
    K: int
    info: dict = field(default_factory=dict)
    smax: np.ndarray | None = None  # objective max: (J,) scaled score of each cell in the t rows

    @classmethod
    def build(cls, comp: Compiled, floor: float | None = None) -> "Milp":
        """floor: a certified lower bound of the `max` objective (t starts there; scores below it
        do not matter)."""
        S = comp.S
        M, K = S.shape
        ok = np.isfinite(S)
        row, cand = np.nonzero(ok)
        rmin = np.where(ok, S, np.inf).min(1)
        if comp.objective == "max":
            offset = max(float(rmin.max()), floor if floor is not None and np.isfinite(floor) else -np.inf)
            cost = np.maximum(S[row, cand] - offset, 0.0)
        else:
            offset = float(rmin.sum())
            cost = S[row, cand] - rmin[row]
        scale = float(cost.max()) if len(cost) and cost.max() > 0 else 1.0
        raw_A = np.array([c[row, cand] for c in comp.C]).reshape(len(comp.C), len(row))
        rs = np.array([max(float(np.abs(a).max()), 1e-300) for a in raw_A]) if len(raw_A) else np.ones(0)
        if comp.objective == "max":
            return cls(row, cand, np.zeros(len(row)), raw_A / rs[:, None], comp.caps / rs, raw_A, comp.caps,
                       offset, scale, M, K, smax=cost / scale)
        return cls(row, cand, cost / scale, raw_A / rs[:, None], comp.caps / rs, raw_A, comp.caps,
                   offset, scale, M, K)

    @property
    def n_col(self) -> int:
        """Columns: one binary per cell, plus t for the max objective (the last column)."""
        return len(self.row) + (self.smax is not None)

    def col_cost(self) -> np.ndarray:
        return self.cost if self.smax is None else np.append(self.cost, 1.0)

    def t_of(self, choice: np.ndarray) -> float:
        """Scaled max objective of a full choice (M,)."""
        x = (self.cand == choice[self.row])
        return float(self.smax[x].max()) if x.any() else 0.0

    def x_of(self, choice: np.ndarray) -> np.ndarray:
        """Column vector of a full choice (M,): 0/1 per cell, then t for the max objective."""
        x = (self.cand == choice[self.row]).astype(np.float64)
        return x if self.smax is None else np.append(x, self.t_of(choice))

    def choice_of(self, x) -> np.ndarray:
        """(M,) candidate per row from a (possibly slightly fractional) solution vector."""
        x = np.asarray(x, dtype=np.float64)[:len(self.row)]
        best = np.full(self.M, -1.0)
        choice = np.zeros(self.M, np.int64)
        np.maximum.at(best, self.row, x)
        hit = x >= best[self.row] - 1e-12
        choice[self.row[hit]] = self.cand[hit]
        return choice

    def true_objective(self, scaled: float) -> float:
        return float(scaled) * self.obj_scale + self.offset

    def row_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) of every row of `csc` (−inf as -np.inf)."""
        nc = len(self.A)
        lower = np.concatenate([np.ones(self.M), np.full(nc, -np.inf)])
        upper = np.concatenate([np.ones(self.M), self.caps])
        if self.smax is not None:
            lower, upper = np.append(lower, np.full(self.M, -np.inf)), np.append(upper, np.zeros(self.M))
        return lower, upper

    def csc(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Column-wise matrix of all rows (M assignment rows, the constraint rows, then for the max
        objective the M rows Σ_k s_mk x_mk − t ≤ 0)."""
        J, nc = len(self.row), len(self.A)
        mx = self.smax is not None
        per = 1 + nc + mx
        start = np.arange(0, J * per + 1, per, dtype=np.int32)
        index = np.empty((J, per), np.int32)
        value = np.empty((J, per))
        index[:, 0], value[:, 0] = self.row, 1.0
        for i in range(nc):
            index[:, 1 + i], value[:, 1 + i] = self.M + i, self.A[i]
        if not mx:
            return start, index.ravel(), value.ravel()
        index[:, -1], value[:, -1] = self.M + nc + self.row, self.smax
        start = np.append(start, J * per + self.M).astype(np.int32)
        t_index = np.arange(self.M + nc, 2 * self.M + nc, dtype=np.int32)
        return start, np.concatenate([index.ravel(), t_index]), np.concatenate([value.ravel(), -np.ones(self.M)])


@dataclass
class BackendResult:
    """choice: (M,) or None; proven: optimality proven within the gap; timed_out; bound: true
    lower bound or None; info: backend details."""

    choice: np.ndarray | None
    proven: bool
    timed_out: bool
    infeasible: bool = False
    bound: float | None = None
    info: dict = field(default_factory=dict)


def lp_bound(m: Milp) -> float | None:
    """Value of the LP relaxation (HiGHS simplex): a lower bound for any integer solution."""
    from .backends.highs import new_highs, pass_model

    h = new_highs()
    pass_model(h, m, integer=False)
    h.run()
    import highspy

    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    return m.true_objective(h.getInfo().objective_function_value)
