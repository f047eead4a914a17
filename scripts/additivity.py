"""Additivity on SmolLM2: predicted (sum of measured per-unit effects) against the real loss
increase and KL of whole allocations (ILP optimal at several budgets, uniform, random).

    python scripts/additivity.py --measured smollm2.measured.json [--samples 8] [--random 10]
        [--budgets 2.5,3,3.5,4,4.5,5,6] [--out docs/additivity-smollm2]

Writes OUT.json (rows + summary), OUT.md (table) and OUT.png (log-log plot).
"""
from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from bitalloc.fileio import atomic_write, dumps
from bitalloc.profile import Profile
from bitalloc.report.scorecard import merge_measured
from bitalloc.report.additivity import evaluate, ilp_allocations, plot, random_allocations, summary, uniform_allocations
from bitalloc.zoo.demo import load_task


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--measured", required=True, help="measured profile JSON (comma-separated shards are merged)")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--budgets", default="2.5,3,3.5,4,4.5,5,6")
    ap.add_argument("--random", type=int, default=10)
    ap.add_argument("--out", default="docs/additivity-smollm2")
    a = ap.parse_args()
    paths = [x for x in a.measured.split(",") if x]  # shards measured in parallel are merged
    measured = merge_measured([Profile.load(x) for x in paths]) if len(paths) > 1 else Profile.load(paths[0])
    budgets = [float(x) for x in a.budgets.split(",")]
    allocs = ilp_allocations(measured, budgets) + uniform_allocations(measured) + random_allocations(measured, a.random)
    task = load_task("smollm2", samples=a.samples, seq_len=a.seq_len)
    bar = tqdm(total=len(allocs), desc="allocations", file=sys.stderr)
    rows = evaluate(task, measured, allocs, progress=lambda d, t: bar.update(1))
    bar.close()
    summ = {k: summary(rows, k) for k in ("loss", "kl")}
    atomic_write(a.out + ".json", dumps({"rows": rows, "summary": summ, "measured": a.measured,
                                         "samples": a.samples, "seq_len": a.seq_len}), True)
    lines = ["| allocation | avg bits | predicted loss | real loss | predicted KL | real KL |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['allocation']} | {r['avg_bits']:.2f} | {r['predicted_loss']:.4g} | {r['real_loss']:.4g} | "
                     f"{r['predicted_kl']:.4g} | {r['real_kl']:.4g} |")
    lines += ["", "| score | n | Spearman | Pearson (log) | real/predicted median | geometric mean | min | max |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for k, s in summ.items():
        lines.append(f"| {k} | {s['n']} | {s['spearman']:.3f} | {s['pearson_log']:.3f} | {s['ratio_median']:.2f} | "
                     f"{s['ratio_geomean']:.2f} | {s['ratio_min']:.2f} | {s['ratio_max']:.2f} |")
    atomic_write(a.out + ".md", "\n".join(lines) + "\n", True)
    plot(rows, f"SmolLM2, {a.samples}x{a.seq_len} tokens", a.out + ".png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
