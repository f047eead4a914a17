"""Solvers under several hardware constraints at once: time with 1, 2 and 3 constraints.

Run:  python benchmarks/hwcost.py [--quick] [--repeats N] [--ilp-time-limit S] [--backends highs,cpsat]
      python benchmarks/hwcost.py --latency latency --energy mcu --device cortex-m7   (registered models)

Data: the synthetic per-group profiles of benchmarks/solvers.py (candidates 2,3,4,5,6,8 bits,
loss w·4^-b with noise, 3 % nulls, mixed group sizes), each unit doing MACs = n_params · 16 tokens.
Constraints, added one at a time:
  1. memory: average nominal bits per weight <= 3.25 (bitalloc's MemoryCost);
  2. latency_us: a roofline per unit, max(weight bytes / bandwidth, MACs / peak(b)) on an
     illustrative mobile-CPU-class device (25 GB/s, 0.5 TMAC/s int8; 2, 4 and 8 bits unpack at
     full rate, the bit-unaligned 3, 5 and 6 at half rate), so latency is not monotone in bits;
  3. energy_uj: weight bytes · 160 pJ/byte (DRAM, Horowitz ISSCC 2014: 640 pJ per 32-bit read) +
     MACs · (0.03 + 0.2·(b/8)²) pJ (add + a multiplier growing with width squared).
Models 2 and 3 are STAND-INS defined here (small CostModel subclasses) until the registered
`latency`/`mcu` models land; `--latency NAME --energy NAME --device D` swaps in registered models
by name (`get_cost_model(NAME, device=D)`), which is the only line that changes.
Budgets are set so every constraint binds: the 2nd at 95 % of the way from its own minimum to its
total at the 1-constraint optimum, the 3rd likewise at the 2-constraint optimum (found untimed).

Each time is the median of `--repeats` runs (a run over `slow` seconds is timed once), with its
ratio to the 1-constraint time of the same solver and size measured in the same run; the gap is
(objective − certified bound) / objective. Checks: every total recomputed from the returned bits
by the cost model fits its budget; greedy bound <= ILP objective <= greedy objective.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np

from bitalloc import Constraint, Problem, Profile
from bitalloc.hwcost import get_cost_model
from bitalloc.hwcost.base import CostModel
from bitalloc.hwcost.memory import MemoryCost
from bitalloc.solvers import get_solver

from solvers import PROBLEMS, check, synthetic_profile, timed

TOKENS = 16
BUDGET = 3.25


class Roofline(CostModel):
    """Stand-in latency (µs per inference): max(bytes / bandwidth, MACs / peak(b)) per unit."""

    resource = "latency_us"
    unit = "us"

    def __init__(self, bandwidth: float = 25e9, peak_int8: float = 0.5e12, slow_bits=(3, 5, 6), slow: float = 0.5):
        self.bandwidth, self.peak, self.slow_bits, self.slow = bandwidth, peak_int8, set(slow_bits), slow

    def costs(self, profile):
        b = np.asarray(profile.bits, float)
        rate = self.peak * np.where(np.isin(b, list(self.slow_bits)), self.slow, 1.0)
        memory = profile.n_params[:, None] * b[None, :] / 8 / self.bandwidth
        compute = profile.macs[:, None] / rate[None, :]
        return np.maximum(memory, compute) * 1e6


class Energy(CostModel):
    """Stand-in energy (µJ per inference): DRAM bytes plus MACs at a width-dependent energy."""

    resource = "energy_uj"
    unit = "uJ"

    def __init__(self, pj_per_byte: float = 160.0, pj_add: float = 0.03, pj_mul8: float = 0.2):
        self.byte, self.add, self.mul = pj_per_byte, pj_add, pj_mul8

    def costs(self, profile):
        b = np.asarray(profile.bits, float)
        mac = self.add + self.mul * (b / 8) ** 2
        return (profile.n_params[:, None] * b[None, :] / 8 * self.byte + profile.macs[:, None] * mac[None, :]) * 1e-6


def extra_models(args) -> list[CostModel]:
    """Constraints 2 and 3: the stand-ins, or registered models by name."""
    if args.latency:
        return [get_cost_model(args.latency, device=args.device), get_cost_model(args.energy, device=args.device)]
    return [Roofline(), Energy()]


def profile_of(n: int) -> Profile:
    p = synthetic_profile(n)
    return Profile.from_columns(p.names, p.n_params, p.bits, p.sensitivity, macs=p.n_params * TOKENS, meta=p.meta)


def binding_budget(model: CostModel, p: Profile, choice: np.ndarray, frac: float = 0.95) -> float:
    lo = Problem(p, [Constraint(model, 1e300)]).compile().min_totals()[0] / model.scale(p)
    return float(lo + frac * (model.total(p, choice) - lo))


def problems(p: Profile, models: list[CostModel]) -> list[Problem]:
    """1, 2 and 3 constraints, each added one binding at the previous problem's greedy answer."""
    cons = [Constraint(MemoryCost(), BUDGET)]
    out = [Problem(p, list(cons))]
    for m in models:
        a = get_solver("greedy").solve(out[-1])
        cons.append(Constraint(m, binding_budget(m, p, a.choice(p))))
        out.append(Problem(p, list(cons)))
    return out


def verify(a, prob: Problem, label: str):
    p = prob.profile
    if not a.bits:
        check(False, f"{label}: status {a.status}, no allocation")
        return
    choice = a.choice(p)
    for c in prob.constraints:
        t = c.cost.total(p, choice)
        check(t <= c.budget * (1 + 1e-9), f"{label}: {c.cost.resource} {t!r} > budget {c.budget!r}")
    check(a.bound is None or a.bound <= a.objective * (1 + 1e-9), f"{label}: bound above objective")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1,000 units only")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ilp-time-limit", type=float, default=60.0, help="seconds per ILP solve (default 60)")
    ap.add_argument("--backends", default="highs", help="ILP backends, comma-separated (default highs)")
    ap.add_argument("--sizes", default="1000,100000", help="unit counts, comma-separated")
    ap.add_argument("--slow", type=float, default=20.0, help="a first run longer than this is timed once")
    ap.add_argument("--latency", help="registered cost model name for constraint 2 (default: the stand-in roofline)")
    ap.add_argument("--energy", help="registered cost model name for constraint 3 (with --latency)")
    ap.add_argument("--device", help="device for registered models")
    args = ap.parse_args()
    print(f"$ python benchmarks/hwcost.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"\npython {platform.python_version()}, numpy {np.__version__}, {platform.machine()} {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start, median of {args.repeats} runs, "
          f"ILP time limit {args.ilp_time_limit:g} s\n")
    models = extra_models(args)
    names = ["avg_bits"] + [m.resource for m in models]
    print("| units | constraints | solver | runs | wall (s) | ÷ 1 constraint | status | objective | gap | rows |")
    print("|---:|---|---|---:|---:|---:|---|---:|---:|---:|")
    warm = problems(profile_of(200), models)[-1]  # imports and first-call setup, untimed
    get_solver("greedy").solve(warm)
    get_solver("ilp").solve(warm)
    for n in [1000] if args.quick else [int(x) for x in args.sizes.split(",")]:
        p = profile_of(n)
        probs = problems(p, models)
        base = {}
        for r, prob in enumerate(probs, 1):
            res = {}
            makers = [("greedy", lambda: get_solver("greedy"))] + [
                (f"ilp/{b}", lambda b=b: get_solver("ilp", backend=b, time_limit=args.ilp_time_limit))
                for b in args.backends.split(",")]
            for label, make in makers:
                t, runs, a = timed(lambda: make().solve(prob), args.repeats, slow_s=args.slow)
                verify(a, prob, f"{label} {n} units {r} constraints")
                res[label] = a
                base.setdefault(label, t)
                gap = "—" if a.gap is None else f"{a.gap:.1e}"
                note = "" if runs == args.repeats else " (slow)"
                rows = a.meta.get("rows", r)
                print(f"| {n:,} | {r}: {', '.join(names[:r])} | {label} | {runs}{note} | {t:.3f} | {t / base[label]:.1f}× | "
                      f"{a.status} | {a.objective:.6g} | {gap} | {rows} |")
            g = res["greedy"]
            for label, i in res.items():
                if label != "greedy" and g.bits and i.bits:
                    check(g.bound <= i.objective * (1 + 1e-9), f"{n} units {r} constraints: greedy bound {g.bound} > {label} {i.objective}")
                    if i.status == "optimal":
                        check(i.objective <= g.objective * (1 + 1e-9), f"{n} units {r} constraints: {label} optimum above greedy")
    print("\nbudgets: avg_bits <= 3.25; the others bind by construction (see the header). gap: relative, "
          "(objective − certified lower bound) / objective; greedy's bound is the LP value (1 constraint) or the "
          "best Lagrangian value (several); the ILP's is the backend's dual bound. `time_limit` means the ILP stopped "
          "at --ilp-time-limit with the gap shown.")
    print("\n## Checks\n")
    print("\n".join(f"- PROBLEM: {x}" for x in PROBLEMS) if PROBLEMS else "- all correctness checks passed")
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
