"""The on-chip profiling flow end to end, on a real model and real measurements:

    profile → plan → measure → solve → report

1. `bitalloc profile`: Fisher sensitivity of digits-cnn (a small CNN on scikit-learn's digits),
   one unit per layer, candidates int2/3/4/6/8 and fp16; the profile records the model's
   layer graph (for peak SRAM).
2. `bitalloc mcu plan`: the deduplicated kernels to time on the device.
3. `bitalloc measure --runner host-cpu`: time them on this machine (torch int8, fp32 and
   unpack-then-fp32 kernels; one thread). An MCU harness writes the same CSV.
4. `bitalloc solve --device-profile m.csv`: latency from the measured rows, flash and peak SRAM
   from the mcu model of the same device, under budgets: latency <= 1.5x and flash <= 0.95x those
   of the uniform int8 deployment measured here (this machine's speed is not known in advance),
   and peak SRAM <= 128 KiB (the unpack-to-fp32 path of a sub-byte layer needs the whole
   dequantized layer as scratch, so SRAM decides which layers may go below 8 bits).
5. Report: the allocation, each total next to its budget, the latency recomputed directly
   from the measured rows, and what the SRAM budget changed (the optimum without it).

Run: `python examples/mcu_flow.py [--workdir DIR] [--repeats 10]` (writes into a temp folder by default).
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run this checkout's bitalloc, installed or not
from bitalloc.cli.app import main as cli  # noqa: E402

BITS = "2,3,4,6,8,16"


def run(*argv) -> None:
    print("$ bitalloc " + " ".join(argv), flush=True)
    rc = cli(list(argv))
    if rc != 0:
        raise SystemExit(f"bitalloc {argv[0]} failed with exit code {rc}")


def measured_latency_ms(path: Path, profile, bits: dict[str, int], a_bits_of: dict[int, int]) -> float:
    """Σ over units of the measured median of (its layer, its bits) × its share of the layer,
    straight from the device-profile CSV."""
    rows = {}
    with open(path) as f:
        for r in csv.DictReader(line for line in f if not line.startswith("#")):
            if r["status"] == "ok":
                rows[(r["layer"], int(r["w_bits"]), int(r["a_bits"]))] = float(r["value"])
    layer_params: dict[str, int] = {}
    for lay, n in zip(profile.layers, profile.n_params):
        layer_params[lay] = layer_params.get(lay, 0) + int(n)
    return sum(rows[(lay, bits[s], a_bits_of[bits[s]])] * int(n) / layer_params[lay]
               for s, lay, n in zip(profile.names, profile.layers, profile.n_params))


def main(workdir: str | None = None, repeats: int = 10, warmup: int = 2, samples: int = 64) -> dict:
    import bitalloc
    from bitalloc import Allocation, Constraint, Problem, Profile
    from bitalloc.hwcost.device.device_profile import DeviceProfile
    from bitalloc.hwcost.latency import LatencyCost
    from bitalloc.hwcost.mcu import McuCost

    work = Path(workdir or tempfile.mkdtemp(prefix="bitalloc-mcu-flow-"))
    work.mkdir(parents=True, exist_ok=True)
    prof, plan, meas, out = (str(work / n) for n in ("digits.profile.json", "plan.csv", "m.csv", "alloc.json"))

    run("profile", "--model", "digits-cnn", "--estimator", "fisher", "--samples", str(samples), "--bits", BITS,
        "--out", prof, "--force")
    run("mcu", "plan", "--profile", prof, "--device", "host-cpu", "--out", plan, "--force")
    run("measure", "--plan", plan, "--runner", "host-cpu", "--warmup", str(warmup), "--repeats", str(repeats),
        "--out", meas, "--force")

    # Budgets relative to the uniform int8 deployment, as measured on this machine.
    profile = Profile.load(prof)
    dp = DeviceProfile.load(meas)
    lat = LatencyCost(device_profile=dp, unit="ms")
    flash, sram = McuCost("flash", unit="kb", device_profile=dp), McuCost("sram", unit="kb", device_profile=dp)
    int8 = np.full(profile.n_units, profile.bits.index(8))
    budgets = {"latency_ms": round(1.5 * lat.total(profile, int8), 4),
               "flash_kb": round(0.95 * flash.total(profile, int8), 2),
               "sram_kb": 128.0}
    print(f"uniform int8 here: latency {lat.total(profile, int8):.4f} ms, flash {flash.total(profile, int8):.2f} KiB, "
          f"peak SRAM {sram.total(profile, int8):.2f} KiB; budgets: {budgets}")
    cons = [a for r, b in budgets.items() for a in ("--constraint", f"{r}<={b}")]
    solve = ["solve", "--profile", prof, "--device-profile", meas, *cons, "--out", out, "--force"]
    run(*solve)

    alloc = Allocation.load(out)
    choice = alloc.choice(profile)
    a_bits_of = {b: k.a_bits for b, k in zip(profile.bits, lat.kernels(profile)) if k is not None}
    totals = {"latency_ms": lat.total(profile, choice), "flash_kb": flash.total(profile, choice),
              "sram_kb": sram.total(profile, choice)}
    recomputed = measured_latency_ms(Path(meas), profile, alloc.bits, a_bits_of)
    print(f"\nallocation ({alloc.solver}, {alloc.status}): "
          + ", ".join(f"{s}={b}" for s, b in alloc.bits.items()))
    print(f"{'resource':<12}{'total':>12}{'budget':>12}  within")
    for r, t in totals.items():
        print(f"{r:<12}{t:>12.4f}{budgets[r]:>12.4f}  {'yes' if t <= budgets[r] * (1 + 1e-9) else 'NO'}")
    print(f"latency recomputed from the measured rows of {Path(meas).name}: {recomputed:.4f} ms")
    print(f"fit: {lat.fit.text()}")
    rows = alloc.meta.get("rows")
    if isinstance(rows, dict):  # lazy rows (a solver without native rows); the ILP takes them all
        print(f"peak SRAM as lazy liveness rows: {rows['rows_added']} of {rows['rows_total']['sram_kb']} rows needed, "
              f"{rows['rounds']} solver rounds")
    # What the SRAM budget changed: the same problem without it.
    free = bitalloc.solve(Problem(profile, [Constraint(lat, budgets["latency_ms"]), Constraint(flash, budgets["flash_kb"])]))
    if free.bits != alloc.bits:
        print("without the SRAM budget: " + ", ".join(f"{s}={b}" for s, b in free.bits.items())
              + f" (objective {free.objective:.4g} vs {alloc.objective:.4g}), peak SRAM "
              f"{sram.total(profile, free.choice(profile)):.2f} KiB")
    return {"profile": prof, "plan": plan, "measured": meas, "allocation": out, "budgets": budgets,
            "totals": totals, "recomputed_latency_ms": recomputed}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--samples", type=int, default=64)
    a = ap.parse_args()
    main(a.workdir, a.repeats, a.warmup, a.samples)
    sys.exit(0)
