"""Smallest reachable totals of a compiled problem's constraints, in their compiled (scaled) units:
each on its own (`min_totals`), or with every other constraint held to its cap
(`min_totals_jointly`, one exact MILP each through HiGHS). What `solve` reports as `min_budgets`
of an infeasible problem, and the lower end of budget sweeps."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from bitalloc.solvers.backends.highs import min_total
from bitalloc.solvers.compiled import Compiled, Row


def min_totals(comp: Compiled) -> np.ndarray:
    """(n_constraints,) smallest reachable total of each constraint on its own (exact, also for a
    max over rows)."""
    ok = comp.allowed
    return np.array([_min_total(rs, ok) for rs in comp.rows])


def min_totals_jointly(comp: Compiled, time_limit: float | None = None) -> np.ndarray:
    """(n_constraints,) smallest total of each constraint while every other constraint keeps its
    cap (exact MILP per constraint; inf when the others cannot be met together). time_limit:
    seconds per MILP."""
    zero = replace(comp, S=np.where(comp.allowed, 0.0, np.inf))
    return np.array([min_total(zero, i, time_limit) for i in range(len(comp.rows))])


def _min_total(rows: list[Row], ok: np.ndarray) -> float:
    """min over allowed choices of max over rows. Each row alone is smallest at each unit's cheapest
    candidate; when one candidate of every unit is cheapest in all the unit's rows (always for one
    row, and when rows scale the same per-unit costs), that choice reaches the max of the row minima.
    Otherwise the min-max is solved exactly as a small MILP."""
    mins = [r.cheapest(ok) for r in rows]
    lower = max((float(m.sum()) for m in mins), default=0.0)
    if len(rows) <= 1:
        return lower
    common = ok.copy()
    for r, m in zip(rows, mins):
        sub = (r.C == m[:, None]) & (ok if r.idx is None else ok[r.idx])
        if r.idx is None:
            common &= sub
        else:
            common[r.idx] &= sub
    if common.any(axis=1).all():
        return lower
    return min_total(Compiled(np.where(ok, 0.0, np.inf), [rows], np.zeros(1), np.arange(len(ok))), 0)
