"""The multiple-choice knapsack as a 0/1 program, shared by every ILP backend.

One binary x_j per allowed (row, candidate) cell; Σ_k x_mk = 1 for each row m; for each
constraint i, Σ_j a_ij x_j <= cap_i. For numerical range the objective has each row's minimum
subtracted (a constant) and is divided by its largest entry; each constraint row is divided by
its largest coefficient.
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

    @classmethod
    def build(cls, comp: Compiled) -> "Milp":
        S = comp.S
        M, K = S.shape
        ok = np.isfinite(S)
        row, cand = np.nonzero(ok)
        rmin = np.where(ok, S, np.inf).min(1)
        cost = S[row, cand] - rmin[row]
        scale = float(cost.max()) if len(cost) and cost.max() > 0 else 1.0
        raw_A = np.array([c[row, cand] for c in comp.C]).reshape(len(comp.C), len(row))
        rs = np.array([max(float(np.abs(a).max()), 1e-300) for a in raw_A]) if len(raw_A) else np.ones(0)
        return cls(row, cand, cost / scale, raw_A / rs[:, None], comp.caps / rs, raw_A, comp.caps,
                   float(rmin.sum()), scale, M, K)

    def x_of(self, choice: np.ndarray) -> np.ndarray:
        """0/1 vector of a full choice (M,)."""
        return (self.cand == choice[self.row]).astype(np.float64)

    def choice_of(self, x) -> np.ndarray:
        """(M,) candidate per row from a (possibly slightly fractional) solution vector."""
        x = np.asarray(x, dtype=np.float64)
        best = np.full(self.M, -1.0)
        choice = np.zeros(self.M, np.int64)
        np.maximum.at(best, self.row, x)
        hit = x >= best[self.row] - 1e-12
        choice[self.row[hit]] = self.cand[hit]
        return choice

    def true_objective(self, scaled: float) -> float:
        return float(scaled) * self.obj_scale + self.offset

    def csc(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Column-wise matrix of all rows (M assignment rows, then the constraint rows)."""
        J, nc = len(self.row), len(self.A)
        per = 1 + nc
        start = np.arange(0, J * per + 1, per, dtype=np.int32)
        index = np.empty((J, per), np.int32)
        value = np.empty((J, per))
        index[:, 0], value[:, 0] = self.row, 1.0
        for i in range(nc):
            index[:, 1 + i], value[:, 1 + i] = self.M + i, self.A[i]
        return start, index.ravel(), value.ravel()


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
