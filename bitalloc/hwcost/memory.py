"""MemoryCost: weight storage in bits, as an average number of bits per weight."""
from __future__ import annotations

import numpy as np

from ..errors import bad
from . import register
from .base import CostModel

UNQUANTIZED = ("fp16", "bf16", "fp32")


@register("memory")
class MemoryCost(CostModel):
    """Bits of storage, reported per weight (cap = budget · total parameters).

    Nominal (default): n_params · bits, as HAWQ, SliM-LLM and AutoQuantize count.
    With `count_overhead`: plus scale and zero-point bits for every group of `group_size`
    input columns of a quantized candidate (as ExLlamaV2 bpw and llama.cpp types count) and
    `outlier_bits` for each weight kept unquantized as an outlier (GWQ): a 16-bit value plus a
    16-bit index by default. group_size and outlier_fraction default to the profile's `meta`
    (`group_size`, `outlier_fraction`), else 128 and 0.
    """

    unit = "bits/weight"

    def __init__(self, count_overhead: bool = False, group_size: int | None = None, scale_bits: int = 16,
                 zero_bits: int = 16, outlier_bits: int = 32, outlier_fraction: float | None = None):
        for field, v in (("scale_bits", scale_bits), ("zero_bits", zero_bits), ("outlier_bits", outlier_bits)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise bad(field, v, "must be a non-negative integer number of bits")
        if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
            raise bad("group_size", group_size, "must be a positive integer")
        if outlier_fraction is not None and not 0 <= outlier_fraction < 1:
            raise bad("outlier_fraction", outlier_fraction, "must be in [0, 1)")
        self.count_overhead = count_overhead
        self.group_size, self.scale_bits, self.zero_bits = group_size, scale_bits, zero_bits
        self.outlier_bits, self.outlier_fraction = outlier_bits, outlier_fraction
        self.resource = "avg_bits_with_overhead" if count_overhead else "avg_bits"

    def costs(self, profile) -> np.ndarray:
        bits = np.asarray(profile.bits, dtype=np.float64)
        c = profile.n_params[:, None].astype(np.float64) * bits[None, :]
        if self.count_overhead:
            c += self._per_unit_overhead(profile)[:, None] * self._quantized(profile)[None, :]
        return c

    def chosen(self, profile, choice: np.ndarray) -> np.ndarray:
        c = profile.n_params.astype(np.float64) * np.asarray(profile.bits, dtype=np.float64)[choice]
        if self.count_overhead:
            c += self._per_unit_overhead(profile) * self._quantized(profile)[choice]
        return c

    def overhead(self, profile) -> np.ndarray:
        """(N, K) metadata bits: group scales/zeros for quantized candidates plus kept outliers."""
        return self._per_unit_overhead(profile)[:, None] * self._quantized(profile)[None, :]

    def _per_unit_overhead(self, profile) -> np.ndarray:
        """(N,) bits of group scales/zeros plus kept outliers, for a quantized candidate."""
        g = self.group_size or int(profile.meta.get("group_size", 128))
        frac = self.outlier_fraction if self.outlier_fraction is not None else float(profile.meta.get("outlier_fraction", 0.0))
        n_groups = (profile.rows * -(-profile.cols // g)).astype(np.float64)
        outliers = np.round(frac * profile.n_params).astype(np.float64)
        return n_groups * (self.scale_bits + self.zero_bits) + outliers * self.outlier_bits

    @staticmethod
    def _quantized(profile) -> np.ndarray:
        """(K,) 1.0 for candidates that are quantized (carry group metadata), 0.0 for kept floats."""
        return np.array([f not in UNQUANTIZED for f in profile.formats], dtype=np.float64)

    def scale(self, profile) -> float:
        return float(profile.n_params.sum())
