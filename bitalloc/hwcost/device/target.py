"""TargetCost: the common part of cost models priced on a named device (latency, mcu, fpga).

It loads the device spec (bitalloc/hwcost/devices.py), converts the user's unit (`ms`, `kb`,
...) to the model's base unit, maps each candidate to the device's kernel for its format
(a candidate with none is infeasible), optionally reads a measured device profile, and caches
per-profile results so a solver that asks for costs, feasibility and rows builds them once.
Subclasses compute `layer_costs(profile) -> (L, K)` in base units for whole layers; a unit
gets its layer's cost times its share of the layer's weights.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import replace

import numpy as np

from bitalloc.errors import bad
from bitalloc.hwcost.base import CostModel
from bitalloc.hwcost.device.devices import Device, load_device
from bitalloc.hwcost.layers import layer_view


class TargetCost(CostModel):
    """device: a name from bitalloc/data/devices or a Device (a spec file's, `load_spec`); unit: the user's unit, a key of `units`
    (base unit → factor); device_profile: path (or DeviceProfile) of measured rows."""

    units: dict[str, float] = {}
    classes: tuple[str, ...] = ()
    base_resource = "cost"

    def __init__(self, device: str, unit: str | None = None, device_profile=None):
        from bitalloc.hwcost.device.device_profile import DeviceProfile

        unit = unit if unit is not None else next(iter(self.units))
        if unit not in self.units:
            raise bad(f"{self.base_resource} unit", unit, f"allowed: {', '.join(self.units)}")
        if isinstance(device_profile, (str, bytes)) or hasattr(device_profile, "__fspath__"):
            device_profile = DeviceProfile.load(device_profile)
        if device_profile is not None:
            prof_dev = device_profile.header["device"]
            name = getattr(device, "name", device)
            if name is not None and name != prof_dev:
                raise bad("device", name, f"the device profile {device_profile.path!r} was measured on {prof_dev!r}")
            if isinstance(device, Device) and device_profile.spec is None:
                device_profile = replace(device_profile, spec=device)
            self.device = device_profile.device
        elif device is None:
            raise bad("device", None, f"{self.base_resource} needs a device (--device)")
        else:
            self.device = device if isinstance(device, Device) else load_device(device)
        if self.classes and not self.device.measured_only and self.device.klass not in self.classes:
            raise bad("device", device, f"is a {self.device.klass}; {self.base_resource} needs one of class {', '.join(self.classes)}")
        self.unit_name = unit
        self.device_profile = device_profile
        self.resource = f"{self.base_resource}_{unit}" if unit else self.base_resource
        self.fit = None
        self._cache: dict = {}

    @classmethod
    def from_spec_options(cls, spec) -> "TargetCost":
        """The device of a CostSpec: its spec file's JSON (`device_spec`), its measured profile
        (re-read, and refused if its digest changed), or the built-in spec named `device`."""
        from bitalloc.hwcost.device.device_profile import DeviceProfile
        from bitalloc.hwcost.device.devices import parse_device

        opts = dict(spec.options)
        device = None
        if spec.device_spec is not None:
            device = parse_device(spec.device_spec, f"cost spec {spec.name} device_spec")
            object.__setattr__(device, "source", spec.device_spec)
        if spec.device_profile is not None:
            dp = DeviceProfile.load(spec.device_profile)
            if dp.digest() != spec.device_profile_sha256:
                raise bad(f"cost spec {spec.name} device_profile", spec.device_profile,
                          f"changed since the allocation was solved (sha256 {dp.digest()[:12]}, "
                          f"the allocation has {spec.device_profile_sha256[:12]})")
            opts["device_profile"] = dp if device is None else replace(dp, spec=device)
        else:
            opts["device"] = device if device is not None else spec.device
        return cls(**opts)

    def scale(self, profile) -> float:
        return float(self.units[self.unit_name])

    def cached(self, profile, key: str, make):
        c = self._cache.get(id(profile))
        if c is None or c[0] is not profile:
            c = self._cache[id(profile)] = (profile, {})
        if key not in c[1]:
            c[1][key] = make()
        return c[1][key]

    def kernels(self, profile):
        return self.device.kernels_of(profile)

    def a_bits(self, profile) -> list[int | None]:
        """(K,) activation bits of each candidate's kernel on the device (None: no kernel)."""
        return [None if k is None else k.a_bits for k in self.kernels(profile)]

    @abstractmethod
    def layer_costs(self, profile) -> np.ndarray:
        """(L, K) cost of each whole layer at each candidate, base units (0 where no kernel)."""

    def costs(self, profile) -> np.ndarray:
        def make():
            lv = layer_view(profile)
            return self.layer_costs_cached(profile)[lv.of_unit] * lv.share[:, None]
        return self.cached(profile, "costs", make)

    def feasible(self, profile) -> np.ndarray | None:
        def make():
            ok = np.array([k is not None for k in self.kernels(profile)])
            mask = np.broadcast_to(ok, (profile.n_units, len(ok))).copy()
            if self.device_profile is not None:
                from bitalloc.hwcost.device.device_profile import unsupported_cells

                mask &= ~unsupported_cells(self.device_profile, profile, self.a_bits(profile))[layer_view(profile).of_unit]
            return mask
        return self.cached(profile, "feasible", make)

    def layer_costs_cached(self, profile) -> np.ndarray:
        return self.cached(profile, "layer_costs", lambda: self.layer_costs(profile))

    def measured(self, profile, analytic_s: np.ndarray) -> np.ndarray:
        """Measured seconds per layer and candidate where the device profile has them, else
        `analytic_s` times the fitted factor (see device_profile.apply_measured)."""
        from bitalloc.hwcost.device.device_profile import apply_measured, complete_measured

        if self.device.measured_only:  # no spec: every cell from the rows (analytic_s is None)
            return complete_measured(self.device_profile, profile, self.a_bits(profile))
        if self.device_profile is None:
            return analytic_s
        T, _, self.fit = apply_measured(self.device_profile, profile, self.a_bits(profile), analytic_s)
        return T
