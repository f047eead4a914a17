"""Non-additive constraints (peak SRAM) for solvers that only take sums: lazy row generation.

A non-additive cost model's total is the max over `rows(profile)`, each row a sum over a subset
of units (CostModel.rows), so `total <= cap` is exactly the set of linear constraints
`row_p <= cap`. `solve_with_rows` first lets the solver take the problem as it is; if the solver
refuses a non-additive constraint, it solves with the additive constraints plus the rows
violated so far (`RowCost`, an ordinary additive constraint), adds every row the answer
violates, and repeats. Each round's problem is a relaxation of the full one, so an answer that
violates no row is optimal for the full problem when the solver proved it optimal for the
relaxation (and its bound stays a valid lower bound); an infeasible relaxation means the full
problem is infeasible. The allocation then reports the real total (the max over all rows)
next to the budget, and `meta["rows"]` how many rows were needed.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from bitalloc.errors import BitallocError
from bitalloc.problem import Constraint, fits
from bitalloc.hwcost.base import CostModel


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


def solve_with_rows(solver, problem, budgets, max_rounds: int = 100):
    """solver.solve_budgets(problem, budgets), with non-additive constraints as lazy rows when
    the solver cannot take them itself (see module doc)."""
    nonadd = [c for c in problem.constraints if not c.cost.additive]
    if not nonadd:
        return solver.solve_budgets(problem, budgets)
    try:
        return solver.solve_budgets(problem, budgets)
    except BitallocError as e:  # the refusal names the non-additive resource; anything else is the user's
        if not any(repr(c.cost.resource) in str(e) or c.cost.resource in str(e).split() for c in nonadd):
            raise
    return [_solve_one(solver, problem if b is None else problem.with_budget(b), nonadd, max_rounds) for b in budgets]


def _solve_one(solver, problem, nonadd, max_rounds):
    t0 = time.perf_counter()
    p = problem.profile
    additive = [c for c in problem.constraints if c.cost.additive]
    mask = problem.allowed
    for c in nonadd:
        f = c.cost.feasible(p)
        if f is not None:
            mask = f if mask is None else (np.asarray(mask, dtype=bool) & f)
    rows = {id(c): c.cost.rows(p) for c in nonadd}
    active: list[Constraint] = []
    added: set[tuple[int, int]] = set()
    for rounds in range(1, max_rounds + 1):
        sub = replace(problem, constraints=[*additive, *active], allowed=mask)
        if not sub.constraints:  # only non-additive constraints: start from the largest row of each
            for c in nonadd:
                big = max(range(len(rows[id(c)])), key=lambda q: rows[id(c)][q][1].max(1).sum())
                active.append(Constraint(RowCost(c.cost, big, *rows[id(c)][big]), c.budget))
                added.add((id(c), big))
            continue
        a = solver.solve(sub)
        if not a.ok:
            return _finish(a, problem, nonadd, None, rounds, len(active), t0)
        choice = a.choice(p)
        new = 0
        for c in nonadd:
            cap = c.budget * c.cost.scale(p)
            for q, (idx, C) in enumerate(rows[id(c)]):
                if (id(c), q) not in added and not fits(float(C[np.arange(len(idx)), choice[idx]].sum()), cap):
                    active.append(Constraint(RowCost(c.cost, q, idx, C), c.budget))
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
    a.meta["rows"] = {"rounds": rounds, "rows_added": n_rows,
                      "rows_total": {c.cost.resource: len(c.cost.rows(p)) for c in nonadd}}
    return a
