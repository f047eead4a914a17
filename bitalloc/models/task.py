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
    """name: the model's name; model: torch module in eval mode (any device and dtype);
    calib / held_out: lists of batches on the model's device (disjoint data); layers: names of the
    quantizable modules (nn.Linear, nn.Conv1d/2d, transformers Conv1D) in forward order; loss(model, batch) -> scalar tensor, the
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
    tokenizer: Any = field(default=None, repr=False, compare=False)  # saved next to a quantized model

    @property
    def device(self):
        """The device of the model's first parameter (where calibration batches live)."""
        return next(self.model.parameters()).device

    def to(self, device=None, dtype=None) -> "Task":
        """Move the model (cast to `dtype` when given) and every batch to `device`, in place;
        floating batch tensors take the model's dtype."""
        from bitalloc.models.device import to_device

        if device is not None or dtype is not None:
            self.model.to(**{k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
        p = next(self.model.parameters())
        self.calib = to_device(self.calib, p.device, p.dtype if dtype is not None else None)
        self.held_out = to_device(self.held_out, p.device, p.dtype if dtype is not None else None)
        self.meta = {**self.meta, "device": str(p.device), "dtype": str(p.dtype).replace("torch.", "")}
        return self

    def select(self, include: str | None = None, exclude: str | None = None) -> "Task":
        """Keep only the layers matching `include` and not `exclude` (regular expressions)."""
        from bitalloc.models.layers import select

        if include or exclude:
            self.layers = select(self.layers, include, exclude)
            self.macs = {n: self.macs[n] for n in self.layers}
        return self

    def modules(self) -> dict:
        mods = dict(self.model.named_modules())
        return {name: mods[name] for name in self.layers}

    def units(self, granularity: str = "layer", group_size: int = 128) -> list[Unit]:
        mods = self.modules()
        from bitalloc.models.layers import shape2d

        return carve([(n, shape2d(mods[n]), self.macs[n]) for n in self.layers], granularity, group_size)

    def mean_loss(self, batches: list | None = None) -> float:
        """Mean of `loss` over `batches` (default: the calibration set), without gradients."""
        import torch

        batches = self.calib if batches is None else batches
        with torch.no_grad():
            return float(torch.stack([self.loss(self.model, b).detach().double().cpu() for b in batches]).sum()) / len(batches)


def used_layers(model, layers: list[str], loss: Callable[[], Any]) -> tuple[list[str], list[str]]:
    """(layers the loss depends on, layers it does not), from one backward pass of `loss()` (a
    loss on one sample): a layer the loss never reaches (BERT's pooler under a mean-pooled
    embedding loss) has no gradient and no sensitivity, so it is no unit."""
    import torch

    mods = dict(model.named_modules())
    weights = [mods[n].weight for n in layers]
    params = list(model.parameters())
    saved = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        with torch.enable_grad():
            out = loss()
            grads = torch.autograd.grad(out, weights, allow_unused=True) if out.requires_grad else [None] * len(weights)
    finally:
        for p, r in zip(params, saved):
            p.requires_grad_(r)
    return ([n for n, g in zip(layers, grads) if g is not None], [n for n, g in zip(layers, grads) if g is None])


def count_macs(model, layers: list[str], run: Callable[[], Any]) -> dict[str, int]:
    """MACs per output position × positions per sample, measured with forward hooks on one call of
    `run` (a forward pass on one sample). Linear: weight elements times the output's positions
    (1 for a vector, the tokens of a sequence); Conv2d: times the output's spatial size."""
    import torch

    mods = dict(model.named_modules())
    out: dict[str, int] = {}
    hooks = []
    for name in layers:
        m = mods[name]

        def hook(mod, inp, res, name=name):
            if isinstance(mod, torch.nn.Conv2d):
                out[name] = int(mod.weight.numel() * res.shape[-1] * res.shape[-2])
            elif isinstance(res, torch.Tensor) and isinstance(mod, torch.nn.Linear) and res.dim() > 1:
                out[name] = int(mod.weight.numel() * (res.numel() // res.shape[0] // res.shape[-1]))
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
