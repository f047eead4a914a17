"""Device specs: the named targets shipped as data (bitalloc/data/devices/<name>.json).

Each file gives the target's class (mcu, cpu, gpu, fpga), its clock, memories and bandwidth,
and the kernels it has: which candidate formats each kernel runs, the activation bits it
works at, and its speed (`cycles_per_mac` at `clock_hz`, or `macs_per_s`), plus, for kernels
that unpack sub-byte weights, the unpack rate and the scratch rows they need. A candidate whose
format no kernel lists has no kernel on the target (infeasible). Every figure names its source
in the file's `sources`.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from bitalloc.errors import bad

CLASSES = ("mcu", "cpu", "gpu", "fpga")


@dataclass(frozen=True)
class Kernel:
    """name; formats it runs; a_bits: activation bits; cycles_per_mac or macs_per_s (speed);
    unpack_cycles_per_weight / unpack_weights_per_s: extra cost per weight per inference for
    sub-byte unpacking; scratch_rows: rows of unpacked int8 weights held in SRAM while it runs
    (0 = the whole layer, None = no scratch)."""

    name: str
    formats: tuple[str, ...]
    a_bits: int
    cycles_per_mac: float | None = None
    macs_per_s: float | None = None
    unpack_cycles_per_weight: float = 0.0
    unpack_weights_per_s: float | None = None
    scratch_rows: int | None = None

    def seconds(self, macs, n_weights, clock_hz: float | None):
        """Compute time in seconds for `macs` MACs over `n_weights` weights (arrays or floats)."""
        if self.cycles_per_mac is not None:
            return (macs * self.cycles_per_mac + n_weights * self.unpack_cycles_per_weight) / clock_hz
        t = macs / self.macs_per_s
        return t + (n_weights / self.unpack_weights_per_s if self.unpack_weights_per_s else 0.0)

    def cycles(self, macs, n_weights, clock_hz: float | None):
        if self.cycles_per_mac is not None:
            return macs * self.cycles_per_mac + n_weights * self.unpack_cycles_per_weight
        return self.seconds(macs, n_weights, None) * clock_hz


@dataclass(frozen=True)
class Device:
    name: str
    klass: str
    part: str
    kernels: tuple[Kernel, ...] = ()
    clock_hz: float | None = None
    flash_bytes: int | None = None
    sram_bytes: int | None = None
    mem_bandwidth_bytes_per_s: float | None = None
    layer_overhead_s: float = 0.0
    dsp_type: str | None = None
    luts: int | None = None
    dsps: int | None = None
    bram18: int | None = None
    source: dict | None = field(default=None, compare=False, hash=False, repr=False)  # a spec file's JSON

    measured_only = False  # True for a device known only from a complete measured profile

    def kernel_for(self, fmt: str) -> Kernel | None:
        """The kernel listing `fmt`, else the one listing it without a `_g<N>` group suffix."""
        base = re.sub(r"_g\d+$", "", str(fmt))
        return next((k for k in self.kernels if fmt in k.formats), None) or \
            next((k for k in self.kernels if base in k.formats), None)

    def kernels_of(self, profile) -> list[Kernel | None]:
        """(K,) kernel of each candidate of `profile` (None: no kernel on this target)."""
        return [self.kernel_for(f) for f in profile.formats]


def device_names() -> list[str]:
    root = resources.files("bitalloc.data") / "devices"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


@lru_cache(maxsize=None)
def load_device(name: str) -> Device:
    names = device_names()
    if name not in names:
        raise bad("device", name, f"allowed: {', '.join(names)}")
    d = json.loads((resources.files("bitalloc.data") / "devices" / f"{name}.json").read_text())
    return parse_device(d, f"device {name!r}")


def load_spec(path) -> Device:
    """A device spec file of the built-in specs' schema (bitalloc/data/devices/*.json), for a
    target bitalloc ships no spec of (`--target-spec my-board.json`)."""
    from bitalloc.fileio import read_json

    d = read_json(path, "target spec")
    if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not d["name"]:
        raise bad(f"target spec {str(path)!r}: name", d.get("name") if isinstance(d, dict) else d, "must be the device name")
    device = parse_device(d, f"target spec {str(path)!r}")
    object.__setattr__(device, "source", d)  # kept so an allocation can store the spec (CostSpec.device_spec)
    return device


def parse_device(d: dict, where: str) -> Device:
    if d.get("class") not in CLASSES:
        raise bad(f"{where}: class", d.get("class"), f"allowed: {', '.join(CLASSES)}")
    kernels = []
    for i, k in enumerate(d.get("kernels", [])):
        speed = [x for x in ("cycles_per_mac", "macs_per_s") if x in k]
        if len(speed) != 1 or not _pos(k[speed[0]]):
            raise bad(f"{where}: kernels[{i}]", k.get("kernel"), "needs exactly one positive cycles_per_mac or macs_per_s")
        if "cycles_per_mac" in k and not _pos(d.get("clock_hz")):
            raise bad(f"{where}: clock_hz", d.get("clock_hz"), "a kernel in cycles_per_mac needs a positive clock_hz")
        kernels.append(Kernel(k["kernel"], tuple(k["formats"]), int(k["a_bits"]), k.get("cycles_per_mac"),
                              k.get("macs_per_s"), float(k.get("unpack_cycles_per_weight", 0.0)),
                              k.get("unpack_weights_per_s"), k.get("scratch_rows")))
    overhead = d.get("layer_overhead_s", 0.0)
    if "layer_overhead_cycles" in d:
        overhead = d["layer_overhead_cycles"] / d["clock_hz"]
    return Device(d["name"], d["class"], d.get("part", ""), tuple(kernels), d.get("clock_hz"), d.get("flash_bytes"),
                  d.get("sram_bytes"), d.get("mem_bandwidth_bytes_per_s"), float(overhead), d.get("dsp_type"),
                  d.get("luts"), d.get("dsps"), d.get("bram18"))


def _pos(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


@dataclass(frozen=True)
class MeasuredDevice(Device):
    """A device bitalloc has no spec of, known from its measured profile alone: each candidate
    runs on the measured kernel of its weight bits (`w_kernels`: w_bits → (kernel, a_bits), the
    first row's), and every layer-candidate cell must be measured (or marked unsupported)."""

    w_kernels: tuple = ()
    measured_only = True

    def kernels_of(self, profile) -> list[Kernel | None]:
        by_w = dict(self.w_kernels)
        out = []
        for b, f in zip(profile.bits, profile.formats):
            name, a = by_w.get(int(b), ("unmeasured", 0))  # a_bits 0 matches no row: its cells are missing
            out.append(Kernel(name, (f,), a, macs_per_s=float("inf")))
        return out
