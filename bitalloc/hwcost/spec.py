"""CostSpec: a cost model as data, so an Allocation can say exactly what each budget was priced
with and `verify` can rebuild the same model.

    spec = LatencyCost(device="cortex-m7").spec()     # CostSpec(name="latency", options={"unit": "ms"}, device="cortex-m7")
    d = spec.to_json()                                 # plain JSON (stored in the allocation)
    model = CostSpec.from_json(d).build()              # == get_cost_model("latency", device="cortex-m7")

Fields: `name` — the registered cost model (`bitalloc.hwcost.COST_MODELS`), or `module:Class`
for a model defined outside bitalloc; `options` — its constructor options (JSON values);
`device` — the target's name (device-bound models); `device_spec` — the target's spec as JSON
when it came from a spec file (`--target-spec`), not a built-in one; `device_profile` — the path
of the measured device profile and `device_profile_sha256` its digest (header and rows), so a
profile edited after the solve is refused when the model is rebuilt.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from bitalloc.errors import bad

FIELDS = ("name", "options", "device", "device_spec", "device_profile", "device_profile_sha256")


@dataclass(frozen=True)
class CostSpec:
    name: str
    options: dict = field(default_factory=dict)
    device: str | None = None
    device_spec: dict | None = None
    device_profile: str | None = None
    device_profile_sha256: str | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise bad("cost spec name", self.name, "must name a registered cost model or module:Class")
        if not isinstance(self.options, dict):
            raise bad(f"cost spec {self.name} options", self.options, "must be an object")
        try:
            json.dumps(self.options, allow_nan=False)
        except (TypeError, ValueError):
            raise bad(f"cost spec {self.name} options", sorted(self.options), "must be JSON values") from None
        if (self.device_profile is None) != (self.device_profile_sha256 is None):
            raise bad(f"cost spec {self.name} device_profile_sha256", self.device_profile_sha256,
                      "goes with device_profile (both or neither)")

    def to_json(self) -> dict:
        d = {"name": self.name, "options": dict(self.options)}
        for k in FIELDS[2:]:
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return d

    @classmethod
    def from_json(cls, d: dict, where: str = "cost spec") -> "CostSpec":
        if not isinstance(d, dict):
            raise bad(where, d, "must be an object with " + ", ".join(FIELDS))
        unknown = sorted(set(d) - set(FIELDS))
        if unknown:
            raise bad(f"{where} field", unknown[0], f"allowed: {', '.join(FIELDS)}")
        if "name" not in d:
            raise bad(f"{where} name", None, "is required")
        return cls(**d)

    def build(self):
        """The cost model this spec describes (a measured device profile is re-read and must
        still have the digest it had)."""
        import importlib

        from bitalloc.hwcost import COST_MODELS

        if ":" in self.name:
            mod, _, qual = self.name.partition(":")
            try:
                cls = getattr(importlib.import_module(mod), qual)
            except (ImportError, AttributeError):
                raise bad("cost spec name", self.name, "no such module:Class") from None
        else:
            cls = COST_MODELS.get(self.name)
        return cls.from_spec_options(self)


def spec_of(model) -> CostSpec:
    """The CostSpec of `model` from the options it was constructed with (CostModel records them)."""
    from bitalloc.hwcost import COST_MODELS

    cls = type(model)
    name = getattr(cls, "name", None)
    try:
        registered = isinstance(name, str) and COST_MODELS.get(name) is cls
    except Exception:  # noqa: BLE001 - an unregistered name
        registered = False
    if not registered:
        name = f"{cls.__module__}:{cls.__qualname__}"
    opts = dict(getattr(model, "_init_options", {}))
    opts.pop("device", None)
    opts.pop("device_profile", None)
    opts = {k: _jsonable(v, f"cost model {name} option {k}") for k, v in opts.items()}
    kw = {}
    dev = getattr(model, "device", None)
    if dev is not None and hasattr(dev, "name"):
        kw["device"] = dev.name
        if getattr(dev, "source", None) is not None:
            kw["device_spec"] = dev.source
    dp = getattr(model, "device_profile", None)
    if dp is not None:
        kw["device_profile"] = str(dp.path)
        kw["device_profile_sha256"] = dp.digest()
    return CostSpec(name, opts, **kw)


def _jsonable(v, field: str):
    import dataclasses

    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return dataclasses.asdict(v)
    try:
        json.dumps(v, allow_nan=False)
    except (TypeError, ValueError):
        raise bad(field, type(v).__name__, "is not a JSON value, so the model cannot be stored in an allocation") from None
    return v
