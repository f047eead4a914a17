"""Quantizers and their error, in numpy (the same code scores candidates and, later, applies them).

Weights are 2-D (out_features, in_features); groups run along the input dimension, as in GPTQ,
AWQ and llama.cpp blocks. Round-to-nearest. Integers live here; minifloat, OCP MX and NVFP4 in
bitalloc/quant/formats/. `quantizer_for(fmt, ...)` turns a candidate's format name into its quantizer;
every quantizer has fake_quant, error, encode/decode and storage_bits(rows, cols).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitalloc.errors import bad

ZERO_KINDS = ("int", "float")


@dataclass(frozen=True)
class IntQuant:
    """Integer quantizer. bits: 1..16; group_size: input columns per scale (None = one scale per
    output row); symmetric: scale from max|w|, levels −2^(b−1)..2^(b−1)−1; else asymmetric
    min/max with `zero` = `int` (integer zero-point, GPTQ/AWQ form) or `float` (a float minimum,
    llama.cpp Q4_1 form)."""

    bits: int
    group_size: int | None = 128
    symmetric: bool = False
    zero: str = "int"

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 16:
            raise bad("bits", self.bits, "integer quantization takes 1 to 16 bits")
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise bad("group_size", self.group_size, "must be a positive integer or None (per row)")
        if self.zero not in ZERO_KINDS:
            raise bad("zero", self.zero, f"allowed: {', '.join(ZERO_KINDS)}")
        if self.symmetric and self.bits < 2:
            raise bad("bits", self.bits, "symmetric quantization needs at least 2 bits")

    torch_native = True  # encode/decode/fake_quant take torch tensors too, and compute on their device
    rows_independent = True  # groups run along a row: any slice of rows quantizes as in the whole weight

    def fake_quant(self, w: np.ndarray) -> np.ndarray:
        """Quantize and dequantize `w: (rows, cols)`; returns float32 of the same shape (a numpy
        array, or a torch tensor on w's device for a torch w)."""
        return self.decode(*self.encode(w))

    def n_groups(self, cols: int) -> int:
        g = cols if self.group_size is None else min(self.group_size, cols)
        return -(-cols // g)

    def encode(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`w: (rows, cols)` → (q, scale, zero): q (rows, cols) int32 levels in [0, 2^b−1]
        (symmetric: in [−2^(b−1), 2^(b−1)−1]); scale, zero: (rows, n_groups) float32, where the
        group of column j is j // group_size (the last group may be ragged). w ≈ (q − zero)·scale
        for an integer zero-point, q·scale + zero for a float minimum, q·scale when symmetric
        (zero all 0). A constant group gets scale 0 and zero = its value (float) or 0 (int).
        A torch `w` is quantized in torch on its own device, bit for bit as in numpy."""
        if _is_torch(w):
            return self._encode_torch(w)
        w = np.asarray(w, dtype=np.float32)
        if w.ndim != 2:
            raise bad("weight shape", w.shape, "must be 2-D (out_features, in_features)")
        rows, cols = w.shape
        g = cols if self.group_size is None else min(self.group_size, cols)
        ng = self.n_groups(cols)
        pad = ng * g - cols
        x = np.pad(w, ((0, 0), (0, pad)), mode="edge").reshape(rows, ng, g) if pad else w.reshape(rows, ng, g)
        q, scale, zero = self._encode_groups(x)
        return q.reshape(rows, ng * g)[:, :cols], scale[..., 0], zero[..., 0]

    def decode(self, q: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
        """Inverse of `encode`: float32 (rows, cols)."""
        if _is_torch(q):
            return self._decode_torch(q, scale, zero)
        rows, cols = q.shape
        g = cols if self.group_size is None else min(self.group_size, cols)
        s = np.repeat(scale, g, axis=1)[:, :cols]
        z = np.repeat(zero, g, axis=1)[:, :cols]
        qf = q.astype(np.float32)
        if self.symmetric:
            return qf * s
        if self.zero == "float":
            return qf * s + z
        return (qf - z) * s

    def _encode_groups(self, x: np.ndarray):
        """x: (rows, n_groups, g) → q (same shape, int32), scale and zero (rows, n_groups, 1)."""
        if self.symmetric:
            qmax = 2 ** (self.bits - 1) - 1
            scale = (np.abs(x).max(-1, keepdims=True) / qmax).astype(np.float32)
            safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
            q = np.clip(np.rint(x / safe), -qmax - 1, qmax)
            return q.astype(np.int32), scale, np.zeros_like(scale)
        levels = 2 ** self.bits - 1
        lo = x.min(-1, keepdims=True)
        hi = x.max(-1, keepdims=True)
        if self.zero == "int":  # the range must hold 0 for an integer zero-point in [0, levels] (GPTQ)
            lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
        scale = ((hi - lo) / levels).astype(np.float32)
        flat = scale <= 0
        safe = np.where(flat, 1.0, scale).astype(np.float32)
        if self.zero == "float":
            q = np.clip(np.rint((x - lo) / safe), 0, levels)
            return q.astype(np.int32), np.where(flat, 0, scale).astype(np.float32), lo.astype(np.float32)
        z = np.clip(np.rint(-lo / safe), 0, levels)
        q = np.clip(np.rint(x / safe) + z, 0, levels)
        return q.astype(np.int32), np.where(flat, 0, scale).astype(np.float32), z.astype(np.float32)

    def _encode_torch(self, w):
        import torch

        w = w.detach().float()
        if w.dim() != 2:
            raise bad("weight shape", tuple(w.shape), "must be 2-D (out_features, in_features)")
        rows, cols = w.shape
        g = cols if self.group_size is None else min(self.group_size, cols)
        ng = self.n_groups(cols)
        pad = ng * g - cols
        x = torch.cat([w, w[:, -1:].expand(rows, pad)], 1) if pad else w
        x = x.reshape(rows, ng, g)
        if self.symmetric:
            qmax = 2 ** (self.bits - 1) - 1
            scale = x.abs().amax(-1, keepdim=True) / qmax
            safe = torch.where(scale > 0, scale, torch.ones_like(scale))
            q = torch.clamp(torch.round(x / safe), -qmax - 1, qmax)
            zero = torch.zeros_like(scale)
        else:
            levels = 2 ** self.bits - 1
            lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
            if self.zero == "int":
                lo, hi = lo.clamp(max=0), hi.clamp(min=0)
            scale = (hi - lo) / levels
            flat = scale <= 0
            safe = torch.where(flat, torch.ones_like(scale), scale)
            if self.zero == "float":
                q = torch.clamp(torch.round((x - lo) / safe), 0, levels)
                zero = lo
            else:
                zero = torch.clamp(torch.round(-lo / safe), 0, levels)
                q = torch.clamp(torch.round(x / safe) + zero, 0, levels)
            scale = torch.where(flat, torch.zeros_like(scale), scale)
        return q.to(torch.int32).reshape(rows, ng * g)[:, :cols], scale[..., 0], zero[..., 0]

    def _decode_torch(self, q, scale, zero):
        import torch

        rows, cols = q.shape
        g = cols if self.group_size is None else min(self.group_size, cols)
        s = torch.as_tensor(scale, device=q.device).repeat_interleave(g, 1)[:, :cols]
        z = torch.as_tensor(zero, device=q.device).repeat_interleave(g, 1)[:, :cols]
        qf = q.float()
        if self.symmetric:
            return qf * s
        if self.zero == "float":
            return qf * s + z
        return (qf - z) * s

    def error(self, w: np.ndarray) -> float:
        """Sum of squared quantization error ||Q(w) − w||² (float64)."""
        d = self.fake_quant(w) - np.asarray(w, dtype=np.float32)
        return float(np.einsum("ij,ij->", d, d, dtype=np.float64))

    def storage_bits(self, rows, cols, scale_bits: int = 16, zero_bits: int | None = None):
        """Exact bits to store a (rows, cols) tensor (numpy arrays allowed; float64): b bits per
        weight plus, per group, a `scale_bits` scale and (asymmetric) a `zero_bits` zero-point
        (default 16, 0 when symmetric)."""
        if zero_bits is None:
            zero_bits = 0 if self.symmetric else 16
        rows, cols = np.asarray(rows, dtype=np.float64), np.asarray(cols)
        groups = rows if self.group_size is None else rows * -(-cols // self.group_size)
        return rows * cols * self.bits + groups * (scale_bits + zero_bits)


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def fake_quant_tensor(quant, w, importance=None):
    """`quant.fake_quant` of a torch (rows, cols) float32 tensor, as a tensor on w's device: computed
    there by quantizers that take torch tensors (`torch_native`, the integer grids), through numpy
    on the CPU for the others (minifloat, MX, NVFP4, kept floats)."""
    import torch

    if getattr(quant, "torch_native", False):
        return quant.fake_quant(w)
    W = w.detach().float().cpu().numpy()
    if importance is not None:  # GGML K-quants: a per-input-column weight for the scale search (imatrix)
        Q = quant.fake_quant(W, importance=np.asarray(importance.detach().float().cpu().numpy(), dtype=np.float32))
    else:
        Q = quant.fake_quant(W)
    return torch.from_numpy(np.ascontiguousarray(Q, dtype=np.float32)).to(w.device)


def quantizer_for(fmt, group_size: int | None = 128, symmetric: bool = False, zero: str = "int"):
    """The quantizer of a candidate's number format (`Profile.formats[k]`, e.g. `int4`, `fp4_e2m1`,
    `mxfp4`, `nvfp4`, GGML types `q4_k`; names in bitalloc/quant/formats/spec.py).

    The one entry point estimators, `apply` and `verify` use, so a candidate is scored, applied and
    checked by the same code. group_size: input columns per scale of `int` and per-group `fp`
    formats (a `_g<N>` suffix overrides it; MX and NVFP4 fix their own blocks); symmetric / zero:
    the integer form (IntQuant). Returns an object with `fake_quant(w)`, `error(w)`, `encode(w)`
    → (codes, scale, zero), `decode(...)`, `bits` and `storage_bits(rows, cols)`.
    `fp16`/`bf16`/`fp32` mean "kept in floating point" (returned as None: no quantization;
    `scorer_for` gives their rounding error).
    """
    from bitalloc.quant.formats.spec import FormatInfo, parse_format, require

    info = require(fmt, "its quantizer") if isinstance(fmt, FormatInfo) else parse_format(fmt)
    if info.family == "float":
        return None
    if info.family == "int":
        return IntQuant(info.bits, info.block or group_size, symmetric, zero)
    if info.family == "ggml":
        from bitalloc.quant.formats.ggml import GgmlType, type_of_format

        return GgmlType(type_of_format(info.name))
    from bitalloc.quant.formats.minifloat import ELEMENTS

    element = ELEMENTS[info.element]
    if info.family == "fp":
        from bitalloc.quant.formats.groupfloat import GroupFloat

        return GroupFloat(element, info.block or group_size)
    if info.family == "mx":
        from bitalloc.quant.formats.mx import MXFloat

        return MXFloat(element)
    from bitalloc.quant.formats.nvfp4 import NVFP4

    return NVFP4()


def scorer_for(fmt, group_size: int | None = 128, symmetric: bool = False, zero: str = "int"):
    """`quantizer_for`, except that kept floating-point formats get a KeepFloat (their fp16/bf16
    rounding error, their storage), so estimators and cost models can treat every candidate alike."""
    q = quantizer_for(fmt, group_size, symmetric, zero)
    if q is None:
        from bitalloc.quant.formats.keep import KeepFloat
        from bitalloc.quant.formats.spec import FormatInfo, parse_format

        return KeepFloat((fmt if isinstance(fmt, FormatInfo) else parse_format(fmt)).name)
    return q


def format_family(fmt) -> str:
    """`int`, `fp` (per-group minifloat), `mx` (OCP MX), `nvfp4` or `float` (kept unquantized):
    what a cost model asks to decide whether a device has a kernel for a candidate."""
    from bitalloc.quant.formats.spec import parse_format

    return parse_format(fmt).family


def format_info(fmt):
    """FormatInfo (family, element bits, element, block, scale form) of a candidate format name."""
    from bitalloc.quant.formats.spec import parse_format

    return parse_format(fmt)
