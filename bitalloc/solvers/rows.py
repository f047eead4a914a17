"""Non-additive constraints (peak SRAM) for solvers that only take sums: lazy row generation.

A non-additive cost model's total is the max over `rows(profile)`, each row a sum over a subset
of units (CostModel.rows), so `total <= cap` is exactly the set of linear constraints
`row_p <= cap`. `Solver.solve_budgets` calls `solve_with_rows` for a solver whose class says
`non_additive = False` when the problem has such a constraint (no error text is read): it solves
with the additive constraints plus the rows violated so far (`RowCost`, an ordinary additive
constraint), adds every row the answer violates, and repeats. Each round's problem is a
relaxation of the full one, so an answer that violates no row is optimal for the full problem
when the solver proved it optimal for the relaxation (and its bound stays a valid lower bound);
an infeasible relaxation means the full problem is infeasible. The allocation then reports the
real total (the max over all rows) next to the budget, and `meta["rows"]` how many rows were
needed.
"""
from __future__ import annotations

import time

import numpy as np

from bitalloc.errors import BitallocError
from bitalloc.hwcost.base import CostModel
from bitalloc.solvers.compiled import fits


class RowCost(CostModel):
    """One row of a non-additive model as an additive cost: units `idx` at costs `C`, in the
    parent's base units and scale."""

    def __init__(self, parent: CostModel, p: int, idx: np.ndarray, C: np.ndarray):
        self.parent, self.p, self.idx, self.C = parent, p, idx, C
        self.resource = f"{parent.resource}#row{p}"
        self.unit = parent.unit

    def costs(self, profile) -> np.ndarray:
        out = np.zeros((profile.n_units, self.C.shape[1]))
        np.add.at(out, self.idx, self.C)
        return out

    def scale(self, profile) -> float:
        return self.parent.scale(profile)


def solve_with_rows(solver, problem, max_rounds: int = 100):
    """The Allocation of `problem` (its budgets set) found by `solver` on additive relaxations
    with the violated rows of every non-additive constraint added round by round."""
    t0 = time.perf_counter()
    p = problem.profile
    nonadd = [c for c in problem.constraints if not c.cost.additive]
    additive = [(c.cost, c.budget) for c in problem.constraints if c.cost.additive]
    mask = problem.allowed
    for c in nonadd:
        f = c.cost.feasible(p)
        if f is not None:
            mask = f if mask is None else (np.asarray(mask, dtype=bool) & f)
    rows = {id(c): c.cost.rows(p) for c in nonadd}
    active: list[tuple[CostModel, float]] = []
    added: set[tuple[int, int]] = set()
    for rounds in range(1, max_rounds + 1):
        if not additive and not active:  # only non-additive constraints: start from the largest row of each
            for c in nonadd:
                big = max(range(len(rows[id(c)])), key=lambda q: rows[id(c)][q][1].max(1).sum())
                active.append((RowCost(c.cost, big, *rows[id(c)][big]), c.budget))
                added.add((id(c), big))
        sub = problem.with_constraints([*additive, *active], allowed=mask)
        a = solver.solve(sub)
        if not a.ok:
            return _finish(a, problem, nonadd, None, rounds, len(active), t0)
        choice = a.choice(p)
        new = 0
        for c in nonadd:
            cap = c.budget * c.cost.scale(p)
            for q, (idx, C) in enumerate(rows[id(c)]):
                if (id(c), q) not in added and not fits(float(C[np.arange(len(idx)), choice[idx]].sum()), cap):
                    active.append((RowCost(c.cost, q, idx, C), c.budget))
                    added.add((id(c), q))
                    new += 1
        if not new:
            return _finish(a, problem, nonadd, choice, rounds, len(active), t0)
    raise BitallocError(f"non-additive constraints: still violated after {max_rounds} rounds of adding rows")


def _finish(a, problem, nonadd, choice, rounds, n_rows, t0):
    p = problem.profile
    a.wall_s = time.perf_counter() - t0  # every round, rows included
    for d in (a.totals, a.budgets, a.min_budgets):
        for k in [k for k in d if "#row" in k]:
            v = d.pop(k)
            if d is a.min_budgets:
                parent = k.split("#row")[0]
                d[parent] = max(d.get(parent, 0.0), v)
    for c in nonadd:
        a.budgets[c.cost.resource] = float(c.budget)
        if choice is not None:
            a.totals[c.cost.resource] = c.cost.total(p, choice)
    a.budgets = {c.cost.resource: a.budgets[c.cost.resource] for c in problem.constraints}  # the problem's order
    a.meta["rows"] = {"rounds": rounds, "rows_added": n_rows,
                      "rows_total": {c.cost.resource: len(c.cost.rows(p)) for c in nonadd}}
    return a
