"""Per-group minifloat (FP8/FP6/FP4 weights with one FP32 scale per group of input columns).

Scale form: s = max|w| / max_elem over the group, kept as FP32 (32 bits per group), so the
group's largest magnitude maps onto the format's largest finite value (the absmax scaling of
FP8 weight kernels and of the INT-vs-FP studies); elements round to nearest-even, saturating.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitalloc.errors import bad
from bitalloc.quant.formats.base import ScaledFloat
from bitalloc.quant.formats.minifloat import Minifloat


@dataclass(frozen=True)
class GroupFloat(ScaledFloat):
    """element: the minifloat; block: input columns per scale (None = one scale per output row)."""

    element: Minifloat
    block: int | None = 128
    scale_bits: int = 32
    rows_independent = True  # blocks along a row, scale from the block alone (sensitivity.base.rows_independent)

    def __post_init__(self):
        if self.block is not None and (isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 1):
            raise bad("group_size", self.block, "must be a positive integer or None (per row)")

    @property
    def group_size(self) -> int | None:
        return self.block

    def _scales(self, amax, w):
        return (amax / np.float32(self.element.max)).astype(np.float32)
