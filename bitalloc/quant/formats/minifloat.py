"""Minifloat element formats (FP8 E4M3/E5M2, FP6 E2M3/E3M2, FP4 E2M1) and rounding onto them.

A code is sign · 2^(B−1) + (exponent field · 2^M + mantissa field), B = 1 + E + M bits; exponent
field 0 holds the subnormals 0.m · 2^(1−bias), the others 1.m · 2^(e−bias). Within one sign the
codes are ordered by magnitude, so the positive finite values, listed by code, are sorted.
Rounding is IEEE round-to-nearest, ties to even (the even code), and saturating: magnitudes above
the largest finite value become that value (no inf is ever produced; -0 is written as +0).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Minifloat:
    """name: `e4m3` ...; ebits, mbits: exponent and mantissa field widths; bias: exponent bias;
    n_finite: positive finite codes 0..n_finite−1 (the codes above are inf/NaN in that format)."""

    name: str
    ebits: int
    mbits: int
    bias: int
    n_finite: int

    @property
    def bits(self) -> int:
        return 1 + self.ebits + self.mbits

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal value (also the subnormals' scale exponent)."""
        return 1 - self.bias

    @cached_property
    def positive(self) -> np.ndarray:
        """(n_finite,) float64 magnitudes of the positive finite codes, ascending."""
        code = np.arange(self.n_finite)
        e, m = code >> self.mbits, code & ((1 << self.mbits) - 1)
        frac = np.where(e == 0, m / 2**self.mbits, 1 + m / 2**self.mbits)
        return frac * np.exp2(np.maximum(e, 1) - self.bias)

    @property
    def max(self) -> float:
        return float(self.positive[-1])

    @property
    def emax(self) -> int:
        """Exponent of the largest normal value, floor(log2(max)) (OCP MX `emax_elem`)."""
        return int(np.floor(np.log2(self.max)))

    @cached_property
    def values(self) -> np.ndarray:
        """(2^bits,) float32 value of every code (NaN for the inf/NaN codes), the decode table."""
        half = np.full(1 << (self.bits - 1), np.nan)
        half[: self.n_finite] = self.positive
        return np.concatenate([half, -half]).astype(np.float32)

    def _grid(self, x: np.ndarray):
        """(k, binade, quantum): |x| (clipped to max) ≈ k · quantum with k = rint(|x| / quantum),
        quantum = 2^(max(floor(log2|x|), emin) − mbits), binade = that exponent − emin. Exact in
        float32 for float32 input (quantum is a power of two); float64 input stays float64."""
        x = np.asarray(x)
        dt = np.float64 if x.dtype == np.float64 else np.float32
        mag = np.minimum(np.abs(x.astype(dt, copy=False)), dt(self.max))
        _, e2 = np.frexp(mag)  # mag = f·2^e2, f in [0.5, 1): floor(log2 mag) = e2 − 1
        binade = np.maximum(e2 - 1 - self.emin, 0)
        quantum = np.ldexp(dt(1), binade + (self.emin - self.mbits)).astype(dt, copy=False)
        return np.rint(mag / quantum), binade, quantum  # np.rint: half to even (even k = even mantissa)

    def round(self, x: np.ndarray) -> np.ndarray:
        """Nearest representable value of each element of x, ties to even, saturating (the max is
        the last value of its binade, so a clipped magnitude never rounds past it)."""
        k, _, quantum = self._grid(x)
        return np.copysign(k * quantum, x)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Codes (int32, same shape) of the rounded values of x: within a binade the code steps by
        one per quantum, and k = 2^(mbits+1) is the next binade's first code."""
        k, binade, _ = self._grid(x)
        code = (binade << self.mbits) + k.astype(np.int32)
        return np.where((np.asarray(x) < 0) & (code > 0), code | (1 << (self.bits - 1)), code).astype(np.int32)

    def decode(self, code: np.ndarray) -> np.ndarray:
        return self.values[code]


E2M1 = Minifloat("e2m1", 2, 1, 1, 8)          # FP4: 0, 0.5, 1, 1.5, 2, 3, 4, 6
E2M3 = Minifloat("e2m3", 2, 3, 1, 32)         # FP6: max 7.5, no inf/NaN
E3M2 = Minifloat("e3m2", 3, 2, 3, 32)         # FP6: max 28, no inf/NaN
E4M3 = Minifloat("e4m3", 4, 3, 7, 127)        # FP8 OCP/NVIDIA "fn": max 448, no inf, S.1111.111 = NaN
E5M2 = Minifloat("e5m2", 5, 2, 15, 124)       # FP8 IEEE-like: max 57344, exponent 31 = inf/NaN
ELEMENTS = {f.name: f for f in (E2M1, E2M3, E3M2, E4M3, E5M2)}
