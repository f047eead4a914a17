"""`weight_error`: data-free score, the squared weight quantization error of each unit at each
candidate, ||Q_b(W) − W||². Costs no forward pass; it ignores how much the loss cares about each
layer, which the data-driven estimators (hessian, fisher, ...) add."""
from __future__ import annotations

import time
from typing import Iterable

import numpy as np

from bitalloc.profile import Profile
from bitalloc.units import Unit
from bitalloc.sensitivity import register
from bitalloc.sensitivity.base import Estimator, feasible, weighted_error


@register("weight_error")
class WeightErrorEstimator(Estimator):
    passes = "0 (data-free)"

    def estimate(self, task, progress=None) -> Profile:
        t0 = time.perf_counter()
        units = self.units(task)
        S = weighted_error(task, units, self.quants, lambda layer, W: 1.0)
        return self.profile(task, units, S, t0, score="sum of squared weight quantization error")

    def from_weights(self, layers: Iterable[tuple[str, np.ndarray, int]], meta: dict | None = None,
                     progress=None) -> Profile:
        """Without torch: layers are (name, weight (out, in), MACs per inference); one unit per layer."""
        from bitalloc import __version__

        t0 = time.perf_counter()
        units, rows = [], []
        for name, w, macs in layers:
            w = np.asarray(w, dtype=np.float32).reshape(w.shape[0], -1)
            units.append(Unit(name, name, n_params=int(w.size), macs=int(macs), shape=tuple(w.shape)))
            rows.append([q.error(w) if feasible(q, w.shape) else np.inf for q in self.quants])
            if progress is not None:
                progress(name)
        info = {"estimator": self.name, "granularity": "layer", "group_size": self.group_size,
                "symmetric": self.symmetric, "zero": self.zero, "quantizer": self.quantizer,
                "score": "sum of squared weight quantization error ||Q_b(W) - W||^2",
                "passes": self.passes, "seconds": round(time.perf_counter() - t0, 3), "bitalloc_version": __version__}
        return Profile(units, list(self.bits), np.array(rows), formats=list(self.formats),
                       meta={**info, **(meta or {})})
