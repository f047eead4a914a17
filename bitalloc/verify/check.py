"""Allocation against model checks that need only the model's module names (and shapes), never
its weights: run them before a slow load.

    check_allocation(alloc, names)                   # names: list of module names
    check_allocation(alloc, shapes, group_size=128)  # shapes: {module: (out, in)}: also the units
                                                     # of each layer (group / channel granularity)

Loaders of any model folder get the names cheaply (config, safetensors index or header, GGUF
tensor list) and call `check_allocation`; the demo models use `zoo.demo.module_shapes`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from bitalloc.allocation import Allocation
from bitalloc.errors import BitallocError, bad
from bitalloc.quant.kvcache import is_cache_name
from bitalloc.units import Unit, carve


def check_allocation(allocation: Allocation, modules: Sequence[str] | Mapping[str, tuple[int, int]],
                     group_size: int = 128, where: str = "allocation") -> list[Unit] | None:
    """Refuse (one line) an allocation whose units name no module of the model: the allocation
    is for another model. With `modules` a {name: (out, in)} map, also refuse a layer whose units
    the allocation covers only in part (a partial profile, e.g. `measured --option units=40`),
    naming the missing units, and return the allocated layers' units in model order."""
    names = list(modules)
    known = set(names)
    by_layer: dict[str, set[str]] = {}
    for name in allocation.bits:
        if not is_cache_name(name):  # kv units are caches, not modules: apply.kv checks their layer
            by_layer.setdefault(name.split(":")[0], set()).add(name)
    unknown = [layer for layer in by_layer if layer not in known]
    if unknown:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise bad(f"{where} unit", sorted(by_layer[unknown[0]])[0],
                  f"names no module of the model ({len(unknown)} of {len(by_layer)} layers unknown; the model has "
                  f"{len(names)}: {shown}); the allocation is for another model")
    if not isinstance(modules, Mapping):
        return None
    units, missing = expected_units(allocation, modules, group_size)
    if missing:
        n_alloc = len(allocation.bits)
        raise BitallocError(
            f"{where} is partial: it covers {n_alloc} of the {n_alloc + len(missing)} units of its "
            f"{len({u.layer for u in units})} layers; missing {len(missing)}: {', '.join(missing[:4])}"
            f"{', ...' if len(missing) > 4 else ''} (a profile of a subset of units, e.g. --option units=N); "
            "pass --allow-partial BITS to keep the missing units at BITS")
    return units


def expected_units(allocation: Allocation, shapes: Mapping[str, tuple[int, int]],
                   group_size: int) -> tuple[list[Unit], list[str]]:
    """(every unit of the layers the allocation names, in model order; the names of those units
    that the allocation lacks). A layer's granularity is what its allocated names say (`layer`,
    `layer:gN`, `layer:cN`); mixing them in one layer, or a unit name that is not a unit of its
    layer at that granularity, is a one-line error."""
    by_layer: dict[str, set[str]] = {}
    for name in allocation.bits:
        by_layer.setdefault(name.split(":")[0], set()).add(name)
    units: list[Unit] = []
    missing: list[str] = []
    for layer in (n for n in shapes if n in by_layer):
        names = by_layer[layer]
        kinds = {"g" if ":g" in n else "c" if ":c" in n else "layer" for n in names}
        if len(kinds) > 1:
            raise bad("allocation units of layer", layer, "mix granularities (whole layer, :gN groups, :cN channels)")
        gran = {"g": "group", "c": "channel", "layer": "layer"}[kinds.pop()]
        rows, cols = shapes[layer]
        layer_units = carve([(layer, (int(rows), int(cols)), int(rows) * int(cols))], gran, group_size)
        expected = [u.name for u in layer_units]
        odd = sorted(names - set(expected))
        if odd:
            raise bad("allocation unit", odd[0], f"is not a unit of layer {layer!r} of shape {(rows, cols)} at "
                      f"{gran} granularity (group size {group_size}); is the allocation for another model?")
        missing += [n for n in expected if n not in names]
        units += layer_units
    return units, missing


def fill_partial(allocation: Allocation, shapes: Mapping[str, tuple[int, int]], group_size: int,
                 bits: int) -> Allocation:
    """The allocation with every missing unit of its layers at `bits` (default format). The
    filled names are kept in meta["filled_units"]: budgets are checked on the allocated units
    (what the solver chose them for), the filled ones reported apart."""
    from bitalloc.quant.formats.spec import format_for

    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise bad("--allow-partial", bits, "must be a bit-width from 1 to 16 for the missing units")
    _, missing = expected_units(allocation, shapes, group_size)
    if not missing:
        return allocation
    filled = {**allocation.bits, **{n: bits for n in missing}}
    formats = None
    if allocation.formats is not None:
        formats = {**allocation.formats, **dict.fromkeys(missing, format_for(None, bits).name)}
    meta = {**allocation.meta, "filled_units": missing, "filled_bits": bits}
    return replace(allocation, bits=filled, formats=formats, meta=meta)


def stated_budget_failures(allocation: Allocation, units: list[Unit], group_size: int,
                           symmetric: bool = False) -> list[str]:
    """The allocation's own average-bits budgets recomputed from its bits and the model's shapes
    (no weights): a failure line for each one its bits exceed."""
    import numpy as np

    from bitalloc.hwcost.memory import MemoryCost
    from bitalloc.solvers.compiled import fits
    from bitalloc.verify.budgets import profile_of

    filled = set(allocation.meta.get("filled_units", ()))
    records = [{"name": u.name, "layer": u.layer, "n_params": u.n_params, "shape": list(u.shape),
                "index": u.index, "axis": u.axis, "bits": allocation.bits[u.name],
                "format": allocation.format_of(u.name).name}
               for u in units if u.name in allocation.bits and u.name not in filled]
    if not records:
        return []
    profile, choice = profile_of(records, group_size, symmetric)
    out = []
    for model in (MemoryCost(), MemoryCost(count_overhead=True, group_size=group_size)):
        cap = allocation.budgets.get(model.resource)
        if cap is None:
            continue
        total = model.total(profile, choice)
        if not fits(total, cap):
            out.append(f"{model.resource} {total:.6g} > its budget {cap:g} over {int(np.sum(profile.n_params)):,} "
                       f"weights of {len(records)} units")
    return out
