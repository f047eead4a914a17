"""WeightQuantizer: how one unit's weights become integer levels on its candidate's grid.

The grid (format, group size, zero-point form) is fixed by the candidate's quantizer from
`bitalloc.quant.quantizer_for`; a WeightQuantizer only chooses the levels (and may refit the
scales), so every quantizer's output is packed, counted and verified the same way.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class WeightQuantizer(ABC):
    """`quantize(w, quant, X) -> (q, scale, zero)` in `quant.encode`'s convention.

    w: (out_features, in_features) float32; quant: the candidate's quantizer (e.g. IntQuant);
    X: (n_samples, in_features) float32 calibration inputs of this layer, given only when
    `needs_inputs` is True. A `sequential` quantizer (gptq) also has
    `quantize_layer(w, cells, H) -> (w_hat, codes)`: a whole layer at once (its units' grids as
    Cells) from the layer's input Hessian, and `apply` runs it layer by layer in forward order on
    the inputs of the already-quantized model (bitalloc/apply/sequential.py).
    """

    name = "quantizer"
    needs_inputs = False
    sequential = False

    @abstractmethod
    def quantize(self, w: np.ndarray, quant, X: np.ndarray | None = None):
        """(q, scale, zero) with `quant.decode(q, scale, zero)` the quantized weight."""
