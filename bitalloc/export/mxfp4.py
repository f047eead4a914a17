"""GGML's MXFP4 blocks from bitalloc's OCP MXFP4 codes (so the GGUF decodes to exactly the weights
bitalloc scored and applied).

One block = 32 consecutive weights of a row in 17 bytes (ggml-common.h `block_mxfp4`): e, the
E8M0 shared exponent byte (scale 2^(e−127)), then qs[16] with weight j in the low nibble of
qs[j] and weight j+16 in the high nibble. A nibble is the E2M1 code (sign bit 3; magnitudes 0,
0.5, 1, 1.5, 2, 3, 4, 6), which ggml reads through kvalues_mxfp4 (the doubled values) times half
the scale. bitalloc's shared exponent floor(log2 max|v|) − 2 (OCP MX §6.3, −127 for a zero
block) is ggml's, and its elements round to nearest-even where gguf-py's reference encoder takes
the lower of two equally near values.
"""
from __future__ import annotations

import numpy as np

BLOCK, BYTES = 32, 17


def encode(w: np.ndarray) -> np.ndarray:
    """`w: (rows, cols)` float, cols a multiple of 32 → uint8 (rows, cols/32 · 17)."""
    from bitalloc.quant.formats.minifloat import E2M1
    from bitalloc.quant.formats.mx import E8M0_MIN, MXFloat

    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2 or w.shape[1] % BLOCK:
        raise ValueError(f"MXFP4 needs rows of a multiple of {BLOCK} weights, got shape {w.shape}")
    rows, cols = w.shape
    q = MXFloat(E2M1)
    x = w.reshape(rows, cols // BLOCK, BLOCK)
    e = (q.shared_exponent(np.abs(x).max(-1)) - E8M0_MIN).astype(np.uint8)  # (rows, nb)
    codes = q.encode(w)[0].astype(np.uint8).reshape(rows, cols // BLOCK, BLOCK)
    qs = codes[..., :16] | (codes[..., 16:] << 4)
    return np.concatenate([e[..., None], qs], axis=-1).reshape(rows, -1)
