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
        if granularity != "layer" and any(i.family == "ggml" for i in infos):
            raise bad("granularity", granularity, "GGML type candidates (q4_k, ...) take one type per tensor: use layer")
        self.format_objects = infos  # parsed once; the scorers are built from them
        self.quants = [scorer_for(i, group_size, symmetric, zero) for i in infos]
        self.quantizer = f"int {'sym' if symmetric else 'asym'} group-{group_size} RTN, {zero} zero-point"
        if any(i.family != "int" for i in infos):
            self.quantizer += "; other formats: " + ", ".join(f"{i.name} ({i.scale or 'kept'})"
                                                               for i in infos if i.family != "int")

    @abstractmethod
    def estimate(self, task, progress=None) -> Profile:
        """Score every unit of `task` at every candidate."""

    def units(self, task) -> list[Unit]:
        from bitalloc.models.layers import shape2d

        mods = task.modules()
        for name, m in mods.items():  # at layer/channel granularity a larger group is one group per row
            if self.granularity == "group" and self.group_size > shape2d(m)[1]:
                raise bad("group_size", self.group_size, f"is larger than layer {name!r} ({shape2d(m)[1]} inputs)")
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
    """A layer's weight as float32 numpy (out, in·kh·kw) (transformers Conv1D transposed)."""
    from bitalloc.models.layers import weight2d

    return np.ascontiguousarray(weight2d(module).detach().float().cpu().numpy())


ROW_CHUNK_ELEMENTS = 1 << 18  # weight elements per row chunk of the error sums


def weighted_error(task, units: list[Unit], quants: list, weight_of: Callable) -> np.ndarray:
    """S: (N, K) Σ_{i in unit} c_i (Q_k(w_i) − w_i)², computed on each layer's device.

    weight_of(layer, W) -> c, for the layer's 2-D weight W (a float32 torch tensor (out, in) on
    the layer's device): a scalar, an (in,) vector (per input column) or an (out, in) array (per
    element), numpy or torch. Quantization runs in torch on the device for the integer grids
    (`fake_quant_tensor`); sums accumulate in float64 (float32 on MPS); the scores come back to
    the CPU once, at the end."""
    import torch

    from bitalloc.models.device import accumulator_dtype
    from bitalloc.models.layers import weight2d
    from bitalloc.quant.integer import fake_quant_tensor

    mods = task.modules()
    pending = []
    for layer, idx in units_by_layer(units).items():
        W = weight2d(mods[layer]).detach().float()
        acc = accumulator_dtype(W.device)
        c = weight_of(layer, W)
        c = float(c) if np.ndim(c) == 0 and not torch.is_tensor(c) else torch.as_tensor(c, device=W.device).to(acc)
        seg, n_seg, axis = _segments([units[i] for i in idx], W.shape, W.device)
        if axis is None and len(idx) != 1:
            raise bad("units of layer", layer, "a whole-layer unit must be the layer's only unit")
        out = torch.zeros(n_seg, len(quants), dtype=acc, device=W.device)
        for k, q in enumerate(quants):
            if not feasible(q, W.shape):
                out[:, k] = float("inf")  # a GGML type whose blocks do not tile the rows: not allowed
                continue
            imp = c if getattr(q, "qtype", None) is not None and torch.is_tensor(c) and c.ndim == 1 else None
            Q = fake_quant_tensor(q, W, importance=imp)
            step = max(1, ROW_CHUNK_ELEMENTS // max(W.shape[1], 1))  # memory: accumulator temporaries of a few MB
            for r in range(0, W.shape[0], step):
                e = (Q[r:r + step] - W[r:r + step]).to(acc)
                e.mul_(e).mul_(c[r:r + step] if torch.is_tensor(c) and c.ndim == 2 else c)
                if axis is None:
                    out[0, k] += e.sum()
                elif axis == 0:
                    out[:, k].index_add_(0, seg[r:r + step], e.sum(1))
                else:
                    out[:, k].index_add_(0, seg, e.sum(0))
            del Q
        pending.append((idx, out[:len(idx)]))
    S = np.zeros((len(units), len(quants)))
    for idx, out in pending:
        S[idx] = out.cpu().double().numpy()
    return S


def _segments(units: list[Unit], shape, device):
    """(segment id of every row (axis 0) or column (axis 1), number of units, axis) for one
    layer's units: a whole layer is one segment (axis None)."""
    import torch

    axis = units[0].axis
    if len(units) == 1 and units[0].index is None:
        return None, 1, None
    if any(u.axis != axis or u.index is None for u in units):
        raise bad("units of one layer", units[0].layer, "mix granularities")
    seg = torch.full((int(shape[axis]),), len(units), dtype=torch.long)
    for j, u in enumerate(units):
        a, b = u.index
        seg[a:b] = j
    return seg.to(device), len(units) + 1, axis  # the extra last segment: rows/columns of no unit


def feasible(quant, shape) -> bool:
    """Whether `quant` can encode a weight of 2-D `shape` (GGML types need whole blocks per row)."""
    check = getattr(quant, "feasible", None)
    return check is None or bool(check(shape[1]))


def fake_quant(quant, W: np.ndarray, c=None) -> np.ndarray:
    """Q(W) in numpy; quantizers with an importance-aware encoder (GGML K-quants) get a per-input-column
    weight `c: (in,)` as llama.cpp's imatrix (E[x_j²]) for their scale search."""
    if getattr(quant, "qtype", None) is not None and c is not None and np.ndim(c) == 1:
        return quant.fake_quant(W, importance=np.asarray(c, dtype=np.float32))
    return quant.fake_quant(W)
