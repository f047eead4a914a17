"""`weight_error`: data-free score, the squared weight quantization error of each unit at each
candidate, ||Q_b(W) − W||². Costs no forward pass; it ignores how much the loss cares about each
layer, which the data-driven estimators (hessian, fisher, ...) add."""
from __future__ import annotations

import time
from typing import Iterable

import numpy as np

from .. import __version__
from ..profile import Profile
from ..quant import IntQuant
from ..units import Unit
from . import register
from .base import DEFAULT_BITS, Estimator


@register("weight_error")
class WeightErrorEstimator(Estimator):
    passes = "0 (data-free)"

    def __init__(self, bits=DEFAULT_BITS, group_size: int | None = 128, symmetric: bool = False, zero: str = "int"):
        self.bits = tuple(bits)
        self.quants = [IntQuant(b, group_size, symmetric, zero) for b in self.bits]
        self.group_size, self.symmetric, self.zero = group_size, symmetric, zero

    def from_weights(self, layers: Iterable[tuple[str, np.ndarray, int]], meta: dict | None = None,
                     progress=None) -> Profile:
        """layers: (name, weight (out, in), MACs per inference); one unit per layer."""
        t0 = time.perf_counter()
        units, rows = [], []
        for name, w, macs in layers:
            w = np.asarray(w, dtype=np.float32).reshape(w.shape[0], -1)
            units.append(Unit(name, name, n_params=int(w.size), macs=int(macs), shape=tuple(w.shape)))
            rows.append([q.error(w) for q in self.quants])
            if progress is not None:
                progress(name)
        info = {"estimator": self.name, "granularity": "layer", "group_size": self.group_size,
                "quantizer": f"int {'sym' if self.symmetric else 'asym'} per-group RTN, {self.zero} zero-point",
                "score": "sum of squared weight quantization error ||Q_b(W) - W||^2",
                "passes": self.passes, "seconds": round(time.perf_counter() - t0, 3),
                "bitalloc_version": __version__}
        return Profile(units, list(self.bits), np.array(rows), meta={**info, **(meta or {})})

    def estimate(self, model, filter_fn=None, meta: dict | None = None) -> Profile:
        """Score the Linear/Conv layers of a torch model."""
        from ..units import model_layers

        mods = dict(model.named_modules())
        layers = [(name, mods[name].weight.detach().float().cpu().numpy(), macs)
                  for name, _, macs in model_layers(model, filter_fn)]
        return self.from_weights(layers, meta)
