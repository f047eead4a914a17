"""Compiled: the plain arrays every solver works on, made by `Problem.compile()`.

Tied units are merged into one row (their scores and costs summed), pins and bit limits folded
into the allowed mask (disallowed cells are `inf` in S), and every constraint turned into linear
rows: one dense row for a resource that is a sum over units, one sparse row per liveness point for
a resource that is a max (CostModel.rows), so `total <= cap` is exactly `every row <= cap`.
This module depends on no solver; the smallest reachable totals (exact, through HiGHS when a
max over rows needs it) are in solvers/bounds.py.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from bitalloc.errors import BitallocError, bad

if TYPE_CHECKING:
    from bitalloc.hwcost.base import CostModel
    from bitalloc.profile import Profile

REL_TOL = 1e-12  # a total within this relative distance of its cap counts as within budget


def fits(total: float, cap: float) -> bool:
    return total <= cap + REL_TOL * max(abs(cap), 1.0)


@dataclass(frozen=True)
class Row:
    """One linear row of a constraint: Σ_j C[j, choice[idx[j]]] <= the constraint's cap.

    C: (n, K) float64 base-unit costs (an `Outer` for a rank-one cost such as n_params · bits:
    columns and gathers from two vectors); idx: (n,) distinct merged-unit rows of S, or None for
    all M rows in order (then C is (M, K)). An additive constraint is one row with idx None."""

    C: np.ndarray
    idx: np.ndarray | None = None

    def total(self, choice: np.ndarray) -> float:
        return float(chosen(self.C, choice if self.idx is None else choice[self.idx]).sum())

    def cheapest(self, allowed: np.ndarray) -> np.ndarray:
        """(n,) smallest cost of each of the row's units over its allowed candidates (allowed: (M, K))."""
        best = np.full(len(self.C), np.inf)
        for k in range(self.C.shape[1]):  # column by column: no (n, K) temporaries
            ok = allowed[:, k] if self.idx is None else allowed[self.idx, k]
            np.minimum(best, np.where(ok, self.C[:, k], np.inf), out=best)
        return best


class Outer(np.lib.mixins.NDArrayOperatorsMixin):
    """The (n, K) float64 matrix a[:, None] · b[None, :] of a rank-one cost (n_params · bits),
    kept as its two factors: a column `X[:, k]`, a gather `X[rows, cols]` and a row subset
    `X[idx]` are computed from them (the same products as the full matrix, bit for bit), so the
    greedy's path never holds the (n, K) matrix. Anything else (arithmetic, numpy functions,
    other ndarray attributes) gets the full matrix, made on demand."""

    ndim = 2
    dtype = np.dtype(np.float64)

    def __init__(self, a: np.ndarray, b: np.ndarray):
        self.a = np.ascontiguousarray(a, dtype=np.float64)
        self.b = np.ascontiguousarray(b, dtype=np.float64)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.a), len(self.b)

    @property
    def size(self) -> int:
        return len(self.a) * len(self.b)

    def __len__(self) -> int:
        return len(self.a)

    def __array__(self, dtype=None, copy=None):
        out = np.multiply.outer(self.a, self.b)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key):
        if isinstance(key, tuple) and len(key) == 2:
            r, c = key
            if isinstance(r, slice) and r == slice(None) and _is_index(c) and np.ndim(c) == 0:
                return self.a * self.b[c]  # column
            if _is_index(r) and _is_index(c) and np.ndim(r) > 0 and np.shape(r) == np.shape(c):
                out = self.a[r]  # gather: a new array, multiplied in place
                out *= self.b[c]
                return out
            if _is_index(r) and _is_index(c):
                return self.a[r] * self.b[c]
        elif _is_index(key) or isinstance(key, slice) or (isinstance(key, np.ndarray) and key.dtype == bool and key.ndim == 1):
            return Outer(self.a[key], self.b)  # rows
        return np.asarray(self)[key]

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if any(isinstance(x, Outer) for x in kwargs.get("out", ())):
            return NotImplemented  # read-only: no in-place update of the factors' matrix
        inputs = tuple(np.asarray(x) if isinstance(x, Outer) else x for x in inputs)
        return getattr(ufunc, method)(*inputs, **kwargs)

    def __getattr__(self, name):  # sum, max, ravel, T, copy, ...: on the full matrix
        if name.startswith("_") or name in ("a", "b"):
            raise AttributeError(name)
        return getattr(np.asarray(self), name)

    def __repr__(self):
        return f"Outer({len(self.a)} x {len(self.b)})"


def chosen(C, choice: np.ndarray) -> np.ndarray:
    """(M,) C[m, choice[m]] of every row m; for an `Outer`, from its factors (no index array)."""
    if isinstance(C, Outer):
        return C.a * C.b[choice]
    return C[np.arange(len(choice)), choice]


def _is_index(x) -> bool:
    """An integer or an integer array (what indexes one axis by position)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) or (
        isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.integer))


@dataclass
class Compiled:
    """What solvers see.

    S: (M, K) float64 score of each merged unit at each candidate, inf where not allowed;
    rows: for each constraint, its linear rows (Row); the constraint's total is the max over its
    rows of the row sums (one row for an additive resource, one per liveness point for peak SRAM);
    caps: (n_constraints,) caps in base units; group: (N,) row of S for each profile unit;
    objective: `sum` or `max`; names: resource name of each constraint.
    """

    S: np.ndarray
    rows: list[list[Row]]
    caps: np.ndarray
    group: np.ndarray
    objective: str = "sum"
    names: tuple[str, ...] = ()

    @property
    def allowed(self) -> np.ndarray:
        return np.isfinite(self.S)

    @property
    def additive(self) -> bool:
        """True when every constraint is a single row over all units (a plain sum)."""
        return all(len(rs) == 1 and rs[0].idx is None for rs in self.rows)

    @property
    def C(self) -> list[np.ndarray]:
        """(M, K) cost matrix of each constraint; only for additive constraints (see `additive`)."""
        if not self.additive:
            i = next(i for i, rs in enumerate(self.rows) if len(rs) != 1 or rs[0].idx is not None)
            raise BitallocError(f"constraint {self.names[i] if self.names else i} is a max over "
                                f"{len(self.rows[i])} rows, not a sum over units: this code path needs additive costs")
        return [rs[0].C for rs in self.rows]

    def flat(self) -> list[tuple[int, Row]]:
        """Every linear row as (constraint index, Row)."""
        return [(i, r) for i, rs in enumerate(self.rows) for r in rs]

    def totals(self, choice: np.ndarray) -> np.ndarray:
        return np.array([max((r.total(choice) for r in rs), default=0.0) for rs in self.rows])

    def objective_value(self, choice: np.ndarray) -> float:
        v = self.S[np.arange(len(choice)), choice]
        return float(v.max() if self.objective == "max" else v.sum())

    def feasible(self, choice: np.ndarray) -> bool:
        rows = np.arange(len(choice))
        return bool(np.isfinite(self.S[rows, choice]).all()) and all(
            fits(t, cap) for t, cap in zip(self.totals(choice), self.caps))

    def with_caps(self, caps) -> "Compiled":
        return replace(self, caps=np.asarray(caps, dtype=np.float64))


def compile_problem(problem) -> Compiled:
    """`problem` (a bitalloc.Problem) as the arrays solvers work on: pins, bit limits and target
    feasibility folded into S, tied units merged, every constraint as its linear rows."""
    p = problem.profile
    ok = problem.mask()
    S = _scores(p.sensitivity, ok)
    del ok
    caps = np.array([c.budget * c.cost.scale(p) for c in problem.constraints], dtype=np.float64)
    group = problem.groups()
    m = int(group.max()) + 1
    if m < p.n_units:
        S = _merge(S, group, m, problem.objective)
        if (~np.isfinite(S)).all(axis=1).any():
            g = int(np.argmax((~np.isfinite(S)).all(axis=1)))
            members = [p.names[i] for i in np.flatnonzero(group == g)]
            raise bad("tie", ",".join(members[:4]), "tied units have no allowed candidate in common")
    rows = [constraint_rows(c.cost, p, group, m) for c in problem.constraints]
    return Compiled(S, rows, caps, group, problem.objective, tuple(c.cost.resource for c in problem.constraints))


def _scores(sens: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """`sens` where allowed, inf elsewhere. When the mask drops no finite score (no pins, bit
    limits or target), that is the profile's own array: a read-only view, no (N, K) copy."""
    if (sens.dtype == np.float64 and sens.flags.c_contiguous
            and np.count_nonzero(ok) == np.count_nonzero(np.isfinite(sens))):  # ok ⊆ finite: equal
        S = sens.view()
        S.flags.writeable = False
        return S
    return np.where(ok, sens, np.inf)


def constraint_rows(cost: CostModel, profile: Profile, group: np.ndarray, m: int) -> list[Row]:
    """The linear rows of one cost model on the merged units (tied units' costs summed)."""
    N, K = profile.n_units, len(profile.bits)
    if cost.additive:  # the fast path of 10⁶-unit problems: shape checked, values trusted as before
        f = cost.factors(profile) if m == N else None
        if f is not None and np.shape(f[0]) == (N,) and np.shape(f[1]) == (K,):
            return [Row(Outer(*f))]  # n_params ⊗ bits: two vectors, no (N, K) matrix
        C = np.asarray(cost.costs(profile), dtype=np.float64)
        if C.shape != (N, K):
            raise bad(f"cost model {cost.name}: cost matrix shape", C.shape, f"must be {(N, K)}")
        return [Row(C if m == N else _merge(C, group, m, "sum"))]
    out = []
    for p_, (idx, C) in enumerate(cost.rows(profile)):
        idx = np.asarray(idx)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or (len(idx) and (idx.min() < 0 or idx.max() >= N)):
            raise bad(f"cost model {cost.name} row {p_}: unit indices", idx[:4].tolist(), f"must be integers in [0, {N})")
        C = _checked(cost, np.asarray(C, dtype=np.float64), (len(idx), K), f" row {p_}")
        g, inv = np.unique(group[idx], return_inverse=True)
        if len(g) < len(idx):  # tied (or repeated) units of the row share one merged row
            merged = np.zeros((len(g), K))
            np.add.at(merged, inv, C)
            C = merged
        elif not np.array_equal(g, group[idx]):
            C = C[np.argsort(group[idx], kind="stable")]
        out.append(Row(C) if len(g) == m else Row(C, g))
    return out


def _checked(cost: CostModel, C: np.ndarray, shape: tuple, where: str) -> np.ndarray:
    if C.shape != shape:
        raise bad(f"cost model {cost.name}{where}: cost matrix shape", C.shape, f"must be {shape}")
    if not np.isfinite(C).all():
        raise bad(f"cost model {cost.name}{where}: costs", "nan/inf", "must be finite (mark candidates infeasible instead)")
    return C


def _merge(a: np.ndarray, group: np.ndarray, m: int, how: str) -> np.ndarray:
    out = np.zeros((m, a.shape[1])) if how == "sum" else np.full((m, a.shape[1]), -np.inf)
    (np.add if how == "sum" else np.maximum).at(out, group, a)
    return out
