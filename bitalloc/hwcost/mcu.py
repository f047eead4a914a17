"""McuCost: flash, peak SRAM and cycles of a microcontroller deployment (TFLM / CMSIS-NN style).

One model, three resources (`metric=`):

- `flash` (bytes; additive): weights (n_params · bits / 8, packed) + per output channel an
  int32 bias and, for integer formats, a 4-byte requantization scale (CMSIS-NN per-channel
  multiplier); minifloat/MX/NVFP4 weights take their format's exact storage (weight_bytes.py),
  though no Cortex-M spec has a kernel for them (infeasible there).
- `cycles` (additive): MACs · cycles_per_mac of the device's kernel for the candidate's
  (weight bits, activation bits) + unpacking cycles per weight for sub-byte kernels + a
  per-layer overhead; measured rows of a device profile override them (the rest scaled by the
  fitted factor).
- `sram` (bytes; NOT additive: `additive = False`, `rows()`): the peak over the layer graph
  (bitalloc/hwcost/graph.py; recorded from the real model, else a chain in unit order) of the
  activation tensors alive at each op plus the running layer's scratch buffer:
    * a tensor lives from the op that writes it to the last op that reads it (networkx graph);
    * a layer's output is stored at the activation bits of the kernel its candidate runs on
      (int8 kernels: 8; float kernels: 32), and so is every tensor derived from it by
      non-quantized ops (ReLU, pooling, residual adds keep their first input's format);
      model inputs and constants at `input_bits`;
    * a sub-byte kernel that unpacks weights holds `scratch_rows` rows of unpacked weights
      (0 = all rows) at its activation width while it runs.
  Each liveness point is one row: total = max over rows of Σ over units, exactly one linear
  constraint per row. Candidate-independent bytes (inputs, constants) are folded into the
  row's first unit. Weights stay in flash (execute-in-place), as in TFLM.

A unit (group or channel) gets its layer's share (its fraction of the layer's weights).
Units: `kb` (KiB, 1024 bytes, as MCU datasheets count), `b`, `mb` for memory; `cycles`,
`kcycles`, `mcycles` for cycles.
"""
from __future__ import annotations

import numpy as np

from bitalloc.errors import bad
from bitalloc.hwcost import register
from bitalloc.hwcost.graph import graph_of, liveness, source_layer
from bitalloc.hwcost.layers import layer_view
from bitalloc.hwcost.device.target import TargetCost
from bitalloc.hwcost.weight_bytes import layer_weight_bytes

METRICS = ("flash", "sram", "cycles")
MEMORY_UNITS = {"kb": 1024.0, "b": 1.0, "mb": 1024.0 ** 2}
CYCLE_UNITS = {"": 1.0, "k": 1e3, "m": 1e6}
BIAS_BYTES = 4
SCALE_BYTES = 4


@register("mcu")
class McuCost(TargetCost):
    classes = ("mcu", "cpu")

    def __init__(self, metric: str = "flash", device: str | None = None, unit: str | None = None,
                 device_profile=None, input_bits: int = 8):
        if metric not in METRICS:
            raise bad("mcu metric", metric, f"allowed: {', '.join(METRICS)}")
        self.metric = metric
        self.units = CYCLE_UNITS if metric == "cycles" else MEMORY_UNITS
        self.base_resource = metric
        super().__init__(device, unit, device_profile)
        if metric == "cycles":
            self.resource = f"{unit or ''}cycles"
            if self.device.clock_hz is None:
                raise bad("device", self.device.name, "its spec has no clock_hz for cycles")
        if isinstance(input_bits, bool) or not isinstance(input_bits, int) or not 1 <= input_bits <= 32:
            raise bad("input_bits", input_bits, "must be an integer from 1 to 32")
        self.input_bits = input_bits
        self.additive = metric != "sram"

    # ---- flash and cycles: per layer, shared out to units -------------------------------
    def layer_costs(self, profile) -> np.ndarray:
        lv = layer_view(profile)
        out = np.zeros((len(lv.names), len(profile.bits)))
        kernels = self.kernels(profile)
        if self.metric == "flash":
            for k, info in enumerate(profile.format_objects):
                if info.family != "external":  # a label bitalloc does not know has no kernel (infeasible), no known storage
                    out[:, k] = layer_weight_bytes(profile, lv, k, SCALE_BYTES) + lv.rows * BIAS_BYTES
            return out
        if self.metric == "cycles":
            clock = self.device.clock_hz
            if self.device.measured_only:
                return self.measured(profile, None) * clock
            for k, ker in enumerate(kernels):
                if ker is not None:
                    out[:, k] = ker.seconds(lv.macs, lv.n_params, clock) + self.device.layer_overhead_s
            return self.measured(profile, out) * clock
        raise AssertionError("sram is priced per liveness row (rows(), costs()), not per layer")

    # ---- sram: one row per liveness point ------------------------------------------------
    def rows(self, profile) -> list[tuple[np.ndarray, np.ndarray]]:
        if self.metric != "sram":
            return super().rows(profile)
        return self.cached(profile, "rows", lambda: self._sram_rows(profile))

    def costs(self, profile) -> np.ndarray:
        if self.metric != "sram":
            return super().costs(profile)

        def make():  # not a total: each unit's largest contribution to any one liveness point
            c = np.zeros((profile.n_units, len(profile.bits)))
            for idx, C in self.rows(profile):
                np.maximum.at(c, idx, C)
            return c
        return self.cached(profile, "costs", make)

    def _sram_rows(self, profile):
        lv = layer_view(profile)
        where = lv.index()
        g = graph_of(profile)
        nodes = g["nodes"]
        src = source_layer(g)
        a_bytes = np.array([0.0 if a is None else a / 8 for a in self.a_bits(profile)])  # (K,)
        scratch = np.zeros((len(lv.names), len(a_bytes)))  # (L, K) bytes of a layer's scratch
        for k, ker in enumerate(self.kernels(profile)):
            if ker is not None and ker.scratch_rows is not None:
                r = lv.rows if ker.scratch_rows == 0 else np.minimum(lv.rows, ker.scratch_rows)
                scratch[:, k] = r * lv.cols * ker.a_bits / 8
        units_of = [np.flatnonzero(lv.of_unit == j) for j in range(len(lv.names))]
        rows: dict[tuple, tuple[float, int]] = {}
        for j, live in enumerate(liveness(g)):
            tensors: dict[int, float] = {}  # layer → elements alive in its format
            const = 0.0
            for i in live:
                if src[i] is None:
                    const += nodes[i]["elems"] * self.input_bits / 8
                else:
                    L = where[src[i]]
                    tensors[L] = tensors.get(L, 0.0) + nodes[i]["elems"]
            run = nodes[j]["layer"]
            key = (tuple(sorted(tensors.items())), None if run is None else where[run])
            if key not in rows or rows[key][0] < const:
                rows[key] = (const, j)
        out = []
        for (tensors, run), (const, _) in rows.items():
            layer_c: dict[int, np.ndarray] = {L: e * a_bytes for L, e in tensors}
            if run is not None:
                layer_c[run] = layer_c.get(run, 0.0) + scratch[run]
            if not layer_c:
                layer_c[0] = np.zeros(len(a_bytes))
            idx = np.concatenate([units_of[L] for L in layer_c])
            C = np.concatenate([np.asarray(c)[None, :] * lv.share[units_of[L]][:, None] for L, c in layer_c.items()])
            C[0] += const
            out.append((idx, C))
        return out
