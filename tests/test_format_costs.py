"""Hardware cost models with number formats: bytes moved and flash follow each format's storage
(scales included), compute runs on the device's kernel for the format's family, and a format
with no kernel on a device is infeasible there, so the ILP never chooses it."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import bitalloc
from bitalloc import Profile, Unit
from bitalloc.hwcost.device.devices import load_device
from bitalloc.hwcost.fpga import FpgaCost
from bitalloc.hwcost.latency import LatencyCost
from bitalloc.hwcost.mcu import McuCost
from bitalloc.hwcost.memory import MemoryCost
from bitalloc import Constraint, Problem
from bitalloc.quant.integer import format_family, quantizer_for

FORMATS = ["int4", "int8", "fp4_e2m1", "mxfp4", "nvfp4", "fp8_e4m3", "mxfp8_e4m3"]
FACTOR = {"int": 1.0, "fp": 0.5, "mx": 0.4, "nvfp4": 0.4}  # block-scaled formats: the smallest loss
SHAPES = {"a": (256, 1024), "b": (512, 256), "c": (64, 512)}


def profile():
    """Linear layers (one position); MX/NVFP4 candidates have the smallest loss at each width."""
    units = [Unit(n, n, n_params=r * c, macs=r * c, shape=(r, c)) for n, (r, c) in SHAPES.items()]
    bits = [int(f[3]) if f.startswith("int") else 8 if "8" in f else 4 for f in FORMATS]
    S = np.array([[(2.0 ** -b) * FACTOR[format_family(f)] * (j + 1)
                   for b, f in zip(bits, FORMATS)] for j in range(len(units))])
    return Profile(units, bits, S, formats=FORMATS, meta={"group_size": 128})


def kernel_formats(device):
    return {f for k in load_device(device).kernels for f in k.formats}


@pytest.mark.parametrize("device,ok", [
    ("cortex-m7", {"int4", "int8"}),
    ("a100", {"int4", "int8"}),
    ("h100", {"int4", "int8", "fp8_e4m3"}),
    ("b200", set(FORMATS))])
def test_feasible_exactly_where_the_device_has_a_kernel(device, ok):
    p = profile()
    for cost in [LatencyCost(device=device)] + ([McuCost("cycles", device=device), McuCost("flash", device=device)]
                                               if load_device(device).klass == "mcu" else []):
        f = cost.feasible(p)
        assert f.shape == (3, len(FORMATS))
        assert {fmt for fmt, col in zip(FORMATS, f.T) if col.all()} == ok
        assert not f[:, [FORMATS.index(x) for x in set(FORMATS) - ok]].any()
    assert ok <= kernel_formats(device)
    fpga = FpgaCost("lut", device="vu9p").feasible(p)
    assert {fmt for fmt, col in zip(FORMATS, fpga.T) if col.all()} == {"int4", "int8"}


@pytest.mark.parametrize("device", ["cortex-m7", "h100", "b200"])
def test_ilp_never_chooses_a_format_without_a_kernel(device):
    p = profile()
    lat = LatencyCost(device=device, unit="us")
    feas = lat.feasible(p)
    C = lat.costs(p) / lat.scale(p)
    # between the fastest and the slowest feasible allocation
    lo, hi = np.where(feas, C, np.inf).min(1).sum(), np.where(feas, C, -np.inf).max(1).sum()
    combos = np.array(list(itertools.product(range(len(FORMATS)), repeat=3)))
    loss = p.sensitivity[np.arange(3), combos].sum(1)
    time = C[np.arange(3), combos].sum(1)
    ok = feas[np.arange(3), combos].all(1)
    for budget in (lo + 0.3 * (hi - lo), hi * 1.01):
        a = bitalloc.solve(Problem(p, [Constraint(lat, float(budget))]))
        choice = a.choice(p)
        assert feas[np.arange(3), choice].all(), (device, [p.formats[k] for k in choice])
        assert lat.total(p, choice) <= budget * (1 + 1e-9)
        fits = time <= budget * (1 + 1e-9)
        assert a.objective == pytest.approx(loss[fits & ok].min(), rel=1e-9)  # brute force over feasible choices
        if device != "b200":  # ignoring the missing kernels, a lower loss would fit the budget
            assert loss[fits].min() < loss[fits & ok].min()
    if device == "b200":  # the lowest-loss formats have kernels here and are picked at a loose budget
        assert {a.formats[s] for s in p.names} == {"mxfp8_e4m3"}


def test_latency_and_flash_follow_storage():
    p = profile()
    d = load_device("b200")
    lat = LatencyCost(device="b200", unit="s")
    T = lat.costs(p)
    for j, (r, c) in enumerate(SHAPES.values()):
        for k, f in enumerate(FORMATS):
            ker = d.kernel_for(f)
            if format_family(f) in ("fp", "mx", "nvfp4"):
                wbytes = quantizer_for(f, 128).storage_bits(r, c) / 8
            else:
                wbytes = r * c * p.bits[k] / 8 + (4 * r if f.startswith("int") else 0)
            mem = (wbytes + (r + c) * ker.a_bits / 8) / d.mem_bandwidth_bytes_per_s
            comp = r * c / ker.macs_per_s
            assert T[j, k] == pytest.approx(max(mem, comp) + d.layer_overhead_s, rel=1e-12)
    # memory-bound linear layers: more storage (nvfp4's E4M3 per 16 > mxfp4's E8M0 per 32) is slower
    k = {f: FORMATS.index(f) for f in FORMATS}
    assert (T[:, k["nvfp4"]] > T[:, k["mxfp4"]]).all() and (T[:, k["mxfp4"]] > T[:, k["int4"]]).all()
    # storage differences are exactly what the memory cost model charges, over the bandwidth
    mem = MemoryCost(count_overhead=True, scale_bits=16, zero_bits=0).costs(p) / 8
    np.testing.assert_allclose((T[:, k["nvfp4"]] - T[:, k["mxfp4"]]) * d.mem_bandwidth_bytes_per_s,
                               mem[:, k["nvfp4"]] - mem[:, k["mxfp4"]], rtol=1e-9)
    # MCU flash: the format's storage plus an int32 bias per output channel (feasibility aside)
    flash = McuCost("flash", device="cortex-m7", unit="b").costs(p)
    for j, (r, c) in enumerate(SHAPES.values()):
        assert flash[j, k["mxfp4"]] == quantizer_for("mxfp4").storage_bits(r, c) / 8 + 4 * r
        assert flash[j, k["nvfp4"]] == quantizer_for("nvfp4").storage_bits(r, c) / 8 + 4 * r
        assert flash[j, k["int4"]] == r * c / 2 + 8 * r


def test_group_suffix_finds_the_base_kernel():
    d = load_device("b200")
    assert d.kernel_for("fp8_e4m3_g64").name == "tc_fp6_fp8"
    assert d.kernel_for("int4_g64").name == "tc_s8"
    assert load_device("cortex-m7").kernel_for("fp8_e4m3_g64") is None
