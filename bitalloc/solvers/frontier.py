"""Efficient frontier (lower convex hull) of each unit's (cost, loss) candidates, vectorized.

Along a unit's hull, upgrades cost more and save less loss per unit of cost; taking upgrades
in order of efficiency across all units solves the LP relaxation of the multiple-choice
knapsack exactly (Sinha & Zoltners, 1979). Most real units are already convex (quantization
error falls geometrically with bits), so rows are checked in one pass and only the rest go
through the general hull walk.

Layout: candidates as contiguous rows, (K, M) (candidate-major), so that every step is a
contiguous pass over M units.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Frontier:
    """start: (M,) int8 cheapest hull candidate of each unit (original candidate index).
    to, dc, ds: (K-1, M) hull segments in chain order, padded: the candidate reached (int8), its
    cost increase (>= 0) and loss change (< 0); padding has dc = ds = 0. n_seg: (M,) int8 real
    segments per unit. A segment's efficiency −ds/dc (inf when dc = 0; −1 for padding) is
    computed when asked (`eff_row`, `eff`), not stored: one (K-1, M) float64 array less."""

    start: np.ndarray
    to: np.ndarray
    dc: np.ndarray
    ds: np.ndarray
    n_seg: np.ndarray

    def eff_row(self, j: int) -> np.ndarray:
        """(M,) efficiency of segment j of each unit."""
        with np.errstate(invalid="ignore", divide="ignore"):
            e = np.divide(self.ds[j], self.dc[j])
        np.negative(e, out=e)
        e[self.n_seg <= j] = -1.0
        return e

    def eff_flat(self, flat: np.ndarray) -> np.ndarray:
        """Efficiency of the segments at flat indices j · M + unit."""
        M = len(self.start)
        j, u = np.divmod(flat, M)
        with np.errstate(invalid="ignore", divide="ignore"):
            e = np.divide(self.ds.ravel()[flat], self.dc.ravel()[flat])
        np.negative(e, out=e)
        e[self.n_seg[u] <= j] = -1.0
        return e

    @property
    def eff(self) -> np.ndarray:
        """(K-1, M) efficiency of every segment (a new array; see `eff_row`)."""
        out = np.empty(self.dc.shape)
        for j in range(len(out)):
            out[j] = self.eff_row(j)
        return out

    def candidate(self, taken: np.ndarray) -> np.ndarray:
        """(M,) int64 candidate of each unit after taking its first `taken[m]` segments."""
        if self.to.shape[0] == 0:
            return self.start.astype(np.int64)
        last = self.to[np.maximum(taken - 1, 0), np.arange(len(taken))]
        return np.where(taken > 0, last, self.start).astype(np.int64)


def frontier(S: np.ndarray, C: np.ndarray) -> Frontier:
    """S, C: (M, K) loss (inf = not allowed) and cost of each candidate."""
    M, K = S.shape
    if K == 1:
        z = np.zeros((0, M))
        return Frontier(np.zeros(M, np.int8), z.astype(np.int8), z, z, np.zeros(M, np.int8))
    if any((C[:, j + 1] < C[:, j]).any() for j in range(K - 1)):
        order = np.argsort(C, axis=1, kind="stable")  # some unit's candidates are not in cost order
        fr = frontier(np.take_along_axis(S, order, 1), np.take_along_axis(C, order, 1))
        fr.start = np.take_along_axis(order, fr.start[:, None], 1)[:, 0].astype(np.int8)
        fr.to = np.take_along_axis(order, fr.to.T.astype(np.int64), 1).T.astype(np.int8)
        return fr
    # Column by column into preallocated (K-1, M) outputs: no (M, K)-sized temporaries.
    dc, ds = np.empty((K - 1, M)), np.empty((K - 1, M))
    convex = np.isfinite(S[:, 0])
    eff, prev = np.empty(M), np.empty(M)  # efficiency of segment j and j - 1 (only for the check)
    with np.errstate(invalid="ignore", divide="ignore"):
        for j in range(K - 1):
            np.subtract(C[:, j + 1], C[:, j], out=dc[j])
            np.subtract(S[:, j + 1], S[:, j], out=ds[j])
            np.divide(ds[j], dc[j], out=eff)
            np.negative(eff, out=eff)
            convex &= (dc[j] > 0) & (ds[j] < 0)
            if j:
                convex &= eff < prev
            eff, prev = prev, eff
    del eff, prev
    to = np.repeat(np.arange(1, K, dtype=np.int8)[:, None], M, axis=1)
    start = np.zeros(M, np.int8)  # int8 like `to`: K <= 127 candidates
    n_seg = np.full(M, K - 1, np.int8)
    bad = np.flatnonzero(~convex)
    if len(bad):
        s, t, c, d, n = _hull_walk(S[bad], C[bad])
        start[bad], n_seg[bad] = s, n
        to[:, bad], dc[:, bad], ds[:, bad] = t.T, c.T, d.T
    return Frontier(start, to, dc, ds, n_seg)


def _hull_walk(S, C):
    """General rows, (m, K) sorted by cost: from the cheapest allowed point, repeatedly step to
    the point with the steepest loss decrease per cost (farthest on ties)."""
    M, K = S.shape
    rows = np.arange(M)
    ok = np.isfinite(S)
    cmin = np.where(ok, C, np.inf).min(1, keepdims=True)
    cur = np.argmin(np.where(ok & (C == cmin), S, np.inf), axis=1)
    start = cur.copy()
    to = np.zeros((M, K - 1), np.int8)
    dc = np.zeros((M, K - 1))
    ds = np.zeros((M, K - 1))
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
        n[a] += 1
        cur = np.where(active, nxt, cur)
    return start, to, dc, ds, n
