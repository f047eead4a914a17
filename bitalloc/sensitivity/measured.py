"""`measured`: the ground truth the other estimators are judged against.

For each unit and candidate: quantize only that unit (`unit_candidates`: the one function every
quantization goes through, so another quantizer such as GPTQ plugs in there) (the whole layer is fake-quantized with the
candidate's IntQuant, then only the unit's block is copied into the weight, so the groups and
scales are exactly those the other estimators score), run the calibration data
(`task.mean_loss()`), record loss(quantized) − loss(unquantized), and restore the weight exactly
(a copy of the original tensor is written back, also when an error interrupts the run).

Two ways to run the model (`method`): `full` reruns the task's whole loss per cell (any model);
`replay` (block replay, bitalloc/sensitivity/replay.py) caches every decoder block's input once
and runs only blocks b… + final norm + head for a unit in block b, the candidates of one unit
stacked in one batch; `auto` (default) replays where the model is a stack of blocks with an LM
head (checked against the task's own loss), else reruns. Both record the loss increase and,
for language models, the KL divergence of the next-token distribution to the unquantized one
(far less noisy at small calibration sizes); `score` picks which is the sensitivity, the
profile's `extra` keeps both (`loss_increase`, `kl`: (N, K) raw values).

Cost: 1 + (units measured × candidates) forward passes over the calibration set with `full`;
with `replay`, 1 + Σ per cell of (blocks b… + head) / (all blocks + head) forward-equivalents
(meta `forward_equivalents`; about 0.6 of a forward per cell on SmolLM2). `units=` measures a
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
from bitalloc.units import Unit
from bitalloc.sensitivity import register
from bitalloc.sensitivity.base import DEFAULT_BITS, Estimator, feasible


@register("measured")
class MeasuredEstimator(Estimator):
    """units: None (all), an int n (n units spread evenly over the model order), or unit names /
    fnmatch globs (a list, or one comma-separated string such as `fc1,conv*:c0`); method: auto |
    replay | full; score: loss (calibration loss increase) | kl (KL to the unquantized output,
    language models only); max_rows: token rows per stacked replay run (memory bound: candidates
    of one unit are stacked up to it). `estimate(task, progress)` calls progress(done, total)
    after each unit's candidates, total = units measured × candidates.
    quantizer: the WeightQuantizer each candidate is applied with (`rtn`, or `gptq`: the unit
    GPTQ-quantized with its layer's calibration Hessian, the rest of the layer in float taking
    the compensation; see quant/quantizers/unit.py), so the allocation is solved for the
    quantizer that will be applied."""

    passes = "1 + units x candidates forward"
    METHODS = ("auto", "replay", "full")
    SCORES = ("loss", "kl")

    def __init__(self, bits=DEFAULT_BITS, granularity: str = "layer", group_size: int = 128,
                 symmetric: bool = False, zero: str = "int", units=None, method: str = "auto",
                 score: str = "loss", max_rows: int = 4096, quantizer: str = "rtn"):
        super().__init__(bits, granularity, group_size, symmetric, zero)
        if method not in self.METHODS:
            raise bad("measured method", method, f"allowed: {', '.join(self.METHODS)}")
        if score not in self.SCORES:
            raise bad("measured score", score, f"allowed: {', '.join(self.SCORES)}")
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise bad("max_rows", max_rows, "must be a positive integer")
        self.method, self.score, self.max_rows = method, score, max_rows
        from bitalloc.quant.quantizers import get_quantizer

        self.wq = get_quantizer(quantizer)  # the quantizer `apply` will use: rtn, or gptq (calibration Hessian)
        self._hessians: dict = {}
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
        t0 = time.perf_counter()
        units = self.select(self.units(task))
        runner = self.runner(task)
        loss, kl, fe = self.measure(task, units, runner, progress)
        return self.finish(task, units, loss, kl, t0, runner, 1.0 + fe)

    def runner(self, task):
        """The model runner: BlockReplay (replay), or FullRerun; checked once, before any cell."""
        from bitalloc.sensitivity.replay import BlockReplay, FullRerun

        flags = {m: m.training for m in task.model.modules()}
        task.model.eval()
        try:
            runner = None
            if self.method != "full":
                runner = BlockReplay(task, max_rows=self.max_rows)
                if runner.unsupported:
                    if self.method == "replay":
                        raise BitallocError(f"measured method 'replay': {runner.unsupported}")
                    note, runner = runner.unsupported, FullRerun(task)
                    runner.note = note
            if runner is None:
                runner = FullRerun(task)
        finally:
            for m, t in flags.items():
                m.training = t
        if not np.isfinite(runner.base_loss):
            raise BitallocError(f"measured: the calibration loss of the unquantized model is {runner.base_loss}")
        if self.score == "kl" and not getattr(runner, "has_kl", True):
            raise bad("measured score", "kl", "needs a language model (an output head and token-id batches); use loss")
        return runner

    def unit_candidates(self, task, unit: Unit, orig, cache: dict) -> list:
        """The layer's weights with only `unit` quantized, one tensor per candidate (shaped and
        typed like `orig`). Every quantization of this estimator goes through here; `cache`
        keeps the current layer's fully quantized weights (units come in layer order)."""
        from bitalloc.models.layers import as_2d, from_2d, weight2d
        from bitalloc.quant.integer import fake_quant_tensor

        mod = task.modules()[unit.layer]
        if self.wq.needs_inputs:  # GPTQ: the unit quantized with its layer's Hessian, the rest compensating
            import torch

            from bitalloc.quant.quantizers.unit import quantize_unit

            W = weight2d(mod).detach().float().cpu().numpy()
            cands = quantize_unit(W, unit, self.quants, self.wq, self._hessians.get(unit.layer))
            cache.clear()
            cache["feasible"] = np.ones(len(cands), bool)
            return [from_2d(mod, torch.from_numpy(c).to(orig.device)).to(orig.dtype).clone() for c in cands]
        if cache.get("layer") != unit.layer:
            W = weight2d(mod).detach().float()  # on the layer's device; quantized there
            cache.clear()
            cache.update(layer=unit.layer, wq=[fake_quant_tensor(q, W).to(orig.dtype) if feasible(q, W.shape) else None
                                               for q in self.quants])
            cache["feasible"] = np.array([w is not None for w in cache["wq"]])
        out = []
        for wq in cache["wq"]:
            patched = orig.detach().clone()
            if wq is not None:  # else a GGML type whose blocks do not tile the rows: scored inf by `measure`
                unit.block(as_2d(mod, patched)).copy_(unit.block(wq))  # a view: writes into patched
            out.append(patched)
        return out

    def measure(self, task, units: list[Unit], runner, progress=None, done: int = 0, total: int | None = None):
        """(loss increase (n, K), KL (n, K) or None, forward-equivalents) of `units` with `runner`."""
        mods = task.modules()
        K = len(self.quants)
        total = len(units) * K if total is None else total
        flags = {m: m.training for m in task.model.modules()}
        loss = np.zeros((len(units), K))
        kl = np.zeros((len(units), K)) if getattr(runner, "has_kl", True) else None
        fe, cache = 0.0, {}
        if self.wq.needs_inputs and not self._hessians:  # each layer's input Hessian, from the unquantized model
            from bitalloc.apply.sequential import layer_hessians

            self._hessians = layer_hessians(task.model, sorted({u.layer for u in units}), task.calib, task.loss)
        try:
            task.model.eval()
            for i, u in enumerate(units):
                weights = self.unit_candidates(task, u, mods[u.layer].weight, cache)
                l, d = runner.evaluate(u.layer, weights)
                ok = cache["feasible"]
                loss[i] = np.where(ok, l, np.inf)
                if kl is not None:
                    kl[i] = np.where(ok, d, np.inf)
                fe += K * runner.fraction(u.layer)
                done += K
                if progress is not None:
                    progress(done, total)
        finally:
            for m, t in flags.items():
                m.training = t
        return loss, kl, fe

    def finish(self, task, units: list[Unit], loss: np.ndarray, kl, t0: float, runner, forward_eq: float) -> Profile:
        """The Profile from measured cells (one row per unit of `units`)."""
        S = kl if self.score == "kl" else loss
        bad_cells = ~np.isfinite(S)  # the loss overflowed: that candidate is not allowed for that unit
        if bad_cells.all(1).any():
            name = units[int(np.argmax(bad_cells.all(1)))].name
            raise BitallocError(f"measured: the {self.score} is not finite with unit {name!r} quantized at every candidate")
        raw_min = float(S[~bad_cells].min()) if S.size else 0.0
        clipped = int((S[~bad_cells] < 0).sum())
        S = np.where(bad_cells, np.inf, np.maximum(S, 0.0))
        K = len(self.quants)
        method = runner.method
        replay = method == "replay"
        extra = {"loss_increase": _rows(loss)}
        if kl is not None:
            extra["kl"] = _rows(kl)
        what = ("KL(unquantized || quantized) of the next-token distribution, mean over positions, with only the unit "
                "quantized (clipped at 0)" if self.score == "kl"
                else "calibration loss increase with only the unit quantized (clipped at 0)")
        passes = (f"{forward_eq:.1f} forward-equivalents (block replay: 1 + {len(units)} units x {K} candidates "
                  f"x blocks after the unit + head)" if replay
                  else f"{1 + len(units) * K} forward (1 + {len(units)} units x {K} candidates)")
        meta = dict(passes=passes, forward_passes=1 + len(units) * K, forward_equivalents=round(forward_eq, 2),
                    method=method, base_loss=runner.base_loss, clipped=clipped, raw_min=raw_min,
                    non_finite=int(bad_cells.sum()), measured_units=len(units), samples=task.meta.get("samples"),
                    score=what, score_kind=self.score, unit_quantizer=self.wq.name)
        if getattr(runner, "note", None):
            meta["replay_unsupported"] = runner.note
        return Profile(units, list(self.bits), S, formats=list(self.formats),
                       meta=self.meta(task, t0, **meta), extra=extra)


def _rows(a: np.ndarray) -> list:
    """(N, K) array → JSON rows (non-finite values as None)."""
    return [[float(x) if np.isfinite(x) else None for x in row] for row in a]
