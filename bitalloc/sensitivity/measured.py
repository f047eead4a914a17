"""`measured`: the ground truth the other estimators are judged against.

For each unit and candidate: quantize only that unit (the whole layer is fake-quantized with the
candidate's IntQuant, then only the unit's block is copied into the weight, so the groups and
scales are exactly those the other estimators score), run the calibration data
(`task.mean_loss()`), record loss(quantized) − loss(unquantized), and restore the weight exactly
(a copy of the original tensor is written back, also when an error interrupts the run).

Cost: 1 + (units measured × candidates) forward passes over the calibration set. `units=` measures a
subset; the profile then holds rows for the measured units only (no rows for the others), so a
solver over it allocates bits to that subset; compare it with another estimator's profile by unit
name. A negative increase (the quantized unit happened to lower the calibration loss) is clipped to
0, since profiles reject negative sensitivities; meta records how many cells were clipped and the
raw minimum. A candidate whose loss is not finite (inf/NaN: the unit's quantization overflows the
model) is marked not allowed (inf) and counted in meta `non_finite`.
"""
from __future__ import annotations

import fnmatch
import time

import numpy as np

from bitalloc.errors import BitallocError, bad
from bitalloc.profile import Profile
from bitalloc.quant.quantizers.unit import quantize_unit
from bitalloc.units import Unit
from bitalloc.sensitivity import register
from bitalloc.sensitivity.base import DEFAULT_BITS, Estimator, layer_weight


@register("measured")
class MeasuredEstimator(Estimator):
    """units: None (all), an int n (n units spread evenly over the model order), or unit names /
    fnmatch globs (a list, or one comma-separated string such as `fc1,conv*:c0`).
    quantizer: the WeightQuantizer each candidate is applied with (`rtn`, or `gptq`: the unit
    GPTQ-quantized with its layer's calibration Hessian, the rest of the layer in float taking
    the compensation; see quant/quantizers/unit.py), so the allocation is solved for the
    quantizer that will be applied.
    `estimate(task, progress)` calls progress(done, total) after each (unit, candidate) evaluation,
    total = units measured × candidates."""

    passes = "1 + units x candidates forward"

    def __init__(self, bits=DEFAULT_BITS, granularity: str = "layer", group_size: int = 128,
                 symmetric: bool = False, zero: str = "int", units=None, quantizer: str = "rtn"):
        super().__init__(bits, granularity, group_size, symmetric, zero)
        from bitalloc.quant.quantizers import get_quantizer

        self.wq = get_quantizer(quantizer)  # the quantizer `apply` will use: rtn, or gptq (calibration Hessian)
        if quantizer != "rtn":
            self.quantizer = self.quantizer.replace("RTN", f"{quantizer.upper()} (each layer's calibration Hessian)")
        msg = "must be a positive integer, or unit names / globs (a list or a comma-separated string)"
        if isinstance(units, str):
            units = [s.strip() for s in units.split(",") if s.strip()]
        if units is None:
            pass
        elif isinstance(units, bool) or isinstance(units, int) and units < 1:
            raise bad("measured units", units, msg)
        elif not isinstance(units, int):
            if not isinstance(units, (list, tuple)) or not units or not all(isinstance(s, str) and s for s in units):
                raise bad("measured units", units, msg)
            units = list(units)
        self.subset = units

    def select(self, units: list[Unit]) -> list[Unit]:
        """The units to measure, in model order."""
        if self.subset is None:
            return units
        if isinstance(self.subset, int):
            if self.subset >= len(units):
                return units
            idx = np.unique(np.round(np.linspace(0, len(units) - 1, self.subset)).astype(int))
            return [units[i] for i in idx]
        keep = set()
        names = [u.name for u in units]
        for pat in self.subset:
            hit = [i for i, s in enumerate(names) if fnmatch.fnmatchcase(s, pat)]
            if not hit:
                shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                raise bad("measured units", pat, f"matches no unit at {self.granularity} granularity ({shown})")
            keep.update(hit)
        return [units[i] for i in sorted(keep)]

    def estimate(self, task, progress=None) -> Profile:
        import torch

        t0 = time.perf_counter()
        units = self.select(self.units(task))
        mods = task.modules()
        K = len(self.quants)
        total = len(units) * K
        flags = {m: m.training for m in task.model.modules()}
        S = np.zeros((len(units), K))
        done = 0
        try:
            task.model.eval()
            base = task.mean_loss()
            if not np.isfinite(base):
                raise BitallocError(f"measured: the calibration loss of the unquantized model is {base}")
            H = {}
            if self.wq.needs_inputs:  # each layer's input Hessian, from the unquantized model
                from bitalloc.apply.sequential import layer_hessians

                H = layer_hessians(task.model, sorted({u.layer for u in units}), task.calib, task.loss)
            for i, u in enumerate(units):
                mod = mods[u.layer]
                weight = mod.weight
                orig = weight.detach().clone()
                try:
                    cands = quantize_unit(layer_weight(mod), u, self.quants, self.wq, H.get(u.layer))
                    for k, patched in enumerate(cands):
                        with torch.no_grad():
                            weight.copy_(torch.from_numpy(patched).reshape(orig.shape).to(weight.device, weight.dtype))
                        S[i, k] = task.mean_loss() - base
                        with torch.no_grad():
                            weight.copy_(orig)
                        done += 1
                        if progress is not None:
                            progress(done, total)
                finally:
                    with torch.no_grad():
                        weight.copy_(orig)
        finally:
            for m, t in flags.items():
                m.training = t
        bad_cells = ~np.isfinite(S)  # the loss overflowed: that candidate is not allowed for that unit
        if bad_cells.all(1).any():
            name = units[int(np.argmax(bad_cells.all(1)))].name
            raise BitallocError(f"measured: the loss is not finite with unit {name!r} quantized at every candidate")
        raw_min = float(S[~bad_cells].min()) if S.size else 0.0
        clipped = int((S[~bad_cells] < 0).sum())
        S = np.where(bad_cells, np.inf, np.maximum(S, 0.0))
        n_passes = 1 + total
        return self.profile(task, units, S, t0, passes=f"{n_passes} forward (1 + {len(units)} units x {K} candidates)",
                            forward_passes=n_passes, base_loss=base, clipped=clipped, raw_min=raw_min,
                            non_finite=int(bad_cells.sum()),
                            measured_units=len(units), samples=task.meta.get("samples"),
                            score="calibration loss increase with only the unit quantized (clipped at 0)",
                            unit_quantizer=self.wq.name)
