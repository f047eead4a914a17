"""`fisher` (GWQ, SqueezeLLM): the empirical Fisher diagonal from squared gradients.

F_ii = mean over calibration samples of (∂ℓ_s/∂w_i)², where ℓ_s is `task.probe_loss(model,
sample, generator)` when the task has one (tasks whose loss is zero at the unquantized model,
such as MiniLM's cosine-to-itself, use random output projections whose squared gradient
estimates the Gauss-Newton diagonal) and `task.loss(model, sample)` otherwise.
Score: S = Σ_{i∈unit} F_ii (Q_b(w_i) − w_i)² (no ½ factor, as the hessian estimator). F is
elementwise, so layer, group and channel profiles of the same settings add up exactly.

Memory: the score is linear in F, so without outliers (the default) F is never stored: each
pass's gradient g of a unit layer is squared in place and scored at once (c = g², the same
`layer_error` scoring as with F), its (units × candidates) scores summed on the device and the
gradient freed, so the peak holds the weights, one layer's gradient and the scoring's chunk
temporaries, at the cost of K fake quantizations of every layer per pass. With outlier_fraction
> 0, F (a float32 copy of every unit weight) is accumulated whole, since the outliers are picked
by F; `fisher` / `fisher_tensors` + `scores` also keep it (one set of passes scored at several
granularities).

per_sample (default True): one backward per calibration sample (each batch is split along its
first dimension), the faithful empirical Fisher diagonal. per_sample=False: one backward per
calibration batch, F = mean over batches of (∂ℓ_batch/∂w)² — cheaper in passes, but at a
trained minimum the per-sample gradients largely cancel in the batch mean, so it underestimates
F and is noisier (for probe losses with independent per-sample projections it is unbiased for
the same Gauss-Newton diagonal, only noisier).

outlier_fraction (GWQ): in every unit, the round(fraction · n) weights with the largest F
(equivalently, the largest RMS gradient) are kept in 16 bits: c_i = 0 for them, so their error
does not count, and meta["outlier_fraction"] makes the memory cost model charge their storage
(MemoryCost charges round(fraction · n_params) per unit, the same count).
"""
from __future__ import annotations

import time

import numpy as np

from bitalloc.errors import BitallocError, bad
from bitalloc.profile import Profile
from bitalloc.sensitivity import register
from bitalloc.sensitivity.base import (DEFAULT_BITS, Estimator, feasible, grad_only_for, layer_error, units_by_layer,
                                      weighted_error)


def split_batch(batch) -> list:
    """One batch → a list of one-sample batches of the same structure, split along the first
    dimension of every tensor (a tensor, a dict of tensors, or a tuple/list of tensors)."""
    import torch

    def size(x):
        if isinstance(x, torch.Tensor):
            return int(x.shape[0]) if x.dim() else None
        if isinstance(x, dict):
            return next((n for n in map(size, x.values()) if n is not None), None)
        if isinstance(x, (tuple, list)):
            return next((n for n in map(size, x) if n is not None), None)
        return None

    n = size(batch)
    if n is None:
        raise BitallocError(f"fisher per_sample: cannot split a calibration batch of type {type(batch).__name__} "
                            "into samples (no tensor with a batch dimension); use per_sample=False")

    def take(x, i):
        if isinstance(x, torch.Tensor):
            return x[i:i + 1] if x.dim() and x.shape[0] == n else x
        if isinstance(x, dict):
            return type(x)((k, take(v, i)) for k, v in x.items())
        if isinstance(x, (tuple, list)):
            return type(x)(take(v, i) for v in x)
        return x

    return [take(batch, i) for i in range(n)]


class _removed:
    """Context manager that removes hook handles on exit."""

    def __init__(self, hooks):
        self.hooks = hooks

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()


@register("fisher")
class FisherEstimator(Estimator):
    """Empirical Fisher diagonal sensitivity (see the module docstring).

    per_sample: one backward per sample (default) or per batch; outlier_fraction: GWQ
    outliers kept in 16 bits per unit (0 = none); seed: generator of `task.probe_loss`."""

    def __init__(self, bits=DEFAULT_BITS, granularity: str = "layer", group_size: int = 128,
                 symmetric: bool = False, zero: str = "int", per_sample: bool = True,
                 outlier_fraction: float = 0.0, seed: int = 0):
        super().__init__(bits, granularity, group_size, symmetric, zero)
        if per_sample not in (True, False):
            raise bad("per_sample", per_sample, "must be true or false")
        if isinstance(outlier_fraction, bool) or not isinstance(outlier_fraction, (int, float)) \
                or not 0 <= outlier_fraction < 1:
            raise bad("outlier_fraction", outlier_fraction, "must be in [0, 1)")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise bad("seed", seed, "must be an integer")
        self.per_sample, self.outlier_fraction, self.seed = bool(per_sample), float(outlier_fraction), seed
        self.passes = ("1 forward + 1 backward per calibration sample" if self.per_sample
                       else "1 forward + 1 backward per calibration batch")

    def fisher(self, task, progress=None) -> tuple[dict[str, np.ndarray], int]:
        """(layer → F as float32 numpy (out, in·kh·kw), the weight's 2-D view; number of backward
        passes). The model is left as it was."""
        F, n = self.fisher_tensors(task, progress)
        return {name: f.cpu().numpy() for name, f in F.items()}, n

    def fisher_tensors(self, task, progress=None):
        """`fisher` with F left as float32 torch tensors on each layer's device: the squared
        gradients accumulate there in float32, and nothing leaves the device per step. Each
        weight's gradient is folded into F by a post-accumulate hook during the backward pass and
        freed at once, so the peak holds the weights, F and one layer's gradient (not all of them)."""
        import torch

        from bitalloc.models.layers import as_2d

        mods = task.modules()
        names = list(task.layers)
        F = {name: torch.zeros_like(mods[name].weight, dtype=torch.float32) for name in names}

        def fold(name, g):
            F[name].addcmul_(g, g)

        n = self._backward(task, fold, progress)
        return {name: as_2d(mods[name], f.div_(n)) for name, f in F.items()}, n  # in place: no second copy

    def _backward(self, task, fold, progress=None) -> int:
        """Run the calibration backward passes (per sample or per batch); `fold(layer, g)` gets
        each unit layer's gradient g (float32, the weight's shape, free to be modified in place)
        from a post-accumulate hook as soon as it is complete, and the gradient is freed right
        after, so one layer's gradient is held at a time, never the whole set. Returns the number
        of backward passes. The model is left as it was."""
        import torch

        mods = task.modules()
        names = list(task.layers)
        weights = [mods[n].weight for n in names]
        gen = torch.Generator().manual_seed(self.seed)
        n = 0

        def hook(p, name):
            g = p.grad.float()
            p.grad = None  # memory: one layer's gradient at a time
            with torch.no_grad():
                fold(name, g)

        hooks = [w.register_post_accumulate_grad_hook(lambda p, name=name: hook(p, name))
                 for w, name in zip(weights, names)]
        with grad_only_for(task.model, weights), torch.enable_grad(), _removed(hooks):
            for b, batch in enumerate(task.calib):
                for sample in (split_batch(batch) if self.per_sample else [batch]):
                    loss = (task.probe_loss(task.model, sample, gen) if task.probe_loss is not None
                            else task.loss(task.model, sample))
                    loss.backward()  # the hooks fold each gradient as soon as it is complete
                    n += 1
                if progress is not None:
                    progress(f"batch {b + 1}/{len(task.calib)}: {n} backward passes")
        if n == 0:
            raise BitallocError("fisher: the task has no calibration data")
        return n

    def estimate(self, task, progress=None) -> Profile:
        """Without outliers (outlier_fraction 0) F is never stored: the score is linear in F, so
        every gradient g is scored as it arrives (c = g², `layer_error`, the same scoring as
        `scores`) and its (units × candidates) scores are summed on the device, divided by the
        number of passes at the end. Peak memory: the weights, one layer's gradient and the
        scoring's chunk temporaries (no F, a float32 copy of every unit weight). This costs K
        fake quantizations of every layer per pass. With outliers, F is needed whole to pick
        them: `fisher_tensors` then `scores`."""
        t0 = time.perf_counter()
        if self.outlier_fraction > 0:
            F, n = self.fisher_tensors(task, progress)
            return self.scores(task, F, n, t0)
        from bitalloc.models.layers import as_2d, shape2d

        mods = task.modules()
        units = self.units(task)
        rows = units_by_layer(units)
        acc: dict = {}

        def fold(name, g):
            g.mul_(g)  # g², in place in the gradient's own buffer
            c = as_2d(mods[name], g)
            s = layer_error(mods[name], name, [units[i] for i in rows[name]], self.quants, lambda layer, W: c)
            if name in acc:
                acc[name] += s
            else:
                acc[name] = s

        n = self._backward(task, fold, progress)
        S = np.zeros((len(units), len(self.quants)))
        for name, idx in rows.items():
            if name in acc:
                S[idx] = (acc[name] / n).cpu().double().numpy()
            else:  # no gradient ever reached the layer: F = 0 there, as in `scores`
                S[idx] = [0.0 if feasible(q, shape2d(mods[name])) else np.inf for q in self.quants]
        return self.profile(task, units, S, t0, **self._meta(task, n))

    def _meta(self, task, passes: int) -> dict:
        meta = dict(score="sum over the unit of F_ii * (Q_b(w) - w)^2 (empirical Fisher diagonal)",
                    per_sample=self.per_sample, backward_passes=passes, seed=self.seed,
                    loss="probe_loss" if task.probe_loss is not None else "loss")
        if self.outlier_fraction > 0:
            meta.update(outlier_fraction=self.outlier_fraction,
                        outliers="top fraction of each unit by F kept in 16 bits (GWQ), excluded from the score")
        return meta

    def scores(self, task, F: dict[str, np.ndarray], passes: int = 0, t0: float | None = None) -> Profile:
        """The Profile at this estimator's granularity (and outlier fraction) from a Fisher
        diagonal already computed by `fisher`, so one set of backward passes can be scored at
        several granularities (same bits and quantizer)."""
        t0 = time.perf_counter() if t0 is None else t0
        units = self.units(task)
        by_layer: dict[str, list] = {}
        for u in units:
            by_layer.setdefault(u.layer, []).append(u)
        kept = 0

        def weight_of(layer, W):
            import torch

            nonlocal kept
            c = torch.as_tensor(F[layer], device=W.device).reshape(W.shape)  # F itself: weighted_error only reads c
            if self.outlier_fraction > 0:
                c = c.clone()  # one layer's copy, its outliers zeroed (F is left as it was, for other granularities)
                for u in by_layer[layer]:
                    k = int(np.round(self.outlier_fraction * u.n_params))
                    if k:
                        blk = u.block(c)  # a view of c
                        flat = blk.reshape(-1)  # a copy when blk is a column slice
                        flat[torch.topk(flat, k).indices] = 0.0
                        blk[...] = flat.reshape(blk.shape)
                        kept += k
            return c

        S = weighted_error(task, units, self.quants, weight_of)
        meta = self._meta(task, passes)
        if self.outlier_fraction > 0:
            meta["outliers_kept"] = kept
        return self.profile(task, units, S, t0, **meta)
