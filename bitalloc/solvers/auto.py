"""Auto (the default): always back within its time limit, always with a proven gap.

One additive budget (the common case): the LP greedy gives an allocation and a certified LP
bound; reduced-cost fixing (exact) leaves only the units that some allocation better than the
greedy's can change: the fractional unit and the near-ties. When at most `exact_units` such
units are left, the ILP on them is the exact problem (the "ILP where it proves quickly" case:
on the benchmark generator that is every problem up to ~10⁴ units); otherwise the `exact_units`
units with the smallest reduced costs are polished by the ILP with every other unit held at the
greedy's choice. The ILP runs in a killable child process (`backends/highs_child.py`) unless the
model is tiny, so the wall clock stays within `time_limit`; the reported bound is the best of
the LP bound and, when the fixing was exact, the ILP's dual bound (any allocation better than
the incumbent lies in the reduced problem, so min(incumbent, ILP bound) bounds the optimum).

Several budgets, a max over rows (peak SRAM) or the `max` objective: the ILP with the
`highs-child` backend under the same time limit.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from bitalloc.errors import bad
from bitalloc.solvers.compiled import Compiled
from bitalloc.solvers import register
from bitalloc.solvers.base import Result, Solver

DEFAULT_TIME_LIMIT = 10.0
EXACT_UNITS = 4000  # free units the ILP proves in ~1-3 s on 2 cores (docs/solvers-at-scale.md)


@register("auto")
class AutoSolver(Solver):
    non_additive = True
    objectives = ("sum", "max")

    def __init__(self, time_limit: float | None = DEFAULT_TIME_LIMIT, gap: float = 1e-9,
                 exact_units: int = EXACT_UNITS):
        super().__init__(time_limit)
        if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not 0 <= gap < 1:
            raise bad("gap", gap, "must be a relative gap in [0, 1)")
        if isinstance(exact_units, bool) or not isinstance(exact_units, int) or exact_units < 1:
            raise bad("exact_units", exact_units, "must be a positive integer")
        self.gap, self.exact_units = float(gap), exact_units

    def _solve(self, comp: Compiled, warm: Result | None) -> Result:
        if comp.objective != "sum" or len(comp.rows) != 1 or not comp.additive:
            from bitalloc.solvers.ilp import IlpSolver

            ilp = IlpSolver(backend="highs-child", time_limit=self.time_limit, gap=self.gap)
            res = ilp._solve(comp, warm)
            res.info = {**res.info, "auto": "ilp"}
            return res
        return self._one_budget(comp)

    def _one_budget(self, comp: Compiled) -> Result:
        from bitalloc.solvers.frontier import frontier
        from bitalloc.solvers.hull import fill, lp_greedy

        t0 = time.perf_counter()
        S, C, cap = comp.S, comp.C[0], comp.caps[0]
        g = lp_greedy(S, C, cap, frontier(S, C))
        choice = fill(S, C, cap, g.choice)
        obj = comp.objective_value(choice)
        info = {"auto": "greedy", "lp_bound": g.bound, "greedy_objective": obj}
        bound = min(g.bound, obj)
        if obj - bound <= self.gap * abs(obj):
            return Result(choice, "optimal", bound, info)
        sub, exact = self._near_ties(comp, g.dual, bound, obj, choice)
        from bitalloc.solvers.milp import Milp

        m = Milp.build(sub)
        info.update(polish_units=int(len(m.free)), polish_exact=exact)
        if not len(m.free):
            return Result(choice, "optimal" if exact else "feasible", obj if exact else bound, info)
        left = None if self.time_limit is None else self.time_limit - (time.perf_counter() - t0) - 0.05
        if left is not None and left < 0.5:
            return Result(choice, "time_limit", bound, {**info, "polish": "no time left"})
        from bitalloc.solvers.backends.highs_child import HighsChildBackend

        r = HighsChildBackend().solve(m, left, self.gap, choice)
        info.update({"polish_" + k: v for k, v in r.info.items()}, auto="greedy+ilp polish")
        if r.choice is not None and comp.feasible(r.choice) and comp.objective_value(r.choice) < obj:
            choice, obj = r.choice, comp.objective_value(r.choice)
        if exact and r.bound is not None:
            bound = max(bound, min(r.bound, obj))
        if exact and r.proven:
            return Result(choice, "optimal", max(bound, obj - self.gap * abs(obj)), info)
        return Result(choice, "time_limit" if r.timed_out else "feasible", bound, info)

    def _near_ties(self, comp: Compiled, dual: float, lower: float, upper: float, choice: np.ndarray):
        """(problem on the units whose cells survive reduced-cost fixing, True when that is all of
        them) or the `exact_units` of them with the smallest reduced cost of an alternative cell,
        the rest held at `choice` (False)."""
        from bitalloc.solvers.ilp import fix_by_reduced_cost

        sub = fix_by_reduced_cost(comp, dual, lower, upper)
        S = sub.S
        free = np.flatnonzero(np.isfinite(S).sum(1) > 1)
        if len(free) <= self.exact_units:
            return sub, True
        # reduced cost of each free unit's cheapest move away from the greedy's choice, column by
        # column (no (free, K) temporaries)
        C, at = comp.C[0], choice[free]

        def priced(k):  # S + dual·C of the free units' surviving cells in column k, inf elsewhere
            with np.errstate(invalid="ignore"):
                return np.where(np.isfinite(S[free, k]), comp.S[free, k] + dual * C[free, k], np.inf)

        rmin = np.full(len(free), np.inf)
        for k in range(S.shape[1]):
            np.minimum(rmin, priced(k), out=rmin)
        best = np.full(len(free), np.inf)
        for k in range(S.shape[1]):
            r = priced(k) - rmin
            r[(at == k) | (r == 0)] = np.inf
            np.minimum(best, r, out=best)
        keep = free[np.argpartition(best, self.exact_units)[:self.exact_units]]
        part = S[keep]
        S = sub = None  # the fixed scores are not needed any more: free them first
        out = np.full(comp.S.shape, np.inf)  # held units: only their greedy choice; kept: what survived fixing
        rows = np.arange(len(out))
        out[rows, choice] = comp.S[rows, choice]
        out[keep] = part
        return replace(comp, S=out), False
