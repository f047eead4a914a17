"""Greedy: the LP relaxation of the multiple-choice knapsack solved exactly on the convex hulls,
rounded down to an integer allocation, then the leftover budget spent on the best single upgrades.

Bound: the LP relaxation value (a certified lower bound on the optimum); gap is reported.
One additive constraint is the fast path; it scales to 10⁶ units: hull check in one vectorized
pass, the efficiency threshold found by bucketing log-efficiencies (a weighted histogram) and
sorting one bucket only. Several constraints, or one that is a max over rows (peak SRAM), go
through Lagrange multipliers on every row (`lagrange.py`): a certified Lagrangian bound, and a
repair step that always returns a feasible allocation when one exists.
"""
from __future__ import annotations

from bitalloc.solvers.compiled import Compiled
from bitalloc.solvers import register
from bitalloc.solvers.base import Result, Solver
from bitalloc.solvers.frontier import Frontier, frontier
from bitalloc.solvers.lagrange import lagrangian
from bitalloc.solvers.hull import LpGreedy, fill, lp_greedy  # noqa: F401 (re-exported)


@register("greedy")
class GreedySolver(Solver):
    non_additive = True

    def __init__(self, time_limit: float | None = None, fill: bool = True):
        super().__init__(time_limit)
        self.fill = fill
        self._cache: tuple | None = None
        self._keep = False

    def solve_budgets(self, problem, budgets):
        # the hulls are kept across the budgets of one call (the same compiled arrays), and only
        # then: with one budget they are dropped before `fill` (~90 MB at 10⁶ units × 6)
        self._keep = len(budgets) > 1
        try:
            return super().solve_budgets(problem, budgets)
        finally:
            self._cache, self._keep = None, False

    def _frontier(self, comp: Compiled) -> Frontier:
        c = self._cache  # the same compiled arrays across budgets: reuse the hulls
        if c is None or c[0] is not comp.S or c[1] is not comp.C[0]:
            c = (comp.S, comp.C[0], frontier(comp.S, comp.C[0]))
            self._cache = c if self._keep else None
        return c[2]

    def _solve(self, comp: Compiled, warm: Result | None) -> Result:
        if len(comp.rows) > 1 or not comp.additive:
            lg = lagrangian(comp, self.time_limit)
            return Result(lg.choice, lg.status, lg.bound, {"lagrange_bound": lg.bound, "multipliers": lg.lam.tolist(), **lg.info})
        lp = lp_greedy(comp.S, comp.C[0], comp.caps[0], self._frontier(comp))  # hulls freed here unless kept
        choice = fill(comp.S, comp.C[0], comp.caps[0], lp.choice) if self.fill else lp.choice
        return Result(choice, "feasible", lp.bound, {"lp_bound": lp.bound, "lp_dual": lp.dual})
