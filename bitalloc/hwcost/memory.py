"""MemoryCost: weight storage in bits, as an average number of bits per weight."""
from __future__ import annotations

import numpy as np

from bitalloc.errors import bad
from bitalloc.hwcost import register
from bitalloc.hwcost.base import CostModel

UNQUANTIZED = ("fp16", "bf16", "fp32")


@register("memory")
class MemoryCost(CostModel):
    """Bits of storage, reported per weight (cap = budget · total parameters).

    Nominal (default): n_params · bits (the element bits of each candidate's format), as HAWQ,
    SliM-LLM and AutoQuantize count.
    With `count_overhead`: the exact storage of each candidate's format for the unit's
    (rows, cols) block (`storage_bits` of its quantizer: elements plus scales: integer groups of
    `group_size` input columns with a `scale_bits` scale and, when asymmetric, a `zero_bits`
    zero-point, as ExLlamaV2 bpw and llama.cpp types count; per-group FP an FP32 scale; MX an
    8-bit E8M0 scale per 32; NVFP4 an E4M3 scale per 16 plus an FP32 scale per tensor, charged
    to each unit as if it were its own tensor) and `outlier_bits` for each weight kept
    unquantized as an outlier (GWQ): a 16-bit value plus a 16-bit index by default.
    group_size, outlier_fraction and the integer form default to the profile's `meta`
    (`group_size`, `outlier_fraction`, `symmetric`), else 128, 0 and asymmetric; zero_bits
    defaults to 16 (asymmetric) or 0 (symmetric).
    """

    unit = "bits/weight"

    def __init__(self, count_overhead: bool = False, group_size: int | None = None, scale_bits: int = 16,
                 zero_bits: int | None = None, outlier_bits: int = 32, outlier_fraction: float | None = None):
        for field, v in (("scale_bits", scale_bits), ("zero_bits", 0 if zero_bits is None else zero_bits),
                         ("outlier_bits", outlier_bits)):
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
            c += self.overhead(profile)
        return c

    def factors(self, profile):
        """Nominal bits are n_params ⊗ bits (the products `costs` makes, bit for bit)."""
        if self.count_overhead or type(self).costs is not MemoryCost.costs:
            return None
        return profile.n_params.astype(np.float64), np.asarray(profile.bits, dtype=np.float64)

    def chosen(self, profile, choice: np.ndarray) -> np.ndarray:
        c = profile.n_params.astype(np.float64) * np.asarray(profile.bits, dtype=np.float64)[choice]
        if self.count_overhead:
            rows = np.arange(len(choice))
            for k in np.unique(choice):  # one candidate's column at a time: no (N, K) matrix
                sel = rows[choice == k]
                c[sel] += self._overhead_column(profile, int(k), sel)
        return c

    def overhead(self, profile) -> np.ndarray:
        """(N, K) metadata bits: each candidate's scales/zeros for the unit's block plus kept
        outliers (for quantized candidates)."""
        rows = np.arange(profile.n_units)
        return np.stack([self._overhead_column(profile, k, rows) for k in range(len(profile.bits))], axis=1)

    def _overhead_column(self, profile, k: int, idx: np.ndarray) -> np.ndarray:
        """(len(idx),) storage beyond n_params · bits of candidate k for units `idx`."""
        if profile.format_objects[k].family == "float":
            return np.zeros(len(idx))
        r, c = profile.rows[idx], profile.cols[idx]
        q = self.quantizer(profile, k)
        kw = {"scale_bits": self.scale_bits, "zero_bits": self.zero_bits} if _is_int(q) else {}
        extra = q.storage_bits(r, c, **kw) - (r * c).astype(np.float64) * q.bits
        frac = self.outlier_fraction if self.outlier_fraction is not None else float(profile.meta.get("outlier_fraction", 0.0))
        return extra + np.round(frac * profile.n_params[idx]).astype(np.float64) * self.outlier_bits

    def quantizer(self, profile, k: int):
        """The quantizer of candidate k (its Format object, parsed once on the profile) with this
        profile's group size and integer form; an external label is a one-line error naming it
        (its storage overhead is unknown; no guess)."""
        from bitalloc.quant.integer import quantizer_for

        g = self.group_size or int(profile.meta.get("group_size", 128))
        return quantizer_for(profile.format_objects[k], g, symmetric=bool(profile.meta.get("symmetric", False)))

    def scale(self, profile) -> float:
        return float(profile.n_params.sum())


def _is_int(q) -> bool:
    from bitalloc.quant.integer import IntQuant

    return isinstance(q, IntQuant)
