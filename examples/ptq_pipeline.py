"""A post-training quantization pipeline with bitalloc, as a library user writes it:
profile → solve → apply → verify → export.

    python examples/ptq_pipeline.py [--model digits-cnn|minilm] [--budget 3.5] [--out ptq-out]

digits-cnn (a small CNN on scikit-learn's digits) runs in well under a minute on a laptop CPU;
minilm (all-MiniLM-L6-v2 sentence embeddings) in a few minutes. Writes into --out: the profile,
the allocation, the packed quantized weights (safetensors), the verification report and the
exported bit map.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import bitalloc
from bitalloc.fileio import dumps
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
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    granularity, group_size, samples = SETUP[args.model]

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
    report = bitalloc.verify(task, alloc, packed=out / "model.q.safetensors", baselines=True, seeds=3)
    (out / "verify.json").write_text(dumps(report.to_json()))
    print(report.tables())
    if not report.ok:
        raise SystemExit("verify: a budget is exceeded")

    # 5. export: the allocation for downstream tools (a plain unit → bits map for this model)
    try:
        from bitalloc.export import export
    except ImportError:  # an installation without bitalloc.export: write the same map by hand
        export = None
    if export is not None:
        export(alloc, "json", out / "bits.json", force=True)
    else:
        (out / "bits.json").write_text(dumps(alloc.bits))
    print(f"export: {out / 'bits.json'}")


if __name__ == "__main__":
    main()
