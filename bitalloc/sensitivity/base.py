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


ROW_CHUNK_ELEMENTS = 1 << 18  # weight elements per row chunk: float32 temporaries of 1 MiB each


def rows_independent(quant) -> bool:
    """Whether `quant` quantizes every row of a weight on its own (groups and blocks along the
    input columns, no per-tensor statistic), so a slice of rows can be fake-quantized alone and
    equals the same rows of the whole layer's fake quantization, bit for bit. NVFP4's per-tensor
    scale and any quantizer that does not say so are quantized whole."""
    return bool(getattr(quant, "rows_independent", False))


def weighted_error(task, units: list[Unit], quants: list, weight_of: Callable) -> np.ndarray:
    """S: (N, K) Σ_{i in unit} c_i (Q_k(w_i) − w_i)², computed on each layer's device.

    weight_of(layer, W) -> c, for the layer's 2-D weight W (a float32 torch tensor (out, in) on
    the layer's device): a scalar, an (in,) vector (per input column) or an (out, 1) / (out, in)
    array (per row / per element), numpy or torch; it is not modified. Quantization runs in torch
    on the device for the integer grids (`fake_quant_tensor`); the scores come back to the CPU
    once, at the end.

    Memory: the layer is scored in chunks of rows (`ROW_CHUNK_ELEMENTS` weights), so beyond c the
    temporaries are a few float32 chunks, whatever the layer's size: the fake-quantized chunk
    becomes its error, squared and weighted in place (float32), and each chunk's sums accumulate
    in float64 (float32 on MPS). Quantizers that are not `rows_independent` (NVFP4) are
    fake-quantized whole once per candidate (one float32 copy of the layer), then scored in the
    same chunks. A scalar c multiplies the float64 sums. Against sums of float64 errors the
    result agrees to ~1e-7 relative (float32 rounding of each error, square and product)."""
    mods = task.modules()
    pending = [(idx, layer_error(mods[layer], layer, [units[i] for i in idx], quants, weight_of))
               for layer, idx in units_by_layer(units).items()]
    S = np.zeros((len(units), len(quants)))
    for idx, out in pending:
        S[idx] = out.cpu().double().numpy()
    return S


def layer_error(module, layer: str, units: list[Unit], quants: list, weight_of: Callable):
    """`weighted_error` of one layer: (len(units), K) Σ c (Q_k(w) − w)² as a torch tensor on the
    layer's device (float64, float32 on MPS), left there. `units` are all of the layer's units, in
    order; weight_of(layer, W) -> c as in `weighted_error`. Estimators that score a layer more than
    once (fisher without a stored F: once per calibration sample) add these up on the device."""
    import torch

    from bitalloc.models.device import accumulator_dtype
    from bitalloc.models.layers import weight2d

    W = weight2d(module).detach().float()
    acc = accumulator_dtype(W.device)
    c = _weight_tensor(weight_of(layer, W), W.device, acc)
    seg, n_seg, axis = _segments(units, W.shape, W.device)
    if axis is None and len(units) != 1:
        raise bad("units of layer", layer, "a whole-layer unit must be the layer's only unit")
    out = torch.zeros(n_seg, len(quants), dtype=acc, device=W.device)
    step = max(1, ROW_CHUNK_ELEMENTS // max(W.shape[1], 1))
    for k, q in enumerate(quants):
        if not feasible(q, W.shape):
            out[:, k] = float("inf")  # a GGML type whose blocks do not tile the rows: not allowed
            continue
        _score_candidate(q, W, c, out[:, k], seg, axis, step, acc)
    return out[:len(units)]


def _weight_tensor(c, device, acc):
    """weight_of's c as a Python float (a scalar) or a tensor on `device`, without a copy where it
    already is one there (float64 is kept, except where the accumulator is float32)."""
    import torch

    if np.ndim(c) == 0 and not torch.is_tensor(c):
        return float(c)
    t = torch.as_tensor(c)
    if t.dtype == torch.float64 and acc != torch.float64:
        t = t.float()
    elif not t.is_floating_point():
        t = t.float()
    return t.to(device)


def _score_candidate(q, W, c, out, seg, axis, step, acc):
    """Add Σ c (Q(w) − w)² of every unit segment of W into `out` (n_seg,), one chunk of rows at a
    time (see `weighted_error`)."""
    import torch

    from bitalloc.quant.integer import fake_quant_tensor

    imp = c if getattr(q, "qtype", None) is not None and torch.is_tensor(c) and c.ndim == 1 else None
    whole = None if rows_independent(q) else fake_quant_tensor(q, W, importance=imp)
    for r in range(0, W.shape[0], step):
        Wr = W[r:r + step]
        e = fake_quant_tensor(q, Wr, importance=imp) if whole is None else whole[r:r + step]
        if e.untyped_storage().data_ptr() == Wr.untyped_storage().data_ptr():
            e = e - Wr  # a quantizer that returned the weight itself: never write into it
        else:
            e.sub_(Wr)  # the fake-quantized chunk becomes its error: no second chunk
        e.mul_(e)
        if torch.is_tensor(c):
            e.mul_(c[r:r + step] if c.ndim == 2 else c)
        if axis is None:
            out[0] += e.sum(dtype=acc)
        elif axis == 0:
            out.index_add_(0, seg[r:r + step], e.sum(1, dtype=acc))
        else:
            out.index_add_(0, seg, e.sum(0, dtype=acc))
        del e
    if not torch.is_tensor(c):
        out.mul_(c)  # a scalar weight: once, on the float64 sums


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
