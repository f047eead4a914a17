"""A post-training quantization pipeline with bitalloc, as a library user writes it:
profile → solve → apply → verify → export.

    python examples/ptq_pipeline.py [--model digits-cnn|minilm] [--budget 3.5] [--out ptq-out] [--samples N] [--seeds 3]

digits-cnn (a small CNN on scikit-learn's digits) runs in well under a minute on a laptop CPU;
minilm (all-MiniLM-L6-v2 sentence embeddings) in a few minutes. Writes into --out: the profile,
the allocation, the packed quantized weights (safetensors), the verification report and the
exported bit map.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import bitalloc
from bitalloc.export import export
from bitalloc.fileio import atomic_write, dumps
from bitalloc.zoo.demo import load_task
from bitalloc.sensitivity import get_estimator

SETUP = {  # granularity, group size, calibration samples
    "digits-cnn": ("channel", 32, 256),
    "minilm": ("layer", 128, 16),
}


def main() -> None:
    ap = argparse.ArgumentParser(description="profile → solve → apply → verify → export")
    ap.add_argument("--model", default="digits-cnn", choices=sorted(SETUP))
    ap.add_argument("--budget", type=float, default=3.5, help="average bits per weight")
    ap.add_argument("--out", default="ptq-out")
    ap.add_argument("--samples", type=int, default=None, help="calibration samples (model default)")
    ap.add_argument("--seeds", type=int, default=3, help="random baselines in verify (3)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    granularity, group_size, samples = SETUP[args.model]
    samples = args.samples or samples

    # 1. profile: how much the loss grows when each unit is quantized at each bit-width
    task = load_task(args.model, samples=samples)
    estimator = get_estimator("fisher", bits=(2, 3, 4, 8), granularity=granularity, group_size=group_size)
    profile = estimator.estimate(task)
    profile.save(out / "profile.json")
    print(f"profile: {profile.n_units} units x {len(profile.bits)} candidates ({profile.meta['seconds']:.1f} s)")

    # 2. solve: the exact ILP picks one bit-width per unit within the budget
    alloc = bitalloc.solve(profile, budget=args.budget)
    alloc.save(out / "allocation.json", force=True)
    print(f"solve: {alloc.status}, {alloc.avg_bits:.3f} bits/weight, expected loss increase {alloc.objective:.4g}")

    # 3. apply: quantize a copy of the model as allocated (round-to-nearest, per-group scales)
    q = bitalloc.apply(task.model, alloc, group_size=group_size, inplace=False)
    q.save(out / "model.q.safetensors", force=True)
    print(f"apply: {len(q.codes)} units quantized, packed file {out / 'model.q.safetensors'}")

    # 4. verify: budgets recomputed from the packed weights; quality against uniform and random
    #    allocations of the same budget, on held-out data
    report = bitalloc.verify(task, alloc, packed=out / "model.q.safetensors", baselines=True, seeds=args.seeds)
    atomic_write(out / "verify.json", dumps(report.to_json()), force=True)
    print(report.tables())
    if not report.ok:
        raise SystemExit("verify: a budget is exceeded")

    # 5. export: the allocation for downstream tools (a plain unit → bits map, channels included)
    export(alloc, "json", out / "bits.json", force=True)
    print(f"export: {out / 'bits.json'}")


if __name__ == "__main__":
    main()
