"""NVIDIA NVFP4: FP4 E2M1 elements, blocks of 16 input columns, an FP8 E4M3 scale per block and
one FP32 scale per tensor (the recipe of NVIDIA's TensorRT Model Optimizer).

Tensor scale t = max|W| / (6 · 448) (FP32); block scale b = E4M3(max|block| / (6 · t)), rounded
to nearest-even (≤ 448 since the block max is at most the tensor max); element = E2M1(v / (b · t)),
saturating at ±6 when the rounding of b went down. Dequantized: E2M1 value · b · t.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitalloc.quant.formats.base import ScaledFloat
from bitalloc.quant.formats.minifloat import E2M1, E4M3, Minifloat

NV_BLOCK = 16


@dataclass(frozen=True)
class NVFP4(ScaledFloat):
    element: Minifloat = E2M1
    block: int = NV_BLOCK
    scale_bits: int = 8    # E4M3 block scale
    tensor_bits: int = 32  # FP32 tensor scale
    rows_independent = False  # the tensor scale is the whole weight's max: quantize the layer whole

    def tensor_scale(self, w: np.ndarray) -> np.float32:
        return np.float32(np.abs(np.asarray(w, dtype=np.float32)).max() / np.float32(E2M1.max * E4M3.max))

    def block_scales(self, amax: np.ndarray, t: np.float32) -> np.ndarray:
        """E4M3 block scales (float32 holding E4M3 values) from block maxima and the tensor scale."""
        if t <= 0:
            return np.zeros_like(amax, dtype=np.float32)
        return E4M3.round(amax / (np.float32(E2M1.max) * t)).astype(np.float32)

    def _scales(self, amax, w):
        t = self.tensor_scale(w)
        return (self.block_scales(amax, t) * t).astype(np.float32)
