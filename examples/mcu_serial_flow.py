"""The on-chip flow on a microcontroller running bitalloc's firmware (firmware/), by default
the Cortex-M4 board QEMU emulates (`qemu-system-arm -M mps2-an386 -icount shift=0`):

    profile → plan → measure (serial runner) → solve → verify

1. `bitalloc profile`: Fisher sensitivity of digits-cnn, one unit per layer, candidates
   int2 / int4 / int8 (the firmware's kernels: s2, s4, s8 with int8 activations).
2. `bitalloc mcu plan --device mps2-an386`: 12 kernels (4 layers x 3 candidates).
3. `bitalloc measure --runner serial --port qemu`: the host starts QEMU with the firmware, sends
   one request per plan row and appends each answer (median of `repeats` timed runs, output
   checksum checked against the host's) to the device profile. Under QEMU the "cycles" are
   guest instruction counts (`timer=qemu-icount`), not a real core's cycles.
4. `bitalloc solve` with the measured latency and the mcu model's flash and peak SRAM: latency
   <= 1.03x and flash <= 0.5x those of uniform int8 (measured), peak SRAM <= 4 KiB.
5. Verify: quantize the model with the allocation (bitalloc.verify: the weights decode from
   the packed tensors, accuracy on held-out digits) and recheck every device budget from the
   measured rows and the model's shapes.

Run: `python examples/mcu_serial_flow.py [--workdir DIR] [--port qemu | /dev/ttyACM0 --device cortex-m4]`.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run this checkout's bitalloc, installed or not
from bitalloc.cli.app import main as cli  # noqa: E402

BITS = "2,4,8"


def run(*argv) -> None:
    print("$ bitalloc " + " ".join(argv), flush=True)
    rc = cli(list(argv))
    if rc != 0:
        raise SystemExit(f"bitalloc {argv[0]} failed with exit code {rc}")


def budgets_for(profile, dp) -> dict:
    from bitalloc.hwcost.latency import LatencyCost
    from bitalloc.hwcost.mcu import McuCost

    int8 = np.full(profile.n_units, profile.bits.index(8))
    return {"latency_ms": round(1.03 * LatencyCost(device_profile=dp, unit="ms").total(profile, int8), 3),
            "flash_kb": round(0.5 * McuCost("flash", unit="kb", device_profile=dp).total(profile, int8), 2),
            "sram_kb": 4.0}


def costs(profile, dp) -> dict:
    """The cost models the budgets name, bound to the measured device profile."""
    from bitalloc.hwcost.latency import LatencyCost
    from bitalloc.hwcost.mcu import McuCost

    return {"latency_ms": LatencyCost(device_profile=dp, unit="ms"), "flash_kb": McuCost("flash", unit="kb", device_profile=dp),
            "sram_kb": McuCost("sram", unit="kb", device_profile=dp)}


def main(workdir: str | None = None, port: str = "qemu", device: str = "mps2-an386", repeats: int = 5, warmup: int = 1,
         samples: int = 64, build: bool = True) -> dict:
    import bitalloc
    from bitalloc import Allocation, Constraint, Profile
    from bitalloc.hwcost.device.device_profile import DeviceProfile

    work = Path(workdir or tempfile.mkdtemp(prefix="bitalloc-mcu-serial-"))
    work.mkdir(parents=True, exist_ok=True)
    prof, plan, meas, out = (str(work / n) for n in ("digits.profile.json", "plan.csv", "prof.json", "alloc.json"))
    if build and port == "qemu":
        from bitalloc.hwcost.device.qemu import build_firmware

        print(f"firmware: {build_firmware()}")
    run("profile", "--model", "digits-cnn", "--estimator", "fisher", "--samples", str(samples), "--bits", BITS,
        "--out", prof, "--force")
    run("mcu", "plan", "--profile", prof, "--device", device, "--out", plan, "--force")
    run("measure", "--runner", "serial", "--port", port, "--plan", plan, "--warmup", str(warmup),
        "--repeats", str(repeats), "--out", meas, "--force")

    profile, dp = Profile.load(prof), DeviceProfile.load(meas)
    print("\nmeasured (" + ", ".join(f"{k}={dp.header[k]}" for k in ("device", "board", "core", "clock_hz", "timer")) + "):")
    print(f"{'layer':<7}{'bits':>5}{'kernel':>8}{'MACs':>9}{'cycles':>11}{'cyc/MAC':>9}  status")
    for r in dp.rows:
        v = "" if r.value is None else f"{r.value:.0f}"
        per = "" if r.value is None or not r.macs else f"{r.value / r.macs:.2f}"
        print(f"{r.layer:<7}{r.w_bits:>5}{r.kernel:>8}{r.macs:>9}{v:>11}{per:>9}  {r.status}")
    budgets = budgets_for(profile, dp)
    cons = [a for r, b in budgets.items() for a in ("--constraint", f"{r}<={b}")]
    run("solve", "--profile", prof, "--device-profile", meas, *cons, "--out", out, "--force")

    alloc = Allocation.load(out)
    choice = alloc.choice(profile)
    models = costs(profile, dp)
    totals = {r: m.total(profile, choice) for r, m in models.items()}
    print(f"\nallocation ({alloc.solver}, {alloc.status}): " + ", ".join(f"{s}={b}" for s, b in alloc.bits.items()))
    print(f"{'resource':<12}{'total':>12}{'budget':>12}  within")
    for r, t in totals.items():
        print(f"{r:<12}{t:>12.4f}{budgets[r]:>12.4f}  {'yes' if t <= budgets[r] * (1 + 1e-9) else 'NO'}")

    from bitalloc.zoo.demo import load_task

    task = load_task("digits-cnn", samples=samples)
    report = bitalloc.verify(task, dict(alloc.bits))
    print(report.tables())
    free = bitalloc.solve(bitalloc.Problem(profile, [Constraint(m, budgets[r]) for r, m in models.items() if r != "flash_kb"]))
    print("without the flash budget: " + ", ".join(f"{s}={b}" for s, b in free.bits.items()))
    return {"profile": prof, "plan": plan, "measured": meas, "allocation": out, "budgets": budgets, "totals": totals,
            "verify_ok": report.ok, "without_flash_budget": free.bits}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--port", default="qemu", help="qemu (default), qemu:fw.elf, /dev/ttyACM0, socket://host:port")
    ap.add_argument("--device", default="mps2-an386", help="the plan's device spec (cortex-m4, cortex-m7 for a real board)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--samples", type=int, default=64)
    a = ap.parse_args()
    main(a.workdir, a.port, a.device, a.repeats, a.warmup, a.samples)
    sys.exit(0)
