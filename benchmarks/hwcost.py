"""Solvers under several hardware constraints at once: time with 1, 2 and 3 constraints.

Run:  python benchmarks/hwcost.py [--quick] [--repeats N] [--ilp-time-limit S] [--backends highs,cpsat]
                                  [--device rpi4-a72] [--ilp-max-units N]

Data: the synthetic per-group profiles of benchmarks/solvers.py (candidates 2,3,4,5,6,8 bits,
loss w·4^-b with noise, 3 % nulls) laid out like an LLM, so the registered cost models can price
them: blocks of q/k/v/o (1024×1024, k and v 256×1024), gate/up (2816×1024) and down (1024×2816)
linears, each cut into groups of 128 input columns (one unit per group: rows = output channels,
cols = 128), MACs = weights · 16 tokens. Constraints, added one at a time (bitalloc's registered
models, `get_cost_model`):
  1. memory: average nominal bits per weight <= 3.25 (`memory`);
  2. latency_us: `latency` on --device (default rpi4-a72: int8 runs at full rate, 2-7 bits pay
     for unpacking, so latency is not monotone in bits);
  3. flash_kb: `mcu` flash on --device (packed weights + per-channel int32 bias and scale).
Budgets are set so every constraint binds: the 2nd at 95 % of the way from its own minimum to its
total at the 1-constraint greedy answer, the 3rd likewise at the 2-constraint one (found untimed).

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


MODULES = [("self_attn.q_proj", 1024, 1024), ("self_attn.k_proj", 256, 1024), ("self_attn.v_proj", 256, 1024),
           ("self_attn.o_proj", 1024, 1024), ("mlp.gate_proj", 2816, 1024), ("mlp.up_proj", 2816, 1024),
           ("mlp.down_proj", 1024, 2816)]
GROUP = 128  # input columns per unit


def extra_models(device: str) -> list[CostModel]:
    """Constraints 2 and 3: the registered latency and flash models on `device`."""
    return [get_cost_model("latency", device=device, unit="us"),
            get_cost_model("mcu", metric="flash", device=device, unit="kb")]


def profile_of(n: int) -> Profile:
    """n group units of LLM-like blocks (the last layer may be cut short), scores as in solvers.py."""
    layers, rows = [], []
    block = 0
    while len(layers) < n:
        for mod, out_f, in_f in MODULES:
            k = in_f // GROUP
            layers += [f"model.layers.{block}.{mod}"] * k
            rows += [out_f] * k
        block += 1
    layers, rows = layers[:n], np.array(rows[:n], dtype=np.int64)
    names = [f"{s}:g{i}" for i, s in enumerate(layers)]
    p = synthetic_profile(n, names=names, n_params=rows * GROUP)
    return Profile.from_columns(p.names, p.n_params, p.bits, p.sensitivity, layers=layers, rows=rows,
                                cols=np.full(n, GROUP), macs=p.n_params * TOKENS, meta=p.meta)


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
    ap.add_argument("--device", default="rpi4-a72", help="device of the latency and flash models (rpi4-a72)")
    ap.add_argument("--ilp-max-units", type=int, default=None, help="run the ILP only up to this many units")
    args = ap.parse_args()
    print(f"$ python benchmarks/hwcost.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"\npython {platform.python_version()}, numpy {np.__version__}, {platform.machine()} {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start, median of {args.repeats} runs, "
          f"ILP time limit {args.ilp_time_limit:g} s\n")
    models = extra_models(args.device)
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
            ilp = args.ilp_max_units is None or n <= args.ilp_max_units
            makers = [("greedy", lambda: get_solver("greedy"))] + [
                (f"ilp/{b}", lambda b=b: get_solver("ilp", backend=b, time_limit=args.ilp_time_limit))
                for b in (args.backends.split(",") if ilp else [])]
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
    print(f"\nconstraints 2 and 3 on {args.device}. budgets: avg_bits <= 3.25; the others bind by construction (see the header). gap: relative, "
          "(objective − certified lower bound) / objective; greedy's bound is the LP value (1 constraint) or the "
          "best Lagrangian value (several); the ILP's is the backend's dual bound. `time_limit` means the ILP stopped "
          "at --ilp-time-limit with the gap shown.")
    print("\n## Checks\n")
    print("\n".join(f"- PROBLEM: {x}" for x in PROBLEMS) if PROBLEMS else "- all correctness checks passed")
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
