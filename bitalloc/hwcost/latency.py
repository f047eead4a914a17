"""LatencyCost: time per inference from an analytic roofline on a device spec, or measured.

Per layer at candidate k, on the kernel the device runs for k's format (bitalloc/data/devices):

    t = max(bytes moved / bandwidth, compute time) + per-layer overhead
    bytes moved = weights (weight_bytes.py: n_params · bits / 8 + 4 bytes of scale per output
                  channel for integer formats; the exact storage, elements plus block scales,
                  for minifloat, MX and NVFP4 formats) + activations read and written
                  (positions · (inputs + outputs) · a_bits / 8, positions = MACs / weights)
    compute time = MACs / peak of the kernel for the format (macs_per_s, or clock_hz /
                  cycles_per_mac: FP8 tensor cores on h100, FP4/FP6/MX on b200; a format
                  without a kernel, e.g. any minifloat on a Cortex-M, is infeasible) + unpacking
                  (weights / unpack rate) for sub-byte kernels

With a device profile (`device_profile=`), measured rows replace the analytic figures and the
rest are the analytic figures times the factor fitted on the measured rows (`self.fit`).
Units: `ms` (default), `us`, `s`; base unit seconds. A unit's time is its share of its layer's.
"""
from __future__ import annotations

import numpy as np

from bitalloc.errors import bad
from bitalloc.hwcost import register
from bitalloc.hwcost.layers import layer_view
from bitalloc.hwcost.device.target import TargetCost
from bitalloc.hwcost.weight_bytes import layer_weight_bytes

SCALE_BYTES = 4  # per output channel of an integer-format layer (int32 multiplier or fp32 scale)


@register("latency")
class LatencyCost(TargetCost):
    units = {"ms": 1e-3, "us": 1e-6, "s": 1.0}
    classes = ("mcu", "cpu", "gpu")
    base_resource = "latency"

    def __init__(self, device: str | None = None, unit: str = "ms", device_profile=None):
        super().__init__(device, unit, device_profile)
        if self.device.mem_bandwidth_bytes_per_s is None and not self.device.measured_only:
            raise bad("device", self.device.name, "its spec has no mem_bandwidth_bytes_per_s")

    def analytic(self, profile) -> np.ndarray:
        """(L, K) roofline seconds per layer and candidate (0 where the device has no kernel)."""
        lv = layer_view(profile)
        d = self.device
        out = np.zeros((len(lv.names), len(profile.bits)))
        for k, (b, f, ker) in enumerate(zip(profile.bits, profile.formats, self.kernels(profile))):
            if ker is None:
                continue
            act = lv.positions * (lv.rows + lv.cols) * ker.a_bits / 8
            mem = (layer_weight_bytes(profile, lv, k, SCALE_BYTES) + act) / d.mem_bandwidth_bytes_per_s
            comp = ker.seconds(lv.macs, lv.n_params, d.clock_hz)
            out[:, k] = np.maximum(mem, comp) + d.layer_overhead_s
        return out

    def layer_costs(self, profile) -> np.ndarray:
        return self.measured(profile, None if self.device.measured_only else self.analytic(profile))


@register("measured")
class MeasuredLatency(LatencyCost):
    """Latency from a measured device profile (required); the device is the profile's."""

    def __init__(self, device_profile, unit: str = "ms", device: str | None = None):
        super().__init__(device, unit, device_profile)
