"""Estimator: scores every unit at every candidate and returns a Profile (DESIGN.md).

Most estimators weight each weight's quantization error by how much the loss cares about it:
S[n, k] = Σ_{i in unit n} c_i · (Q_k(w_i) − w_i)², with c the Hessian diagonal (hessian), the
Fisher diagonal (fisher), an activation norm (salience) or a layer relevance (lrp).
`weighted_error` computes that sum for any such c, at any granularity, so each estimator only
says how it gets c.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import contextlib
import time
from typing import Callable

import numpy as np

from bitalloc.errors import bad
from bitalloc.profile import Profile
from bitalloc.quant.integer import scorer_for
from bitalloc.units import Unit, check_granularity

DEFAULT_BITS = (2, 3, 4, 5, 6, 8)


class Estimator(ABC):
    """bits: the candidates, each a bit-width (its default format: `int{b}`, 16 = fp16) or a
    format name (`int4`, `fp4_e2m1`, `mxfp4`, `nvfp4`, ...; bitalloc/quant/formats/spec.py);
    granularity: layer | group | channel; group_size: input columns per quantization group (and
    per unit at group granularity); symmetric / zero: the integer quantizer's form. Every candidate
    is scored with its own quantizer (`quant.scorer_for`). Subclasses set `name` and `passes` and
    implement `estimate(task, progress=None) -> Profile`."""

    name = "estimator"
    passes = ""

    def __init__(self, bits=DEFAULT_BITS, granularity: str = "layer", group_size: int = 128,
                 symmetric: bool = False, zero: str = "int"):
        from bitalloc.quant.formats.spec import parse_format

        cands = tuple(bits)
        if not cands or any(isinstance(b, bool) or not isinstance(b, (int, str)) or isinstance(b, int)
                            and not 1 <= b <= 16 for b in cands):
            raise bad("bits", list(cands), "must be bit-widths from 1 to 16 or format names such as int4, mxfp4")
        infos = [parse_format(b) for b in cands]
        if len({i.name for i in infos}) != len(infos):
            raise bad("bits", list(cands), "each candidate must appear once")
        check_granularity(granularity, group_size)
        self.bits = tuple(i.bits for i in infos)
        self.formats = tuple(i.name for i in infos)
        self.granularity, self.group_size = granularity, group_size
        self.symmetric, self.zero = symmetric, zero
        self.quants = [scorer_for(f, group_size, symmetric, zero) for f in self.formats]
        self.quantizer = f"int {'sym' if symmetric else 'asym'} group-{group_size} RTN, {zero} zero-point"
        if any(i.family != "int" for i in infos):
            self.quantizer += "; other formats: " + ", ".join(f"{i.name} ({i.scale or 'kept'})"
                                                               for i in infos if i.family != "int")

    @abstractmethod
    def estimate(self, task, progress=None) -> Profile:
        """Score every unit of `task` at every candidate."""

    def units(self, task) -> list[Unit]:
        mods = task.modules()
        for name, m in mods.items():  # at layer/channel granularity a larger group is one group per row
            if self.granularity == "group" and self.group_size > m.weight[0].numel():
                raise bad("group_size", self.group_size, f"is larger than layer {name!r} ({m.weight[0].numel()} inputs)")
        return task.units(self.granularity, self.group_size)

    def profile(self, task, units: list[Unit], S: np.ndarray, t0: float, **meta) -> Profile:
        """Wrap scores in a Profile with the settings, the cost and the task's provenance."""
        return Profile(units, list(self.bits), S, formats=list(self.formats), meta=self.meta(task, t0, **meta))

    def meta(self, task, t0: float, **meta) -> dict:
        """A profile's meta: the settings, the seconds since t0, the task's provenance, `meta`."""
        info = {"estimator": self.name, "granularity": self.granularity, "group_size": self.group_size,
                "symmetric": self.symmetric, "zero": self.zero, "quantizer": self.quantizer, "passes": self.passes,
                "seconds": round(time.perf_counter() - t0, 3), **task.meta, **meta}
        from bitalloc import __version__

        info["bitalloc_version"] = __version__
        return info


@contextlib.contextmanager
def grad_only_for(model, weights):
    """Inside: only `weights` require gradients and the model is in eval mode; on exit every
    parameter's requires_grad and the model's train/eval mode are restored."""
    params = list(model.parameters())
    saved = [p.requires_grad for p in params]
    was_training = model.training
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        yield
    finally:
        for p, r in zip(params, saved):
            p.requires_grad_(r)
        model.train(was_training)


def units_by_layer(units: list[Unit]) -> dict[str, list[int]]:
    """layer name → rows of its units, in unit order."""
    rows_of: dict[str, list[int]] = {}
    for i, u in enumerate(units):
        rows_of.setdefault(u.layer, []).append(i)
    return rows_of


def layer_weight(module) -> np.ndarray:
    """A layer's weight as float32 numpy (out, in·kh·kw)."""
    w = module.weight.detach().float().cpu().numpy()
    return w.reshape(w.shape[0], -1)


def weighted_error(task, units: list[Unit], quants: list,
                   weight_of: Callable[[str, np.ndarray], np.ndarray | float]) -> np.ndarray:
    """S: (N, K) Σ_{i in unit} c_i (Q_k(w_i) − w_i)².

    weight_of(layer, W) -> c: a scalar, an (in,) vector (per input column) or an (out, in)
    array (per element), for the layer's 2-D weight W."""
    mods = task.modules()
    S = np.zeros((len(units), len(quants)))
    for layer, idx in units_by_layer(units).items():
        W = layer_weight(mods[layer])
        c = np.asarray(weight_of(layer, W), dtype=np.float64)
        for k, q in enumerate(quants):
            err = (q.fake_quant(W) - W).astype(np.float64) ** 2
            e = err * c if c.ndim else err * float(c)
            for i in idx:
                S[i, k] = float(units[i].block(e).sum())
    return S
