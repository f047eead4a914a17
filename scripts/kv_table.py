"""The README's KV-cache table: SmolLM2 perplexity with bitalloc's KV allocation vs uniform and random.

    python scripts/kv_table.py [--profile kv.json] [--samples 2] [--seq-len 256] [--held-out 16]
                               [--budgets 3,3.25,4,5] [--random 3] [--md kv_table.md] [--plot kv_table.png]

Weights stay unquantized (the dequantized GGUF); only the KV cache is fake-quantized (keys
per-channel, values per-token, group 32, as `bitalloc profile --kind kv` does). Steps: profile the
60 caches with the `kv` estimator on the calibration split (or reuse `--profile`), solve each
budget (average nominal bits per cached element) with the exact ILP, then measure held-out
perplexity (pydoc_data held-out topics) for: the allocation; random allocations at the same
budget (the allocation's bits shuffled over the caches: the same average and the same bytes per
token); uniform 2, 4 and 8 bits; the unquantized cache.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from bitalloc import Profile, solve
from bitalloc.cli._common import progress_bar
from bitalloc.fileio import atomic_write, check_writable
from bitalloc.quant.kvcache import KVQuantConfig, bits_per_token, kv_quantized, kv_units, uniform_plan


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", help="kv profile to reuse; written here when it does not exist")
    ap.add_argument("--samples", type=int, default=2, help="calibration sequences for the profile")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--held-out", type=int, default=16, help="held-out sequences for perplexity")
    ap.add_argument("--budgets", default="3,3.25,4,5", help="average KV bits per cached element")
    ap.add_argument("--random", type=int, default=3, help="random allocations per budget")
    ap.add_argument("--score", default="kl", help="kv estimator score: kl (default), loss or attention")
    ap.add_argument("--no-uniform", action="store_true", help="skip the uniform and unquantized rows")
    ap.add_argument("--md", help="write the markdown table here")
    ap.add_argument("--plot", help="write a plot (PNG) here")
    ap.add_argument("--allocation", help="only verify this allocation (from `bitalloc solve --out`): perplexity "
                    "against uniform 2/4/8 bits and the unquantized cache")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    budgets = [float(b) for b in args.budgets.split(",")]
    for path in (args.md, args.plot):
        if path:
            check_writable(path, args.force)

    from bitalloc.zoo.demo import load_task
    from bitalloc.sensitivity import get_estimator

    t0 = time.perf_counter()
    task = load_task("smollm2", samples=args.samples, seq_len=args.seq_len, held_out=args.held_out)
    config = KVQuantConfig()
    units = kv_units(task.model, config)
    if args.allocation:
        return verify(task, args.allocation, config, units)
    if args.profile and Path(args.profile).exists():
        profile = Profile.load(args.profile)
        print(f"reusing {args.profile}", file=sys.stderr)
    else:
        update, close = progress_bar("kv profile")
        try:
            profile = get_estimator("kv", bits=(2, 4, 8), score=args.score).estimate(task, progress=update)
        finally:
            close()
        if args.profile:
            profile.save(args.profile, force=args.force)
    print(f"profile ({profile.meta.get('score')}): {profile.n_units} caches, {profile.meta.get('seconds')} s, "
          f"{profile.meta.get('forward_passes')} forward passes of {args.samples}x{args.seq_len} tokens", file=sys.stderr)

    def ppl(plan) -> float:
        with kv_quantized(task.model, plan, config):
            return task.quality(task.model)["perplexity"]

    def bytes_tok(plan) -> float:
        return bits_per_token(units, plan, config) / 8

    rng = np.random.default_rng(0)
    rows = []
    update, close = progress_bar("perplexity")
    n_eval = (0 if args.no_uniform else 4) + len(budgets) * (1 + args.random)
    done = 0

    def tick():
        nonlocal done
        done += 1
        update(done, n_eval)

    try:
        base = None if args.no_uniform else ppl({})
        if base is not None:
            tick()
        uniform = {}
        for b in () if args.no_uniform else (2, 4, 8):
            plan = uniform_plan(units, b)
            uniform[b] = (ppl(plan), bytes_tok(plan))
            tick()
        for budget in budgets:
            a = solve(profile, budget=budget)
            plan = dict(a.bits)
            names, bits = list(plan), np.array(list(plan.values()))
            rand = []
            for _ in range(args.random):
                rand.append(ppl(dict(zip(names, rng.permutation(bits).tolist()))))
                tick()
            k = {b: sum(1 for s, v in plan.items() if s.endswith("k_cache") and v == b) for b in profile.bits}
            v = {b: sum(1 for s, x in plan.items() if s.endswith("v_cache") and x == b) for b in profile.bits}
            rows.append({"budget": budget, "avg": a.avg_bits, "bytes": bytes_tok(plan), "ppl": ppl(plan),
                         "random": rand, "k": k, "v": v, "status": a.status})
            tick()
    finally:
        close()

    md = table(rows, uniform, base, profile, args)
    print(md)
    print(f"total {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.md:
        atomic_write(args.md, md, args.force)
    if args.plot:
        plot(rows, uniform, base, args.plot, args.force)
    return 0


def verify(task, path, config, units) -> int:
    """Print verify_kv's rows for a saved allocation (caches it leaves out stay unquantized)."""
    from bitalloc import Allocation
    from bitalloc.quant.kvcache import plan_of, verify_kv

    plan = plan_of(Allocation.load(path))
    plan = {u.name: plan.get(u.name, "fp32") for u in units}
    print("| plan | perplexity | bits / element | bytes/token |\n|---|---:|---:|---:|")
    for r in verify_kv(task, plan, config):
        print(f"| {r['plan']} | {r['perplexity']:.2f} | {r['bits_per_element']:.3g} | {r['bytes_per_token']:.0f} |")
    return 0


def table(rows, uniform, base, profile, args) -> str:
    counts = lambda d: "/".join(str(d[b]) for b in sorted(d))  # noqa: E731
    lines = [f"SmolLM2-135M, weights unquantized; held-out perplexity on {args.held_out}x{args.seq_len} tokens "
             f"of pydoc_data (held-out topics); KV profile: `kv` estimator (score {profile.meta.get('score', '?')[:40]}...), {args.samples}x{args.seq_len} "
             "calibration tokens; keys per-channel, values per-token, group 32, fp16 scale + min "
             "(bytes/token: the whole 30-layer cache per token of context, scales included).", "",
             "| KV bits / element | bitalloc ppl | random ppl (same bits, mean [min-max]) | bytes/token | "
             "K caches at 2/4/8 | V caches at 2/4/8 |",
             "|---:|---:|---:|---:|---|---|"]
    for r in rows:
        rnd = r["random"]
        rtxt = f"{np.mean(rnd):.2f} [{min(rnd):.2f}-{max(rnd):.2f}]" if rnd else "-"
        lines.append(f"| {r['avg']:.3g} (budget {r['budget']:g}) | {r['ppl']:.2f} | {rtxt} | {r['bytes']:.0f} | "
                     f"{counts(r['k'])} | {counts(r['v'])} |")
    lines += ["", "| uniform KV | perplexity | bytes/token |", "|---|---:|---:|"]
    for b, (p, by) in uniform.items():
        lines.append(f"| {b} bits | {p:.2f} | {by:.0f} |")
    if base is not None:
        lines.append(f"| unquantized (fp32 here; 16-bit storage counted) | {base:.2f} | {60 * 192 * 2:.0f} |")
    return "\n".join(lines) + "\n"


def plot(rows, uniform, base, path, force) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [r["avg"] for r in rows]
    ax.plot(x, [r["ppl"] for r in rows], "o-", label="bitalloc")
    if rows[0]["random"]:
        ax.errorbar(x, [np.mean(r["random"]) for r in rows],
                    yerr=[[np.mean(r["random"]) - min(r["random"]) for r in rows],
                          [max(r["random"]) - np.mean(r["random"]) for r in rows]], fmt="s--", label="random, same bits")
    if uniform:
        ax.plot(list(uniform), [p for p, _ in uniform.values()], "^:", label="uniform")
    if base is not None:
        ax.axhline(base, color="gray", lw=0.8, label="unquantized")
    ax.set_xlabel("average KV bits per cached element")
    ax.set_ylabel("held-out perplexity")
    ax.set_yscale("log")
    ax.set_title("SmolLM2-135M KV cache")
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write(path, buf.getvalue(), force)


if __name__ == "__main__":
    sys.exit(main())
