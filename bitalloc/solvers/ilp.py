"""ILP: the exact multiple-choice knapsack, any number of additive budgets.

Backends (`backend=`): `highs` (default; the fastest here), `pulp` (CBC), `cpsat` (OR-Tools).
Every run starts from a feasible allocation (greedy for one budget, else the previous budget's
answer) so a time limit still returns one. Status is `optimal` only when the backend proved it
within `gap`; the bound is the backend's dual bound or, failing that, the LP relaxation.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import bad
from ..problem import Compiled
from . import register
from .backends import BACKENDS
from .base import Result, Solver
from .frontier import frontier
from .greedy import fill, lp_greedy
from .milp import Milp, lp_bound


@register("ilp")
class IlpSolver(Solver):
    objectives = ("sum", "max")

    def __init__(self, backend: str = "highs", time_limit: float | None = None, gap: float = 1e-9):
        super().__init__(time_limit)
        if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not 0 <= gap < 1:
            raise bad("gap", gap, "must be a relative gap in [0, 1)")
        self.backend_name = backend
        self.backend = BACKENDS.create(backend)
        self.gap = float(gap)

    def _solve(self, comp: Compiled, warm: Result | None) -> Result:
        hint, lp, full = None, None, comp
        if comp.objective == "max":
            hint, lp, comp = _minmax_start(comp, warm)
        elif len(comp.C) == 1:
            g = lp_greedy(comp.S, comp.C[0], comp.caps[0], frontier(comp.S, comp.C[0]))
            hint, lp = fill(comp.S, comp.C[0], comp.caps[0], g.choice), g.bound
            comp = fix_by_reduced_cost(comp, g.dual, lp, comp.objective_value(hint))
        elif warm is not None and warm.choice is not None and comp.feasible(warm.choice):
            hint = warm.choice
        m = Milp.build(comp, lp if comp.objective == "max" else None)
        r = self.backend.solve(m, self.time_limit, self.gap, hint)
        info = {"backend": self.backend_name, "cells": int(np.isfinite(comp.S).sum()),
                "cells_before_fixing": int(np.isfinite(full.S).sum()), **r.info}
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
    with np.errstate(invalid="ignore"):
        red = S + dual * C
    red = red - np.where(np.isfinite(red), red, np.inf).min(1, keepdims=True)
    slack = (upper - lower) + 1e-9 * max(abs(upper), 1e-300)
    keep = np.isfinite(S) & (red <= slack)
    return replace(comp, S=np.where(keep, S, np.inf))


def _minmax_start(comp: Compiled, warm: Result | None):
    """(hint, bound, reduced problem) for the max objective: the threshold bisection's allocation
    (optimal with one budget; with several, the surrogate threshold search of `minmax.py`) as the
    start, its certified bound, and the cells with a loss above the start's worst loss dropped (exact: they
    are in no allocation at least as good as the start)."""
    from .minmax import bisect, normalized, threshold_search

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
