"""Task: a real model with its calibration data, its loss and its quality metric.

Estimators, `apply` and `verify` work on a Task, never on a model-specific script. Batches are
whatever the task's own `loss` takes (a token tensor, a dict of encoder inputs, an image batch).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from bitalloc.units import Unit, carve


@dataclass
class Task:
    """name: `smollm2`, `minilm`, `digits-cnn`; model: float32 torch module in eval mode;
    calib / held_out: lists of batches (disjoint data); layers: names of the quantizable
    modules (nn.Linear / nn.Conv2d) in forward order; loss(model, batch) -> scalar tensor, the
    mean loss on one batch (differentiable); probe_loss(model, batch, generator) -> scalar whose
    squared gradient, averaged over probes, estimates the Fisher / Gauss-Newton diagonal
    (default: `loss`; tasks whose loss is zero at the unquantized model use random output
    projections); quality(model) -> held-out metrics; macs: layer → MACs per inference (per
    token for language models, per image for the CNN); meta: provenance."""

    name: str
    model: Any
    calib: list
    held_out: list
    layers: list[str]
    loss: Callable
    quality: Callable
    macs: dict[str, int]
    probe_loss: Callable | None = None
    meta: dict = field(default_factory=dict)

    def modules(self) -> dict:
        mods = dict(self.model.named_modules())
        return {name: mods[name] for name in self.layers}

    def units(self, granularity: str = "layer", group_size: int = 128) -> list[Unit]:
        mods = self.modules()
        return carve([(n, _shape2d(mods[n].weight), self.macs[n]) for n in self.layers], granularity, group_size)

    def mean_loss(self, batches: list | None = None) -> float:
        """Mean of `loss` over `batches` (default: the calibration set), without gradients."""
        import torch

        batches = self.calib if batches is None else batches
        with torch.no_grad():
            return float(sum(float(self.loss(self.model, b)) for b in batches) / len(batches))


def _shape2d(w) -> tuple[int, int]:
    return int(w.shape[0]), int(w[0].numel())


def count_macs(model, layers: list[str], run: Callable[[], Any]) -> dict[str, int]:
    """MACs per output position × positions per sample, measured with forward hooks on one call of
    `run` (a forward pass on one sample). Linear: weight elements per position; Conv: times the
    output's spatial size."""
    import torch

    mods = dict(model.named_modules())
    out: dict[str, int] = {}
    hooks = []
    for name in layers:
        m = mods[name]

        def hook(mod, inp, res, name=name):
            if isinstance(mod, torch.nn.Conv2d):
                out[name] = int(mod.weight.numel() * res.shape[-1] * res.shape[-2])
            else:
                out[name] = int(mod.weight.numel())
        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return {n: out.get(n, int(mods[n].weight.numel())) for n in layers}
