"""KeepFloat: a candidate kept in floating point (fp16, bf16, fp32), scored by its rounding error."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitalloc.errors import bad

FP16_MAX = 65504.0


@dataclass(frozen=True)
class KeepFloat:
    """fmt: `fp16` (IEEE half, saturating at ±65504), `bf16` (round-to-nearest-even of the top 16
    bits of float32) or `fp32` (identity)."""

    fmt: str = "fp16"
    rows_independent = True  # elementwise

    def __post_init__(self):
        if self.fmt not in ("fp16", "bf16", "fp32"):
            raise bad("format", self.fmt, "kept floating-point formats: fp16, bf16, fp32")

    @property
    def bits(self) -> int:
        return 32 if self.fmt == "fp32" else 16

    def fake_quant(self, w: np.ndarray) -> np.ndarray:
        w = np.asarray(w, dtype=np.float32)
        if self.fmt == "fp16":
            return np.clip(w, -FP16_MAX, FP16_MAX).astype(np.float16).astype(np.float32)
        if self.fmt == "bf16":
            u = w.view(np.uint32).astype(np.uint64)
            u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16  # round half to even on the dropped 16 bits
            return u.astype(np.uint32).view(np.float32).reshape(w.shape)
        return w.copy()

    def error(self, w: np.ndarray) -> float:
        d = self.fake_quant(w) - np.asarray(w, dtype=np.float32)
        return float(np.einsum("ij,ij->", d, d, dtype=np.float64))

    def storage_bits(self, rows, cols):
        return np.asarray(rows, dtype=np.float64) * np.asarray(cols) * self.bits
