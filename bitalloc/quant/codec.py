"""The codec of one unit: its levels, scales and zeros (`UnitCode`), decoded back to float weights
(`decode_unit`) and written into a torch model's layers (`write_weights`).

Shared by `apply` (encodes, then writes), `pack` (stores and reads back codes) and `verify`
(decodes the packed file); it depends on neither of them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitalloc.errors import BitallocError
from bitalloc.quant.formats.spec import FormatInfo, format_for
from bitalloc.quant.integer import quantizer_for


@dataclass
class UnitCode:
    """One unit's encoding. record: the unit's metadata (see the module docstring); q: (rows,
    cols) int32 levels (None when kept in float); scale, zero: (rows, n_groups) float32 (zero None
    when symmetric); weight: (rows, cols) float16 for a unit kept in floating point."""

    record: dict
    q: np.ndarray | None = None
    scale: np.ndarray | None = None
    zero: np.ndarray | None = None
    weight: np.ndarray | None = None
    tensor_scale: float | None = None  # NVFP4: the FP32 per-tensor scale (scale = block scale · it)

    @property
    def name(self) -> str:
        return self.record["name"]

    @property
    def bits(self) -> int:
        return int(self.record["bits"])

    @property
    def format(self) -> FormatInfo:
        return record_format(self.record)


def record_format(record: dict) -> FormatInfo:
    """A unit record's number format as an object: `format_for` of its `format` label and `bits`
    (the function allocations and profiles use; a record without a label gets its bits' default
    format); a label that disagrees with the bits is a one-line error naming the unit."""
    try:
        return format_for(record.get("format"), int(record["bits"]))
    except BitallocError as e:
        raise BitallocError(f"unit {record.get('name')!r}: {e}") from None


def decode_unit(code: UnitCode, settings: dict) -> np.ndarray:
    """float32 (rows, cols) weights of one unit."""
    if code.weight is not None:
        return np.asarray(code.weight, dtype=np.float32)
    quant = quantizer_for(code.format, settings["group_size"], settings["symmetric"], settings["zero"])
    zero = code.zero if code.zero is not None else np.zeros_like(code.scale)
    return quant.decode(code.q, code.scale, zero)


def write_weights(model, codes: list[UnitCode], settings: dict) -> None:
    """Write each unit's decoded weights into its layer of `model` (all checked before any write)."""
    import torch

    from bitalloc.weights import from_2d

    mods = dict(model.named_modules())
    by_layer: dict[str, list[UnitCode]] = {}
    for c in codes:
        by_layer.setdefault(c.record["layer"], []).append(c)
    for layer in by_layer:
        if layer not in mods or getattr(mods[layer], "weight", None) is None:
            raise BitallocError(f"layer {layer!r} of the quantized units is not in the model; the file is for another model")
    new = {}
    for layer, cs in by_layer.items():
        W = _weight2d(mods[layer])
        for c in cs:
            r = c.record
            block = decode_unit(c, settings)
            target = W
            if r.get("index") is not None:
                a, b = r["index"]
                target = W[a:b] if r["axis"] == 0 else W[:, a:b]
            if target.shape != block.shape:
                raise BitallocError(f"unit {r['name']!r}: block of shape {block.shape} does not fit layer {layer!r} "
                                    f"(expects {target.shape}); the file is for another model")
            target[...] = block
        new[layer] = W
    with torch.no_grad():
        for layer, W in new.items():
            weight = mods[layer].weight
            weight.copy_(from_2d(mods[layer], torch.from_numpy(W).to(weight.device)).to(weight.dtype))


def _weight2d(mod) -> np.ndarray:
    """A copy of the layer's weight as float32 numpy (out, in·kh·kw)."""
    from bitalloc.weights import weight2d

    return weight2d(mod).detach().float().cpu().numpy().copy()


def _numpy(w) -> np.ndarray:
    return w if isinstance(w, np.ndarray) else w.detach().float().cpu().numpy()
