"""Solver benchmarks: speed and quality of bitalloc's greedy and ILP solvers and of `bitalloc solve`.

Run:  python benchmarks/solvers.py [--quick] [--repeats N]      (prints markdown tables)

Every time is the median of >= 3 runs (`--repeats`) and sits next to a baseline measured in the
same run, as a ratio. Data: synthetic multiple-choice knapsacks shaped like per-group LLM profiles,
candidates 2,3,4,5,6,8 bits, budget 3.25 average bits per weight; loss of unit n at b bits is
w_n · 4^-b · (1 + 5 % noise), w_n log-uniform over 4 decades (so ~97 % of units are convex), and
3 % of units have one random candidate not allowed (null); n_params are mixed group sizes.

1. Greedy at 10^3..10^6 units: the solver core (frontier + lp_greedy + fill) and the full
   `get_solver("greedy").solve(problem)`, against a naive greedy that fully argsorts all hull
   segments (same hull, same fill). Targets: core <= 0.3 s at 10^6 units; relative gap
   (objective - LP bound) / objective <= 1e-5. The LP bound is checked against scipy's HiGHS LP.
2. ILP at 100..3000 units, backends highs / pulp / cpsat, status must be `optimal`; baseline:
   `scipy.optimize.milp` on the same 0/1 model built with scipy.sparse. Targets (highs):
   <= 0.5 s at 1,000 units, <= 2 s at 3,000 units.
3. `bitalloc solve --budget 3.25` (console script, subprocess) on the embedded default profile,
   against `python -c "import numpy"`; checks torch is not imported. Target <= 0.5 s.
4. `--scale`: 10^4..10^7 units, each row in a fresh subprocess that loads the saved sidecar
   profile and solves it (wall, peak RSS (VmHWM), gap, status): auto (10 s limit), greedy,
   ILP (`--ilp-time-limit`); 10^7 with the streaming greedy only. Then the peers' formulations at
   10^3 and 10^4 (`peers.py`) against auto, and the greedy core at 10^6 (median of 5, with
   process time). Run: python benchmarks/solvers.py --scale [--ilp-time-limit 10]

Correctness checks (listed at the end): ILP status optimal, budgets recomputed from the returned
bits, no disallowed candidate chosen, greedy objective >= ILP optimum >= every lower bound,
ILP objective equal to scipy's MILP optimum, naive and fast greedy agree.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bitalloc import Problem, Profile
from bitalloc.data import default_profile_path
from bitalloc.solvers import get_solver
from bitalloc.solvers.frontier import frontier
from bitalloc.solvers.hull import fill, lp_greedy

BITS = [2, 3, 4, 5, 6, 8]
BUDGET = 3.25
GROUPS = np.array([576 * 128, 1536 * 128, 192 * 128, 576 * 64, 1536 * 64])  # per-group n_params
TOL = 1e-9
PROBLEMS: list[str] = []  # correctness problems found, printed at the end


def synthetic_profile(n: int, seed: int = 0, names=None, n_params=None) -> Profile:
    rng = np.random.default_rng(seed)
    n_params = rng.choice(GROUPS, n) if n_params is None else np.asarray(n_params)
    w = 10.0 ** rng.uniform(-3, 1, n)
    S = w[:, None] * 4.0 ** -np.array(BITS, float) * (1 + 0.05 * rng.standard_normal((n, len(BITS))))
    null = np.flatnonzero(rng.random(n) < 0.03)
    S[null, rng.integers(0, len(BITS), len(null))] = np.inf
    names = [f"model.layers.{i // 64}.mlp.down_proj:g{i % 64}" for i in range(n)] if names is None else names
    return Profile.from_columns(names, n_params, BITS, S, meta={"estimator": "synthetic", "seed": seed})


def timed(f, repeats: int, slow_s: float = float("inf")):
    """(median seconds, runs done, last result); stops after one run if that run took > slow_s."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t0)
        if times[0] > slow_s:
            break
    return statistics.median(times), len(times), out


def check(ok: bool, what: str):
    if not ok:
        PROBLEMS.append(what)
    return ok


# ---- greedy -------------------------------------------------------------------------------
def core(S, C, cap):
    r = lp_greedy(S, C, cap, frontier(S, C))
    return fill(S, C, cap, r.choice), r.bound


def naive_core(S, C, cap):
    """Baseline: same hull, then a full argsort of every segment's efficiency (ties in chain order)."""
    fr = frontier(S, C)
    rows = np.arange(len(S))
    room = cap - C[rows, fr.start].sum()
    e, dc, ds = fr.eff.ravel(), fr.dc.ravel(), fr.ds.ravel()
    idx = np.flatnonzero(e > 0)
    idx = idx[np.lexsort((idx // len(S), -e[idx]))]  # segments are (K-1, M): chain position = idx // M
    csum = np.cumsum(dc[idx])
    n_fit = int(np.searchsorted(csum, room, side="right"))
    take = np.zeros(e.size, bool)
    take[idx[:n_fit]] = True
    lb = S[rows, fr.start].sum() + ds[take].sum()
    if n_fit < len(idx):
        lb += (room - (csum[n_fit - 1] if n_fit else 0.0)) / dc[idx[n_fit]] * ds[idx[n_fit]]
    choice = fr.candidate(take.reshape(fr.eff.shape).sum(0))
    return fill(S, C, cap, choice), float(lb)


def mckp_model(S, C, cap):
    """The 0/1 model with scipy.sparse: objective, equality rows (one per unit), budget row.
    Each row's minimum loss is subtracted and the budget row scaled, as any careful model would.
    (scipy is imported here, not at the top: a `--row` process imports only what a user's does.)"""
    import scipy.sparse as sp

    M, _ = S.shape
    row, cand = np.nonzero(np.isfinite(S))
    rmin = np.where(np.isfinite(S), S, np.inf).min(1)
    c = S[row, cand] - rmin[row]
    scale = c.max() or 1.0
    a = C[row, cand]
    eq = sp.csr_array((np.ones(len(row)), (row, np.arange(len(row)))), shape=(M, len(row)))
    return c / scale, eq, sp.csr_array(a[None, :] / a.max()), cap / a.max(), scale, rmin.sum()


def scipy_lp(S, C, cap) -> float:
    from scipy.optimize import linprog

    c, eq, ub, ucap, scale, off = mckp_model(S, C, cap)
    r = linprog(c, A_ub=ub, b_ub=[ucap], A_eq=eq, b_eq=np.ones(eq.shape[0]), bounds=(0, 1), method="highs")
    return r.fun * scale + off


def scipy_milp(S, C, cap, time_limit=None) -> tuple[float, str]:
    from scipy.optimize import Bounds, LinearConstraint, milp

    c, eq, ub, ucap, scale, off = mckp_model(S, C, cap)
    cons = [LinearConstraint(eq, 1, 1), LinearConstraint(ub, -np.inf, ucap)]
    r = milp(c, constraints=cons, integrality=np.ones(len(c)), bounds=Bounds(0, 1),
             options={"mip_rel_gap": 1e-9, **({"time_limit": time_limit} if time_limit else {})})
    return r.fun * scale + off, r.message.split(":")[0] if r.status else "optimal"


def check_alloc(alloc, profile: Profile, label: str) -> np.ndarray:
    """Candidate index per unit recomputed from `alloc.bits`; checks the budget and allowed cells."""
    k_of = {b: k for k, b in enumerate(profile.bits)}
    choice = np.fromiter((k_of[alloc.bits[s]] for s in profile.names), np.int64, profile.n_units)
    avg = float((profile.n_params * np.asarray(profile.bits)[choice]).sum() / profile.n_params.sum())
    check(avg <= BUDGET * (1 + 1e-12), f"{label}: average bits {avg!r} recomputed from bits exceeds {BUDGET}")
    check(np.isfinite(profile.sensitivity[np.arange(len(choice)), choice]).all(),
          f"{label}: a null (not allowed) candidate was chosen")
    obj = float(profile.sensitivity[np.arange(len(choice)), choice].sum())
    check(abs(obj - alloc.objective) <= TOL * abs(obj), f"{label}: objective {alloc.objective} != {obj} recomputed")
    return choice


def bench_greedy(sizes, repeats):
    print("\n## 1. Greedy (LP-relaxation greedy on the convex hulls), budget 3.25 bits/weight\n")
    print("| units | core (s) | naive argsort (s) | speedup | full solve (s) | naive ÷ full | "
          "rel. gap | LP bound vs scipy HiGHS LP | scipy LP (s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        profile = synthetic_profile(n)
        problem = Problem.average_bits(profile, BUDGET)
        comp = problem.compile()
        S, C, cap = comp.S, comp.C[0], comp.caps[0]
        t_core, _, (choice, lb) = timed(lambda: core(S, C, cap), repeats)
        t_naive, _, (nchoice, nlb) = timed(lambda: naive_core(S, C, cap), repeats)
        obj = float(S[np.arange(n), choice].sum())
        check(abs(lb - nlb) <= 1e-9 * abs(nlb), f"greedy {n}: LP bound {lb!r} != naive {nlb!r}")
        check(abs(obj - S[np.arange(n), nchoice].sum()) <= 1e-9 * obj, f"greedy {n}: objective differs from naive")
        check(C[np.arange(n), choice].sum() <= cap * (1 + 1e-12), f"greedy {n}: core choice over budget")
        gap = (obj - lb) / obj
        full = "—"
        if n <= 10**6:
            t_full, _, alloc = timed(lambda: get_solver("greedy").solve(problem), repeats)
            check_alloc(alloc, profile, f"greedy {n} units")
            full = f"{t_full:.3f} | {t_naive / t_full:.2f}×"
        lpcmp, t_lp = "—", "—"
        if n <= 10**4:
            t, _, ref = timed(lambda: scipy_lp(S, C, cap), 1)
            lpcmp, t_lp = f"{abs(lb - ref) / abs(ref):.1e}", f"{t:.3f}"
        print(f"| {n:,} | {t_core:.3f} | {t_naive:.3f} | {t_naive / t_core:.2f}× | {full} | {gap:.1e} | {lpcmp} | {t_lp} |")
    print("\nTargets: core <= 0.3 s at 10^6 units; rel. gap <= 1e-5 (a single fractional item bounds "
          "the gap, so it shrinks as units grow). speedup = naive ÷ core.")


# ---- ILP ------------------------------------------------------------------------------------
def bench_ilp(sizes, repeats, time_limit, backends=("highs", "pulp", "cpsat")):
    print("\n## 2. ILP (exact), budget 3.25 bits/weight; baseline scipy.optimize.milp (HiGHS) on the same 0/1 model\n")
    print("| units | backend | runs | wall (s) | status | objective | scipy milp (s) | ours ÷ scipy | "
          "|obj − scipy obj| / obj | target |")
    print("|---:|---|---:|---:|---|---:|---:|---:|---:|---|")
    warm = Problem.average_bits(synthetic_profile(30, seed=1), BUDGET)  # imports and first-call setup, untimed
    for b in backends:
        get_solver("ilp", backend=b).solve(warm)
    scipy_milp(*(lambda c: (c.S, c.C[0], c.caps[0]))(warm.compile()))
    for n in sizes:
        profile = synthetic_profile(n, seed=1)
        problem = Problem.average_bits(profile, BUDGET)
        comp = problem.compile()
        S, C, cap = comp.S, comp.C[0], comp.caps[0]
        t_ref, _, (ref, ref_status) = timed(lambda: scipy_milp(S, C, cap, time_limit), repeats, slow_s=30)
        gchoice, glb = core(S, C, cap)
        gobj = float(S[np.arange(n), gchoice].sum())
        for b in backends:
            solver = lambda: get_solver("ilp", backend=b, time_limit=time_limit)  # noqa: E731
            t, runs, a = timed(lambda: solver().solve(problem), repeats, slow_s=20)
            label = f"ilp/{b} {n} units"
            check_alloc(a, profile, label)
            check(a.bound is None or a.bound <= a.objective * (1 + TOL), f"{label}: bound {a.bound} > objective")
            if check(a.status == "optimal", f"{label}: status {a.status!r} after {t:.0f} s (time limit "
                     f"{time_limit:g} s), not optimal; objective {a.objective!r}, bound {a.bound!r}, gap {a.gap!r}"):
                check(gobj >= a.objective * (1 - TOL), f"{label}: greedy objective {gobj!r} below the ILP optimum")
                check(glb <= a.objective * (1 + TOL), f"{label}: greedy LP bound {glb!r} above the ILP optimum")
                check(abs(a.objective - ref) <= 1e-7 * ref, f"{label}: objective {a.objective!r} != scipy milp {ref!r}")
            target = {1000: "<= 0.5 s", 3000: "<= 2 s"}.get(n, "") if b == "highs" else ""
            if target:
                target += " ✓" if t <= (0.5 if n == 1000 else 2.0) else " ✗"
            note = "" if runs == repeats else " (time limit)" if a.status == "time_limit" else " (slow)"
            print(f"| {n:,} | {b} | {runs}{note} | {t:.3f} | {a.status} | {a.objective:.9g} | {t_ref:.3f} | "
                  f"{t / t_ref:.2f}× | {abs(a.objective - ref) / ref:.1e} | {target} |")
        check(ref_status == "optimal", f"scipy milp {n} units: {ref_status}")
    print(f"\nruns: repeats actually timed (a backend whose first run exceeds 20 s is timed once); every ILP "
          f"run has a {time_limit:g} s time limit (`--ilp-time-limit`). Wall time covers compile, model build, "
          "greedy warm start, reduced-cost fixing, solve and the Allocation; scipy's covers model build and solve.")


# ---- CLI ------------------------------------------------------------------------------------
SMOLLM_SHAPES = {"self_attn.q_proj": (576, 576), "self_attn.k_proj": (192, 576), "self_attn.v_proj": (192, 576),
                 "self_attn.o_proj": (576, 576), "mlp.gate_proj": (1536, 576), "mlp.up_proj": (1536, 576),
                 "mlp.down_proj": (576, 1536)}


def cli_profile(tmp: Path) -> tuple[list[str], str]:
    """(extra CLI args, description): the embedded profile, else a synthetic 210-unit stand-in."""
    if default_profile_path().exists():
        return [], f"embedded {default_profile_path().name}"
    names = [f"model.layers.{i}.{m}" for i in range(30) for m in SMOLLM_SHAPES]
    sizes = [r * c for _ in range(30) for r, c in SMOLLM_SHAPES.values()]
    path = synthetic_profile(210, seed=2, names=names, n_params=sizes).save(tmp / "synthetic-210.profile.json")
    return ["--profile", str(path)], f"SYNTHETIC 210-unit stand-in ({default_profile_path().name} not found)"


def bench_cli(repeats):
    exe = Path(sys.executable).parent / "bitalloc"
    print("\n## 3. `bitalloc solve --budget 3.25` (console script, subprocess)\n")
    with tempfile.TemporaryDirectory() as tmp:
        extra, desc = cli_profile(Path(tmp))
        cmd = [str(exe), "solve", "--budget", str(BUDGET), "--json", *extra]
        base = [sys.executable, "-c", "import numpy"]
        run = lambda c: subprocess.run(c, capture_output=True, text=True, check=True)  # noqa: E731
        t, _, out = timed(lambda: run(cmd), max(5, repeats))
        tb, _, _ = timed(lambda: run(base), max(5, repeats))
        alloc = json.loads(out.stdout)
        check(alloc["status"] == "optimal", f"cli: status {alloc['status']}")
        check(alloc["avg_bits"] <= BUDGET * (1 + 1e-12), f"cli: avg_bits {alloc['avg_bits']} > {BUDGET}")
        probe = ("import sys, json; from bitalloc.cli import main; rc = main(sys.argv[1:]); "
                 "print(json.dumps([rc, sorted(m for m in ('torch', 'scipy', 'pandas', 'ortools', 'pulp', "
                 "'highspy', 'rich', 'matplotlib') if m in sys.modules)]), file=sys.stderr)")
        r = subprocess.run([sys.executable, "-X", "importtime", "-c", probe, *cmd[1:]], capture_output=True, text=True)
        lines = r.stderr.strip().splitlines()
        rc, heavy = json.loads(lines[-1])
        cum = {}  # package -> cumulative import time (us) of its first, outermost import
        for x in lines[:-1]:
            parts = x.split("|")
            if x.startswith("import time:") and parts[1].strip().isdigit():
                cum.setdefault(parts[2].strip(), int(parts[1]))
        top = [(cum[m], m) for m in ("bitalloc", "numpy", "rich", "highspy", "bitalloc.solvers.ilp") if m in cum]
    check(rc == 0 and "torch" not in heavy, f"cli: rc {rc}, heavy modules imported {heavy}")
    print(f"profile: {desc}\n")
    print("| command | median of 5 (s) | baseline `python -c \"import numpy\"` (s) | ratio | torch imported | target |")
    print("|---|---:|---:|---:|---|---|")
    print(f"| `bitalloc {' '.join(cmd[1:4])} --json` | {t:.3f} | {tb:.3f} | {t / tb:.2f}× | "
          f"{'yes ✗' if 'torch' in heavy else 'no'} | <= 0.5 s {'✓' if t <= 0.5 else '✗'} |")
    print(f"\nheavy modules loaded: {', '.join(heavy) or 'none'}; import time (cumulative, -X importtime): "
          f"{', '.join(f'{name} {us / 1e6:.3f} s' for us, name in top)}")


# ---- at scale ---------------------------------------------------------------------------------
def fast_names(n: int):
    """The generator's unit names as a columnar Names, without a list of n strings at once."""
    from bitalloc.columns import Names

    parts = [Names.from_list([f"model.layers.{i // 64}.mlp.down_proj:g{i % 64}" for i in range(a, min(a + 10**6, n))]).blob
             for a in range(0, n, 10**6)]
    return Names(np.concatenate([x for p in parts for x in (p, np.array([10], np.uint8))][:-1]))


def make_profile(n: int, path: Path):
    """Generate the n-unit synthetic profile and save it with its sidecar (run in a subprocess)."""
    synthetic_profile(n, names=fast_names(n)).save(path, sidecar=True)


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM, MB). Not ru_maxrss: Linux carries that across
    fork+exec, so a row would report its parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) / 1024 for x in f if x.startswith("VmHWM:"))


def scale_row(solver: str, path: str, time_limit: float | None) -> dict:
    """One row, in this (fresh) process: load, solve, measure. Printed as JSON."""
    import resource

    t0, c0 = time.perf_counter(), time.process_time()
    if solver == "stream":
        from bitalloc.solvers.stream import stream_greedy

        a = stream_greedy(path, BUDGET)
        load_s = 0.0
    else:
        p = Profile.load(path)
        load_s = time.perf_counter() - t0
        a = get_solver(solver, **({"time_limit": time_limit} if time_limit else {})).solve(Problem.average_bits(p, BUDGET))
    out = Path(path).with_name(f"alloc-{solver}.json")
    a.save(out, force=True)  # the whole job: load, solve, write the allocation (with its .npz sidecar)
    out.unlink()
    out.with_suffix(".npz").unlink(missing_ok=True)
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, "load": load_s, "solve": a.wall_s,
            "rss": peak_rss_mb(),
            "rss_children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "status": a.status, "gap": a.gap, "objective": a.objective, "avg_bits": a.avg_bits}


ROW_TIMEOUT = 150  # s; the in-process ILP overruns its limit by minutes at 10^6 (HiGHS presolve)


def bench_scale(ilp_limit: float, sizes=(10**4, 10**5, 10**6, 10**7)):
    me = [sys.executable, str(Path(__file__).resolve())]
    print("\n## 4. At scale: each row a fresh process (load the sidecar profile, solve), budget 3.25\n")
    print("| units | solver | wall (s) | of which solve (s) | CPU (s) | peak RSS (MB) | child RSS (MB) | status | rel. gap |")
    print("|---:|---|---:|---:|---:|---:|---:|---|---:|")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for n in sizes:
            path = Path(tmp) / f"p{n}.json"
            subprocess.run([*me, "--make", str(n), str(path)], check=True)
            rows = [("stream", None)] if n >= 10**7 else [("auto", 10.0), ("greedy", None), ("ilp", ilp_limit)]
            if n == 10**6:
                rows.append(("stream", None))
            for solver, lim in rows:
                cmd = [*me, "--row", solver, str(path), str(lim or 0)]
                try:
                    r = subprocess.run(cmd, capture_output=True, text=True, timeout=ROW_TIMEOUT)
                except subprocess.TimeoutExpired:
                    print(f"| {n:,} | {solver} ({lim:g} s limit) | killed after {ROW_TIMEOUT} s | | | | | not done | |", flush=True)
                    check(solver == "ilp", f"{solver} {n}: no answer in {ROW_TIMEOUT} s")
                    continue
                if r.returncode:
                    print(f"| {n:,} | {solver} | failed: {r.stderr.strip().splitlines()[-1][:80]} |||||||")
                    continue
                d = json.loads(r.stdout.strip().splitlines()[-1])
                label = {"stream": "greedy, streamed from disk", "auto": "auto (10 s)", "ilp": f"ilp ({ilp_limit:g} s limit)"}.get(solver, solver)
                print(f"| {n:,} | {label} | {d['wall']:.2f} | {d['solve']:.2f} | {d['cpu']:.2f} | {d['rss']:.0f} | "
                      f"{d['rss_children']:.0f} | {d['status']} | {d['gap']:.1e} |", flush=True)
                if lim:
                    check(d["solve"] <= 1.1 * lim + 1.0 or solver == "ilp", f"{solver} {n}: solve {d['solve']:.1f} s over its {lim} s limit")
                check(d["avg_bits"] <= BUDGET * (1 + 1e-12), f"{solver} {n}: over budget")
            path.unlink()
            path.with_suffix(".npz").unlink()
    print("\nwall: the whole child process after imports (profile load + solve); solve: Allocation.wall_s. "
          "Peak RSS: VmHWM of the row's process; child RSS: ru_maxrss of its HiGHS child processes (auto), "
          "an upper bound: Linux carries the parent's peak into a child across fork+exec.")


def bench_core(n=10**6, repeats=5):
    profile = synthetic_profile(n)
    comp = Problem.average_bits(profile, BUDGET).compile()
    S, C, cap = comp.S, comp.C[0], comp.caps[0]
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        core(S, C, cap)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    print(f"\nGreedy core (frontier + lp_greedy + fill) at {n:,} x 6: median wall {statistics.median(walls):.3f} s, "
          f"median process time {statistics.median(cpus):.3f} s, min wall {min(walls):.3f} s over {repeats} runs; "
          f"load average {os.getloadavg()[0]:.2f}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--make":
        return make_profile(int(sys.argv[2]), Path(sys.argv[3]))
    if len(sys.argv) > 1 and sys.argv[1] == "--row":
        print(json.dumps(scale_row(sys.argv[2], sys.argv[3], float(sys.argv[4]) or None)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median; >= 3 recommended)")
    ap.add_argument("--ilp-time-limit", type=float, default=120.0, help="seconds per ILP solve (default 120)")
    ap.add_argument("--scale", action="store_true", help="only section 4 (10^4..10^7 units) and the peers")
    ap.add_argument("--sizes", default="10000,100000,1000000,10000000", help="--scale: unit counts")
    args = ap.parse_args()
    if args.scale:
        print(f"$ python benchmarks/solvers.py {' '.join(sys.argv[1:])}; load average {os.getloadavg()[0]:.2f}")
        bench_scale(args.ilp_time_limit, [int(x) for x in args.sizes.split(",")])
        bench_core()
        from peers import bench_peers

        bench_peers()
        print("\n## Checks\n")
        print("\n".join(f"- PROBLEM: {p}" for p in PROBLEMS) if PROBLEMS else "- all correctness checks passed")
        return 1 if PROBLEMS else 0
    print(f"$ python benchmarks/solvers.py {' '.join(sys.argv[1:])}".rstrip())
    import scipy

    print(f"\npython {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
          f"{platform.machine()} {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start, "
          f"median of {args.repeats} runs")
    bench_greedy([10**3, 10**4] if args.quick else [10**3, 10**4, 10**5, 10**6], args.repeats)
    bench_ilp([100, 300] if args.quick else [100, 300, 1000, 3000], args.repeats, args.ilp_time_limit)
    bench_cli(args.repeats)
    print("\n## Checks\n")
    print("\n".join(f"- PROBLEM: {p}" for p in PROBLEMS) if PROBLEMS else "- all correctness checks passed")
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
