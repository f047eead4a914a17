"""`bitalloc pareto`: the exact loss-vs-bits front (one ILP per budget) and uniform allocations."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bitalloc.errors import bad
from bitalloc.cli._common import add_constraint_args, add_problem_args, add_profile_arg


def add_parser(sub) -> None:
    s = sub.add_parser("pareto", help="exact front of expected loss against bits per weight, with uniform allocations")
    add_profile_arg(s)
    s.add_argument("--budgets", required=True, help="START:STOP:STEP average bits per weight (e.g. 2.5:6:0.25), or a comma list")
    add_constraint_args(s, "a further budget held fixed along the front (as in bitalloc solve)")
    add_problem_args(s)
    s.add_argument("--backend", default=None, help="ilp backend: highs (default), pulp, cpsat")
    s.add_argument("--time-limit", type=float, default=None, help="seconds per budget")
    s.add_argument("--out", help="front as CSV")
    s.add_argument("--plot", help="front as PNG")
    s.add_argument("--force", action="store_true", help="overwrite --out / --plot")
    s.add_argument("--json", action="store_true", help="print the rows as JSON")
    s.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    s.set_defaults(func=run)


def run(args) -> int:
    from bitalloc.fileio import check_writable, dumps, publish_all
    from bitalloc.report.pareto import budget_range, csv_text, exact_front, uniform_points
    from bitalloc.hwcost.memory import MemoryCost
    from bitalloc.hwcost.constraint import Constraint
    from bitalloc.problem import Problem
    from bitalloc.solvers.bounds import min_totals

    from bitalloc.cli._common import constraints_from_args, fit_reports, load_profile, problem_options

    budgets = budget_range(args.budgets)
    if args.plot is not None:
        from bitalloc.extras import require

        require("matplotlib", why="--plot")
    for path, flag in ((args.out, "--out"), (args.plot, "--plot")):
        if path is not None:
            check_writable(path, args.force, flag)
    if args.out is not None and args.plot is not None and Path(args.out).absolute() == Path(args.plot).absolute():
        raise bad("--plot", args.plot, "must differ from --out")
    extra = constraints_from_args(args)
    opts = {k: v for k, v in (("backend", args.backend), ("time_limit", args.time_limit)) if v is not None}
    profile = load_profile(args.profile)
    problem = Problem(profile, [Constraint(MemoryCost(count_overhead=args.count_overhead), budgets[0]), *extra],
                      **problem_options(args, profile))
    rows = exact_front(problem, budgets, **opts)
    uniform = uniform_points(problem, min(budgets), max(budgets))
    if not any(r["status"] != "infeasible" for r in rows):
        m = min(min_totals(problem.compile())[0] / problem.constraints[0].cost.scale(profile), 1e300)
        raise bad("--budgets", args.budgets, f"every budget is infeasible; the smallest feasible "
                  f"{problem.constraints[0].cost.resource} is {m:.4f}")
    outputs = []  # built in memory, then published together: a failure leaves neither file
    if args.out is not None:
        outputs.append((args.out, csv_text(rows + uniform, profile.bits), "--out"))
    if args.plot is not None:
        from bitalloc.report.plots import front_plot

        model = profile.meta.get("model", "profile")
        title = f"{model}: {profile.n_units} units, {int(profile.n_params.sum()):,} weights, {profile.meta.get('estimator', '')} scores"
        outputs.append((args.plot, front_plot(rows, uniform, sorted(set(profile.bits)), title, None), "--plot"))
    publish_all(outputs, args.force)
    if args.json:
        sys.stdout.write(dumps({"front": rows, "uniform": uniform}))
    else:
        for res, line in fit_reports(problem.constraints).items():
            print(f"{res}: {line}", file=sys.stderr)
        _table(rows, uniform, problem.constraints[0].cost.resource)
        for path in (args.out, args.plot):
            if path is not None:
                print(f"wrote {path}")
    return 0


def _table(rows, uniform, resource) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"exact front ({resource} budget) and uniform allocations", show_edge=False)
    for c in ("kind", "budget", "status", "objective", "gap", "avg_bits", "+overhead", "% of weights at b bits"):
        t.add_column(c, justify="left" if c in ("kind", "status", "% of weights at b bits") else "right")
    for r in rows + uniform:
        obj = r.get("objective")
        mix = " ".join(f"{b}b:{100 * f:.0f}" for b, f in r.get("share", {}).items() if f >= 0.005)
        t.add_row(r["kind"] if r["kind"] == "front" else f"uniform{r['bits']}", f"{r['budget']:g}", r["status"],
                  "" if obj is None else f"{obj:.4g}", "" if r.get("gap") is None else f"{r['gap']:.0e}",
                  "" if "avg_bits" not in r else f"{r['avg_bits']:.3f}",
                  "" if "avg_bits_with_overhead" not in r else f"{r['avg_bits_with_overhead']:.3f}", mix)
    Console().print(t)
