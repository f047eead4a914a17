"""Number formats beyond integers: minifloat elements, per-group FP, OCP MX and NVFP4 block
formats, and the names of candidate formats (`spec.parse_format`). `bitalloc.quant.quantizer_for`
is the one entry point that turns a name into a quantizer."""
from bitalloc.quant.formats.spec import FAMILIES, FormatInfo, parse_format

__all__ = ["FAMILIES", "FormatInfo", "parse_format"]
