"""A layer's weight as bitalloc sees it: a 2-D (out, in·kh·kw) matrix, whatever its stored layout.

Every `nn.Linear`, `nn.Conv1d`, `nn.Conv2d` and transformers `Conv1D` (GPT-2's projections) is a
quantizable layer: a Linear's weight as stored, a conv kernel flattened, and a transformers
`Conv1D` weight — stored (in, out) — transposed. `as_2d` is the one place that knows this;
units, estimators, apply, pack, verify and export all go through it.
"""
from __future__ import annotations


def is_transposed(module) -> bool:
    """True for transformers' `Conv1D`, whose weight is stored (in, out)."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def is_quantizable(module) -> bool:
    import torch.nn as nn

    return (isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) or is_transposed(module)) \
        and getattr(module, "weight", None) is not None


def as_2d(module, t):
    """A weight-shaped tensor (or array) of `module` as its (out, in·kh·kw) view: the weight, its
    gradient, a Fisher/Hessian diagonal. A view where possible, so writes go through."""
    if is_transposed(module):
        return t.T
    return t.reshape(t.shape[0], -1)


def from_2d(module, t):
    """Inverse of `as_2d`: an (out, in·kh·kw) tensor back in the weight's stored shape."""
    if is_transposed(module):
        return t.T
    return t.reshape(module.weight.shape)


def weight2d(module):
    """The module's weight as an (out, in·kh·kw) view (no copy, same device and dtype)."""
    return as_2d(module, module.weight)


def shape2d(module) -> tuple[int, int]:
    w = weight2d(module)
    return int(w.shape[0]), int(w.shape[1])
