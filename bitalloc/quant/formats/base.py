"""ScaledFloat: minifloat elements times one scale per block of input columns (the shared part of
the per-group FP formats, OCP MX and NVFP4; they differ only in how the scale is chosen and stored).

Weights are 2-D (out_features, in_features); blocks run along the input dimension, as the groups
of `IntQuant`. `encode` follows IntQuant's convention, so apply/verify/pack treat every format
alike: (q, scale, zero) with q the element codes, w ≈ values[q] · scale, zero all 0.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from bitalloc.errors import bad
from bitalloc.quant.formats.minifloat import Minifloat


def to_blocks(w: np.ndarray, block: int | None) -> tuple[np.ndarray, int]:
    """`w: (rows, cols)` → (x: (rows, n_blocks, g) float32, g); a ragged last block is padded with
    copies of its last column (which changes neither its max nor its min)."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise bad("weight shape", w.shape, "must be 2-D (out_features, in_features)")
    rows, cols = w.shape
    g = cols if block is None else min(block, cols)
    nb = -(-cols // g)
    pad = nb * g - cols
    x = np.pad(w, ((0, 0), (0, pad)), mode="edge") if pad else w
    return x.reshape(rows, nb, g), g


def n_blocks(rows, cols, block: int | None):
    """Blocks in a (rows, cols) tensor (numpy arrays allowed): rows · ceil(cols / block)."""
    if block is None:
        return rows * 1
    return rows * -(-np.asarray(cols) // block)


class ScaledFloat(ABC):
    """Subclasses set `element` (a Minifloat), `block` (input columns per scale, None = per row),
    `scale_bits` (storage of one block scale), `tensor_bits` (storage of per-tensor metadata) and
    implement `_scales(amax, w) -> (rows, n_blocks, 1) float32`."""

    element: Minifloat
    block: int | None
    scale_bits: int = 32
    tensor_bits: int = 0

    @property
    def bits(self) -> int:
        """Bits per element (the candidate's nominal bit-width)."""
        return self.element.bits

    @property
    def values(self) -> np.ndarray:
        """(2^bits,) float32 value of each element code (decode table)."""
        return self.element.values

    @abstractmethod
    def _scales(self, amax: np.ndarray, w: np.ndarray) -> np.ndarray:
        """amax: (rows, n_blocks, 1) float32 max |w| of each block; w: the whole (rows, cols) tensor."""

    def encode(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`w: (rows, cols)` → (q, scale, zero): q (rows, cols) int32 element codes; scale, zero
        (rows, n_blocks) float32 (zero all 0); w ≈ values[q] · scale. A block with scale 0 gets
        codes 0."""
        x, g = to_blocks(w, self.block)
        rows, nb, _ = x.shape
        scale = self._scales(np.abs(x).max(-1, keepdims=True), w).astype(np.float32)
        safe = np.where(scale > 0, scale, np.float32(1))
        q = np.where(scale > 0, self.element.encode(x / safe), 0).astype(np.int32)
        cols = np.shape(w)[1]
        return q.reshape(rows, nb * g)[:, :cols], scale[..., 0], np.zeros((rows, nb), np.float32)

    def decode(self, q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None = None) -> np.ndarray:
        """Inverse of `encode`: float32 (rows, cols)."""
        rows, cols = q.shape
        g = cols if self.block is None else min(self.block, cols)
        return self.values[q] * np.repeat(scale, g, axis=1)[:, :cols]

    def fake_quant(self, w: np.ndarray) -> np.ndarray:
        """Quantize and dequantize `w: (rows, cols)`; float32 of the same shape. Equal to
        decode(encode(w)), computed on the blocks without codes (faster)."""
        x, g = to_blocks(w, self.block)
        rows, nb, _ = x.shape
        scale = self._scales(np.abs(x).max(-1, keepdims=True), w).astype(np.float32)
        safe = np.where(scale > 0, scale, np.float32(1))
        y = (self.element.round(x / safe).astype(np.float32) * scale).reshape(rows, nb * g)
        return y[:, : np.shape(w)[1]]

    def error(self, w: np.ndarray) -> float:
        """Sum of squared quantization error ||Q(w) − w||² (float64)."""
        d = self.fake_quant(w) - np.asarray(w, dtype=np.float32)
        return float(np.einsum("ij,ij->", d, d, dtype=np.float64))

    def storage_bits(self, rows, cols):
        """Exact bits to store a (rows, cols) tensor: elements + block scales + per-tensor
        metadata (numpy arrays of shapes allowed; float64)."""
        rows, cols = np.asarray(rows, dtype=np.float64), np.asarray(cols)
        return rows * cols * self.bits + n_blocks(rows, cols, self.block) * self.scale_bits + self.tensor_bits
