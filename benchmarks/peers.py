"""The peers' allocation formulations, rebuilt on the benchmark generator, against `auto`.

- HAWQ-V3 style: PuLP model, one binary per (unit, bits), `lpSum` rows, solved by GLPK
  (`GLPK_CMD`; needs `apt-get install glpk-utils`).
- ModelOpt AutoQuantize style: the same PuLP model solved by CBC (`PULP_CBC_CMD`, bundled).
- ExLlamaV2 style: simulated annealing over per-unit options under the bit budget (random unit,
  random option, Metropolis acceptance, geometric cooling), here a pure-Python port of the scheme,
  not ExLlamaV2's C++ (its time is not comparable; its objective is).
These are re-implementations of the published formulations, not the projects' code.
"""
from __future__ import annotations

import math
import shutil
import time

import numpy as np

from solvers import BITS, BUDGET, synthetic_profile

import bitalloc
from bitalloc import Problem


def pulp_model(S, C, cap):
    import pulp

    M, K = S.shape
    prob = pulp.LpProblem("bits", pulp.LpMinimize)
    x = {(i, k): pulp.LpVariable(f"x_{i}_{k}", cat="Binary") for i in range(M) for k in range(K) if np.isfinite(S[i, k])}
    prob += pulp.lpSum(float(S[i, k]) * v for (i, k), v in x.items())
    for i in range(M):
        prob += pulp.lpSum(x[i, k] for k in range(K) if (i, k) in x) == 1
    prob += pulp.lpSum(float(C[i, k]) * v for (i, k), v in x.items()) <= float(cap)
    return prob, x


def pulp_solve(S, C, cap, solver, time_limit):
    import pulp

    prob, x = pulp_model(S, C, cap)
    s = pulp.GLPK_CMD(msg=0, timeLimit=time_limit) if solver == "glpk" else pulp.PULP_CBC_CMD(msg=0, timeLimit=time_limit)
    prob.solve(s)
    choice = np.zeros(len(S), np.int64)
    for (i, k), v in x.items():
        if (v.value() or 0) > 0.5:
            choice[i] = k
    return choice, pulp.LpStatus[prob.status]


def anneal(S, C, cap, iters_per_unit=200, seed=0):
    rng = np.random.default_rng(seed)
    M, K = S.shape
    ok = np.isfinite(S)
    choice = np.argmin(np.where(ok, C, np.inf), 1)
    cost = float(C[np.arange(M), choice].sum())
    scale = float(np.nanmean(np.where(ok, S, np.nan)))
    T, n = 1.0, iters_per_unit * M
    cool = (1e-4) ** (1.0 / n)
    us, ks, rs = rng.integers(0, M, n), rng.integers(0, K, n), rng.random(n)
    for i, k, r in zip(us.tolist(), ks.tolist(), rs.tolist()):
        T *= cool
        if not ok[i, k]:
            continue
        c = choice[i]
        dc = C[i, k] - C[i, c]
        if cost + dc > cap:
            continue
        d = (S[i, k] - S[i, c]) / scale
        if d < 0 or r < math.exp(-d / T):
            choice[i] = k
            cost += dc
    return choice, "annealed"


def bench_peers(sizes=(10**3, 10**4), time_limit=30):
    print("\n## 5. Peers' formulations vs auto (same problems, budget 3.25)\n")
    print("| units | method | wall (s) | status | objective | objective ÷ auto's | wall ÷ auto's |")
    print("|---:|---|---:|---|---:|---:|---:|")
    for n in sizes:
        p = synthetic_profile(n, seed=1)
        prob = Problem.average_bits(p, BUDGET)
        comp = prob.compile()
        S, C, cap = comp.S, comp.C[0], comp.caps[0]
        t = time.perf_counter()
        a = bitalloc.solve(prob)
        ta = time.perf_counter() - t
        print(f"| {n:,} | bitalloc auto | {ta:.3f} | {a.status} (gap {a.gap:.0e}) | {a.objective:.9g} | 1 | 1 |")
        runs = [("HAWQ-V3 style: PuLP + GLPK", lambda: pulp_solve(S, C, cap, "glpk", time_limit))] if shutil.which("glpsol") else []
        runs += [("ModelOpt style: PuLP + CBC", lambda: pulp_solve(S, C, cap, "cbc", time_limit)),
                 ("ExLlamaV2 style: annealing (Python port)", lambda: anneal(S, C, cap))]
        for label, f in runs:
            t = time.perf_counter()
            choice, status = f()
            tw = time.perf_counter() - t
            obj = float(S[np.arange(n), choice].sum())
            over = float(C[np.arange(n), choice].sum()) > cap * (1 + 1e-9)
            print(f"| {n:,} | {label} | {tw:.3f} | {status}{' OVER BUDGET' if over else ''} | {obj:.9g} | "
                  f"{obj / a.objective:.6f} | {tw / ta:.1f}× |", flush=True)
    if not shutil.which("glpsol"):
        print("\nHAWQ-V3 style row skipped: glpsol not installed (apt-get install glpk-utils).")
    print(f"\nPeers' time limit {time_limit} s each.")


if __name__ == "__main__":
    bench_peers()
