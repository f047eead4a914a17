"""Per-layer facts the hardware cost models share, recovered from a profile's unit columns.

A unit is a whole layer, a group of input columns, or one output channel (bitalloc/units.py).
Cost models price a layer at one candidate and give each of its units its share
(n_params_u / n_params_layer), which is exact at layer granularity and, for channel units, the
fraction of the layer's weights, outputs and MACs that the unit owns.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LayerView:
    """names: (L,) layers in first-appearance order; of_unit: (N,) layer index of each unit;
    share: (N,) n_params_u / n_params_layer; n_params, rows, cols, macs: (L,) per layer (rows =
    output channels, cols = inputs per channel); positions: (L,) MACs per weight (output
    positions per inference: 1 for a linear on one token, H·W for a conv)."""

    names: list[str]
    of_unit: np.ndarray
    share: np.ndarray
    n_params: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    macs: np.ndarray

    @property
    def positions(self) -> np.ndarray:
        return self.macs / self.n_params

    def index(self) -> dict[str, int]:
        return {s: j for j, s in enumerate(self.names)}


def layer_view(profile) -> LayerView:
    names: dict[str, int] = {}
    of_unit = np.array([names.setdefault(s, len(names)) for s in profile.layers], dtype=np.int64)
    L = len(names)
    n = np.bincount(of_unit, weights=profile.n_params, minlength=L)
    macs = np.bincount(of_unit, weights=profile.macs, minlength=L)
    rows = np.zeros(L)
    cols = np.zeros(L)
    for j in range(L):
        idx = np.flatnonzero(of_unit == j)
        r, c = profile.rows[idx], profile.cols[idx]
        if len(idx) > 1 and (r == 1).all() and (c == c[0]).all():
            rows[j], cols[j] = r.sum(), c[0]  # one unit per output channel
        else:
            rows[j], cols[j] = r[0], c.sum()  # the whole layer, or groups of input columns
    return LayerView(list(names), of_unit, profile.n_params / n[of_unit], n, rows, cols, macs)
