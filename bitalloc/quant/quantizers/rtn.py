"""Round-to-nearest on the candidate's grid: the default quantizer, and the one estimators score."""
from __future__ import annotations

from bitalloc.quant.quantizers import register
from bitalloc.quant.quantizers.base import WeightQuantizer


@register("rtn")
class RtnQuantizer(WeightQuantizer):
    name = "rtn"
    torch_native = True  # torch weights are quantized on their device (the grid's encode takes tensors)

    def quantize(self, w, quant, X=None):
        return quant.encode(w)
