"""DMMV: Discrete Min-Max Violation (Ahmed et al., arXiv 2508.13437) for the `max` objective.

One candidate per unit minimizing the worst unit's loss max_m S[m, x_m] under every budget; when
the budgets conflict (no allocation meets them all), the allocation with the least largest
normalized violation max_i (total_i − cap_i) / cap_i, reported `infeasible` with its bits.

- One budget (`exact=True`, the default): the threshold bisection of `minmax.py` is exact; the
  budget left at the optimal threshold is then spent on the sum of losses (the greedy's LP
  rounding and fill on the cells under the threshold), which never raises the worst loss.
- Several budgets: a search over thresholds τ (bisection between the certified lower bound and
  the incumbent). At each τ only cells with S ≤ τ may be used, and the question "do all budgets
  fit?" is itself a DMMV problem: minimize the largest normalized violation. It is solved by the
  paper's adaptive large-neighbourhood search, vectorized in torch (GPU when present): destroy
  (random rows, or rows weighted by their excess in the violated budgets, sampled without
  replacement by Gumbel top-k), repair (greedy: chunks of rows take their cheapest candidate
  under prices that focus on the most violated budgets; random: a random allowed candidate),
  then local search (all single-row moves ranked by priced gain, the best prefix of them applied
  at once: the prefix sums give the violation of every prefix in one pass); hill-climbing
  acceptance and roulette-wheel operator weights (scores 5/2/1/0.5, decay 0.7, as AMVM).
  The bound is the certified threshold bound; status is `optimal` only when it is met. The
  budgets left over are then spent on the sum of losses under the worst loss (`fill_multi`).
"""
from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np

from bitalloc.errors import bad
from bitalloc.solvers.compiled import Compiled
from bitalloc.solvers import register
from bitalloc.solvers.base import Result, Solver
from bitalloc.solvers.minmax import bisect, cheapest_under, fill_multi, normalized, surrogate, threshold_search

SCORES = (5.0, 2.0, 1.0, 0.5)  # new best, better than current, accepted, rejected
DECAY = 0.7
TOL = 1e-12
SMALL = 1 << 16  # elements of A below which the search runs on one CPU thread


@register("dmmv")
class DmmvSolver(Solver):
    """exact: with one budget use the exact bisection (else always the search); iterations:
    ALNS iterations per threshold; patience: iterations without a new best before giving up a
    threshold; seed; device: torch device name (default: cuda when available, else cpu)."""

    objectives = ("max",)

    def __init__(self, time_limit: float | None = None, exact: bool = True, iterations: int = 60,
                 patience: int = 12, seed: int = 0, device: str | None = None):
        super().__init__(time_limit)
        for name, v in (("iterations", iterations), ("patience", patience)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(name, v, "must be a positive integer")
        self.exact, self.iterations, self.patience, self.seed = bool(exact), iterations, patience, seed
        self.device = device

    @staticmethod
    def _infeasible(comp: Compiled):
        return None  # conflicting budgets get the least-violation allocation from _solve

    def _solve(self, comp: Compiled, warm: Result | None) -> Result:
        if self.exact and len(comp.C) == 1:
            return _exact_one_budget(comp)
        deadline = math.inf if self.time_limit is None else time.perf_counter() + self.time_limit
        A = normalized(comp)
        eng = Engine(A, self.device, self.seed)
        info = {"method": "alns", "device": str(eng.device), "alns_runs": 0}
        S = comp.S
        sur = surrogate(A, np.isfinite(S))
        x = warm.choice if warm is not None and warm.choice is not None and comp.feasible(warm.choice) else None
        if x is None and sur.violation <= 0 and comp.feasible(sur.choice):
            x = sur.choice
        if x is None:
            info["alns_runs"] += 1
            x, v = eng.search(np.isfinite(S), sur.choice, self.iterations, self.patience, deadline)
            if not comp.feasible(x):  # proven when the certified violation bound is > 0, else the search's verdict
                vb = max(sur.bound, _each_alone(A, S))
                return Result(x, "infeasible", None, {**info, "violation": v, "violation_bound": vb,
                                                      "proven_infeasible": vb > 0})

        def find(ok, y):
            info["alns_runs"] += 1
            return eng.search(ok, y, self.iterations, self.patience, deadline)[0]

        r = threshold_search(comp, A, x, find, deadline)
        info.update(r.counts)
        x = r.choice
        under = np.where(S <= comp.objective_value(x), S, np.inf)
        filled = fill_multi(under, A, x)
        if comp.feasible(filled):  # leftover budget spent on the sum of losses; the worst loss stays
            x = filled
        status = "time_limit" if r.timed_out else "feasible"
        return Result(x, status, r.bound, {**info, "violation": eng.violation(x)})


def _exact_one_budget(comp: Compiled) -> Result:
    """Bisection (exact), then the leftover budget spent on the sum of losses under the threshold."""
    from bitalloc.solvers.frontier import frontier
    from bitalloc.solvers.hull import fill, lp_greedy

    S, C, cap = comp.S, comp.C[0], comp.caps[0]
    t = bisect(S, C, cap)
    if t is None:  # one budget: the cheapest allocation has the least violation
        x, _ = cheapest_under(S, C, np.inf)
        A = normalized(comp)
        v = float(A[np.arange(len(x)), x, 0].sum() - 1)
        return Result(x, "infeasible", None, {"method": "bisection", "violation": v, "violation_bound": v,
                                              "proven_infeasible": True})
    under = np.where(S <= t.tau, S, np.inf)
    g = lp_greedy(under, C, cap, frontier(under, C))
    x = fill(under, C, cap, g.choice)
    if not replace(comp, S=under).feasible(x):  # cannot happen for a fitting threshold; stay exact anyway
        x = t.choice
    return Result(x, "optimal", t.tau, {"method": "bisection", "threshold": t.tau})


def _each_alone(A: np.ndarray, S: np.ndarray) -> float:
    """Certified: the largest violation of a budget on its own at its cheapest allowed cells."""
    return float((np.where(np.isfinite(S)[..., None], A, np.inf).min(1).sum(0) - 1).max())


class Engine:
    """ALNS for min over x of V(x) = max_i (Σ_m A[m, x_m, i] − 1), A: (M, K, n) from
    `minmax.normalized`, in torch."""

    def __init__(self, A: np.ndarray, device: str | None, seed: int):
        import torch

        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.A = torch.as_tensor(A, device=self.device)
        self.M, self.K, self.n = self.A.shape
        self.rows = torch.arange(self.M, device=self.device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(seed)

    # ---- evaluation -------------------------------------------------------------------
    def totals(self, x):
        return self.A[self.rows, x].sum(0)

    @staticmethod
    def value(T) -> float:
        return float((T - 1).max())

    def violation(self, x: np.ndarray) -> float:
        return self.value(self.totals(self.torch.as_tensor(x, device=self.device)))

    def focus(self, T):
        """Prices (n,) summing to 1, concentrated on the most violated budgets."""
        v = T - 1
        spread = float(v.max() - v.min())
        w = self.torch.exp((v - v.max()) / max(0.1 * spread, 1e-9))
        return w / w.sum()

    # ---- search -----------------------------------------------------------------------
    def search(self, allowed: np.ndarray, start: np.ndarray | None, iterations: int, patience: int,
               deadline: float) -> tuple[np.ndarray, float]:
        """Least-violation allocation over the `allowed` cells (M, K), from `start` (its rows on a
        cell no longer allowed are repaired first); stops as soon as every budget fits."""
        torch = self.torch
        threads = torch.get_num_threads()
        small = self.device.type == "cpu" and self.A.numel() < SMALL and threads > 1
        if small:  # thousands of tiny ops: a thread pool only adds wake-ups (5x slower on a busy 2-core box)
            torch.set_num_threads(1)
        try:
            return self._search(allowed, start, iterations, patience, deadline)
        finally:
            if small:
                torch.set_num_threads(threads)

    def _search(self, allowed, start, iterations, patience, deadline):
        torch = self.torch
        ok = torch.as_tensor(allowed, device=self.device)
        if start is None:
            x = self._priced_cheapest(ok, torch.full((self.n,), 1.0 / self.n, dtype=self.A.dtype, device=self.device),
                                      self.rows)
        else:
            x = torch.as_tensor(np.asarray(start), device=self.device).clone()
            broken = self.rows[~ok[self.rows, x]]
            if len(broken):
                x = self._repair_greedy(x, broken, ok)
        x, T = self._local_search(x, self.totals(x), ok)
        best, best_v = x, self.value(T)
        cur_v = best_v
        dw, rw = [1.0, 1.0], [1.0, 1.0]
        stale = 0
        for _ in range(iterations):
            if best_v <= TOL or stale >= patience or time.perf_counter() > deadline:
                break
            d, r = self._roulette(dw), self._roulette(rw)
            gone = self._destroy_worst(x, T, ok) if d else self._destroy_random()
            y = self._repair_random(x, gone, ok) if r else self._repair_greedy(x, gone, ok)
            y, Ty = self._local_search(y, self.totals(y), ok)
            v = self.value(Ty)
            score = SCORES[0] if v < best_v - TOL else SCORES[1] if v < cur_v - TOL else SCORES[2] if v <= cur_v else SCORES[3]
            if v <= cur_v:
                x, T, cur_v = y, Ty, v
            if v < best_v - TOL:
                best, best_v, stale = y, v, 0
            else:
                stale += 1
            dw[d] = DECAY * dw[d] + (1 - DECAY) * score
            rw[r] = DECAY * rw[r] + (1 - DECAY) * score
        return best.cpu().numpy(), best_v

    def _roulette(self, w) -> int:
        u = float(self.torch.rand((), generator=self.gen, device=self.device)) * sum(w)
        return 0 if u < w[0] else 1

    def _n_destroy(self) -> int:
        rate = 0.02 + 0.18 * float(self.torch.rand((), generator=self.gen, device=self.device))
        return max(1, min(self.M, math.ceil(rate * self.M)))

    def _destroy_random(self):
        return self.torch.randperm(self.M, generator=self.gen, device=self.device)[:self._n_destroy()]

    def _destroy_worst(self, x, T, ok):
        """Rows sampled (without replacement, Gumbel top-k) by their priced excess over their cheapest cell."""
        torch = self.torch
        lam = self.focus(T)
        priced = (self.A * lam).sum(-1)
        least = torch.where(ok, priced, torch.inf).min(1).values
        excess = (priced[self.rows, x] - least).clamp_min(0) + 1e-30
        u = torch.rand(self.M, generator=self.gen, device=self.device, dtype=self.A.dtype).clamp_min(1e-300)
        keys = excess.log() - (-u.log()).log()
        return keys.topk(self._n_destroy()).indices

    def _priced_cheapest(self, ok, lam, rows):
        priced = (self.A[rows] * lam).sum(-1)
        return self.torch.where(ok[rows], priced, self.torch.inf).argmin(1)

    def _repair_greedy(self, x, gone, ok, chunks: int = 8):
        """Destroyed rows, chunk by chunk, take their cheapest cell under prices from the projected
        totals (rows not yet repaired counted at their old cell, if it is allowed, else at their cheapest)."""
        torch = self.torch
        y = x.clone()
        gone = gone[torch.randperm(len(gone), generator=self.gen, device=self.device)]
        lam0 = torch.full((self.n,), 1.0 / self.n, dtype=self.A.dtype, device=self.device)
        old_ok = ok[gone, y[gone]]
        y[gone] = torch.where(old_ok, y[gone], self._priced_cheapest(ok, lam0, gone))
        T = self.totals(y)
        for part in torch.tensor_split(gone, min(chunks, len(gone))):
            lam = self.focus(T)
            new = self._priced_cheapest(ok, lam, part)
            T = T + (self.A[part, new] - self.A[part, y[part]]).sum(0)
            y[part] = new
        return y

    def _repair_random(self, x, gone, ok):
        torch = self.torch
        y = x.clone()
        w = ok[gone].to(self.A.dtype)
        y[gone] = torch.multinomial(w, 1, generator=self.gen).squeeze(1)
        return y

    def _local_search(self, x, T, ok, passes: int = 20):
        """Single-row moves, each row's best one ranked (by the violation it leaves on its own,
        then by priced gain), and the best prefix of the ranking applied at once; repeated while
        it lowers V."""
        torch = self.torch
        v = self.value(T)
        for _ in range(passes):
            if v <= TOL:
                break
            cur = self.A[self.rows, x]
            delta = self.A - cur[:, None, :]  # (M, K, n) change of the totals per move
            alone = torch.where(ok, (T + delta - 1).amax(-1), torch.inf)  # V after this move alone
            priced = torch.where(ok, (delta * self.focus(T)).sum(-1), torch.inf)
            improved = False
            for key in (alone + 1e-9 * priced.clamp(-1, 1), priced):
                best, k = key.min(1)
                cand = torch.nonzero(best < (v - TOL if key is not priced else 0.0)).squeeze(1)
                if not len(cand):
                    continue
                order = cand[torch.argsort(best[cand])]
                steps = delta[order, k[order]]
                pref = (T + steps.cumsum(0) - 1).max(1).values
                j = int(pref.argmin())
                if float(pref[j]) < v - TOL:
                    x = x.clone()
                    x[order[:j + 1]] = k[order[:j + 1]]
                    T = self.totals(x)  # recomputed, not accumulated: no drift
                    v = self.value(T)
                    improved = True
                    break
            if not improved:
                pair = self._best_pair(alone, delta, T, v)
                if pair is None:
                    break
                x = x.clone()
                x[pair[0]] = pair[1]
                T = self.totals(x)
                v = self.value(T)
        return x, T

    def _best_pair(self, alone, delta, T, v, top: int = 256):
        """Best pair of moves on two rows among the `top` single moves (AMVM's swap move): rows
        and candidates (2,) each, or None when no pair lowers V."""
        torch = self.torch
        flat = alone.reshape(-1)
        keep = torch.isfinite(flat)
        idx = torch.nonzero(keep).squeeze(1)
        if len(idx) < 2:
            return None
        idx = idx[torch.topk(flat[idx], min(top, len(idx)), largest=False).indices]
        r, k = idx // self.K, idx % self.K
        d = delta[r, k]  # (P, n)
        pv = (T + d[:, None, :] + d[None, :, :] - 1).amax(-1)  # (P, P)
        pv = torch.where(r[:, None] == r[None, :], torch.inf, pv)
        j = int(pv.argmin())
        a, b = divmod(j, len(idx))
        if not float(pv[a, b]) < v - TOL:
            return None
        return torch.stack([r[a], r[b]]), torch.stack([k[a], k[b]])
