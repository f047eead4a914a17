"""Apply an allocation to a real model: quantize each unit at its bits and pack the result."""
from bitalloc.apply.quantize import QuantizedModel, apply

__all__ = ["QuantizedModel", "apply"]
