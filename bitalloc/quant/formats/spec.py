"""Candidate format names → what they are (family, element bits, block, scale form).

Names (case-sensitive): `int{b}` (b = 1..16) and `int{b}_g{N}` (integer, group N overrides the
estimator's group size); `fp8_e4m3`, `fp8_e5m2`, `fp6_e2m3`, `fp6_e3m2`, `fp4_e2m1` (minifloat
with a per-group FP32 absmax scale; `_g{N}` allowed); `mxfp4`, `mxfp6_e2m3`, `mxfp6_e3m2`,
`mxfp8_e4m3`, `mxfp8_e5m2` (OCP MX; `mxfp6` = E2M3, `mxfp8` = E4M3); `nvfp4`; `fp16`, `bf16`,
`fp32` (kept in floating point; `f16`/`f32` are aliases); the GGML types `q2_k`, `q3_k`, `q4_0`,
`q4_1`, `q4_k`, `q5_0`, `q5_1`, `q5_k`, `q6_k`, `q8_0` (llama.cpp's runtime formats, formats/ggml.py).
A bare bit-width `4` means `int4` (`16` means `fp16`).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from bitalloc.errors import bad

FAMILIES = ("int", "fp", "mx", "nvfp4", "float", "ggml", "external")
KEPT = {"fp16": 16, "bf16": 16, "fp32": 32}
ALIASES = {"f16": "fp16", "f32": "fp32"}
MX_DEFAULT = {4: "e2m1", 6: "e2m3", 8: "e4m3"}
_ELEMENT_BITS = {"e2m1": 4, "e2m3": 6, "e3m2": 6, "e4m3": 8, "e5m2": 8}
_INT = re.compile(r"int(\d+)(?:_g(\d+))?")
_FP = re.compile(r"fp(\d+)_(e\dm\d)(?:_g(\d+))?")
_MX = re.compile(r"mxfp(\d+)(?:_(e\dm\d))?")
KNOWN = ("int1..int16 (optionally _g<N>), fp8_e4m3, fp8_e5m2, fp6_e2m3, fp6_e3m2, fp4_e2m1 (optionally _g<N>), "
         "mxfp4, mxfp6[_e2m3|_e3m2], mxfp8[_e4m3|_e5m2], nvfp4, fp16, bf16, fp32, "
         "GGML types q2_k, q3_k, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0")


@dataclass(frozen=True)
class FormatInfo:
    """name: the label; family: one of FAMILIES (`int`, `fp` per-group minifloat, `mx` OCP MX,
    `nvfp4`, `float` kept unquantized, `external`: a label bitalloc does not know, from an external
    profile: known by name and nominal bits only, so anything that needs its structure refuses it
    by name instead of guessing); bits: bits per element (the candidate's nominal bits);
    element: minifloat element name (`e2m1` ...) or None; block: input columns per scale fixed by
    the format (MX 32, NVFP4 16, `_g<N>`), or None (the estimator's group size); scale: how the
    scale is stored (`fp16 scale + fp16/int zero`, `fp32`, `e8m0`, `e4m3 + fp32 per tensor`);
    family `ggml`: a GGML tensor type (block = weights per block, 32 or 256)."""

    name: str
    family: str
    bits: int
    element: str | None = None
    block: int | None = None
    scale: str | None = None


def default_format(bits: int) -> str:
    """Number format a bare bit-width means: int{b}, except 16 and 32 (kept in floating point)."""
    return {16: "fp16", 32: "fp32"}.get(bits, f"int{bits}")


def parse_format(fmt) -> FormatInfo:
    """FormatInfo of a candidate name (or bare bit-width; a FormatInfo is returned as it is);
    raises a one-line error if unknown."""
    if isinstance(fmt, FormatInfo):
        return fmt
    if isinstance(fmt, int) and not isinstance(fmt, bool) or isinstance(fmt, str) and fmt.isdigit():
        b = int(fmt)
        fmt = "fp16" if b == 16 else "fp32" if b == 32 else f"int{b}"
    if not isinstance(fmt, str):
        raise bad("format", fmt, f"known formats: {KNOWN}")
    fmt = ALIASES.get(fmt, fmt)
    if fmt in KEPT:
        return FormatInfo(fmt, "float", KEPT[fmt])
    from bitalloc.quant.formats.ggml import GGML_FORMATS

    if fmt in GGML_FORMATS:
        from bitalloc.quant.formats.ggml import GgmlType

        t = GgmlType(GGML_FORMATS[fmt][0])
        return FormatInfo(fmt, "ggml", t.bits, None, t.block, f"GGML {t.qtype} blocks ({t.bpw:g} bits/weight)")
    if m := _INT.fullmatch(fmt):
        b, g = int(m[1]), _group(m[2], fmt)
        if not 1 <= b <= 16:
            raise bad("format", fmt, "integer formats take 1 to 16 bits")
        return FormatInfo(fmt, "int", b, None, g, "fp16 scale (+ zero point when asymmetric)")
    if m := _FP.fullmatch(fmt):
        if _ELEMENT_BITS.get(m[2]) != int(m[1]):
            raise bad("format", fmt, "minifloat formats: fp8_e4m3, fp8_e5m2, fp6_e2m3, fp6_e3m2, fp4_e2m1")
        return FormatInfo(fmt, "fp", int(m[1]), m[2], _group(m[3], fmt), "fp32 absmax per group")
    if m := _MX.fullmatch(fmt):
        b, el = int(m[1]), m[2] or MX_DEFAULT.get(int(m[1]))
        if el is None or _ELEMENT_BITS.get(el) != b:
            raise bad("format", fmt, "MX formats: mxfp4, mxfp6_e2m3, mxfp6_e3m2, mxfp8_e4m3, mxfp8_e5m2")
        return FormatInfo(fmt, "mx", b, el, 32, "e8m0 per 32")
    if fmt == "nvfp4":
        return FormatInfo(fmt, "nvfp4", 4, "e2m1", 16, "e4m3 per 16 + fp32 per tensor")
    raise bad("format", fmt, f"known formats: {KNOWN}")


def parse_candidate(fmt, bits: int) -> FormatInfo:
    """FormatInfo of a profile candidate: `parse_format`, or for a label bitalloc does not know an
    explicit `external` FormatInfo with the candidate's nominal bits (never a guessed family)."""
    from bitalloc.errors import BitallocError

    try:
        return parse_format(fmt)
    except BitallocError:
        return FormatInfo(str(fmt), "external", int(bits))


def format_for(label: str | None, bits: int) -> FormatInfo:
    """The one FormatInfo of a candidate or an allocated unit of `bits` nominal bits: its `label`
    parsed (`parse_candidate`: a label bitalloc does not know is an explicit `external` format), or,
    for a bits-only entry (label None), `default_format(bits)` — explicitly, and strictly: a width
    with no default format (int17 ... int31) is an error, never an `external` label. Cached: every
    consumer of the same (label, bits) gets the same object. A known format whose element bits are
    not `bits` is a one-line error naming the label, the bits and what is allowed. Profiles
    (`Profile.format_objects`) and allocations (`Allocation.format_of`) both use it."""
    bits = int(bits)
    info = _format_for(default_format(bits) if label is None else label, bits)
    if label is None and info.family == "external":
        parse_format(info.name)  # raises: why this width has no format
    return info


@functools.lru_cache(maxsize=None)
def _format_for(label: str, bits: int) -> FormatInfo:
    info = parse_candidate(label, bits)
    if info.bits != bits:
        raise bad("format", info.name, f"has {info.bits}-bit elements but the bits given are {bits}; allowed: a "
                  f"format of {bits}-bit elements (e.g. {default_format(bits)}), or bits {info.bits}")
    return info


def require(info: FormatInfo, what: str) -> FormatInfo:
    """`info`, or a one-line error when it is an external label (`what` needs its structure)."""
    if info.family == "external":
        raise bad("format", info.name, f"is not a bitalloc format, so {what} is unknown; known formats: {KNOWN}")
    return info


def _group(text: str | None, fmt: str) -> int | None:
    if text is None:
        return None
    if int(text) < 1:
        raise bad("format", fmt, "the group size after _g must be a positive integer")
    return int(text)
