"""`hessian` (HAWQ-V2/V3): curvature of the task loss from Hutchinson probes.

For a Rademacher probe v over the weights of ALL quantizable layers at once, one
Hessian-vector product Hv (double backward: the gradient is built with `create_graph=True`,
then differentiated along v) gives, for every layer l at the same time,
    v_lᵀ (Hv)_l   an unbiased sample of Tr(H_ll)        (E[vvᵀ] = I)
    v ⊙ Hv        an unbiased sample of diag(H)          (v_i² = 1)
The Hessian is that of the mean calibration loss (the mean over batches of `task.loss`).

Score (units of loss, no ½ factor, as in DESIGN.md):
- layer granularity (HAWQ-V2/V3): S = Tr(H_l)/n_l · ||Q_b(W_l) − W_l||²;
- group / channel granularity: S = Σ_{i∈unit} c_i (Q_b(w_i) − w_i)² with the per-element
  diagonal c_i = max(E[v_i (Hv)_i], 0). A single element's estimate is noisy (its variance is
  Σ_{j≠i} H_ij² / probes, which for a linear layer with correlated inputs is hundreds of times
  H_ii²), so negative estimates are common even where H_ii ≥ 0; they are clipped at 0 so that
  no unit is scored as gaining from quantization. The clipping biases c upward where the noise
  dominates: at the probe counts the tolerance stops at, a quarter (digits-cnn, 11 probes) to a
  half (MiniLM, 4 probes) of the element estimates are negative, and Σ_units S of a layer
  exceeds the HAWQ layer score by a median 11× (digits-cnn) and 23× (MiniLM; up to 400×).
  `unit_trace=True` instead scores every unit like HAWQ scores a layer,
  S = max(Tr_u, 0)/n_u · ||Q_b(W_u) − W_u||² with Tr_u = Σ_{i∈u} E[v_i (Hv)_i] (far less noisy:
  its per-layer sums stay within 0.9-2.3× of the HAWQ layer scores, same ranking; the unit
  traces of a layer add up to the layer trace).
  Unclipped, the diagonal sums to the layer trace from the same probes, so Σ_units S of a layer
  is Σ_i c_i err_i, not the HAWQ layer score; `diagonal=True` scores layers with the diagonal
  too (then layer, group and channel profiles of the same seed add up exactly).
A layer (or unit) trace that comes out negative (a saddle, or noise on a flat layer) is clipped
at 0 in the score the same way, so that layer scores 0 at every bit-width; the raw layer traces
are kept in `meta["trace"]`. This is not rare: on SmolLM2 (4×128 tokens, 5 probes) 27 of 210
layer traces came out ≤ 0.

Cost and stopping: per calibration batch, 1 forward + 1 backward with `create_graph=True`,
then 1 Hessian-vector backward per probe on that retained graph. Probes run until the relative
change of the running mean of the total trace (all layers) of that batch falls below `tol`
(HAWQ/PyHessian's criterion), at least `min_probes` and at most `max_probes` per batch.
Probes come from a seeded `torch.Generator`, so a profile is reproducible. The criterion is
on the total, which the large layers dominate: a small layer's trace can still be far off when
it stops (MiniLM's layer-0 query: 0.74 at 4 probes, 2.23 at 32); lower `tol` or raise
`min_probes` for those.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np

from bitalloc.errors import bad
from bitalloc.profile import Profile
from bitalloc.sensitivity import register
from bitalloc.sensitivity.base import DEFAULT_BITS, Estimator, grad_only_for, weighted_error


@dataclass
class Hutchinson:
    """Result of the probes. trace: layer → Tr(H_ll) estimate; diag: layer → per-element
    E[v ⊙ Hv] (weight-shaped float32 numpy, unclipped; only when asked for); probes: probes used
    per batch; rel_change: last relative change of the running total-trace mean per batch;
    converged: whether each batch reached `tol` before `max_probes`; seconds: wall time;
    seconds_grad / seconds_hvp: time of the forward + create_graph backward (summed over
    batches) and of the Hessian-vector backwards (summed over probes)."""

    trace: dict[str, float]
    diag: dict[str, np.ndarray] | None
    probes: list[int] = field(default_factory=list)
    rel_change: list[float | None] = field(default_factory=list)
    converged: list[bool] = field(default_factory=list)
    seconds: float = 0.0
    seconds_grad: float = 0.0
    seconds_hvp: float = 0.0


def math_attention():
    """Context for double backward through attention: PyTorch's fused CPU SDPA kernels have
    no second derivative, its math kernel does (a no-op where SDPA is not used)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - old torch
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


@register("hessian")
class HessianEstimator(Estimator):
    """Hutchinson Hessian trace (layer) / diagonal (group, channel) sensitivity.

    tol: relative change of the running total-trace mean that stops the probes of a batch;
    min_probes / max_probes: probes per batch; seed: probe generator seed; diagonal: score with
    the per-element diagonal (default: at group/channel granularity only); unit_trace: at
    group/channel granularity, score each unit by its own trace instead (see the module doc)."""

    passes = ("per calibration batch: 1 forward + 1 backward (create_graph) + 1 Hessian-vector "
              "backward (double backward) per probe")

    def __init__(self, bits=DEFAULT_BITS, granularity: str = "layer", group_size: int = 128,
                 symmetric: bool = False, zero: str = "int", tol: float = 1e-2, max_probes: int = 32,
                 min_probes: int = 4, seed: int = 0, diagonal: bool | None = None, unit_trace: bool = False):
        super().__init__(bits, granularity, group_size, symmetric, zero)
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
            raise bad("tol", tol, "must be a non-negative number")
        for name, v in (("max_probes", max_probes), ("min_probes", min_probes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(name, v, "must be a positive integer")
        if min_probes > max_probes:
            raise bad("min_probes", min_probes, f"must be at most max_probes ({max_probes})")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise bad("seed", seed, "must be an integer")
        if diagonal not in (None, True, False):
            raise bad("diagonal", diagonal, "must be true, false or null (auto: per granularity)")
        if unit_trace not in (True, False):
            raise bad("unit_trace", unit_trace, "must be true or false")
        if unit_trace and diagonal is not None:
            raise bad("diagonal", diagonal, "cannot be set together with unit_trace")
        self.tol, self.max_probes, self.min_probes, self.seed = float(tol), max_probes, min_probes, seed
        self.unit_trace = bool(unit_trace) and granularity != "layer"
        self.diagonal = granularity != "layer" and not self.unit_trace if diagonal is None else bool(diagonal)

    def hutchinson(self, task, diagonal: bool | None = None, progress=None) -> Hutchinson:
        """Run the probes on `task` (see the module docstring); the model is left as it was.
        diagonal: also accumulate the per-element diagonal (default: when the score needs it)."""
        import torch

        diagonal = (self.diagonal or self.unit_trace) if diagonal is None else diagonal
        t0 = time.perf_counter()
        names = list(task.layers)
        mods = task.modules()
        weights = [mods[n].weight for n in names]
        gen = torch.Generator().manual_seed(self.seed)
        n_batches = len(task.calib)
        trace = np.zeros(len(names))
        diag = [torch.zeros_like(w, dtype=torch.float32) for w in weights] if diagonal else None
        out = Hutchinson({}, None)
        with grad_only_for(task.model, weights), math_attention(), torch.enable_grad():
            for b, batch in enumerate(task.calib):
                t = time.perf_counter()
                loss = task.loss(task.model, batch)
                grads = torch.autograd.grad(loss, weights, create_graph=True)
                out.seconds_grad += time.perf_counter() - t
                sums = np.zeros(len(names))
                dsum = [torch.zeros_like(d) for d in diag] if diagonal else None
                mean_old, rel, p = None, float("inf"), 0
                while p < self.max_probes:
                    t = time.perf_counter()
                    vs = [rademacher(w, gen) for w in weights]
                    hvs = torch.autograd.grad(grads, weights, grad_outputs=vs, retain_graph=True)
                    for i, (v, hv) in enumerate(zip(vs, hvs)):
                        vhv = v.mul_(hv.detach())  # v is not needed after this: reuse its memory
                        sums[i] += float(vhv.sum(dtype=torch.float32 if vhv.device.type == "mps" else torch.float64))
                        if diagonal:
                            dsum[i] += vhv
                    del vs, hvs, vhv
                    out.seconds_hvp += time.perf_counter() - t
                    p += 1
                    mean = sums.sum() / p
                    if mean_old is not None:
                        rel = abs(mean - mean_old) / max(abs(mean_old), 1e-30)
                    mean_old = mean
                    if progress is not None:
                        progress(f"batch {b + 1}/{n_batches} probe {p}: trace {mean:.6g} (change {rel:.3g})")
                    if p >= self.min_probes and rel < self.tol:
                        break
                del grads, loss
                trace += sums / p / n_batches
                if diagonal:
                    for d, s in zip(diag, dsum):
                        d += s / (p * n_batches)
                    del dsum
                out.probes.append(p)
                out.rel_change.append(float(rel) if np.isfinite(rel) else None)
                out.converged.append(bool(rel < self.tol))
        out.trace = {n: float(x) for n, x in zip(names, trace)}
        if diagonal:
            from bitalloc.models.layers import as_2d

            out.diag = {n: as_2d(mods[n], d).cpu().numpy() for n, d in zip(names, diag)}
        out.seconds = time.perf_counter() - t0
        return out

    def estimate(self, task, progress=None) -> Profile:
        t0 = time.perf_counter()
        return self.scores(task, self.hutchinson(task, progress=progress), t0)

    def scores(self, task, h: Hutchinson, t0: float | None = None) -> Profile:
        """The Profile at this estimator's granularity from probes already run (`hutchinson`), so
        one set of probes can be scored at several granularities (same bits and quantizer)."""
        t0 = time.perf_counter() - h.seconds if t0 is None else t0
        units = self.units(task)
        if (self.diagonal or self.unit_trace) and h.diag is None:
            raise bad("hutchinson result", "without diagonal", "this granularity needs hutchinson(task, diagonal=True)")
        if self.unit_trace:
            by_layer: dict[str, list] = {}
            for u in units:
                by_layer.setdefault(u.layer, []).append(u)

            def weight_of(layer, W):
                d = h.diag[layer].reshape(tuple(W.shape))
                c = np.zeros(tuple(W.shape), dtype=np.float64)
                for u in by_layer[layer]:
                    u.block(c)[...] = max(float(u.block(d).sum(dtype=np.float64)), 0.0) / u.n_params
                return c
            score = "max(Tr_u, 0)/n_u * ||Q_b(W_u) - W_u||^2 (HAWQ per unit; Tr_u = sum of Hutchinson E[v*Hv] over the unit)"
        elif self.diagonal:
            def weight_of(layer, W):
                return np.maximum(h.diag[layer].reshape(tuple(W.shape)), 0.0)
            score = "sum over the unit of max(E[v*Hv], 0) * (Q_b(w) - w)^2 (Hutchinson diagonal, clipped at 0 per element)"
        else:
            def weight_of(layer, W):
                return max(h.trace[layer], 0.0) / W.numel()
            score = "max(Tr(H_l), 0)/n_l * ||Q_b(W_l) - W_l||^2 (HAWQ; Hutchinson trace)"
        S = weighted_error(task, units, self.quants, weight_of)
        return self.profile(task, units, S, t0, score=score, diagonal=self.diagonal, unit_trace=self.unit_trace,
                            seed=self.seed, tol=self.tol, min_probes=self.min_probes, max_probes=self.max_probes,
                            probes=h.probes, probes_total=int(sum(h.probes)), rel_change=h.rel_change,
                            converged=all(h.converged), tol_reached=_max_or_none(h.rel_change),
                            seconds_grad=round(h.seconds_grad, 3), seconds_hvp=round(h.seconds_hvp, 3),
                            trace=h.trace)


def rademacher(w, gen):
    """A ±1 tensor shaped and typed like `w`, from `gen`."""
    import torch

    return torch.randint(0, 2, w.shape, generator=gen, dtype=torch.int8).to(w.device, w.dtype).mul_(2).sub_(1)


def _max_or_none(xs):
    """The largest relative change over batches; None if a batch had a single probe (no change)."""
    return None if not xs or any(x is None for x in xs) else max(xs)
