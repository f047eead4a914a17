"""Apply an Allocation to a torch model: each unit's weights quantized at its own bits, in place.

    q = bitalloc.apply(model, "a.json")            # the model's layers now hold fake-quantized weights
    q.save("q.safetensors")                        # the packed file (pack.py): levels, scales, zeros
    bitalloc.load_packed("q.safetensors").load_into(model)   # the same weights back

Like torchao's `quantize_`, no model surgery is asked of the user: every layer the allocation
names keeps its module and gets its weight rewritten. Each unit (a layer, `layer:gN`, `layer:cN`)
gets its grid from `bitalloc.quant.quantizer_for(format, group_size, symmetric, zero)` and its
levels from a WeightQuantizer (`bitalloc.quantizers`, `rtn` by default); quantizers that need
calibration inputs get each layer's inputs X, captured from the unquantized model, except
sequential ones (`gptq`), which quantize layer after layer in forward order on the inputs of the
already-quantized model (apply/sequential.py). Scales (and
float minimums) are rounded to float16, the precision the packed file stores, so the weights in
the model are exactly what the file decodes to.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bitalloc.allocation import Allocation
from bitalloc.errors import BitallocError, bad
from bitalloc.apply.encode import encode_unit
from bitalloc.quant.codec import UnitCode, write_weights
from bitalloc.quant.formats.spec import FormatInfo
from bitalloc.quant.integer import ZERO_KINDS, quantizer_for
from bitalloc.units import Unit, carve

INPUT_BYTES = 256 * 2**20  # calibration inputs held at once (layers are processed in chunks)


@dataclass(frozen=True)
class Settings:
    """quantizer: WeightQuantizer name; options: its options; group_size: input columns per
    scale (and per unit at group granularity); symmetric / zero: the grid (see quant.IntQuant);
    max_rows: calibration input rows kept per layer for quantizers that need inputs."""

    quantizer: str = "rtn"
    options: dict = field(default_factory=dict)
    group_size: int = 128
    symmetric: bool = False
    zero: str = "int"
    max_rows: int = 1024

    def __post_init__(self):
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
            raise bad("group_size", self.group_size, "must be a positive integer")
        if self.zero not in ZERO_KINDS:
            raise bad("zero", self.zero, f"allowed: {', '.join(ZERO_KINDS)}")
        if isinstance(self.max_rows, bool) or not isinstance(self.max_rows, int) or self.max_rows < 1:
            raise bad("max_rows", self.max_rows, "must be a positive integer")

    def to_json(self) -> dict:
        return {"name": self.quantizer, "options": dict(self.options), "group_size": self.group_size,
                "symmetric": self.symmetric, "zero": self.zero}

    def describe(self) -> str:
        form = "symmetric" if self.symmetric else f"asymmetric, {self.zero} zero-point"
        return f"{self.quantizer}, groups of {self.group_size} input columns, {form}, float16 scales"


@dataclass
class QuantizedModel:
    """The result of `apply`: model (its layers hold the fake-quantized weights), codes (one
    UnitCode per unit: levels, float16-exact scales and zeros), settings, allocation."""

    model: object
    codes: list[UnitCode]
    settings: Settings
    allocation: Allocation
    kv: dict | None = None  # the allocation's kv units with the model's cache geometry (apply/kv.py)

    def to_bytes(self) -> bytes:
        from bitalloc.quant.pack import to_bytes

        return to_bytes(self.codes, self.settings.to_json(), self.allocation.to_json(), self.kv)

    def save(self, path, force: bool = False) -> Path:
        """Write the packed safetensors file atomically (refuses to overwrite without `force`)."""
        from bitalloc.fileio import atomic_write, check_writable

        check_writable(path, force)
        return atomic_write(path, self.to_bytes(), force)

    def packed(self):
        """The packed form in memory (a pack.PackedModel), as `load_packed` would read it."""
        from bitalloc.quant.pack import PackedModel, tensors_of

        s = self.settings.to_json()
        return PackedModel(self.codes, tensors_of(self.codes, s), s, self.allocation.to_json(), kv=self.kv)


def as_allocation(allocation) -> Allocation:
    """An Allocation from an Allocation, a path to its JSON, or a plain {unit name: bits} map."""
    if isinstance(allocation, Allocation):
        return allocation
    if isinstance(allocation, (str, Path)):
        return Allocation.load(allocation)
    if isinstance(allocation, Mapping):
        return Allocation.from_json({"schema": "bitalloc.allocation/1", "bits": dict(allocation.items()),
                                     "status": "feasible", "solver": "manual"})
    raise bad("allocation", type(allocation).__name__, "must be an Allocation, a path to one, or a {unit: bits} map")


def plan(model, allocation: Allocation, settings: Settings, macs: dict | None = None) -> list[tuple[Unit, int, FormatInfo, object]]:
    """(unit, bits, format (`Allocation.format_of`), grid quantizer or None for float) per
    allocated unit, in model order.

    The allocation's unit names decide each layer's granularity (`layer`, `layer:gN` with
    `settings.group_size` columns per group, `layer:cN`); they must name exactly the units of
    layers of `model`, else the allocation is for another model (one-line error). KV-cache units
    (`<attention>.k_cache`, `.v_cache`) have no weights and are left to `apply.kv`."""
    from bitalloc.apply.kv import is_kv_name
    from bitalloc.models.layers import is_quantizable, shape2d

    mods = dict(model.named_modules())
    by_layer: dict[str, set[str]] = {}
    for name in allocation.bits:
        if is_kv_name(name, mods):  # a cache: recorded by apply.kv, nothing to quantize
            continue
        by_layer.setdefault(name.split(":")[0], set()).add(name)
    missing = sorted(set(by_layer) - set(mods))
    if missing:
        shown = ", ".join([n for n, m in mods.items() if is_quantizable(m)][:3])
        raise bad("allocation unit", sorted(by_layer[missing[0]])[0],
                  f"names no layer of this model (layers: {shown}, ...); is the allocation for another model?")
    units: list[Unit] = []
    for layer in (n for n in mods if n in by_layer):  # model order
        names = by_layer[layer]
        mod = mods[layer]
        w = getattr(mod, "weight", None)
        if not is_quantizable(mod) or w is None:
            raise bad("allocation unit", sorted(names)[0], f"{layer!r} is a {type(mod).__name__}, not a Linear/Conv layer")
        kinds = {"g" if ":g" in n else "c" if ":c" in n else "layer" for n in names}
        if len(kinds) > 1:
            raise bad("allocation units of layer", layer, "mix granularities (whole layer, :gN groups, :cN channels)")
        gran = {"g": "group", "c": "channel", "layer": "layer"}[kinds.pop()]
        shape = shape2d(mod)
        layer_units = carve([(layer, shape, int((macs or {}).get(layer, w.numel())))], gran, settings.group_size)
        expected = {u.name for u in layer_units}
        if names - expected:
            raise bad("allocation unit", sorted(names - expected)[0], f"is not a unit of layer {layer!r} of shape "
                      f"{shape2d} at {gran} granularity (group size {settings.group_size}); is the allocation for "
                      "another model?")
        if expected != names:
            miss = sorted(expected - names)
            raise BitallocError(f"allocation is partial: it covers {len(names)} of the {len(expected)} units of layer "
                                f"{layer!r}; missing {', '.join(miss[:4])}{', ...' if len(miss) > 4 else ''} (a profile "
                                "of a subset of units); fill them with bitalloc.verify.check.fill_partial "
                                "(CLI: --allow-partial BITS)")
        units += layer_units
    out = []
    for u in units:
        b = allocation.bits[u.name]
        fmt = allocation.format_of(u.name)
        if fmt.family == "ggml":
            raise bad(f"allocation unit {u.name!r} format", fmt.name, "is a GGML type: write it with `bitalloc export "
                      "--format gguf` and measure it with `bitalloc verify --runtime llama.cpp --gguf FILE`")
        try:
            quant = quantizer_for(fmt, settings.group_size, settings.symmetric, settings.zero)
        except BitallocError as e:
            raise BitallocError(f"allocation unit {u.name!r} at {b} bits: {e}") from None
        out.append((u, b, fmt, quant))
    return out


def apply(model, allocation, quantizer="rtn", *, group_size: int = 128, symmetric: bool = False,
          zero: str = "int", options: dict | None = None, calib=None, forward=None, macs: dict | None = None,
          inplace: bool = True, max_rows: int = 1024, progress=None, kv_config=None) -> QuantizedModel:
    """Quantize `model`'s layers as `allocation` says (see the module docstring).

    allocation: an Allocation, a path to its JSON, or {unit name: bits}; quantizer: a registered
    WeightQuantizer name (`rtn`, ...) or an instance; options: its options; group_size, symmetric,
    zero: the grid; calib: batches for quantizers that need inputs, run as `forward(model, batch)`
    (default `model(batch)`, `model(**batch)` for a dict); macs: layer → MACs per inference for
    the unit records (default: weight elements); inplace: False quantizes a deep copy;
    progress(done, total) after each unit; kv_config: the KV quantization settings recorded for the
    allocation's kv units (a `KVQuantConfig` or its dict; default: the allocation's meta["kv"]). Everything is checked, and every unit encoded, before
    any weight changes (a sequential quantizer writes layer after layer and restores the original
    weights if it fails).
    """
    from bitalloc.apply.kv import kv_records
    from bitalloc.models.layers import weight2d
    from bitalloc.quant.quantizers import get_quantizer
    from bitalloc.quant.quantizers.base import WeightQuantizer

    if isinstance(quantizer, WeightQuantizer):
        wq, qname = quantizer, quantizer.name
    else:
        wq, qname = get_quantizer(quantizer, **(options or {})), quantizer
    settings = Settings(qname, dict(options or {}), group_size, symmetric, zero, max_rows)
    alloc = as_allocation(allocation)
    steps = plan(model, alloc, settings, macs)
    kv = kv_records(model, alloc, kv_config)
    if wq.needs_inputs and calib is None:
        raise bad("calib", None, f"quantizer {qname!r} needs calibration inputs: pass calib= (a list of batches)")
    if not inplace:
        model = copy.deepcopy(model)
    mods = dict(model.named_modules())
    codes: list[UnitCode] = []
    if getattr(wq, "sequential", False):  # gptq: layer by layer on the already-quantized model's inputs
        from bitalloc.apply.sequential import sequential_codes

        saved = {u.layer: mods[u.layer].weight.detach().clone() for u, *_ in steps}
        try:
            codes = sequential_codes(model, steps, wq, settings, calib, forward, progress)
        except BaseException:
            import torch

            with torch.no_grad():
                for layer, w in saved.items():
                    mods[layer].weight.copy_(w)
            raise
        steps = []
    for chunk in _chunks(steps, mods, settings, wq.needs_inputs) if steps else ():
        X = capture_inputs(model, sorted({u.layer for u, *_ in chunk}), calib, forward, max_rows) if wq.needs_inputs else {}
        W, layer = None, None
        for u, b, fmt, quant in chunk:
            if u.layer != layer:  # on the layer's device: integer grids quantize there (RTN)
                W, layer = weight2d(mods[u.layer]).detach().float(), u.layer
            codes.append(encode_unit(u, b, fmt, quant, u.block(W), wq, _block_inputs(u, X.get(u.layer))))
            if progress is not None:
                progress(len(codes), len(steps))
        X.clear()
    write_weights(model, codes, settings.to_json())
    return QuantizedModel(model, codes, settings, alloc, kv)


def _chunks(steps, mods, settings: Settings, needs_inputs: bool):
    """Steps split so that each chunk's calibration inputs fit INPUT_BYTES (one chunk without inputs)."""
    if not needs_inputs:
        yield steps
        return
    chunk, size, seen = [], 0, set()
    for step in steps:
        layer = step[0].layer
        if layer not in seen:
            cost = settings.max_rows * _in_features(mods[layer]) * 4
            if chunk and size + cost > INPUT_BYTES:
                yield chunk
                chunk, size, seen = [], 0, set()
            seen.add(layer)
            size += cost
        chunk.append(step)
    if chunk:
        yield chunk


def _in_features(mod) -> int:
    from bitalloc.models.layers import shape2d

    return shape2d(mod)[1]


def _block_inputs(u: Unit, X):
    """The calibration inputs a unit's block multiplies: its columns for a group, all for a channel."""
    if X is None or u.index is None or u.axis == 0:
        return X
    a, b = u.index
    return X[:, a:b]


def capture_inputs(model, layers: list[str], calib, forward=None, max_rows: int = 1024) -> dict[str, np.ndarray]:
    """layer → (rows, in_features·kh·kw) float32 inputs seen over `calib` (evenly thinned to at
    most `max_rows`; conv inputs unfolded into patches), from one pass of the model as it is."""
    import torch

    from bitalloc.apply.sequential import layer_rows

    mods = dict(model.named_modules())
    seen: dict[str, list] = {n: [] for n in layers}

    def hook(mod, args, name):
        seen[name].append(layer_rows(mod, args[0]).cpu())

    handles = [mods[n].register_forward_pre_hook(lambda m, a, n=n: hook(m, a, n)) for n in layers]
    run = forward or _default_forward
    try:
        with torch.no_grad():
            for batch in calib:
                run(model, batch)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n, xs in seen.items():
        if not xs:
            raise BitallocError(f"calibration: layer {n!r} saw no inputs (does forward() run it?)")
        X = torch.cat(xs).numpy()
        if len(X) > max_rows:
            X = X[np.linspace(0, len(X) - 1, max_rows).round().astype(int)]
        out[n] = np.ascontiguousarray(X, dtype=np.float32)
    return out


def _default_forward(model, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    return model(batch)
