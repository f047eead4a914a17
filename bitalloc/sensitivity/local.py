"""`local` (ExLlamaV2-style): each unit's relative output error of its own block.

The decoder blocks' inputs are cached once (bitalloc/sensitivity/replay.py); for a unit in block b
and each candidate, only block b is run on its cached input with the unit quantized:
    S = Σ_batches ||B_q(x) − B(x)||² / Σ_batches ||B(x)||²
(B(x): the block's output hidden states, residual stream included). Cost per cell: one block
(1/46 of a SmolLM2 forward) instead of the blocks after it and the head; it scores a local
error, not the end-to-end loss, so cross-block comparisons rest on the relative normalisation.
Quantization goes through `MeasuredEstimator.unit_candidates` (the same weights `measured` uses).
Needs a stack of blocks (an `nn.ModuleList` holding the layers); units outside it are refused.
"""
from __future__ import annotations

import time

import numpy as np

from bitalloc.errors import BitallocError
from bitalloc.profile import Profile
from bitalloc.sensitivity import register
from bitalloc.sensitivity.measured import MeasuredEstimator


@register("local")
class LocalEstimator(MeasuredEstimator):
    """Relative block-output error (see the module docstring); options as `measured` (units,
    max_rows) without method/score."""

    passes = "1 forward + units x candidates single-block runs"

    def __init__(self, bits=(2, 3, 4, 5, 6, 8), granularity: str = "layer", group_size: int = 128,
                 symmetric: bool = False, zero: str = "int", units=None, max_rows: int = 4096):
        super().__init__(bits, granularity, group_size, symmetric, zero, units=units, max_rows=max_rows)

    def runner(self, task):
        from bitalloc.sensitivity.replay import BlockReplay

        flags = {m: m.training for m in task.model.modules()}
        task.model.eval()
        try:
            runner = BlockReplay(task, max_rows=self.max_rows, tail=False)
        finally:
            for m, t in flags.items():
                m.training = t
        if runner.unsupported:
            raise BitallocError(f"local: {runner.unsupported}")
        missing = [l for l in task.layers if l not in runner.block_of]
        if missing:
            raise BitallocError(f"local: layer {missing[0]!r} is not inside a block of {runner.blocks_name!r}")
        runner.evaluate = lambda layer, weights: (local_error(runner, layer, weights), None)
        runner.has_kl = False
        runner.fraction = lambda layer, tail=True, f=runner.fraction: f(layer, tail=False)
        return runner

    def estimate(self, task, progress=None) -> Profile:
        t0 = time.perf_counter()
        units = self.select(self.units(task))
        runner = self.runner(task)
        S, _, fe = self.measure(task, units, runner, progress)
        return self.finish(task, units, S, t0, fe)

    def finish(self, task, units, S, t0, forward_eq: float) -> Profile:
        K = len(self.quants)
        bad_cells = ~np.isfinite(S)
        S = np.where(bad_cells, np.inf, np.maximum(S, 0.0))
        return Profile(units, list(self.bits), S, formats=list(self.formats), meta=self.meta(
            task, t0, score="||B_q(x) - B(x)||^2 / ||B(x)||^2 of the unit's own block on cached inputs",
            passes=f"{1 + forward_eq:.2f} forward-equivalents (1 + {len(units)} units x {K} candidates x one block)",
            forward_equivalents=round(1 + forward_eq, 2), non_finite=int(bad_cells.sum()), measured_units=len(units)))


def local_error(runner, layer: str, weights: list) -> np.ndarray:
    """(K,) relative squared output error of `layer`'s block with each candidate weight."""
    import torch

    b = runner.block_of[layer]
    weight = dict(runner.task.model.named_modules())[layer].weight
    num = np.zeros(len(weights))
    den = 0.0
    orig = weight.detach().clone()
    with torch.no_grad():
        for bi, B in enumerate(runner.batches):
            ref = B.hidden[b + 1].float()
            den += float(ref.pow(2).sum(dtype=torch.float64))
            try:
                for k, w in enumerate(weights):
                    weight.copy_(w)
                    num[k] += float((runner.block_out(b, bi).float() - ref).pow(2).sum(dtype=torch.float64))
            finally:
                weight.copy_(orig)
    return num / max(den, 1e-300)
