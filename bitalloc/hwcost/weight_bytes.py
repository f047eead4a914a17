"""Bytes a layer's weights take at a candidate, as the device streams them (latency, MCU flash).

- integer formats: n_params · bits / 8 plus one `channel_scale_bytes` scale per output channel
  (the per-channel requantization scale of int8/int4 kernels);
- minifloat formats (per-group FP, OCP MX, NVFP4): the format's exact storage for the layer's
  (rows, cols) weights, `storage_bits / 8` of its quantizer: element codes plus its scales (an
  FP32 scale per group of `group_size` inputs, an E8M0 byte per 32, an E4M3 byte per 16 plus the
  FP32 tensor scale), so the bytes moved follow storage; GGML types (q4_k ...) likewise, their blocks;
- kept floats (fp16/bf16/fp32) and format names bitalloc does not know: n_params · bits / 8
  (unknown `int…` labels also get the channel scales).
"""
from __future__ import annotations

import numpy as np

from bitalloc.errors import BitallocError

MINIFLOAT = ("fp", "mx", "nvfp4")


def family_of(info) -> str:
    """The family of a candidate's Format object (profile.format_objects[k]); `external` for a
    label bitalloc does not know (no guessed family)."""
    return info.family


def layer_weight_bytes(profile, lv, k: int, channel_scale_bytes: float = 4) -> np.ndarray:
    """(L,) bytes of each layer of `lv` (layers.layer_view) at candidate k of `profile`."""
    from bitalloc.quant.formats.spec import require
    from bitalloc.quant.integer import quantizer_for

    info, b = require(profile.format_objects[k], "its storage in bytes"), profile.bits[k]
    fam = info.family
    if fam in MINIFLOAT or fam == "ggml":
        q = quantizer_for(info if fam != "ggml" else profile.formats[k], int(profile.meta.get("group_size", 128)))
        return np.asarray(q.storage_bits(lv.rows, lv.cols), dtype=np.float64) / 8
    out = lv.n_params * b / 8
    return out + channel_scale_bytes * lv.rows if fam == "int" else out
