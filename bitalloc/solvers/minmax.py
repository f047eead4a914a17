"""The min-max objective (`max`: minimize the worst unit's loss) in numpy: threshold bisection.

For a threshold τ only the cells with S ≤ τ may be used, and with one additive budget the
cheapest such cell of every row is the best use of it: τ is feasible iff Σ_m min{C_mk : S_mk ≤ τ}
fits the cap. Feasibility is monotone in τ, so bisecting over the distinct scores finds the
optimum exactly in O(MK log(MK)). With several budgets each one on its own gives a threshold
no allocation can beat, so their maximum is a certified lower bound.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitalloc.solvers.compiled import Compiled, fits


@dataclass
class Threshold:
    """tau: the smallest feasible threshold (the optimum of `max` for one budget); choice: (M,)
    the cheapest candidate of each row with S ≤ tau (least loss among equally cheap ones)."""

    tau: float
    choice: np.ndarray


def cheapest_under(S: np.ndarray, C: np.ndarray, tau: float) -> tuple[np.ndarray, float]:
    """(choice (M,), total cost): each row's cheapest cell with S ≤ tau; total is inf when a row has none."""
    with np.errstate(invalid="ignore"):
        masked = np.where(S <= tau, C, np.inf)
    cmin = masked.min(1)
    ties = np.where(masked <= cmin[:, None], S, np.inf)
    choice = ties.argmin(1)
    return choice, float(cmin.sum())


def row_floor(S: np.ndarray) -> float:
    """max over rows of each row's least loss: no allocation has a smaller worst loss."""
    return float(np.where(np.isfinite(S), S, np.inf).min(1).max())


def bisect(S: np.ndarray, C: np.ndarray, cap: float) -> Threshold | None:
    """Smallest threshold τ among the distinct finite scores with Σ cheapest-under-τ ≤ cap; None
    when even the cheapest allowed cells do not fit."""
    vals = np.unique(S[np.isfinite(S)])
    lo = int(np.searchsorted(vals, row_floor(S)))
    hi = len(vals) - 1
    choice, total = cheapest_under(S, C, vals[hi])
    if not fits(total, cap):
        return None
    best = choice
    while lo < hi:
        mid = (lo + hi) // 2
        choice, total = cheapest_under(S, C, vals[mid])
        if fits(total, cap):
            hi, best = mid, choice
        else:
            lo = mid + 1
    return Threshold(float(vals[hi]), best)


def lower_bound(comp: Compiled) -> float | None:
    """Certified lower bound on the `max` objective: the largest single-budget threshold (exact with
    one budget); None if some budget cannot be met even on its own."""
    best = row_floor(comp.S)
    for c, cap in zip(comp.C, comp.caps):
        t = bisect(comp.S, c, cap)
        if t is None:
            return None
        best = max(best, t.tau)
    return best


def normalized(comp: Compiled) -> np.ndarray:
    """A: (M, K, n) each budget's costs over its cap (over its largest cost when the cap is 0), so
    budget i is met iff Σ_m A[m, x_m, i] ≤ 1; disallowed cells hold 0 (masked by the callers)."""
    cols = []
    for c, cap in zip(comp.C, comp.caps):
        d = float(cap) if cap > 0 else max(float(np.abs(c[np.isfinite(c)]).max(initial=0.0)), 1e-300)
        cols.append(np.where(np.isfinite(c), c / d, 0.0))
    return np.stack(cols, axis=-1)


@dataclass
class Surrogate:
    """bound: certified lower bound on the least largest normalized violation over the allowed
    cells (> 0 proves that no allocation meets every budget); choice / violation: the best
    allocation met on the way (each row's cheapest cell under some prices) and its violation."""

    bound: float
    choice: np.ndarray
    violation: float


def surrogate(A: np.ndarray, ok: np.ndarray, iterations: int = 60) -> Surrogate:
    """Surrogate dual of min_x max_i (Σ_m A[m, x_m, i] − 1): for prices λ ≥ 0 with Σλ = 1,
    max_i v_i ≥ λ·v, so Σ_m min_k λ·A[m, k] − 1 is a lower bound; λ is improved by multiplicative
    weights on the violations of the priced-cheapest allocation (its subgradient)."""
    M, K, n = A.shape
    rows = np.arange(M)
    lam = np.full(n, 1.0 / n)
    best = Surrogate(-np.inf, np.zeros(M, np.int64), np.inf)
    for it in range(iterations):
        priced = np.where(ok, A @ lam, np.inf)
        x = priced.argmin(1)
        T = A[rows, x].sum(0)
        bound = float(priced[rows, x].sum() - 1)
        v = float((T - 1).max())
        if v < best.violation:
            best.choice, best.violation = x, v
        best.bound = max(best.bound, bound)
        if best.bound > 0 or best.violation <= 0 or n == 1:
            break
        sub = T - 1
        span = float(np.abs(sub).max()) or 1.0
        lam = lam * np.exp(2.0 / np.sqrt(it + 1) * sub / span)
        lam /= lam.sum()
    return best


@dataclass
class Search:
    """choice: (M,) best allocation found meeting every budget, or None; bound: certified lower
    bound on the `max` optimum; timed_out; counts: thresholds tried, proved infeasible by the
    surrogate, solved by the surrogate's allocation, handed to `find`."""

    choice: np.ndarray | None
    bound: float
    timed_out: bool = False
    counts: dict | None = None


def threshold_search(comp: Compiled, A: np.ndarray, start: np.ndarray | None = None, find=None,
                     deadline: float = np.inf) -> Search:
    """Bisection over the distinct scores for several budgets. At threshold τ the surrogate dual
    either proves that no allocation with every loss ≤ τ meets the budgets (the bound moves up) or
    its priced-cheapest allocation fits, else `find(ok, start) -> choice` (a heuristic, e.g. the
    ALNS) is asked; what it cannot find moves the search on but not the bound."""
    import time

    S = comp.S
    counts = {"thresholds": 0, "proved_by_surrogate": 0, "solved_by_surrogate": 0, "searched": 0}
    vals = np.unique(S[np.isfinite(S)])
    lb = lower_bound(comp)
    if lb is None:  # some budget cannot be met even on its own: nothing to search, no bound claimed
        return Search(None, -np.inf, False, counts)
    lo = proven = int(np.searchsorted(vals, lb))
    x = start if start is not None and comp.feasible(start) else None
    hi = int(np.searchsorted(vals, comp.objective_value(x))) if x is not None else len(vals)
    timed_out = False
    while lo < hi:
        if time.perf_counter() > deadline:
            timed_out = True
            break
        mid = (lo + hi) // 2 if x is not None or hi < len(vals) else len(vals) - 1
        counts["thresholds"] += 1
        ok = S <= vals[mid]
        s = surrogate(A, ok)
        if s.bound > 0:  # certified: nothing with every loss <= vals[mid] meets the budgets
            lo = proven = mid + 1
            counts["proved_by_surrogate"] += 1
            continue
        y = s.choice
        if s.violation <= 0 and comp.feasible(y):
            counts["solved_by_surrogate"] += 1
        elif find is not None:
            counts["searched"] += 1
            y = find(ok, y)
        if y is not None and comp.feasible(y) and comp.objective_value(y) <= vals[mid]:
            x, hi = y, int(np.searchsorted(vals, comp.objective_value(y)))
        elif mid == len(vals) - 1:
            break  # nothing found even with every cell allowed
        else:
            lo = mid + 1  # not found: the search moves on, the bound does not
    bound = float(vals[proven]) if proven < len(vals) else np.inf
    return Search(x, bound, timed_out, counts)


def fill_multi(S: np.ndarray, A: np.ndarray, choice: np.ndarray, passes: int = 8) -> np.ndarray:
    """Spend what several budgets leave on the sum of losses: single-row moves to a cell of lower
    loss (S finite = allowed; pass S cut at the worst loss so it cannot rise), ranked by loss
    saved per share of the scarcest slack they use, and each pass takes the longest ranked prefix
    whose cumulative cost fits every budget (A from `normalized`: budget i fits iff Σ ≤ 1)."""
    M = len(choice)
    rows = np.arange(M)
    x = choice.copy()
    for _ in range(passes):
        cur = A[rows, x]  # (M, n)
        slack = np.maximum(1.0 - cur.sum(0), 0.0)
        gain = S[rows, x][:, None] - S  # (M, K), > 0 where the loss falls
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(S) & (gain > 0)
        dA = A - cur[:, None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            share = (np.maximum(dA, 0.0) / np.where(slack > 0, slack, 0.0)).max(-1)
            eff = np.where(valid, gain / share, -np.inf)
        eff = np.where(valid & np.isnan(eff), np.inf, eff)  # 0/0: a free move that saves loss
        k = eff.argmax(1)
        best = eff[rows, k]
        cand = np.flatnonzero(best > -np.inf)
        if not len(cand):
            break
        order = cand[np.argsort(-best[cand], kind="stable")]
        cum = np.cumsum(dA[order, k[order]], axis=0)
        bad = ~(cum <= slack + 1e-12).all(1)
        j = int(np.argmax(bad)) if bad.any() else len(order)
        if j == 0:
            break
        x[order[:j]] = k[order[:j]]
    return x
