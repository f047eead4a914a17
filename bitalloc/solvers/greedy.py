"""Greedy: the LP relaxation of the multiple-choice knapsack solved exactly on the convex hulls,
rounded down to an integer allocation, then the leftover budget spent on the best single upgrades.

Bound: the LP relaxation value (a certified lower bound on the optimum); gap is reported.
One additive constraint. Scales to 10⁶ units: hull check in one vectorized pass, the efficiency
threshold found by bucketing log-efficiencies (a weighted histogram) and sorting one bucket only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..problem import Compiled
from . import register
from .base import Result, Solver
from .frontier import Frontier, frontier

N_BUCKETS = 4096


@register("greedy")
class GreedySolver(Solver):
    max_constraints = 1

    def __init__(self, time_limit: float | None = None, fill: bool = True):
        super().__init__(time_limit)
        self.fill = fill
        self._cache: tuple | None = None

    def _frontier(self, comp: Compiled) -> Frontier:
        key = (id(comp.S), id(comp.C[0]))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, frontier(comp.S, comp.C[0]))
        return self._cache[1]

    def _solve(self, comp: Compiled, warm: Result | None) -> Result:
        lp = lp_greedy(comp.S, comp.C[0], comp.caps[0], self._frontier(comp))
        choice = fill(comp.S, comp.C[0], comp.caps[0], lp.choice) if self.fill else lp.choice
        return Result(choice, "feasible", lp.bound, {"lp_bound": lp.bound, "lp_dual": lp.dual})


@dataclass
class LpGreedy:
    """choice: (M,) integer allocation (the LP optimum with its fractional segment dropped);
    bound: LP relaxation value; dual: the LP's price of one unit of cost (the efficiency at
    the threshold), so S + dual·C has the same minimizers as the LP."""

    choice: np.ndarray
    bound: float
    dual: float


def lp_greedy(S: np.ndarray, C: np.ndarray, cap: float, fr: Frontier) -> LpGreedy:
    """Solve the LP relaxation on the hulls and round it down."""
    M = len(fr.start)
    rows = np.arange(M)
    base_cost = C[rows, fr.start].sum()
    base_obj = S[rows, fr.start].sum()
    room = cap - base_cost
    e, dc, ds = fr.eff.ravel(), fr.dc.ravel(), fr.ds.ravel()
    real = e > 0
    if dc[real].sum() <= room:  # everything fits: every row at its least-loss candidate
        choice = fr.candidate(fr.n_seg)
        return LpGreedy(choice, float(S[rows, choice].sum()), 0.0)
    free = np.isinf(e)  # zero-cost upgrades: always taken
    idx = np.flatnonzero(real & ~free)
    le = np.log(e[idx])
    lo, hi = le.min(), le.max()
    width = (hi - lo) / (N_BUCKETS - 1) if hi > lo else 1.0
    bucket = ((hi - le) / width).astype(np.int64)  # 0 = most efficient
    cum = np.cumsum(np.bincount(bucket, weights=dc[idx], minlength=N_BUCKETS))
    b = int(np.searchsorted(cum, room, side="right"))
    before = cum[b - 1] if b > 0 else 0.0
    take = free.copy()
    take[idx[bucket < b]] = True
    members = idx[bucket == b]
    pos = members % fr.eff.shape[1]
    members = members[np.lexsort((pos, -e[members]))]
    csum = before + np.cumsum(dc[members])
    n_fit = int(np.searchsorted(csum, room, side="right"))
    take[members[:n_fit]] = True
    taken = take.reshape(fr.eff.shape).sum(1)
    choice = fr.candidate(taken)
    obj = float(base_obj + ds[take].sum())
    bound, dual = obj, 0.0
    if n_fit < len(members):  # the fractional segment of the LP optimum
        f = members[n_fit]
        used = csum[n_fit - 1] if n_fit else before
        bound = obj + (room - used) / dc[f] * ds[f]
        dual = e[f]
    return LpGreedy(choice, float(bound), float(dual))


def fill(S: np.ndarray, C: np.ndarray, cap: float, choice: np.ndarray, passes: int = 3) -> np.ndarray:
    """Spend the leftover budget: apply the largest single-unit loss reductions that still fit."""
    rows = np.arange(len(choice))
    choice = choice.copy()
    for _ in range(passes):
        left = cap - C[rows, choice].sum()
        extra = C - C[rows, choice][:, None]
        gain = S[rows, choice][:, None] - S
        cand = np.flatnonzero(((extra <= left) & (gain > 0)).ravel())
        if not len(cand):
            break
        cand = cand[np.argsort(-gain.ravel()[cand], kind="stable")]
        cheapest = max(extra.ravel()[cand].min(), 0.0)
        changed = np.zeros(len(choice), bool)
        moved = False
        for flat in cand.tolist():
            if left < cheapest:
                break
            i, k = divmod(flat, S.shape[1])
            cost = extra[i, k]
            if changed[i] or cost > left:
                continue
            choice[i] = k
            changed[i] = True
            left -= cost
            moved = True
        if not moved:
            break
    return choice
