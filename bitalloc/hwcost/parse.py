"""Budgets from text: `latency_ms<=3.5` → Constraint(cost model, 3.5).

RESOURCES maps each resource name (its unit is part of the name) to a registered cost model and
its options. Device-bound models (latency, mcu, fpga) take the target `device` and, for latency
and mcu, a measured `device_profile`; extra `options` (e.g. reuse_factor) go to every model whose
constructor takes them, and an option no model takes is an error.
"""
from __future__ import annotations

import inspect
import math
import re

from bitalloc.errors import bad

RESOURCES = {
    **{f"latency_{u}": ("latency", {"unit": u}) for u in ("ms", "us", "s")},
    **{f"{m}_{u}": ("mcu", {"metric": m, "unit": u}) for m in ("flash", "sram") for u in ("kb", "b", "mb")},
    **{f"{u}cycles": ("mcu", {"metric": "cycles", "unit": u}) for u in ("", "k", "m")},
    **{m: ("fpga", {"metric": m}) for m in ("lut", "dsp", "bram")},
    "klut": ("fpga", {"metric": "lut", "unit": "k"}),
    "avg_bits": ("memory", {}),
    "avg_bits_with_overhead": ("memory", {"count_overhead": True}),
    "kv_bytes_per_token": ("kv_memory", {}),
}
DEVICE_MODELS = ("latency", "mcu", "fpga")


def model_options(cls, options: dict | None) -> dict:
    """The entries of `options` that `cls.__init__` takes (by name)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in (options or {}).items() if k in params}


def parse_constraint(text: str, device: str | None = None, device_profile=None, options: dict | None = None,
                     field: str = "--constraint"):
    """`NAME<=NUMBER` → Constraint(cost model, budget); the unit is part of NAME (`flash_kb`: KiB).
    device / device_profile go to the device-bound models; `options` to whichever model takes them."""
    from bitalloc.hwcost import COST_MODELS
    from bitalloc.hwcost.constraint import Constraint

    m = re.fullmatch(r"\s*([A-Za-z_]+)\s*<=\s*(\S+)\s*", text)
    if not m:
        raise bad(field, text, f"must be RESOURCE<=NUMBER, e.g. latency_ms<=3.5; resources: {', '.join(RESOURCES)}")
    name, num = m.group(1).lower(), m.group(2)
    if name not in RESOURCES:
        raise bad(f"{field} resource", name, f"allowed (the unit is part of the name): {', '.join(RESOURCES)}")
    try:
        budget = float(num)
    except ValueError:
        budget = float("nan")
    if not math.isfinite(budget) or budget < 0:
        raise bad(f"{field} {name} budget", num, "must be a finite number >= 0")
    model, opts = RESOURCES[name]
    cls = COST_MODELS.get(model)
    opts = dict(opts)
    if model in DEVICE_MODELS:
        if device is None and device_profile is None:
            from bitalloc.hwcost.device.devices import device_names

            raise bad("--target", None, f"resource {name} needs a hardware target; allowed: {', '.join(device_names())}")
        opts["device"] = device
        if device_profile is not None and model != "fpga":
            opts["device_profile"] = device_profile
    opts.update(model_options(cls, options))
    return Constraint(cls(**opts), budget)


def parse_constraints(texts, device: str | None = None, device_profile=None, options: dict | None = None,
                      target_spec=None) -> list:
    """Constraints of every `NAME<=NUMBER` in `texts`; `device_profile`: a path or DeviceProfile;
    `target_spec`: a device spec file (the schema of bitalloc/data/devices/*.json) for a device
    bitalloc has no spec of. Every option must be taken by at least one constraint's model."""
    from bitalloc.hwcost.device.device_profile import DeviceProfile

    if isinstance(device_profile, (str, bytes)) or hasattr(device_profile, "__fspath__"):
        device_profile = DeviceProfile.load(device_profile, target_spec=target_spec)
    elif target_spec is not None:
        if device_profile is not None:
            device_profile = device_profile.with_spec(target_spec)
        else:
            from bitalloc.hwcost.device.devices import register_spec

            device = register_spec(target_spec, device)
    options = dict(options or {})
    constraints = [parse_constraint(t, device, device_profile, options) for t in texts]
    takes = {p for c in constraints for p in inspect.signature(type(c.cost).__init__).parameters} - {"self"}
    for key in options:
        if key not in takes:
            raise bad("--cost-option", key, f"no --constraint's cost model takes it; they take: {', '.join(sorted(takes)) or 'none'}")
    return constraints


def fit_reports(constraints) -> dict[str, str]:
    """resource → one line on how its measured device profile was used (after costs were built)."""
    return {c.cost.resource: f"{c.cost.device_profile.path} on {c.cost.device.name}: {c.cost.fit.text()}"
            for c in constraints if getattr(c.cost, "fit", None) is not None}
