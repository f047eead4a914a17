"""INT vs FP vs mixed number formats on SmolLM2-135M: one fisher profile, ILP allocations, real perplexity.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/format_table.py [--samples 8] [--seq-len 256]
        [--held-out 8] [--budgets 4.25,4.5,5,5.5] [--uniform int4,fp4_e2m1,mxfp4,nvfp4]
        [--profile docs/formats.profile.json]

1. One `fisher` profile (layer granularity, group 128) over the union of the INT and FP candidates,
   so every candidate of every layer is scored by the same estimator with its own quantizer
   (saved to --profile and reused when it exists).
2. For each budget (average bits per weight counting every format's scales: `--count-overhead`)
   and each candidate set (INT only, FP only, all = mixed search) the ILP allocation.
3. Each allocation (and each --uniform format) evaluated on held-out pydoc text by fake-quantizing
   SmolLM2's 210 decoder linears with the chosen format of each (`quant.quantizer_for`).
Writes a markdown table (--out), the results as JSON next to it and a plot (.png).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bitalloc import Problem, Profile
from bitalloc.fileio import atomic_write, dumps
from bitalloc.hwcost.memory import MemoryCost
from bitalloc.zoo.demo import load_task
from bitalloc.quant.integer import quantizer_for
from bitalloc.sensitivity import get_estimator
from bitalloc.solvers import get_solver

INT = ("int3", "int4", "int5", "int6", "int8")
FP = ("fp4_e2m1", "mxfp4", "nvfp4", "fp6_e2m3", "mxfp6_e2m3", "fp8_e4m3", "mxfp8_e4m3")
SETS = {"INT only": INT, "FP only": FP, "mixed": INT + FP}
GROUP = 128


class Evaluator:
    """Writes each layer's fake-quantized weight (from a kept copy of the original) and measures
    held-out perplexity; a layer already holding the requested format is not requantized."""

    def __init__(self, task):
        self.task = task
        self.mods = task.modules()
        self.orig = {n: m.weight.detach().clone() for n, m in self.mods.items()}
        self.state = {n: None for n in self.mods}
        self.seen: dict[tuple, float] = {}

    def perplexity(self, formats: dict[str, str | None]) -> float:
        import torch

        key = tuple(sorted(formats.items(), key=lambda x: x[0]))
        if key in self.seen:  # the same allocation (e.g. a budget that buys nothing new)
            return self.seen[key]
        for name, fmt in formats.items():
            if self.state[name] == fmt:
                continue
            w = self.orig[name]
            q = None if fmt is None else quantizer_for(fmt, GROUP)
            new = w if q is None else torch.from_numpy(q.fake_quant(w.numpy()))
            with torch.no_grad():
                self.mods[name].weight.copy_(new)
            self.state[name] = fmt
        self.seen[key] = float(self.task.quality(self.task.model)["perplexity"])
        return self.seen[key]


def make_profile(task, path: Path) -> Profile:
    if path.exists():
        print(f"reusing {path}", file=sys.stderr)
        return Profile.load(path)
    from bitalloc.cli._common import progress_bar

    est = get_estimator("fisher", bits=INT + FP, granularity="layer", group_size=GROUP)
    update, close = progress_bar("fisher")
    try:
        p = est.estimate(task, progress=update)
    finally:
        close()
    p.save(path, force=True)
    return p


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--held-out", type=int, default=8)
    ap.add_argument("--budgets", default="4.25,4.5,5,5.5")
    ap.add_argument("--uniform", default="int4,fp4_e2m1,mxfp4,nvfp4", help="formats also evaluated on every layer")
    ap.add_argument("--profile", default="docs/formats.profile.json")
    ap.add_argument("--out", default="docs/format_table.md")
    args = ap.parse_args(argv)
    budgets = [float(b) for b in args.budgets.split(",")]

    t0 = time.perf_counter()
    task = load_task("smollm2", samples=args.samples, seq_len=args.seq_len, held_out=args.held_out)
    profile = make_profile(task, Path(args.profile))
    ev = Evaluator(task)
    layers = list(ev.mods)
    base = ev.perplexity({n: None for n in layers})
    print(f"unquantized perplexity {base:.3f}", file=sys.stderr)
    mem = MemoryCost(count_overhead=True)
    solver = get_solver("ilp")

    out = Path(args.out)
    result = {"unquantized": base, "uniform": {}, "rows": [], "candidates": SETS,
              "settings": {**vars(args), "group_size": GROUP, "estimator": "fisher"}}
    uniform, rows = result["uniform"], result["rows"]
    for fmt in args.uniform.split(","):
        k = profile.formats.index(fmt)
        choice = np.full(profile.n_units, k)
        uniform[fmt] = {"bpw": mem.total(profile, choice), "predicted": float(profile.sensitivity[:, k].sum()),
                        "perplexity": ev.perplexity({n: fmt for n in layers})}
        print(f"uniform {fmt}: {uniform[fmt]}", file=sys.stderr)
        atomic_write(out.with_suffix(".json"), dumps(result), True)  # partial results survive an interrupt

    for b in budgets:
        for set_name, cands in SETS.items():
            allowed = np.broadcast_to(np.isin(profile.formats, cands), profile.sensitivity.shape)
            prob = Problem.average_bits(profile, b, count_overhead=True, allowed=allowed)
            a = solver.solve(prob)
            row = {"budget": b, "set": set_name, "status": a.status}
            if a.ok:
                counts: dict[str, int] = {}
                for f in a.formats.values():
                    counts[f] = counts.get(f, 0) + 1
                row.update(bpw=a.avg_bits_with_overhead, predicted=a.objective, formats=counts,
                           perplexity=ev.perplexity(dict(a.formats)))
            rows.append(row)
            print(row, file=sys.stderr)
            atomic_write(out.with_suffix(".json"), dumps(result), True)

    result["settings"]["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write(out.with_suffix(".json"), dumps(result), True)
    atomic_write(out, render(result, budgets), True)
    plot(result, budgets, out.with_suffix(".png"))
    print(render(result, budgets))
    return 0


def render(r: dict, budgets: list[float]) -> str:
    by = {(row["budget"], row["set"]): row for row in r["rows"]}
    lines = [f"Held-out perplexity of SmolLM2-135M (unquantized {r['unquantized']:.2f}); budget = average bits per "
             "weight counting every format's scales (`--count-overhead`).", "",
             "| budget (bpw) | " + " | ".join(SETS) + " | mixed: formats chosen (layers) |",
             "|---|" + "---|" * len(SETS) + "---|"]
    for b in budgets:
        cells = []
        for s in SETS:
            row = by[(b, s)]
            cells.append(f"{row['perplexity']:.2f}" if "perplexity" in row else f"— ({row['status']})")
        mix = by[(b, "mixed")].get("formats", {})
        lines.append(f"| {b:g} | " + " | ".join(cells) + " | "
                     + ", ".join(f"{f} {n}" for f, n in sorted(mix.items(), key=lambda x: -x[1])) + " |")
    lines += ["", "| uniform format | bpw | perplexity |", "|---|---|---|"]
    for f, u in r["uniform"].items():
        lines.append(f"| {f} | {u['bpw']:.3f} | {u['perplexity']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(r: dict, budgets: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in SETS:
        pts = [(row["bpw"], row["perplexity"]) for row in r["rows"] if row["set"] == s and "perplexity" in row]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"{s} (ILP)")
    for f, u in r["uniform"].items():
        if u["perplexity"] < 4 * r["unquantized"]:
            ax.scatter(u["bpw"], u["perplexity"], marker="x", color="gray")
            ax.annotate(f, (u["bpw"], u["perplexity"]), fontsize=7, color="gray")
    ax.axhline(r["unquantized"], color="k", lw=0.8, ls=":", label="unquantized")
    ax.set_xlabel("bits per weight (with scales)")
    ax.set_ylabel("held-out perplexity")
    ax.set_title("SmolLM2-135M: INT vs FP vs mixed formats (fisher profile, ILP)")
    ax.legend()
    fig.tight_layout()
    buf = __import__("io").BytesIO()
    fig.savefig(buf, dpi=120)
    atomic_write(path, buf.getvalue(), True)


if __name__ == "__main__":
    raise SystemExit(main())
