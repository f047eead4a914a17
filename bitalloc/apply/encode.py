"""One unit's weights → its stored codes (levels, float16 scales, zeros): what `apply` and the
sequential quantizers write into the packed file."""
from __future__ import annotations

import numpy as np

from bitalloc.errors import BitallocError
from bitalloc.quant.codec import UnitCode, _numpy
from bitalloc.quant.formats.spec import FormatInfo
from bitalloc.quant.pack import SCALE_DTYPE, block_scale_tensors, is_block_float
from bitalloc.units import Unit


def encode_unit(u: Unit, bits: int, fmt: FormatInfo, quant, w: np.ndarray, wq, X=None, encoded=None) -> UnitCode:
    """One unit's levels, scales and zeros (scales rounded to float16, as stored). w: the unit's
    (rows, cols) weights, numpy or a torch tensor; a tensor is quantized on its device when the
    quantizer and the grid take tensors (RTN on an integer grid), and only the codes come back;
    `encoded`: its (q, scale, zero) when the quantizer already chose them (a sequential
    quantizer's layer run); fmt: the unit's Format object (`Allocation.format_of`), recorded by name."""
    rec = u.to_json()
    rec.update(bits=bits, format=fmt.name)
    if quant is None:  # kept in floating point
        rec["offset"] = 0
        return UnitCode(rec, weight=_numpy(w).astype(np.float16))
    if encoded is not None:
        q, scale, zero = encoded
    elif not isinstance(w, np.ndarray) and getattr(quant, "torch_native", False) and getattr(wq, "torch_native", False):
        q, scale, zero = (t.cpu().numpy() for t in wq.quantize(w, quant, X))
    else:
        w = _numpy(w)
        q, scale, zero = wq.quantize(np.ascontiguousarray(w, dtype=np.float32), quant, X)
    q = np.asarray(q)
    lo, hi = int(q.min()), int(q.max())
    offset = 0 if lo >= 0 else 2 ** (bits - 1)
    if lo + offset < 0 or hi + offset >= 2 ** bits:
        raise BitallocError(f"unit {u.name!r}: quantizer {wq.name!r} gave levels {lo}..{hi}, outside {bits} bits")
    rec["offset"] = offset
    if is_block_float(fmt):
        return block_float_code(rec, fmt, q, scale, quant, _numpy(w))
    scale = np.asarray(scale, dtype=np.float32).astype(SCALE_DTYPE).astype(np.float32)
    if not np.isfinite(scale).all():
        raise BitallocError(f"unit {u.name!r}: a group scale exceeds the float16 range")
    if getattr(quant, "symmetric", False):
        zero = None
    elif getattr(quant, "zero", "int") == "float":
        zero = np.asarray(zero, dtype=np.float32).astype(SCALE_DTYPE).astype(np.float32)
    else:
        zero = np.asarray(zero, dtype=np.float32)
    return UnitCode(rec, q=q.astype(np.int8 if bits <= 7 else np.int16 if bits <= 15 else np.int32),
                    scale=scale, zero=zero)


def block_float_code(rec: dict, fmt: FormatInfo, q: np.ndarray, scale, quant, w: np.ndarray) -> UnitCode:
    """A minifloat unit's codes with its scales kept exactly as the format stores them (FP32, E8M0,
    NVFP4's E4M3 block scales and FP32 tensor scale of this unit's block); no zero-point."""
    t = float(quant.tensor_scale(w)) if hasattr(quant, "tensor_scale") else None
    scale = np.asarray(scale, dtype=np.float32)
    block_scale_tensors(rec["name"], fmt, scale, t)  # raises if not exactly storable
    return UnitCode(rec, q=q.astype(np.int8 if rec["bits"] <= 7 else np.int16), scale=scale, tensor_scale=t)
