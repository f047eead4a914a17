"""Several constraints at once: Lagrangian relaxation of every constraint row.

Each linear row r of every constraint (`Compiled.rows`: one for a sum, one per liveness point
for a max over rows) is divided by a scale s_r (its cap, or its largest cost when the cap is 0),
and each unit's scores have their minimum subtracted and are divided by σ (the sum of the
units' score ranges), so multipliers are O(1). For prices λ >= 0, one per row,

    L(λ) = Σ_m min_k (S'_mk + Σ_r λ_r C'_rmk) − Σ_r λ_r cap'_r

is a lower bound on the (scaled) optimum: a feasible allocation pays at most λ_r·cap'_r on each
row. Its maximum over λ is the value of the LP relaxation. L is concave and piecewise linear,
with supergradient g_r = row_r(x(λ)) − cap'_r at the minimizer x(λ). It is maximized by a
box-step cutting-plane method (Kelley's cuts inside a box around the best point, which moves on
improvement and doubles when a step reaches its edge; Marsten, Hogan & Blankenship 1975), each
step a small LP in (λ, t) solved by HiGHS, started from every row's own LP dual.

Primal: x(λ) at the best λ, repaired row by row: a violated row gets its exact price with the
other prices held (the single-row LP greedy on S' + Σ_{q≠r} λ_q C'_q, whose rounded-down answer
meets row r), then the leftover room is spent by `fill_rows`; the best feasible x(λ) met on the
way competes. If a row is still broken, HiGHS finds a feasible point (`find_feasible`), so a
feasible problem is never called infeasible.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from bitalloc.solvers.compiled import Compiled
from bitalloc.solvers.frontier import frontier
from bitalloc.solvers.hull import lp_greedy

TOL = 1e-12  # relative slack on a scaled row, as problem.fits


@dataclass
class Lagrange:
    """choice: (M,) feasible allocation, or None; status: `feasible`, `infeasible` (proven by the
    exact fallback) or `time_limit` (no allocation in time); bound: certified lower bound on the
    optimum (true units); lam: (R,) multipliers of the scaled rows at the bound; info: details."""

    choice: np.ndarray | None
    status: str
    bound: float
    lam: np.ndarray
    info: dict = field(default_factory=dict)


class Priced:
    """The scaled rows of a Compiled problem and the priced scores S' + Σ_r λ_r C'_r."""

    def __init__(self, comp: Compiled):
        S = comp.S
        fin = np.isfinite(S)
        smin = np.where(fin, S, np.inf).min(1)
        rng = np.where(fin, S, -np.inf).max(1) - smin
        self.offset = float(smin.sum())
        self.sigma = max(float(rng.sum()), 1e-12 * abs(self.offset), 1e-300)
        self.base = (S - smin[:, None]) / self.sigma  # inf stays inf
        self.idx, self.C, caps = [], [], []
        for i, r in comp.flat():
            cap = float(comp.caps[i])
            s = cap if cap > 0 else max(float(np.abs(r.C).max()) if r.C.size else 1.0, 1e-300)
            self.idx.append(r.idx)
            self.C.append(r.C / s)
            caps.append(cap / s)
        self.caps = np.array(caps)
        self.R = len(caps)
        self.M, self.K = S.shape
        # rows over all units, stacked: (R_d, M·K); rows over a subset of units (liveness points),
        # packed: entry j is unit at[j] of row of[j]
        self.dense_rows = [r for r in range(self.R) if self.idx[r] is None]
        self.Cd = np.stack([self.C[r].ravel() for r in self.dense_rows]) if self.dense_rows else np.zeros((0, S.size))
        self.flat0 = np.arange(self.M) * self.K
        sparse = [r for r in range(self.R) if self.idx[r] is not None]
        self.of = np.concatenate([np.full(len(self.idx[r]), r) for r in sparse]) if sparse else np.zeros(0, np.int64)
        self.at = np.concatenate([self.idx[r] for r in sparse]) if sparse else np.zeros(0, np.int64)
        self.Cs = np.concatenate([self.C[r] for r in sparse]) if sparse else np.zeros((0, self.K))
        self.by_unit = np.argsort(self.at, kind="stable")  # packed entries of unit m: by_unit[ptr[m]:ptr[m+1]]
        self.ptr = np.searchsorted(self.at[self.by_unit], np.arange(self.M + 1))

    def priced(self, lam: np.ndarray, skip: int = -1) -> np.ndarray:
        """(M, K) S' + Σ_{r != skip} λ_r C'_r."""
        ld = np.array([0.0 if r == skip else lam[r] for r in self.dense_rows])
        W = self.base + (ld @ self.Cd).reshape(self.M, self.K) if ld.any() else self.base.copy()
        if len(self.at):
            w = lam[self.of]
            if skip >= 0:
                w = np.where(self.of == skip, 0.0, w)
            for k in range(self.K):
                W[:, k] += np.bincount(self.at, weights=w * self.Cs[:, k], minlength=self.M)
        return W

    def totals(self, x: np.ndarray) -> np.ndarray:
        """(R,) scaled row totals of the choice x."""
        out = np.bincount(self.of, weights=self.Cs[np.arange(len(self.at)), x[self.at]], minlength=self.R) \
            if len(self.at) else np.zeros(self.R)
        if self.dense_rows:
            out[self.dense_rows] = np.take(self.Cd, self.flat0 + x, axis=1).sum(1)
        return out

    def fits(self, x: np.ndarray) -> bool:
        return bool((self.totals(x) <= self.caps + TOL * np.maximum(self.caps, 1.0)).all())

    def evaluate(self, lam: np.ndarray):
        """(x(λ), L(λ), supergradient) in scaled units."""
        W = self.priced(lam)
        x = W.argmin(1)
        val = float(W[np.arange(self.M), x].sum() - lam @ self.caps)
        return x, val, self.totals(x) - self.caps

    def dense(self, r: int) -> np.ndarray:
        """(M, K) costs of row r, zero for units outside it."""
        if self.idx[r] is None:
            return self.C[r]
        D = np.zeros((self.M, self.K))
        D[self.idx[r]] = self.C[r]
        return D

    def true(self, scaled: float) -> float:
        return scaled * self.sigma + self.offset


def lagrangian(comp: Compiled, time_limit: float | None = None, max_iter: int | None = None,
               rel_tol: float = 1e-9) -> Lagrange:
    """Lower bound, multipliers and a feasible allocation for the problem with all its rows."""
    t0 = time.perf_counter()
    deadline = None if time_limit is None else t0 + time_limit
    pr = Priced(comp)
    S = comp.S
    units = np.arange(pr.M)
    obj = lambda x: float(S[units, x].sum())  # noqa: E731
    best_x, best_obj = None, np.inf

    def consider(x, g=None):
        """Keep x if it meets every row (g: its scaled row excess, if known) and beats the best."""
        nonlocal best_x, best_obj
        fit = pr.fits(x) if g is None else bool((g <= TOL * np.maximum(pr.caps, 1.0)).all())
        if fit and obj(x) < best_obj:
            best_x, best_obj = x.copy(), obj(x)

    zero = np.zeros(pr.R)
    x0, L0, g0 = pr.evaluate(zero)
    if (g0 <= TOL * np.maximum(pr.caps, 1.0)).all():  # the unconstrained best fits: optimal
        return Lagrange(x0, "feasible", obj(x0), zero, {"iterations": 0})
    lam0 = np.zeros(pr.R)
    for r in range(pr.R):  # every row's own LP price (dense rows; a liveness row starts at 0)
        if pr.idx[r] is None and pr.R <= 16:
            lam0[r] = lp_greedy(pr.base, pr.C[r], pr.caps[r], frontier(pr.base, pr.C[r])).dual
    lam, L, it = boxstep(pr, lam0, (x0, L0, g0), consider, deadline, max_iter or min(200, 40 + 10 * pr.R), rel_tol)
    info = {"iterations": it, "dual_s": round(time.perf_counter() - t0, 4)}

    x = repair_rows(pr, lam.copy(), pr.evaluate(lam)[0], consider)
    if x is None and best_x is None:
        from bitalloc.solvers.backends.highs import find_feasible

        left = None if deadline is None else max(deadline - time.perf_counter(), 1e-3)
        x, proven = find_feasible(comp, left)
        info["exact_repair"] = True
        if x is None:
            return Lagrange(None, "infeasible" if proven else "time_limit", pr.true(L), lam, info)
    for cand in (x, best_x):
        if cand is not None:
            consider(fill_rows(S, pr, cand, lam))
    return Lagrange(best_x if best_x is not None else x, "feasible", pr.true(L), lam, info)


def boxstep(pr: Priced, lam0: np.ndarray, first, consider, deadline, max_iter: int, rel_tol: float):
    """Maximize L(λ) over λ >= 0 from lam0; `first` = evaluate(0). Returns (best λ, L(best λ), steps)."""
    import highspy

    from bitalloc.solvers.backends.highs import new_highs

    R = pr.R
    cuts = []  # (λ_i, L_i, g_i): L(λ) <= L_i + g_i·(λ − λ_i)
    x, L, g = first
    cuts.append((np.zeros(R), L, g))
    best_lam, best_L = np.zeros(R), L
    lam = lam0
    delta = max(float(lam0.max()), 1.0)
    h = new_highs()
    for opt in ("primal_feasibility_tolerance", "dual_feasibility_tolerance"):
        h.setOptionValue(opt, 1e-10)
    inf = highspy.kHighsInf
    h.addCols(R + 1, np.r_[np.zeros(R), -1.0], np.r_[np.zeros(R), -inf], np.full(R + 1, inf), 0,
              np.zeros(R + 1, np.int32), np.zeros(0, np.int32), np.zeros(0))
    cols = np.arange(R + 1, dtype=np.int32)
    h.addRow(-inf, L, R + 1, cols, np.r_[-g, 1.0])
    steps = 0
    while steps < max_iter and (deadline is None or time.perf_counter() < deadline):
        steps += 1
        x, L, g = pr.evaluate(lam)
        consider(x, g)
        cuts.append((lam, L, g))
        h.addRow(-inf, L - g @ lam, R + 1, cols, np.r_[-g, 1.0])  # t − g·λ <= L − g·λ_i
        if L > best_L:
            best_lam, best_L = lam, L
        lo, hi = np.maximum(best_lam - delta, 0.0), best_lam + delta
        h.changeColsBounds(R, np.arange(R, dtype=np.int32), lo, hi)
        h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            break
        sol = np.asarray(h.getSolution().col_value)
        nxt, model = np.maximum(sol[:R], 0.0), -float(h.getInfo().objective_function_value)
        near = 1e-9 * delta
        if ((nxt >= hi - near) | ((nxt <= lo + near) & (lo > 0))).any():  # a step to the box edge
            delta *= 2.0
        elif model - best_L <= rel_tol * max(1.0, abs(best_L)):
            break  # the cutting-plane model (an upper bound on L) meets the best value inside the box
        if min(float(np.abs(nxt - c[0]).max()) for c in cuts) <= 1e-12 * max(1.0, float(nxt.max())):
            break  # the model's maximum is a point already cut at: converged to its tolerance
        lam = nxt
    return best_lam, best_L, steps


def repair_rows(pr: Priced, lam: np.ndarray, x: np.ndarray, consider, rounds: int = 60):
    """A choice meeting every row, from x = x(λ), or None. With a few rows that are sums over all
    units, a violated row first gets its exact price with the other prices held (the single-row LP
    greedy on S' + Σ_{q≠r} λ_q C'_q, whose rounded-down answer meets row r). Otherwise (or if that
    cycles) the prices of violated rows are raised geometrically until x(λ) fits, and the last
    step is bisected back toward the last infeasible prices."""
    def over(x):
        return (pr.totals(x) - pr.caps) / np.maximum(pr.caps, 1e-300)

    if pr.R <= 8 and all(i is None for i in pr.idx):
        for _ in range(2 * pr.R + 2):
            o = over(x)
            if (o <= TOL).all():
                consider(x)
                return x
            r = int(np.argmax(o))
            W = pr.priced(lam, skip=r)
            g = lp_greedy(W, pr.C[r], pr.caps[r], frontier(W, pr.C[r]))
            x, lam[r] = g.choice, max(lam[r], g.dual)
    floor = 1e-3 * max(float(lam.max()), 1e-3)
    prev = lam.copy()
    for _ in range(rounds):
        o = over(x)
        if (o <= TOL).all():
            break
        prev = lam.copy()
        up = o > TOL
        lam[up] = np.maximum(lam[up] * 2.0, floor)
        x = pr.priced(lam).argmin(1)
    else:
        return None
    lo, hi = prev, lam.copy()
    for _ in range(8):  # bisect between the last infeasible prices and the first feasible ones
        mid = 0.5 * (lo + hi)
        xm = pr.priced(mid).argmin(1)
        if (over(xm) <= TOL).all():
            hi, x = mid, xm
        else:
            lo = mid
    consider(x)
    return x


def fill_rows(S: np.ndarray, pr: Priced, choice: np.ndarray, lam: np.ndarray | None = None, passes: int = 4,
              chunk: int = 4096) -> np.ndarray:
    """Several rows: apply single-unit loss reductions that keep every row within its cap, most
    loss saved per priced extra cost first (with prices `lam` of the scaled rows; else largest
    gain first), the several-row form of greedy.fill."""
    M, K = S.shape
    units = np.arange(M)
    choice = choice.copy()
    chunk = max(64, min(chunk, 2_000_000 // max(1, K * pr.R)))  # keeps the (moves, rows) matrix small
    slack = TOL * np.maximum(pr.caps, 1.0)
    for _ in range(passes):
        left = pr.caps + slack - pr.totals(choice)
        cur = S[units, choice]
        us, ks = [], []
        for k in range(K):
            gain = cur - S[:, k]
            m = np.flatnonzero(gain > 0)
            if len(m) > chunk:
                m = m[np.argpartition(-gain[m], chunk)[:chunk]]
            us.append(m)
            ks.append(np.full(len(m), k))
        u, k = np.concatenate(us), np.concatenate(ks)
        if not len(u):
            break
        E = np.zeros((len(u), pr.R))  # extra cost of each move on each row
        for r in pr.dense_rows:
            E[:, r] = pr.C[r][u, k] - pr.C[r][u, choice[u]]
        if len(pr.at):  # each move's entries in the rows over a subset of units
            lo, n = pr.ptr[u], pr.ptr[u + 1] - pr.ptr[u]
            mv = np.repeat(np.arange(len(u)), n)
            ent = pr.by_unit[np.arange(int(n.sum())) + np.repeat(lo - (np.cumsum(n) - n), n)]
            E[mv, pr.of[ent]] = pr.Cs[ent, k[mv]] - pr.Cs[ent, choice[u[mv]]]
        ok = (E <= left).all(1)
        u, k, E = u[ok], k[ok], E[ok]
        gain = cur[u] - S[u, k]
        if lam is None:
            key = -gain
        else:  # Lagrangian efficiency: loss saved per priced unit of extra cost; free moves first
            priced = E @ np.maximum(lam, 0.0)
            key = np.where(priced > 0, -gain / np.where(priced > 0, priced, 1.0), -np.inf)
        order = np.lexsort((k, u, -gain, key))
        changed = set()
        if pr.R <= 16:  # plain floats: a few rows
            room = left.tolist()
            for i, kk, e in zip(u[order].tolist(), k[order].tolist(), E[order].tolist()):
                if i in changed or any(a > b for a, b in zip(e, room)):
                    continue
                choice[i] = kk
                changed.add(i)
                room = [b - a for a, b in zip(e, room)]
        else:  # many rows (liveness points): a move touches only the rows that hold its unit
            for j in order.tolist():
                i = int(u[j])
                if i in changed:
                    continue
                nz = np.flatnonzero(E[j])
                if (E[j, nz] > left[nz]).any():
                    continue
                choice[i] = k[j]
                changed.add(i)
                left[nz] -= E[j, nz]
        moved = bool(changed)
        if not moved:
            break
    return choice


def fix_cells(comp: Compiled, lam: np.ndarray, upper: float) -> Compiled:
    """Drop cells that no allocation better than `upper` can use (exact, several rows).

    For any feasible x and λ >= 0: obj(x) >= L(λ) + Σ_m rc(m, x_m), rc(m, k) = W_mk − min_j W_mj
    with W the priced scores (the rows' terms λ_r (cap_r − row_r(x)) are >= 0). So a cell with
    rc > upper − L(λ) is in no allocation that beats the incumbent.
    """
    pr = Priced(comp)
    W = pr.priced(lam)
    wmin = W.min(1)
    L = float(wmin.sum() - lam @ pr.caps)
    up = (upper - pr.offset) / pr.sigma
    slack = (up - L) + 1e-9 * max(abs(up), abs(L), float(lam @ pr.caps), 1e-12)
    keep = np.isfinite(W) & (W - wmin[:, None] <= slack)
    return replace(comp, S=np.where(keep, comp.S, np.inf))
