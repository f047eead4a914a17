"""The on-chip flow end to end on digits-cnn (examples/mcu_flow.py with tiny repeats): the
allocation's totals, recomputed from the measured rows and the model's own shapes, stay within
every budget; the plan covers every layer-candidate cell; the host runner's sub-byte packing
round-trips."""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from bitalloc import Allocation, Profile

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mcu_flow.py"


def load_example():
    spec = importlib.util.spec_from_file_location("mcu_flow", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mcu_flow_on_digits_cnn_stays_within_every_budget(tmp_path, capsys):
    res = load_example().main(str(tmp_path), repeats=2, warmup=1, samples=32)
    profile = Profile.load(res["profile"])
    alloc = Allocation.load(res["allocation"])
    assert alloc.ok and set(alloc.budgets) == {"latency_ms", "flash_kb", "sram_kb"}
    assert profile.extra["graph"]["nodes"][0]["op"] == "input"  # the recorded layer graph

    # latency: straight from the measured CSV rows (layer units: one row per layer and candidate)
    with open(res["measured"]) as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    assert {r["status"] for r in rows} == {"ok"}
    a_bits = {2: 32, 3: 32, 4: 32, 6: 32, 8: 8, 16: 32}  # host-cpu kernels: unpack/fp32 vs int8
    measured = {(r["layer"], int(r["w_bits"]), int(r["a_bits"])): float(r["value"]) for r in rows}
    assert len(measured) == profile.n_units * len(profile.bits)  # every cell measured
    lat = sum(measured[(s, b, a_bits[b])] for s, b in alloc.bits.items())
    assert lat == pytest.approx(alloc.totals["latency_ms"], rel=1e-9)
    assert lat <= alloc.budgets["latency_ms"] * (1 + 1e-9)

    # flash: packed weights + int32 bias and, for integer formats, a 4-byte scale per output channel
    shapes = {n: (int(r), int(c)) for n, r, c in zip(profile.names, profile.rows, profile.cols)}
    flash = sum(r * c * b / 8 + r * (4 + (4 if b < 16 else 0)) for n, b in alloc.bits.items() for r, c in [shapes[n]])
    assert flash / 1024 == pytest.approx(alloc.totals["flash_kb"]) and flash / 1024 <= alloc.budgets["flash_kb"]

    # peak SRAM: activations alive at each op of the traced graph (input/constant tensors at 8 bits)
    from bitalloc.hwcost.graph import liveness, source_layer

    g = profile.extra["graph"]
    src = source_layer(g)
    scratch = {n: shapes[n][0] * shapes[n][1] * 4 if b < 8 else 0 for n, b in alloc.bits.items()}  # whole layer in fp32
    peak = 0.0
    for j, live in enumerate(liveness(g)):
        t = sum(g["nodes"][i]["elems"] * (1 if src[i] is None else a_bits[alloc.bits[src[i]]] / 8) for i in live)
        peak = max(peak, t + scratch.get(g["nodes"][j]["layer"], 0))
    assert peak / 1024 == pytest.approx(alloc.totals["sram_kb"]) and peak / 1024 <= alloc.budgets["sram_kb"]
    out = capsys.readouterr().out
    assert "latency recomputed from the measured rows" in out and "NO" not in out


def test_host_runner_subbyte_packing_round_trips():
    torch = pytest.importorskip("torch")
    from bitalloc.hwcost.device.runners.host_cpu import _pack

    w = torch.randn(7, 13)
    for bits in (2, 3, 4, 5, 6, 7):
        packed, scale, zero, n = _pack(torch, w, bits)
        per = 8 // bits
        assert packed.numel() == -(-n // per)
        codes = torch.stack([(packed >> (j * bits)) & ((1 << bits) - 1) for j in range(per)]).reshape(-1)[:n]
        deq = (codes.reshape(7, -1).float() - zero) * scale
        assert float((deq - w).abs().max()) <= float(scale.max()) / 2 + 1e-6


def test_measure_refuses_a_plan_for_another_device(tmp_path, capsys):
    from bitalloc.cli.app import main
    from bitalloc.hwcost.device.devices import load_device
    from bitalloc.hwcost.device.plan import make_plan, write_plan

    p = Profile.from_columns(["a"], [64], [4, 8], np.ones((1, 2)), rows=[8], cols=[8], macs=[64])
    write_plan(tmp_path / "plan.csv", {"device": "cortex-m7"}, make_plan(p, load_device("cortex-m7")))
    out = tmp_path / "m.csv"
    rc = main(["measure", "--plan", str(tmp_path / "plan.csv"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "is for 'cortex-m7'" in err and err.count("\n") == 1 and not out.exists()
