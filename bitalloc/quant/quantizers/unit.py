"""`quantize_unit`: one unit of a layer quantized at each candidate by a registered WeightQuantizer,
the rest of the layer left as it is: what `measured` scores.

- rtn (and other quantizers without inputs): the unit's block at the candidate's grid;
- gptq: the layer's GPTQ run with only the unit's cells on a grid; the other columns stay in
  floating point and take the unit's error compensation, as in GPTQ itself (for a row or a whole
  layer that is the layer's own GPTQ result). All candidates go in one run: one copy of the
  unit's rows per candidate, stacked (GPTQ treats rows independently given H).
"""
from __future__ import annotations

import numpy as np

from bitalloc.errors import bad


def quantize_unit(W, unit, quants, quantizer="rtn", H=None, options: dict | None = None) -> list[np.ndarray]:
    """W: (rows, cols) float32 layer weights; unit: a Unit of that layer; quants: one grid per
    candidate (`quant.scorer_for`); quantizer: a registered name or a WeightQuantizer; H: (cols,
    cols) input Hessian of the layer (quantizers that need inputs). Returns, per candidate, the
    (rows, cols) float32 layer with the unit quantized."""
    from bitalloc.quant.quantizers import get_quantizer
    from bitalloc.quant.quantizers.base import WeightQuantizer
    from bitalloc.quant.quantizers.rtn import RtnQuantizer

    wq = quantizer if isinstance(quantizer, WeightQuantizer) else get_quantizer(quantizer, **(options or {}))
    W = np.asarray(W, dtype=np.float32)
    out = []
    if not getattr(wq, "sequential", False):
        if wq.needs_inputs:
            raise bad("quantizer", wq.name, "scoring a unit takes rtn or a sequential quantizer such as gptq")
        for q in quants:
            patched = W.copy()
            block = unit.block(W)
            unit.block(patched)[...] = q.fake_quant(block) if isinstance(wq, RtnQuantizer) else q.decode(*wq.quantize(block, q))
            out.append(patched)
        return out
    if H is None:
        raise bad("H", None, f"quantizer {wq.name!r} needs the layer's input Hessian")
    return _stacked(W, unit, quants, wq, H)


def _stacked(W, unit, quants, wq, H) -> list[np.ndarray]:
    from bitalloc.quant.formats.keep import KeepFloat
    from bitalloc.quant.quantizers.gptq import Cell

    rows, cols = W.shape
    r0, r1 = unit.index if unit.axis == 0 else (0, rows)
    c0, c1 = unit.index if unit.axis == 1 else (0, cols)
    sub = W[r0:r1]
    n = r1 - r0
    out: list = [None] * len(quants)
    grid_k = [k for k, q in enumerate(quants) if not isinstance(q, KeepFloat)]
    for k, q in enumerate(quants):
        if isinstance(q, KeepFloat):  # kept in floating point: rounding only, nothing to compensate
            patched = W.copy()
            unit.block(patched)[...] = q.fake_quant(unit.block(W))
            out[k] = patched
    if grid_k:
        cells = []
        for j, k in enumerate(grid_k):
            rr = (j * n, (j + 1) * n)
            cells.append(Cell(rr, (c0, c1), quants[k]))
            cells += [Cell(rr, span, None) for span in ((0, c0), (c1, cols)) if span[1] > span[0]]
        w_hat, _ = wq.quantize_layer(np.concatenate([sub] * len(grid_k)), cells, H)
        for j, k in enumerate(grid_k):
            patched = W.copy()
            patched[r0:r1] = w_hat[j * n:(j + 1) * n]
            out[k] = patched
    return out
