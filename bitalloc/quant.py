"""Quantizers and their error, in numpy (the same code scores candidates and, later, applies them).

Weights are 2-D (out_features, in_features); groups run along the input dimension, as in GPTQ,
AWQ and llama.cpp blocks. Round-to-nearest.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import bad

ZERO_KINDS = ("int", "float")


@dataclass(frozen=True)
class IntQuant:
    """Integer quantizer. bits: 1..16; group_size: input columns per scale (None = one scale per
    output row); symmetric: scale from max|w|, levels −2^(b−1)..2^(b−1)−1; else asymmetric
    min/max with `zero` = `int` (integer zero-point, GPTQ/AWQ form) or `float` (a float minimum,
    llama.cpp Q4_1 form)."""

    bits: int
    group_size: int | None = 128
    symmetric: bool = False
    zero: str = "int"

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 16:
            raise bad("bits", self.bits, "integer quantization takes 1 to 16 bits")
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise bad("group_size", self.group_size, "must be a positive integer or None (per row)")
        if self.zero not in ZERO_KINDS:
            raise bad("zero", self.zero, f"allowed: {', '.join(ZERO_KINDS)}")
        if self.symmetric and self.bits < 2:
            raise bad("bits", self.bits, "symmetric quantization needs at least 2 bits")

    def fake_quant(self, w: np.ndarray) -> np.ndarray:
        """Quantize and dequantize `w: (rows, cols)`; returns float32 of the same shape."""
        w = np.asarray(w, dtype=np.float32)
        if w.ndim != 2:
            raise bad("weight shape", w.shape, "must be 2-D (out_features, in_features)")
        rows, cols = w.shape
        g = cols if self.group_size is None else min(self.group_size, cols)
        full = cols // g * g
        out = np.empty_like(w)
        if full:
            out[:, :full] = self._groups(w[:, :full].reshape(rows, -1, g)).reshape(rows, full)
        if full < cols:
            out[:, full:] = self._groups(w[:, full:].reshape(rows, 1, cols - full)).reshape(rows, cols - full)
        return out

    def _groups(self, x: np.ndarray) -> np.ndarray:
        """x: (rows, n_groups, g) → dequantized, one scale (and zero) per [row, group]."""
        if self.symmetric:
            qmax = 2 ** (self.bits - 1) - 1
            scale = np.abs(x).max(-1, keepdims=True) / qmax
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            return np.clip(np.rint(x / scale), -qmax - 1, qmax) * scale
        levels = 2 ** self.bits - 1
        lo = x.min(-1, keepdims=True)
        hi = x.max(-1, keepdims=True)
        if self.zero == "int":  # the range must hold 0 for an integer zero-point in [0, levels] (GPTQ)
            lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
        scale = (hi - lo) / levels
        flat = scale <= 0
        scale = np.where(flat, 1.0, scale).astype(np.float32)
        if self.zero == "float":
            q = np.clip(np.rint((x - lo) / scale), 0, levels)
            out = q * scale + lo
        else:
            z = np.clip(np.rint(-lo / scale), 0, levels)
            q = np.clip(np.rint(x / scale) + z, 0, levels)
            out = (q - z) * scale
        return np.where(flat, x, out)

    def error(self, w: np.ndarray) -> float:
        """Sum of squared quantization error ||Q(w) − w||² (float64)."""
        d = self.fake_quant(w) - np.asarray(w, dtype=np.float32)
        return float(np.einsum("ij,ij->", d, d, dtype=np.float64))


def quantizer_for(fmt: str, group_size: int | None = 128, symmetric: bool = False, zero: str = "int"):
    """The quantizer of a candidate's number format (`Profile.formats[k]`, e.g. `int4`).

    The one entry point estimators, `apply` and `verify` use, so a candidate is scored,
    applied and checked by the same code. Returns an object with `fake_quant(w)` and `error(w)`.
    `fp16`/`fp32` mean "kept in floating point" (returned as None: no quantization).
    """
    if fmt in ("fp16", "fp32", "bf16"):
        return None
    if fmt.startswith("int") and fmt[3:].isdigit():
        return IntQuant(int(fmt[3:]), group_size, symmetric, zero)
    raise bad("format", fmt, "known formats: int1..int16, fp16, fp32")
