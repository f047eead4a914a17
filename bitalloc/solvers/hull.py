"""The LP relaxation of the multiple-choice knapsack on the convex hulls (`lp_greedy`), rounded
down to an integer allocation, and the leftover budget spent on the best single upgrades (`fill`).

Shared by the greedy, ILP (warm start, reduced-cost fixing), Lagrange and DMMV solvers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitalloc.solvers.compiled import chosen
from bitalloc.solvers.frontier import Frontier


@dataclass
class LpGreedy:
    """choice: (M,) integer allocation (the LP optimum with its fractional segment dropped);
    bound: LP relaxation value; dual: the LP's price of one unit of cost (the efficiency at
    the threshold), so S + dual·C has the same minimizers as the LP."""

    choice: np.ndarray
    bound: float
    dual: float


def lp_greedy(S: np.ndarray, C: np.ndarray, cap: float, fr: Frontier) -> LpGreedy:
    """Solve the LP relaxation on the hulls and round it down. Segment by segment row (j): no
    temporaries of the hulls' (K-1, M) size but the `take` mask (bool)."""
    M = len(fr.start)
    base_cost = chosen(C, fr.start).sum()
    base_obj = chosen(S, fr.start).sum()
    room = cap - base_cost
    dc, ds = fr.dc.ravel(), fr.ds.ravel()  # flat index = segment j · M + unit
    if dc.sum() <= room:  # everything fits: every unit at its least-loss candidate (padding has dc = 0)
        choice = fr.candidate(fr.n_seg)
        return LpGreedy(choice, float(chosen(S, choice).sum()), 0.0)
    # cost per efficiency bucket (0 = zero-cost upgrades (inf), then decreasing efficiency),
    # added in flat order as one bincount over all segments would: the same sums, bit for bit
    hist = np.zeros(N_BUCKETS)
    for j in range(len(fr.dc)):
        np.add.at(hist, _row_buckets(fr, j), fr.dc[j])  # padding has dc = 0 and sorts last
    cum = np.cumsum(hist, out=hist)
    b = int(np.searchsorted(cum, room, side="right"))
    before = cum[b - 1] if b > 0 else 0.0
    del cum, hist
    take = np.empty(fr.dc.shape, bool)
    members = []
    for j in range(len(fr.dc)):
        bucket = _row_buckets(fr, j)
        np.less(bucket, b, out=take[j])
        members.append(j * M + np.flatnonzero(bucket == b))
    bucket = None
    members = np.concatenate(members) if members else np.zeros(0, np.int64)
    e = fr.eff_flat(members)
    order = np.lexsort((members // M, -e))
    members, e = members[order], e[order]
    csum = before + np.cumsum(dc[members])
    n_fit = int(np.searchsorted(csum, room, side="right"))
    take.ravel()[members[:n_fit]] = True
    taken = take.sum(0, dtype=np.int8)  # at most K - 1 segments per unit
    choice = fr.candidate(taken)
    obj = float(base_obj + np.add.reduce(ds, where=take.ravel()))
    bound, dual = obj, 0.0
    if n_fit < len(members):  # the fractional segment of the LP optimum
        f = members[n_fit]
        used = csum[n_fit - 1] if n_fit else before
        bound = obj + (room - used) / dc[f] * ds[f]
        dual = e[n_fit]
    return LpGreedy(choice, float(bound), float(dual))


_TOP = int(np.array(np.inf).view(np.int64) >> 45)
N_BUCKETS = _TOP - (np.iinfo(np.int64).min >> 45) + 1  # every bucket _log_buckets can give


def _log_buckets(e: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Bucket of each efficiency, most efficient first, without a log or a sort: the float64 bit
    pattern of a non-negative number sorts like the number, so its top bits (exponent and 7
    mantissa bits) give buckets 1/128 of an octave wide. +inf lands in bucket 0; negative values
    (padding) land after every real one. `out`: int64 array to write to (may be `e.view(np.int64)`)."""
    v = np.right_shift(e.view(np.int64), 45, out=out)
    np.subtract(np.int64(_TOP), v, out=v)
    return v


def _row_buckets(fr: Frontier, j: int) -> np.ndarray:
    """(M,) bucket of segment j of each unit, in the memory of its efficiency row."""
    e = fr.eff_row(j)
    return _log_buckets(e, out=e.view(np.int64))


def fill(S: np.ndarray, C: np.ndarray, cap: float, choice: np.ndarray, passes: int = 4,
         chunk: int = 4096) -> np.ndarray:
    """Spend the leftover budget: apply the largest single-unit loss reductions that still fit,
    in decreasing gain. Each pass looks at the best `chunk` moves per candidate column
    (argpartition, no full sort); a pass that moves something is followed by another."""
    choice = choice.copy()
    for _ in range(passes):
        left = cap - chosen(C, choice).sum()
        moves, cheapest = fill_moves(S, C, choice, left, chunk)
        left, moved = apply_moves(moves, choice, left, chunk)
        if not moved or left < cheapest:
            break
    return choice


def fill_moves(S: np.ndarray, C: np.ndarray, choice: np.ndarray, left: float, chunk: int = 4096, offset: int = 0):
    """((unit + offset, candidate, gain, extra cost) of the best `chunk` improving moves per
    candidate column that fit in `left`, the cheapest extra cost of any improving move that fits).
    The top `chunk` of a union of blocks' tops is the top `chunk` of the whole: `stream.py` calls
    this block by block."""
    cur_c, cur_s = chosen(C, choice), chosen(S, choice)
    parts = []
    cheapest = np.inf  # the cheapest improving move that fits, kept or not
    for k in range(S.shape[1]):
        extra = C[:, k] - cur_c
        gain = cur_s - S[:, k]
        m = np.flatnonzero((extra <= left) & (gain > 0))
        if len(m):
            cheapest = min(cheapest, float(extra[m].min()))
        if len(m) > chunk:  # only the best `chunk` of this column can be needed in this pass
            m = m[np.argpartition(-gain[m], chunk)[:chunk]]
        parts.append((m + offset, np.full(len(m), k), gain[m], extra[m]))
    return tuple(np.concatenate(x) for x in zip(*parts)), cheapest


def top_moves(moves, chunk: int = 4096):
    """The best `chunk` moves of each candidate column among `moves` (merged blocks)."""
    unit, cand, g, ex = moves
    keep = []
    for k in np.unique(cand):
        m = np.flatnonzero(cand == k)
        keep.append(m[np.argpartition(-g[m], chunk)[:chunk]] if len(m) > chunk else m)
    sel = np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)
    return unit[sel], cand[sel], g[sel], ex[sel]


def apply_moves(moves, choice: np.ndarray, left: float, chunk: int = 4096) -> tuple[float, bool]:
    """Apply moves in decreasing gain while they fit, one per unit (choice changed in place).
    Returns (budget left, whether anything moved)."""
    unit, cand, g, ex = moves
    changed = np.zeros(len(choice), bool)
    moved = False
    while True:
        keep = (ex <= left) & ~changed[unit]
        unit, cand, g, ex = unit[keep], cand[keep], g[keep], ex[keep]
        if not len(unit):
            break
        top = np.argpartition(-g, chunk)[:chunk] if len(unit) > chunk else np.arange(len(unit))
        top = top[np.lexsort((cand[top], unit[top], -g[top]))]
        for i, k, cost in zip(unit[top].tolist(), cand[top].tolist(), ex[top].tolist()):
            if changed[i] or cost > left:
                continue
            choice[i] = k
            changed[i] = True
            left -= cost
            moved = True
        ex[top] = np.inf  # visited
    return left, moved
