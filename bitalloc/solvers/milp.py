"""The multiple-choice knapsack as a 0/1 program, shared by every ILP backend.

One binary x_j per allowed (row, candidate) cell; Σ_k x_mk = 1 for each merged unit m; for each
linear row r of every constraint (one for a sum, one per liveness point for a max over rows),
Σ_j a_rj x_j <= cap_r, stored sparse (a row over a subset of units holds only their cells). For
numerical range the objective has each unit's minimum subtracted (a constant) and is divided by
its largest entry; each constraint row is divided by its largest coefficient.

Objective `max` (min-max): one more column t (the last), minimized, and one more row per free
unit, Σ_k s_mk x_mk − t ≤ 0 (tighter in the LP than one row per cell, s_mk x_mk ≤ t). For
numerical range s is the score minus a lower bound of t (the largest unit minimum, fixed units
included, or a certified bound given to `build`; so t ≥ 0, and scores below it become 0) over
its largest entry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from bitalloc.solvers.compiled import Compiled, Row


@dataclass
class Milp:
    """Units with one allowed cell left are fixed (their costs taken off the caps), so only the
    free units get variables. row, cand: (J,) cell of each variable, sorted by row (unit m's cells
    are unit_start[m]:unit_start[m+1], empty for fixed units); free: (F,) the free units, one
    assignment row each; fixed: (M,) candidate of each fixed unit, -1 for free ones; cost: (J,)
    scaled objective; constraint rows in CSR form: a_ptr (R+1,), a_col (nnz,) variable, a_val
    (nnz,) scaled coefficient, raw_val unscaled; caps / raw_caps: (R,) scaled / unscaled caps
    left for the free units; row_scale: (R,) raw = scaled · row_scale; cons: (R,) constraint of
    each row; true objective = scaled · obj_scale + offset. smax: (J,) scaled scores for the max
    objective (then column J is t and cost holds zeros), else None."""

    row: np.ndarray
    cand: np.ndarray
    unit_start: np.ndarray
    free: np.ndarray
    fixed: np.ndarray
    cost: np.ndarray
    a_ptr: np.ndarray
    a_col: np.ndarray
    a_val: np.ndarray
    raw_val: np.ndarray
    caps: np.ndarray
    raw_caps: np.ndarray
    row_scale: np.ndarray
    cons: np.ndarray
    offset: float
    obj_scale: float
    M: int
    K: int
    info: dict = field(default_factory=dict)
    smax: np.ndarray | None = None

    @classmethod
    def build(cls, comp: Compiled, floor: float | None = None) -> "Milp":
        """floor: a certified lower bound of the max objective (ignored for `sum`)."""
        S = comp.S
        M, K = S.shape
        ok = np.isfinite(S)
        n_ok = ok.sum(1)
        fixed = np.where(n_ok == 1, ok.argmax(1), -1)
        ok &= (n_ok > 1)[:, None]
        row, cand = np.nonzero(ok)  # row-major: sorted by unit
        unit_start = np.searchsorted(row, np.arange(M + 1)).astype(np.int64)
        rmin = np.where(ok, S, np.inf).min(1)
        is_fixed = fixed >= 0
        mx = comp.objective == "max"
        if mx:  # t is at least every unit's smallest score (a fixed unit's only one) and the floor
            lows = [float(np.where(is_fixed, S[np.arange(M), np.maximum(fixed, 0)], rmin).max()) if M else 0.0]
            const = max(lows + ([float(floor)] if floor is not None and np.isfinite(floor) else []))
            cost = np.maximum(S[row, cand] - const, 0.0)
        else:
            const = float(rmin[~is_fixed].sum() + S[is_fixed, fixed[is_fixed]].sum())
            cost = S[row, cand] - rmin[row]
        scale = float(cost.max()) if len(cost) and cost.max() > 0 else 1.0
        cols, vals, caps, cons = [], [], [], []
        for i, r in comp.flat():
            j, v = _row_cells(r, row, cand, unit_start)
            keep = v != 0
            cols.append(j[keep])
            vals.append(v[keep])
            caps.append(comp.caps[i] - _fixed_part(r, fixed))
            cons.append(i)
        ptr = np.concatenate([[0], np.cumsum([len(c) for c in cols])]).astype(np.int64)
        a_col = np.concatenate(cols).astype(np.int64) if cols else np.zeros(0, np.int64)
        raw = np.concatenate(vals) if vals else np.zeros(0)
        rs = np.array([max(float(np.abs(v).max()), 1e-300) if len(v) else 1.0 for v in vals])
        per = np.repeat(rs, np.diff(ptr)) if len(rs) else np.zeros(0)
        raw_caps = np.asarray(caps, dtype=np.float64)
        return cls(row, cand, unit_start, np.flatnonzero(~is_fixed), fixed,
                   np.zeros(len(row)) if mx else cost / scale, ptr, a_col,
                   raw / per if len(raw) else raw, raw, raw_caps / rs if len(rs) else raw_caps, raw_caps, rs,
                   np.asarray(cons, np.int64), const, scale, M, K, smax=cost / scale if mx else None)

    @property
    def n_col(self) -> int:
        """Columns: one binary per cell, plus t for the max objective (the last column)."""
        return len(self.row) + (self.smax is not None)

    def col_cost(self) -> np.ndarray:
        return self.cost if self.smax is None else np.append(self.cost, 1.0)

    def assignments(self):
        """Column range [lo, hi) of each free unit's cells (one `exactly one` row each)."""
        return zip(self.unit_start[self.free].tolist(), self.unit_start[self.free + 1].tolist())

    @property
    def n_rows(self) -> int:
        return len(self.caps)

    def constraint(self, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(columns, scaled coefficients, raw coefficients) of constraint row r."""
        s = slice(self.a_ptr[r], self.a_ptr[r + 1])
        return self.a_col[s], self.a_val[s], self.raw_val[s]

    def x_of(self, choice: np.ndarray) -> np.ndarray:
        """Column vector of a full choice (M,): 0/1 per cell, then t for the max objective."""
        x = (self.cand == choice[self.row]).astype(np.float64)
        if self.smax is None:
            return x
        return np.append(x, float(self.smax[x > 0].max()) if (x > 0).any() else 0.0)

    def choice_of(self, x) -> np.ndarray:
        """(M,) candidate per row from a (possibly slightly fractional) solution vector."""
        x = np.asarray(x, dtype=np.float64)[:len(self.row)]
        best = np.full(self.M, -1.0)
        choice = np.maximum(self.fixed, 0)
        np.maximum.at(best, self.row, x)
        hit = x >= best[self.row] - 1e-12
        choice[self.row[hit]] = self.cand[hit]
        return choice

    def true_objective(self, scaled: float) -> float:
        return float(scaled) * self.obj_scale + self.offset

    def rowwise(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row-wise matrix of all rows (one assignment row per free unit, the constraint rows, then
        for the max objective one row Σ_k s_mk x_mk − t ≤ 0 per free unit)."""
        J = len(self.row)
        start = [self.unit_start[self.free], [J], J + self.a_ptr[1:]]
        index = [np.arange(J), self.a_col]
        value = [np.ones(J), self.a_val]
        if self.smax is not None:
            ends = self.unit_start[self.free + 1]
            start.append(J + len(self.a_col) + ends + np.arange(1, len(ends) + 1))
            index.append(np.insert(np.arange(J), ends, J))  # each free unit's cells, then t
            value.append(np.insert(self.smax, ends, -1.0))
        return (np.concatenate(start).astype(np.int32), np.concatenate(index).astype(np.int32),
                np.concatenate(value))

    def row_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) of every row of `rowwise` (−inf as -np.inf)."""
        F, R = len(self.free), self.n_rows
        lower = [np.ones(F), np.full(R, -np.inf)]
        upper = [np.ones(F), self.caps]
        if self.smax is not None:
            lower.append(np.full(F, -np.inf))
            upper.append(np.zeros(F))
        return np.concatenate(lower), np.concatenate(upper)


def _fixed_part(r: Row, fixed: np.ndarray) -> float:
    """Cost of the row's fixed units at their only candidate."""
    f = fixed if r.idx is None else fixed[r.idx]
    hit = np.flatnonzero(f >= 0)
    return float(r.C[hit, f[hit]].sum())


def _row_cells(r: Row, row: np.ndarray, cand: np.ndarray, unit_start: np.ndarray):
    """(variables, raw coefficients) of one Row: every allowed cell of the row's units."""
    if r.idx is None:
        return np.arange(len(row)), r.C[row, cand]
    lo, hi = unit_start[r.idx], unit_start[r.idx + 1]
    counts = hi - lo
    local = np.repeat(np.arange(len(r.idx)), counts)
    j = np.arange(int(counts.sum())) + np.repeat(lo - (np.cumsum(counts) - counts), counts)
    return j, r.C[local, cand[j]]


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
