"""OCP Microscaling (MX v1.0) formats: MXFP8 (E4M3/E5M2), MXFP6 (E2M3/E3M2), MXFP4 (E2M1).

Blocks of 32 consecutive input columns share one E8M0 scale X = 2^e (8 bits, e in [−127, 127]);
per the spec (section 6.3), e = floor(log2(max|v|)) − emax_elem, with emax_elem the exponent of
the element format's largest normal value, and each element is v / X rounded to the element
format, clamping to its largest normal value. An all-zero block gets e = −127.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitalloc.quant.formats.base import ScaledFloat
from bitalloc.quant.formats.minifloat import Minifloat

MX_BLOCK = 32
E8M0_MIN, E8M0_MAX = -127, 127


@dataclass(frozen=True)
class MXFloat(ScaledFloat):
    element: Minifloat
    block: int = MX_BLOCK
    scale_bits: int = 8
    rows_independent = True  # blocks along a row, scale from the block alone (sensitivity.base.rows_independent)

    def _scales(self, amax, w):
        return np.ldexp(np.float32(1), self.shared_exponent(amax)).astype(np.float32)

    def shared_exponent(self, amax: np.ndarray) -> np.ndarray:
        """int32 E8M0 exponent of each block from its max |v| (float)."""
        _, e2 = np.frexp(np.asarray(amax, dtype=np.float64))  # floor(log2 a) = e2 − 1 for a > 0
        e = np.where(np.asarray(amax) > 0, e2 - 1 - self.element.emax, E8M0_MIN)
        return np.clip(e, E8M0_MIN, E8M0_MAX).astype(np.int32)
