"""DMMV rounding (Ahmed et al., arXiv 2508.13437, the AMVM code's use): per output row, the
integer levels are chosen to minimize the L∞ norm of the layer's output error on calibration
inputs, max_n |Σ_j X[n, j] (Q(w)_j − w_j)|, starting from round-to-nearest.

Scales and zero-points stay those of round-to-nearest (same grid, same storage); only levels
move, by ±1 and within the level range. All rows are searched at once (vectorized in torch, GPU
when present) by an adaptive large-neighbourhood search:
- destroy: a few positions per row, at random or weighted by how much they can move the row's
  worst sample;
- repair: random ±1 / 0 (AMVM's random repair) or greedy (each position takes the move that
  lowers its row's largest errors on the screening samples most);
- local search: repeated best single ±1 move per row, screened on the row's largest-error
  samples and checked exactly on all of them;
- acceptance per row: hill climbing; by default (AMVM's quantization policy `linf_l2`) a move
  must lower the L∞ norm without raising the sum of squares, so the mean error does not pay
  for the max. Every row's answer is at least as good as round-to-nearest on the calibration set.
"""
from __future__ import annotations

import math

import numpy as np

from bitalloc.errors import bad
from bitalloc.quant.quantizers import register
from bitalloc.quant.quantizers.base import WeightQuantizer

POLICIES = ("linf", "linf_l2")
SCORES = (5.0, 2.0, 1.0, 0.5)  # as the solver: new best, better, accepted, rejected
DECAY = 0.7


@register("dmmv")
class DmmvQuantizer(WeightQuantizer):
    """iterations: destroy/repair rounds; passes: local-search passes per round (one move per row
    each); destroy: fraction of a row's positions destroyed; screen: samples per row screened
    before exact checks; policy: `linf_l2` (default) or `linf`; seed; device (default: cuda when
    available, else cpu)."""

    name = "dmmv"
    needs_inputs = True

    def __init__(self, iterations: int = 6, passes: int = 48, destroy: float = 0.01, screen: int = 16,
                 policy: str = "linf_l2", seed: int = 0, device: str | None = None):
        for field, v in (("iterations", iterations), ("passes", passes), ("screen", screen)):
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if field == "iterations" else 1):
                raise bad(field, v, "must be a positive integer" if field != "iterations" else "must be an integer >= 0")
        if not isinstance(destroy, (int, float)) or not 0 < destroy <= 1:
            raise bad("destroy", destroy, "must be a fraction in (0, 1]")
        if policy not in POLICIES:
            raise bad("policy", policy, f"allowed: {', '.join(POLICIES)}")
        self.iterations, self.passes, self.destroy, self.screen = iterations, passes, float(destroy), screen
        self.policy, self.seed, self.device = policy, seed, device

    def quantize(self, w, quant, X=None):
        if not hasattr(quant, "symmetric"):  # minifloat grids (bitalloc/formats) have no integer levels
            raise bad("quantizer dmmv with format", f"{quant.bits}-bit {type(quant).__name__}",
                      "dmmv searches integer grids only; use --quantizer rtn for minifloat, MX and NVFP4 formats")
        q0, scale, zero = quant.encode(w)
        w = np.asarray(w, dtype=np.float32)
        if X is None:
            raise bad("X", None, "the dmmv quantizer needs the layer's calibration inputs (n_samples, in_features)")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != w.shape[1] or len(X) == 0:
            raise bad("X shape", X.shape, f"must be (n_samples >= 1, {w.shape[1]})")
        lo, hi = _level_range(quant)
        g = w.shape[1] if quant.group_size is None else min(quant.group_size, w.shape[1])
        step = np.repeat(scale, g, axis=1)[:, :w.shape[1]]
        e0 = quant.decode(q0, scale, zero) - w
        q = Search(self, X, step, e0, q0, lo, hi).run()
        return q.astype(np.int32), scale, zero


def _level_range(quant) -> tuple[int, int]:
    if quant.symmetric:
        return -(2 ** (quant.bits - 1)), 2 ** (quant.bits - 1) - 1
    return 0, 2 ** quant.bits - 1


class Search:
    """State of all rows: d = q − q_rtn (rows, cols) level offsets; R = (e0 + d·step) Xᵀ (rows, n)."""

    def __init__(self, cfg: DmmvQuantizer, X, step, e0, q0, lo, hi):
        import torch

        self.torch, self.cfg = torch, cfg
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        t = lambda a, dt=torch.float32: torch.as_tensor(np.ascontiguousarray(a), dtype=dt, device=self.device)  # noqa: E731
        self.X, self.step = t(X), t(step)
        self.XT = self.X.T.contiguous()
        self.R0 = t(e0) @ self.XT
        self.q0 = t(q0, torch.int64)
        self.down = (t(lo, torch.int64) - self.q0)  # lowest allowed offset per element
        self.up = (t(hi, torch.int64) - self.q0)
        self.movable = self.step > 0
        self.rows, self.cols = self.step.shape
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(cfg.seed)
        self.P = min(cfg.screen, self.X.shape[0])

    def residual(self, d):
        return self.R0 + (d * self.step) @ self.XT

    @staticmethod
    def norms(R):
        return R.abs().amax(1), R.square().sum(1)

    def better(self, inf_new, l2_new, inf_cur, l2_cur, strict: bool = True):
        """(rows,) bool: the new state is accepted under the policy."""
        tol = 1e-7 * inf_cur.clamp_min(1e-30)
        ok = inf_new < inf_cur - tol if strict else inf_new <= inf_cur + tol
        if self.cfg.policy == "linf_l2":
            ok &= l2_new <= l2_cur * (1 + 1e-6)
        return ok

    # ---- local search -----------------------------------------------------------------
    def local_search(self, d, R):
        torch = self.torch
        inf, l2 = self.norms(R)
        active = torch.ones(self.rows, dtype=torch.bool, device=self.device)
        rows = torch.arange(self.rows, device=self.device)
        for _ in range(self.cfg.passes):
            if not active.any():
                break
            r = rows[active]
            idx = R[r].abs().topk(self.P, dim=1).indices  # (a, P) the row's largest errors
            Rp = R[r].gather(1, idx)
            Xp = self.X[idx]  # (a, P, cols)
            sx = self.step[r][:, None, :] * Xp
            best_val, best_j, best_s = None, None, None
            for s in (1, -1):
                ok = self.movable[r] & ((d[r] + s <= self.up[r]) & (d[r] + s >= self.down[r]))
                val = (Rp[:, :, None] + s * sx).abs().amax(1)
                val = torch.where(ok, val, torch.inf)
                v, j = val.min(1)
                if best_val is None:
                    best_val, best_j, best_s = v, j, torch.full_like(j, s)
                else:
                    take = v < best_val
                    best_val = torch.where(take, v, best_val)
                    best_j = torch.where(take, j, best_j)
                    best_s = torch.where(take, torch.full_like(j, s), best_s)
            # exact check of each row's screened best move on every sample
            delta = (best_s * 1.0 * self.step[r, best_j])[:, None] * self.XT[best_j]  # (a, n)
            Rn = R[r] + delta
            inf_n, l2_n = self.norms(Rn)
            acc = self.better(inf_n, l2_n, inf[r], l2[r]) & torch.isfinite(best_val)
            if not acc.any():
                break
            ra = r[acc]
            d[ra, best_j[acc]] += best_s[acc]
            R[ra] = Rn[acc]
            inf[ra], l2[ra] = inf_n[acc], l2_n[acc]
            active[r[~acc]] = False
        return d, R

    # ---- destroy / repair -------------------------------------------------------------
    def destroyed(self, R, worst: bool):
        """(rows, m) positions per row: uniform, or weighted by |step·X[n*, j]| at the worst sample n*."""
        torch = self.torch
        m = max(1, math.ceil(self.cfg.destroy * self.cols))
        if worst:
            n_star = R.abs().argmax(1)
            weight = (self.step * self.X[n_star]).abs() + 1e-30
        else:
            weight = torch.ones(self.rows, self.cols, device=self.device)
        u = torch.rand(self.rows, self.cols, generator=self.gen, device=self.device).clamp_min(1e-30)
        keys = weight.log() - (-u.log()).log()  # Gumbel top-k: sampling without replacement
        return keys.topk(m, dim=1).indices

    def repair(self, d, R, pos, greedy: bool):
        torch = self.torch
        d = d.clone()
        rows = torch.arange(self.rows, device=self.device)[:, None].expand_as(pos)
        if greedy:  # the move (−1, 0, +1) that most lowers the row's largest errors
            idx = R.abs().topk(self.P, dim=1).indices
            Rp = R.gather(1, idx)  # (rows, P)
            sx = self.step[rows, pos][:, None, :] * torch.gather(
                self.X[idx], 2, pos[:, None, :].expand(-1, self.P, -1))  # (rows, P, m)
            cand = torch.stack([(Rp[:, :, None] + s * sx).abs().amax(1) for s in (-1, 0, 1)], -1)  # (rows, m, 3)
            cur = d[rows, pos]
            for i, s in enumerate((-1, 0, 1)):
                bad_ = (cur + s > self.up[rows, pos]) | (cur + s < self.down[rows, pos])
                cand[..., i] = torch.where(bad_, torch.inf, cand[..., i])
            move = cand.argmin(-1) - 1
        else:
            move = torch.randint(-1, 2, pos.shape, generator=self.gen, device=self.device)
            cur = d[rows, pos]
            move = torch.where((cur + move > self.up[rows, pos]) | (cur + move < self.down[rows, pos]), 0, move)
        move = torch.where(self.movable[rows, pos], move, 0)
        d[rows, pos] += move
        return d, self.residual(d)

    def run(self) -> np.ndarray:
        torch = self.torch
        d = torch.zeros(self.rows, self.cols, dtype=torch.int64, device=self.device)
        R = self.R0.clone()
        d, R = self.local_search(d, R)
        inf, l2 = self.norms(R)
        dw, rw = [1.0, 1.0], [1.0, 1.0]
        for _ in range(self.cfg.iterations):
            a = int(float(torch.rand((), generator=self.gen, device=self.device)) * sum(dw) >= dw[0])
            b = int(float(torch.rand((), generator=self.gen, device=self.device)) * sum(rw) >= rw[0])
            y, Ry = self.repair(d, R, self.destroyed(R, worst=bool(a)), greedy=bool(b))
            y, Ry = self.local_search(y, Ry)
            inf_y, l2_y = self.norms(Ry)
            acc = self.better(inf_y, l2_y, inf, l2, strict=False)
            gain = float(((inf - inf_y).clamp_min(0) * acc).sum())
            score = SCORES[0] if gain > 0 else SCORES[2] if acc.any() else SCORES[3]
            d[acc], R[acc], inf[acc], l2[acc] = y[acc], Ry[acc], inf_y[acc], l2_y[acc]
            dw[a] = DECAY * dw[a] + (1 - DECAY) * score
            rw[b] = DECAY * rw[b] + (1 - DECAY) * score
        return (self.q0 + d).cpu().numpy()
