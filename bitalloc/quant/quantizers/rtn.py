"""Round-to-nearest on the candidate's grid: the default quantizer, and the one estimators score."""
from __future__ import annotations

from bitalloc.quant.quantizers import register
from bitalloc.quant.quantizers.base import WeightQuantizer


@register("rtn")
class RtnQuantizer(WeightQuantizer):
    name = "rtn"

    def quantize(self, w, quant, X=None):
        return quant.encode(w)
