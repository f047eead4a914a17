"""Efficient frontier (lower convex hull) of each unit's (cost, loss) candidates, vectorized.

Along a unit's hull, upgrades cost more and save less loss per unit of cost; taking upgrades
in order of efficiency across all units solves the LP relaxation of the multiple-choice
knapsack exactly (Sinha & Zoltners, 1979). Most real units are already convex (quantization
error falls geometrically with bits), so rows are checked in one pass and only the rest go
through the general hull walk.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Frontier:
    """start: (M,) cheapest hull candidate of each row (original candidate index).
    to, dc, ds, eff: (M, K-1) padded hull segments in chain order: the candidate reached, its
    cost increase (>= 0), loss change (< 0) and efficiency -ds/dc (inf when dc = 0); padding
    has eff = -1. n_seg: (M,) real segments per row."""

    start: np.ndarray
    to: np.ndarray
    dc: np.ndarray
    ds: np.ndarray
    eff: np.ndarray
    n_seg: np.ndarray

    def candidate(self, taken: np.ndarray) -> np.ndarray:
        """Candidate of each row after taking its first `taken[m]` segments."""
        rows = np.arange(len(taken))
        last = self.to[rows, np.maximum(taken - 1, 0)]
        return np.where(taken > 0, last, self.start)


def frontier(S: np.ndarray, C: np.ndarray) -> Frontier:
    """S, C: (M, K) loss (inf = not allowed) and cost of each candidate."""
    M, K = S.shape
    if K == 1:
        z = np.zeros((M, 0))
        return Frontier(np.zeros(M, np.int64), z.astype(np.int64), z, z, z, np.zeros(M, np.int64))
    order = None
    if not (np.diff(C, axis=1) >= 0).all():
        order = np.argsort(C, axis=1, kind="stable")
        S = np.take_along_axis(S, order, 1)
        C = np.take_along_axis(C, order, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dc = np.diff(C, axis=1)
        ds = np.diff(S, axis=1)
        eff = -ds / dc
        convex = (np.isfinite(S).all(1) & (dc > 0).all(1) & (ds < 0).all(1)
                  & (np.diff(eff, axis=1) < 0).all(1))
    to = np.broadcast_to(np.arange(1, K), (M, K - 1)).copy()
    start = np.zeros(M, np.int64)
    n_seg = np.full(M, K - 1)
    bad = np.flatnonzero(~convex)
    if len(bad):
        s, t, c, d, e, n = _hull_walk(S[bad], C[bad])
        start[bad], to[bad], dc[bad], ds[bad], eff[bad], n_seg[bad] = s, t, c, d, e, n
    if order is not None:
        start = np.take_along_axis(order, start[:, None], 1)[:, 0]
        to = np.take_along_axis(order, to, 1)
    return Frontier(start, to, dc, ds, eff, n_seg)


def _hull_walk(S, C):
    """General rows: from the cheapest allowed point, repeatedly step to the point with the
    steepest loss decrease per cost (farthest on ties). Columns are sorted by cost."""
    M, K = S.shape
    rows = np.arange(M)
    ok = np.isfinite(S)
    cmin = np.where(ok, C, np.inf).min(1, keepdims=True)
    cur = np.argmin(np.where(ok & (C == cmin), S, np.inf), axis=1)
    start = cur.copy()
    to = np.zeros((M, K - 1), np.int64)
    dc = np.zeros((M, K - 1))
    ds = np.zeros((M, K - 1))
    eff = np.full((M, K - 1), -1.0)
    n = np.zeros(M, np.int64)
    active = np.ones(M, bool)
    for j in range(K - 1):
        c0 = C[rows, cur][:, None]
        s0 = S[rows, cur][:, None]
        dC, dS = C - c0, S - s0
        cand = ok & (dS < 0) & (dC >= 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = np.where(cand, np.where(dC > 0, dS / np.where(dC > 0, dC, 1), -np.inf), np.inf)
        nxt = K - 1 - np.argmin(slope[:, ::-1], axis=1)  # farthest among equally steep points
        active &= np.isfinite(slope[rows, nxt]) | (slope[rows, nxt] == -np.inf)
        if not active.any():
            break
        a = np.flatnonzero(active)
        to[a, j] = nxt[a]
        dc[a, j] = dC[a, nxt[a]]
        ds[a, j] = dS[a, nxt[a]]
        with np.errstate(divide="ignore"):
            eff[a, j] = -ds[a, j] / dc[a, j]
        n[a] += 1
        cur = np.where(active, nxt, cur)
    return start, to, dc, ds, eff, n
