"""Units: what gets one bit-width. A whole layer, one group of input columns, or one output channel.

Weights are seen as 2-D (out_features, in_features); a conv kernel (out, in, kh, kw) is flattened
to (out, in·kh·kw). Group g of a layer holds input columns [g·G, (g+1)·G) of every row, as in
per-group quantization (SliM-LLM, GPTQ); channel c holds row c.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable

from bitalloc.columns import Names
from bitalloc.errors import bad

GRANULARITIES = ("layer", "group", "channel")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # C0/C1 controls, line/paragraph separators


def check_names(names, field: str = "unit name") -> None:
    """Refuse a name holding a control character (newline, tab, escape, NUL...): names are printed
    in tables and one-line errors, written to CSV and GGUF keys. One regex pass over all names
    (over each batch of a columnar `Names`: no list of every name at once)."""
    if isinstance(names, Names):
        for batch in names.batches():
            check_names(batch, field)
        return
    names = names if isinstance(names, list) else list(names)
    if _CONTROL.search("/".join(names)) is None:
        return
    bad_name = next(s for s in names if _CONTROL.search(s))
    raise bad(field, bad_name, "must not contain control characters (newline, tab, escape, ...)")


@dataclass(frozen=True)
class Unit:
    """One quantizable unit.

    name: stable id (`model.layers.3.mlp.down_proj`, `...:g12`, `...:c5`); layer: the module it
    belongs to; kind: `weight` (later `activation`, `kv`); n_params: weights in the unit; macs:
    multiply-accumulates per inference (per token for LLMs); shape: the unit's own 2-D block
    (rows, cols) of its layer's weight; index: (start, stop) of the input columns (group) or rows
    (channel) of the layer that it covers; axis: 1 for a group (input columns), 0 for a channel
    (output rows), None for a whole layer.
    """

    name: str
    layer: str = ""
    kind: str = "weight"
    n_params: int = 0
    macs: int = 0
    shape: tuple[int, ...] = ()
    index: tuple[int, int] | None = None
    axis: int | None = None
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise bad("unit name", self.name, "must be a non-empty string")
        check_names([self.name])
        if not isinstance(self.layer, str):
            raise bad(f"unit {self.name!r} layer", self.layer, "must be a string")
        check_names([self.layer], "unit layer")
        if not self.layer:
            object.__setattr__(self, "layer", self.name.split(":")[0])
        if isinstance(self.n_params, bool) or not isinstance(self.n_params, int) or self.n_params <= 0:
            raise bad(f"unit {self.name!r} n_params", self.n_params, "must be a positive integer")
        if isinstance(self.macs, bool) or not isinstance(self.macs, int) or self.macs < 0:
            raise bad(f"unit {self.name!r} macs", self.macs, "must be a non-negative integer")

    def n_groups(self, group_size: int) -> int:
        """Quantization groups of `group_size` consecutive input columns per row (ragged last group counts)."""
        rows, cols = _rows_cols(self.shape, self.n_params)
        return rows * math.ceil(cols / group_size)

    def block(self, w):
        """This unit's part of its layer's 2-D array `w` (out, in) (numpy or torch)."""
        if self.index is None:
            return w
        a, b = self.index
        return w[a:b] if self.axis == 0 else w[:, a:b]

    def to_json(self) -> dict:
        d = {"name": self.name, "layer": self.layer, "n_params": self.n_params, "macs": self.macs}
        if self.kind != "weight":
            d["kind"] = self.kind
        if self.shape:
            d["shape"] = list(self.shape)
        if self.index is not None:
            d["index"] = list(self.index)
            d["axis"] = self.axis
        d.update(self.extra)
        return d


def _rows_cols(shape: tuple[int, ...], n_params: int) -> tuple[int, int]:
    if len(shape) >= 2:
        return int(shape[0]), int(math.prod(shape[1:]))
    return 1, n_params


def check_granularity(granularity: str, group_size: int) -> None:
    """`granularity` one of GRANULARITIES and `group_size` a positive int, or a one-line error."""
    if granularity not in GRANULARITIES:
        raise bad("granularity", granularity, f"allowed: {', '.join(GRANULARITIES)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise bad("group_size", group_size, "must be a positive integer")


def carve(layers: Iterable[tuple[str, tuple[int, ...], int]], granularity: str = "layer",
          group_size: int = 128) -> list[Unit]:
    """Split layers into units.

    layers: (name, weight shape, macs per inference) for each quantizable layer, in model order.
    granularity: `layer` (one unit per layer), `group` (one per `group_size` input columns) or
    `channel` (one per output row). MACs are shared out in proportion to parameters.
    """
    check_granularity(granularity, group_size)
    units: list[Unit] = []
    for name, shape, macs in layers:
        shape = tuple(int(s) for s in shape)
        rows, cols = _rows_cols(shape, math.prod(shape))
        n = rows * cols
        if granularity == "layer":
            units.append(Unit(name, name, n_params=n, macs=int(macs), shape=(rows, cols)))
        elif granularity == "group":
            for g, start in enumerate(range(0, cols, group_size)):
                stop = min(cols, start + group_size)
                units.append(Unit(f"{name}:g{g}", name, n_params=rows * (stop - start),
                                  macs=int(macs) * (stop - start) // cols, shape=(rows, stop - start),
                                  index=(start, stop), axis=1))
        else:
            for c in range(rows):
                units.append(Unit(f"{name}:c{c}", name, n_params=cols, macs=int(macs) // rows,
                                  shape=(1, cols), index=(c, c + 1), axis=0))
    return units


def model_layers(model, filter_fn=None) -> list[tuple[str, tuple[int, ...], int]]:
    """(name, 2-D weight shape (out, in·kh·kw), MACs per position) of each Linear/Conv layer
    (transformers Conv1D included) of a torch model.

    filter_fn(name, module) -> bool picks layers (default: every Linear and Conv). Conv MACs
    are per output position; the caller multiplies by spatial size when it knows it.
    """
    from bitalloc.weights import is_quantizable, shape2d

    out = []
    for name, mod in model.named_modules():
        if not is_quantizable(mod):
            continue
        if filter_fn is not None and not filter_fn(name, mod):
            continue
        shape = shape2d(mod)
        out.append((name, shape, int(mod.weight.numel())))
    return out


def units_of_model(model, granularity: str = "layer", group_size: int = 128, filter_fn=None) -> list[Unit]:
    """Carve a torch model's Linear/Conv layers into units (see `carve`)."""
    return carve(model_layers(model, filter_fn), granularity, group_size)
