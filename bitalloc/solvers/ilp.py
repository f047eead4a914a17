"""ILP: the exact multiple-choice knapsack, any number of constraints.

A constraint that is a max over rows (peak SRAM over liveness points) is exactly one linear
constraint per row. Backends (`backend=`): `highs` (default; the fastest here), `pulp` (CBC),
`cpsat` (OR-Tools). Every run starts from a feasible allocation (the greedy for one budget, the
Lagrangian greedy for several, or the previous budget's answer if better) so a time limit still
returns one, and cells that no allocation better than that start can use are dropped first
(reduced-cost fixing: the LP dual of one budget, the Lagrange multipliers of several). Status is
`optimal` only when the backend proved it within `gap`; the bound is the best of the backend's
dual bound and the greedy's LP / Lagrangian bound.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from bitalloc.errors import bad
from bitalloc.solvers.compiled import Compiled
from bitalloc.solvers import register
from bitalloc.solvers.backends import BACKENDS
from bitalloc.solvers.base import Result, Solver
from bitalloc.solvers.frontier import frontier
from bitalloc.solvers.hull import fill, lp_greedy
from bitalloc.solvers.lagrange import fix_cells, lagrangian
from bitalloc.solvers.backends.highs import lp_bound
from bitalloc.solvers.milp import Milp


@register("ilp")
class IlpSolver(Solver):
    non_additive = True
    objectives = ("sum", "max")

    def __init__(self, backend: str = "highs", time_limit: float | None = None, gap: float = 1e-9):
        super().__init__(time_limit)
        if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not 0 <= gap < 1:
            raise bad("gap", gap, "must be a relative gap in [0, 1)")
        self.backend_name = backend
        self.backend = BACKENDS.create(backend)
        self.gap = float(gap)

    def _solve(self, comp: Compiled, warm: Result | None) -> Result:
        hint, lp, full, extra, spent = None, None, comp, {}, 0.0
        if comp.objective == "max":
            if comp.additive:  # the min-max start needs sums; rows of a max are solved without one
                hint, lp, comp = _minmax_start(comp, warm)
        elif len(comp.rows) == 1 and comp.additive:
            g = lp_greedy(comp.S, comp.C[0], comp.caps[0], frontier(comp.S, comp.C[0]))
            hint, lp = fill(comp.S, comp.C[0], comp.caps[0], g.choice), g.bound
            comp = fix_by_reduced_cost(comp, g.dual, lp, comp.objective_value(hint))
        else:
            t0 = time.perf_counter()
            lg = lagrangian(comp, self.time_limit)
            spent = time.perf_counter() - t0
            extra = {"lagrange_" + k: v for k, v in lg.info.items()}
            if lg.status == "infeasible":  # proven by the exact fallback on the full model
                return Result(None, "infeasible", info={"backend": self.backend_name, **extra})
            lp, hint = lg.bound, lg.choice
            if warm is not None and warm.choice is not None and comp.feasible(warm.choice) and (
                    hint is None or comp.objective_value(warm.choice) < comp.objective_value(hint)):
                hint = warm.choice
            if hint is not None:
                comp = fix_cells(comp, lg.lam, comp.objective_value(hint))
        m = Milp.build(comp, lp if comp.objective == "max" else None)
        if not len(m.free):  # every unit has one cell left: nothing to search
            only = m.choice_of(np.zeros(0))
            if not comp.feasible(only):
                return Result(None, "infeasible", info={"backend": self.backend_name, **extra})
            return Result(only, "optimal", comp.objective_value(only), {"backend": self.backend_name, "rows": m.n_rows, **extra})
        left = None if self.time_limit is None else max(self.time_limit - spent, 1e-3)
        r = self.backend.solve(m, left, self.gap, hint)
        info = {"backend": self.backend_name, "cells": int(np.isfinite(comp.S).sum()),
                "cells_before_fixing": int(np.isfinite(full.S).sum()), "rows": m.n_rows, **extra, **r.info}
        if r.infeasible:
            return Result(None, "infeasible", info=info)
        choice = r.choice
        if hint is not None and (choice is None or comp.objective_value(hint) < comp.objective_value(choice)):
            choice = hint
        if r.bound is None and not r.proven:
            lp = lp if lp is not None else lp_bound(m)
        bound = max(b for b in (r.bound, lp) if b is not None) if (r.bound, lp) != (None, None) else None
        if r.proven and choice is not None:
            if r.bound is None:  # proven within `gap` but no dual bound given (PuLP/CBC): opt >= obj·(1 − gap)
                obj = comp.objective_value(choice)
                bound = max(b for b in (lp, obj - self.gap * abs(obj)) if b is not None)
            return Result(choice, "optimal", bound, info)
        return Result(choice, "time_limit" if r.timed_out else "feasible", bound, info)


def fix_by_reduced_cost(comp: Compiled, dual: float, lower: float, upper: float) -> Compiled:
    """Drop cells that no allocation better than `upper` can use (exact; one constraint).

    For any feasible allocation x and price λ >= 0: obj(x) >= L(λ) + Σ_m rc(m, x_m), where
    rc(m, k) = S_mk + λC_mk − min_j (S_mj + λC_mj) >= 0 and L(λ) is the Lagrangian bound
    (= `lower`, the LP value, at the LP dual). So a cell with rc > upper − lower is in no
    allocation that beats the incumbent.
    """
    S, C = comp.S, comp.C[0]
    slack = (upper - lower) + 1e-9 * max(abs(upper), 1e-300)
    K = S.shape[1]
    with np.errstate(invalid="ignore"):  # column by column: no (M, K) temporaries at 10⁶ units
        rmin = np.full(len(S), np.inf)  # min over the row's finite S + dual·C
        for k in range(K):
            v = S[:, k] + dual * C[:, k]
            np.minimum(rmin, np.where(np.isfinite(v), v, np.inf), out=rmin)
        out = np.empty(S.shape)
        for k in range(K):
            red = (S[:, k] + dual * C[:, k]) - rmin
            out[:, k] = np.where(np.isfinite(S[:, k]) & (red <= slack), S[:, k], np.inf)
    return replace(comp, S=out)


def _minmax_start(comp: Compiled, warm: Result | None):
    """(hint, bound, reduced problem) for the max objective: the threshold bisection's allocation
    (optimal with one budget; with several, the surrogate threshold search of `minmax.py`) as the
    start, its certified bound, and the cells with a loss above the start's worst loss dropped (exact: they
    are in no allocation at least as good as the start)."""
    from bitalloc.solvers.minmax import bisect, normalized, threshold_search

    if len(comp.C) == 1:
        t = bisect(comp.S, comp.C[0], comp.caps[0])
        hint, bound = (t.choice, t.tau) if t is not None else (None, None)
    else:
        start = warm.choice if warm is not None and warm.choice is not None else None
        r = threshold_search(comp, normalized(comp), start)
        hint, bound = r.choice, (r.bound if np.isfinite(r.bound) else None)
    if hint is not None:
        top = comp.objective_value(hint)
        comp = replace(comp, S=np.where(comp.S <= top, comp.S, np.inf))
    return hint, bound, comp
