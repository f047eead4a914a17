"""DMMV benchmarks: the min-max solver against the exact answer, and DMMV rounding against
round-to-nearest on a real model.

Run:  OMP_NUM_THREADS=1 python benchmarks/dmmv.py [--quick] [--repeats 3] [--skip-solver] [--skip-quantizer]
      [--model minilm] [--bits 3] [--samples 32] [--ilp-limit 300]        (prints markdown tables)

1. Solver, objective `max` (worst unit's loss), synthetic per-group profiles of benchmarks/solvers.py
   (candidates 2,3,4,5,6,8 bits) at 10^3, 10^4, 10^5 units:
   - one budget (3.25 bits/weight): `dmmv` (its exact threshold bisection), `dmmv exact=False` (the
     surrogate-certified threshold search with the torch ALNS), and the ILP with the auxiliary t;
   - two budgets (3.25 bits/weight and a latency budget halfway between the least latency and the
     latency of the bits-only optimum; 3-, 5- and 6-bit kernels are slower than 4-bit ones, so the
     budgets pull apart): `dmmv` (ALNS) against the ILP.
   Every time is the median of `--repeats` runs (one run when a run exceeds 60 s) and its ratio
   to the exact method's time (bisection for one budget, the ILP for two) in the same run; the gap
   is (objective − exact optimum) / optimum. Budgets are recomputed from the returned bits.
2. Quantizer: every linear layer of the model at `--bits` bits, group 128, asymmetric integer
   zero-point; each layer rounded by round-to-nearest and by `dmmv` on the same grid from the
   unquantized model's calibration inputs. Per layer: max and mean |output error| over
   calibration and held-out inputs (Σ_j x_j (Q(w)_j − w_j), every output and position); then the
   model's loss (calibration and held-out) and quality with all layers quantized each way.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from solvers import PROBLEMS, check, synthetic_profile, timed  # noqa: E402  (shared with the solver benchmark)

from bitalloc import Constraint, Problem  # noqa: E402
from bitalloc.hwcost.base import CostModel  # noqa: E402
from bitalloc.hwcost.memory import MemoryCost  # noqa: E402
from bitalloc.solvers import get_solver  # noqa: E402
from bitalloc.solvers.minmax import bisect  # noqa: E402

BUDGET = 3.25


class Latency(CostModel):
    """ns per weight by bit-width (2,3,4,5,6,8): odd and 6-bit widths unpack slower than 4-bit."""

    resource = "latency"
    unit = "ns/weight"
    NS = {2: 0.30, 3: 0.45, 4: 0.35, 5: 0.55, 6: 0.55, 8: 0.50}

    def costs(self, p):
        return p.n_params[:, None] * np.array([self.NS[b] for b in p.bits])[None, :]

    def scale(self, p):
        return float(p.n_params.sum())


def checked(a, p, cons, label):
    if a.ok:
        choice = a.choice(p)
        for c in cons:
            check(c.cost.total(p, choice) <= c.budget * (1 + 1e-9), f"{label}: {c.cost.resource} over budget")
    return a


def two_budget_problem(p):
    one = Problem(p, [Constraint(MemoryCost(), BUDGET)], objective="max")
    comp = one.compile()
    t = bisect(comp.S, comp.C[0], comp.caps[0])
    lat = Latency()
    L = lat.costs(p) / lat.scale(p)
    rows = np.arange(p.n_units)
    l_opt = float(L[rows, t.choice].sum())
    l_min = float(np.where(np.isfinite(comp.S), L, np.inf).min(1).sum())
    cons = [Constraint(MemoryCost(), BUDGET), Constraint(lat, l_min + 0.5 * (l_opt - l_min))]
    return Problem(p, cons, objective="max"), cons


def bench_solver(sizes, repeats, ilp_limit):
    import torch  # noqa: F401  (imported once here, not inside the first timed run)

    get_solver("dmmv", exact=False).solve(two_budget_problem(synthetic_profile(50, seed=9))[0])  # warm-up
    print("\n## 1. DMMV solver, objective max (worst unit's loss)\n")
    print("| units | budgets | method | runs | wall (s) | × exact method | status | objective | gap vs exact | "
          "certified bound gap |")
    print("|---:|---|---|---:|---:|---:|---|---:|---:|---:|")
    for n in sizes:
        p = synthetic_profile(n, seed=1)
        one = Problem(p, [Constraint(MemoryCost(), BUDGET)], objective="max")
        two, cons2 = two_budget_problem(p)
        for label, prob, cons, methods in (
                ("bits", one, one.constraints,
                 [("bisection (dmmv)", lambda q: get_solver("dmmv").solve(q)),
                  ("dmmv ALNS (exact=False)", lambda q: get_solver("dmmv", exact=False).solve(q)),
                  ("ilp highs (aux. t)", lambda q: get_solver("ilp", time_limit=ilp_limit).solve(q))]),
                ("bits + latency", two, cons2,
                 [("ilp highs (aux. t)", lambda q: get_solver("ilp", time_limit=ilp_limit).solve(q)),
                  ("dmmv ALNS", lambda q: get_solver("dmmv").solve(q))])):
            rows, ref_t, exact = [], None, None
            for name, run in methods:
                t, k, a = timed(lambda run=run: run(prob), repeats, slow_s=60.0)
                checked(a, p, cons, f"{n} {label} {name}")
                if ref_t is None:
                    ref_t = t
                    if a.status == "optimal":
                        exact = a.objective
                rows.append((name, k, t, a))
            for name, k, t, a in rows:
                gap = f"{(a.objective - exact) / exact:.1e}" if exact and a.objective is not None else "— (no proof)"
                if exact is not None:
                    check(a.objective >= exact * (1 - 1e-12), f"{n} {label} {name}: below the optimum")
                    check(a.bound is None or a.bound <= exact * (1 + 1e-12), f"{n} {label} {name}: bound above optimum")
                cert = f"{a.gap:.1e}" if a.gap is not None else "—"
                print(f"| {n:,} | {label} | {name} | {k} | {t:.3f} | {t / ref_t:.2f}× | {a.status} | "
                      f"{a.objective:.6g} | {gap} | {cert} |")
    print("\n'× exact method': wall time over the first method's of the same row group (bisection for one "
          "budget, which is proven optimal; the ILP for two, when it proves optimality). 'gap vs exact': "
          "(objective − exact optimum) / optimum. 'certified bound gap': (objective − the solver's own "
          "lower bound) / objective.")


# ---- 2. quantizer ---------------------------------------------------------------------------
def layer_inputs(task, batches, layers) -> dict[str, np.ndarray]:
    """Inputs of each Linear in `layers` over `batches` as (positions, in_features) float32."""
    import torch

    mods = task.modules()
    got: dict[str, list] = {n: [] for n in layers}
    hooks = [mods[n].register_forward_hook(lambda m, a, o, n=n: got[n].append(a[0].reshape(-1, a[0].shape[-1])))
             for n in layers]
    try:
        with torch.no_grad():
            for b in batches:
                task.loss(task.model, b)
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v).float().numpy() for n, v in got.items()}


def model_quality(task):
    return task.mean_loss(), task.mean_loss(task.held_out), task.quality(task.model)


def bench_quantizer(model: str, bits: int, samples: int, seq_len: int, layers_limit: int | None):
    import torch

    from bitalloc.zoo.demo import load_task
    from bitalloc.quant.integer import IntQuant
    from bitalloc.quant.quantizers import get_quantizer

    torch.manual_seed(0)
    task = load_task(model, samples=samples, seq_len=seq_len)
    layers = [n for n in task.layers if isinstance(task.modules()[n], torch.nn.Linear)]
    if layers_limit:
        layers = layers[:layers_limit]
    mods = task.modules()
    Xc = layer_inputs(task, task.calib, layers)
    Xh = layer_inputs(task, task.held_out, layers)
    quant = IntQuant(bits, 128)
    originals = {n: mods[n].weight.detach().clone() for n in layers}
    print(f"\n## 2. DMMV rounding vs round-to-nearest: {model}, {len(layers)} linear layers, int{bits} group 128 "
          f"(asymmetric, integer zero-point)\n")
    print(f"Calibration: {len(task.calib)} batches ({samples} samples, seq_len {seq_len}); inputs per layer: "
          f"{len(next(iter(Xc.values()))):,} calibration and {len(next(iter(Xh.values()))):,} held-out positions.\n")
    print("| layer | shape | dmmv s | cal max RTN | cal max DMMV | cal mean RTN | cal mean DMMV | "
          "held max RTN | held max DMMV | held mean RTN | held mean DMMV |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    dq = get_quantizer("dmmv")
    weights = {"rtn": {}, "dmmv": {}}
    agg = {k: [] for k in ("cal_max", "cal_mean", "held_max", "held_mean")}
    t_all = 0.0
    for n in layers:
        w = originals[n].numpy().astype(np.float32)
        t0 = time.perf_counter()
        res = {"rtn": quant.encode(w), "dmmv": dq.quantize(w, quant, Xc[n])}
        dt = time.perf_counter() - t0
        t_all += dt
        stats = {}
        for k, (q, s, z) in res.items():
            wq = quant.decode(q, s, z)
            weights[k][n] = wq
            e = (wq - w).astype(np.float32)
            rc, rh = np.abs(Xc[n] @ e.T), np.abs(Xh[n] @ e.T)
            stats[k] = (float(rc.max()), float(rc.mean()), float(rh.max()), float(rh.mean()))
        r, d = stats["rtn"], stats["dmmv"]
        for i, key in enumerate(agg):
            agg[key].append(d[i] / r[i])
        print(f"| {n} | {w.shape[0]}×{w.shape[1]} | {dt:.1f} | {r[0]:.4g} | {d[0]:.4g} | {r[1]:.4g} | {d[1]:.4g} | "
              f"{r[2]:.4g} | {d[2]:.4g} | {r[3]:.4g} | {d[3]:.4g} |")
    print("\nGeometric mean over layers of DMMV ÷ RTN: " + ", ".join(
        f"{k.replace('_', ' ')} {float(np.exp(np.mean(np.log(v)))):.3f}" for k, v in agg.items())
        + f"; DMMV rounding time {t_all:.1f} s in all.\n")
    print("| weights | calibration loss | held-out loss | held-out quality |")
    print("|---|---:|---:|---|")
    with torch.no_grad():
        base = model_quality(task)
        print(f"| unquantized | {base[0]:.5g} | {base[1]:.5g} | {_fmt(base[2])} |")
        for k in ("rtn", "dmmv"):
            for n in layers:
                mods[n].weight.copy_(torch.from_numpy(weights[k][n]))
            lq = model_quality(task)
            print(f"| {k} int{bits} g128 | {lq[0]:.5g} | {lq[1]:.5g} | {_fmt(lq[2])} |")
        for n in layers:
            mods[n].weight.copy_(originals[n])


def _fmt(d: dict) -> str:
    return ", ".join(f"{k} {v:.5g}" for k, v in d.items())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="10^3 and 10^4 units only; 8 layers")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ilp-limit", type=float, default=300.0, help="ILP time limit per run (s)")
    ap.add_argument("--skip-solver", action="store_true")
    ap.add_argument("--skip-quantizer", action="store_true")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--layers", type=int, default=None, help="only the first N linear layers")
    args = ap.parse_args()
    import torch

    print(f"# DMMV benchmark: torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, cpu count {os.cpu_count()}")
    if not args.skip_solver:
        bench_solver([1000, 10000] if args.quick else [1000, 10000, 100000], args.repeats, args.ilp_limit)
    if not args.skip_quantizer:
        bench_quantizer(args.model, args.bits, args.samples, args.seq_len, 8 if args.quick else args.layers)
    print("\nCorrectness problems: " + ("none" if not PROBLEMS else "; ".join(PROBLEMS)))


if __name__ == "__main__":
    main()
