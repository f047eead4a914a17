"""The KV-cache units of a packed file checked against the allocation, and turned into what the
budget recheck prices: unit records (kind `kv`, n_params = elements cached per token) and measured
bits per token.

The packed `kv` metadata (bitalloc/apply/kv.py) holds each kv unit's format and bits, its geometry
read from the model's config, and the KV quantization settings. Failures (one line each): a kv unit
packed at other bits or another format than the allocation says, a kv unit of the allocation with
no record, a geometry that is not the one the allocation was solved for (`meta["kv_elements"]`,
written by the solver from the profile's units), and KV quantization settings that differ from the
profile's (`meta["kv"]`).
"""
from __future__ import annotations

import contextlib

from bitalloc.allocation import Allocation
from bitalloc.quant.codec import record_format
from bitalloc.quant.kvcache import KVQuantConfig, is_cache_name, unit_bits_per_token


def kv_failures(kv: dict | None, alloc: Allocation, weight_units: set[str]) -> list[str]:
    """One line per disagreement between the packed kv records and `alloc` (module docstring).
    weight_units: the names of the packed weight units (the allocation's other units)."""
    records = {r["name"]: r for r in (kv or {}).get("units", [])}
    out = []
    for name in alloc.bits:
        if name not in records and name not in weight_units and is_cache_name(name):
            out.append(f"kv unit {name}: in the allocation but the packed file has no record of it (apply it again)")
    solved = alloc.meta.get("kv_elements", {})
    for name, r in records.items():
        if name not in alloc.bits:
            out.append(f"kv unit {name}: in the packed file but not in the allocation")
            continue
        want, got = alloc.format_of(name), record_format(r)
        if want != got:
            out.append(f"kv unit {name}: recorded as {got.name} ({got.bits} bits), the allocation says "
                       f"{want.name} ({want.bits} bits)")
        if name in solved and int(solved[name]) != int(r["elements"]):
            out.append(f"kv unit {name}: the model caches {r['elements']} elements per token ({r['n_kv_heads']} kv "
                       f"heads x {r['head_dim']} head_dim), the allocation was solved for {solved[name]}")
    if records and alloc.meta.get("kv") is not None:
        stored, profiled = KVQuantConfig.from_meta({"kv": kv["config"]}), KVQuantConfig.from_meta(alloc.meta)
        for key, value in stored.to_meta().items():
            if value != getattr(profiled, key):
                out.append(f"kv quantization {key}: the file has {value!r}, the allocation's profile was estimated "
                           f"with {getattr(profiled, key)!r}")
    return out


def kv_rows(kv: dict | None) -> tuple[list[dict], list[dict]]:
    """(budget rows {name, bits, n_params, level_bits, meta_bits, max_levels, kind} with bits per
    token of context: elements · bits and the scale/zero share, unit records for `profile_of`)."""
    if not kv:
        return [], []
    config = KVQuantConfig.from_meta({"kv": kv["config"]})
    rows, records = [], []
    for r in kv["units"]:
        fmt, n = record_format(r), int(r["elements"])
        quantized = fmt.family != "float"
        per_token = unit_bits_per_token(n, fmt.bits, quantized, config.axis(r["cache"]), config)
        rows.append({"name": r["name"], "bits": fmt.bits, "n_params": n, "level_bits": n * fmt.bits,
                     "meta_bits": per_token - n * fmt.bits, "max_levels": None, "kind": "kv"})
        records.append({"name": r["name"], "layer": r["layer"], "kind": "kv", "n_params": n, "macs": int(r["macs"]),
                        "shape": [1, n], "index": None, "axis": None, "bits": fmt.bits, "format": fmt.name})
    return rows, records


def kv_cache_quantized(model, kv: dict | None):
    """A context in which `model`'s KV cache is fake-quantized as the packed kv records say (a
    no-op without kv units), for the allocation's quality row."""
    if not kv:
        return contextlib.nullcontext()
    from bitalloc.quant.kvcache import kv_quantized

    plan = {r["name"]: r["format"] for r in kv["units"]}
    return kv_quantized(model, plan, KVQuantConfig.from_meta({"kv": kv["config"]}))
