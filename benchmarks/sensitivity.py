"""Cost of each sensitivity estimator on the real models, against plain passes in the same run.

    python benchmarks/sensitivity.py [--models digits-cnn,minilm,smollm2] [--samples 8] [--seq-len 128]

Table 1: seconds per estimator per model (median of --repeats runs; smollm2 once), and the ratio
to one forward+backward pass over the same calibration set measured here (the baseline).
Table 2: one Hutchinson probe (a Hessian-vector product on the retained graph) against one
plain training pass (forward + backward) of the same batch, and against the backward alone,
measured interleaved on the first calibration batch (median of the per-repeat ratios).
Target: <= 2.5x. By flops a Hessian-vector product through a linear layer's backward costs about
5-6 matrix products (the backward 2, the forward 1), so ~2x a forward+backward and ~3x a backward
alone is the floor of any double-backward Hutchinson implementation.
`measured` runs on --measured-units units only (its cost grows with units x candidates).

    python benchmarks/sensitivity.py --replay [--samples 4] [--replay-units 14] [--full-units 2]

Table 3 (--replay, SmolLM2): `measured` by full rerun vs by block replay vs `local`, seconds per
(unit, candidate) cell on units spread evenly over the depth (so the mean cost per cell is the
model's), the ratio to the full rerun, and the projection to all 210 x 6 cells; then `measured`
(block replay) under `--executor ray` with 1 and 2 workers (1 torch thread each) on the same
units: wall seconds (model loads included) and the ratio.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bitalloc.zoo.demo import load_task
from bitalloc.sensitivity import get_estimator
from bitalloc.sensitivity.base import grad_only_for
from bitalloc.sensitivity.hessian import math_attention, rademacher

ESTIMATORS = ["weight_error", "salience", "fisher", "hessian", "lrp", "measured"]


def median_time(f, repeats):
    ts, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def pass_times(task, repeats):
    """(forward s, backward s) of one plain pass over the calibration set (all batches)."""
    fw, bw = [], []
    params = [m.weight for m in task.modules().values()]
    for _ in range(repeats):
        f = b = 0.0
        for batch in task.calib:
            for p in params:
                p.grad = None
            t = time.perf_counter()
            loss = task.loss(task.model, batch)
            f += time.perf_counter() - t
            t = time.perf_counter()
            loss.backward()
            b += time.perf_counter() - t
        fw.append(f)
        bw.append(b)
    for p in params:
        p.grad = None
    return statistics.median(fw), statistics.median(bw)


def probe_ratios(task, repeats):
    """Interleaved, so each pair shares the machine's load: per repeat on the first calibration
    batch, (plain forward+backward s, plain backward s, one Hessian-vector product s).
    Returns the medians of the three and of the per-repeat ratios probe/(fwd+bwd), probe/bwd."""
    batch = task.calib[0]
    weights = [m.weight for m in task.modules().values()]
    gen = torch.Generator().manual_seed(0)
    rows = []
    with grad_only_for(task.model, weights), math_attention(), torch.enable_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            loss = task.loss(task.model, batch)
            f = time.perf_counter() - t
            torch.autograd.grad(loss, weights)
            fb = time.perf_counter() - t
            grads = torch.autograd.grad(task.loss(task.model, batch), weights, create_graph=True)
            vs = [rademacher(w, gen) for w in weights]
            t = time.perf_counter()
            torch.autograd.grad(grads, weights, grad_outputs=vs)
            hvp = time.perf_counter() - t
            del grads, vs
            rows.append((fb, fb - f, hvp, hvp / fb, hvp / (fb - f)))
    return [statistics.median(c) for c in zip(*rows)]


def replay_rows(args):
    """Table 3 (see the module docstring)."""
    import functools
    import os

    from bitalloc.sensitivity.ray_executor import RayExecutor

    task = load_task("smollm2", samples=args.samples, seq_len=args.seq_len)
    n_all = len(task.layers) * 6
    rows = []
    for label, name, opts in (("measured, full rerun", "measured", {"method": "full", "units": args.full_units}),
                              ("measured, block replay", "measured", {"method": "replay", "units": args.replay_units}),
                              ("local", "local", {"units": args.replay_units})):
        est = get_estimator(name, **opts)
        t = time.perf_counter()
        p = est.estimate(task)
        t = time.perf_counter() - t
        cells = p.n_units * len(p.bits)
        rows.append((label, cells, t, t / cells, p.meta.get("forward_equivalents")))
    full = rows[0][3]
    print(f"SmolLM2, {args.samples}x{args.seq_len} tokens, {torch.get_num_threads()} torch threads, "
          f"load average {os.getloadavg()[0]:.1f} (1 min) at the end\n")
    print("| method | cells | seconds | s / cell | ratio to full rerun | forward-equivalents | projected 210 x 6 cells |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for label, cells, t, per, fe in rows:
        print(f"| {label} | {cells} | {t:.1f} | {per:.3f} | {full / per:.1f}x | {fe} | {per * n_all / 60:.1f} min |")
    factory = functools.partial(load_task, "smollm2", samples=args.samples, seq_len=args.seq_len)
    ray_rows = []
    for w in (1, 2):
        ex = RayExecutor(workers=w, cpus_per_worker=1)
        ex.start()
        t = time.perf_counter()
        p = ex.run(get_estimator("measured", method="replay", units=args.replay_units), task, factory)
        ray_rows.append((w, p.n_units * len(p.bits), time.perf_counter() - t))
        import ray

        ray.shutdown()
    print("\n| executor | cells | wall seconds (incl. model loads) | ratio to 1 worker |\n|---|---:|---:|---:|")
    for w, cells, t in ray_rows:
        print(f"| ray, {w} worker{'s' if w > 1 else ''} | {cells} | {t:.1f} | {ray_rows[0][2] / t:.2f}x |")
    print(f"\nload average at the end: {os.getloadavg()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replay", action="store_true", help="table 3 only: full rerun vs block replay vs local, Ray 1 vs 2")
    ap.add_argument("--replay-units", type=int, default=14)
    ap.add_argument("--full-units", type=int, default=2)
    ap.add_argument("--models", default="digits-cnn,minilm,smollm2")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--probes", type=int, default=8, help="Hutchinson probes per batch")
    ap.add_argument("--measured-units", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: repeatable on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.replay:
        return replay_rows(args)
    print(f"$ python benchmarks/sensitivity.py --models {args.models} --samples {args.samples} "
          f"--seq-len {args.seq_len} --repeats {args.repeats} --probes {args.probes} --threads {args.threads}\n")
    rows, probe_rows = [], []
    for model in args.models.split(","):
        task = load_task(model, samples=args.samples, seq_len=args.seq_len)
        for p in task.modules().values():
            p.weight.requires_grad_(True)
        reps = 1 if model == "smollm2" else args.repeats
        fwd, bwd = pass_times(task, reps)
        base = fwd + bwd
        for name in ESTIMATORS:
            opts = {"units": args.measured_units} if name == "measured" else {}
            if name == "hessian":
                opts = {"min_probes": args.probes, "max_probes": args.probes}
            est = get_estimator(name, **opts)
            try:
                t, prof = median_time(lambda: est.estimate(task), reps)
            except Exception as e:  # an estimator that does not support this model: say so
                rows.append((model, name, None, None, f"not run: {str(e)[:60]}"))
                continue
            rows.append((model, name, t, t / base, str(prof.meta.get("passes", ""))[:70]))
        probe_rows.append((model, *probe_ratios(task, max(reps, 3))))
        print(f"{model}: one forward+backward over the calibration set = {base:.3f} s "
              f"(forward {fwd:.3f} s, backward {bwd:.3f} s, {len(task.calib)} batches)")
    print("\n| model | estimator | seconds | ÷ one fwd+bwd pass | passes |\n|---|---|---:|---:|---|")
    for m, n, t, r, passes in rows:
        print(f"| {m} | {n} | {'' if t is None else f'{t:.2f}'} | {'' if r is None else f'{r:.1f}×'} | {passes} |")
    print("\n| model | one Hutchinson probe (s) | one forward+backward (s) | ratio | one backward alone (s) | ratio | "
          "target: probe <= 2.5× forward+backward |\n|---|---:|---:|---:|---:|---:|---|")
    for m, fb, b, p, r_fb, r_b in probe_rows:
        print(f"| {m} | {p:.3f} | {fb:.3f} | {r_fb:.2f}× | {b:.3f} | {r_b:.2f}× | {'✓' if r_fb <= 2.5 else '✗'} |")


if __name__ == "__main__":
    main()
