"""`bitalloc pareto`: the exact loss-vs-bits front (one ILP per budget) and uniform allocations."""
from __future__ import annotations

import argparse
import re
import sys

from ..errors import bad
from .solve import _pins, _tie_tokens

_CONSTRAINT = re.compile(r"^\s*(?P<res>[A-Za-z_][\w]*)\s*<=\s*(?P<val>[^\s]+)\s*$")


def add_parser(sub) -> None:
    s = sub.add_parser("pareto", help="exact front of expected loss against bits per weight, with uniform allocations")
    s.add_argument("--profile", help="profile JSON (default: the embedded SmolLM2-135M profile)")
    s.add_argument("--budgets", required=True, help="START:STOP:STEP average bits per weight (e.g. 2.5:6:0.25), or a comma list")
    s.add_argument("--constraint", action="append", default=[], metavar="RESOURCE<=VALUE",
                   help="a further budget held fixed along the front, e.g. avg_bits_with_overhead<=4.5")
    s.add_argument("--count-overhead", action="store_true", help="sweep bits per weight including group scales/zeros")
    s.add_argument("--pin", action="append", default=[], metavar="GLOB=BITS")
    s.add_argument("--tie", action="append", default=[], metavar="A,B,C")
    s.add_argument("--min-bits", type=int, default=None)
    s.add_argument("--max-bits", type=int, default=None)
    s.add_argument("--backend", default=None, help="ilp backend: highs (default), pulp, cpsat")
    s.add_argument("--time-limit", type=float, default=None, help="seconds per budget")
    s.add_argument("--out", help="front as CSV")
    s.add_argument("--plot", help="front as PNG")
    s.add_argument("--force", action="store_true", help="overwrite --out / --plot")
    s.add_argument("--json", action="store_true", help="print the rows as JSON")
    s.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    s.set_defaults(func=run)


def constraints(items: list[str]) -> list:
    """`RESOURCE<=VALUE` → Constraint; resources: those of the memory cost model."""
    from ..hwcost.memory import MemoryCost
    from ..problem import Constraint

    models = {"avg_bits": MemoryCost(), "avg_bits_with_overhead": MemoryCost(count_overhead=True)}
    out = []
    for item in items:
        m = _CONSTRAINT.match(item)
        if not m:
            raise bad("--constraint", item, "must be RESOURCE<=VALUE, e.g. avg_bits_with_overhead<=4.5")
        if m["res"] not in models:
            raise bad("--constraint", item, f"resource {m['res']!r} unknown; allowed: {', '.join(models)}")
        try:
            value = float(m["val"])
        except ValueError:
            raise bad("--constraint", item, "the value must be a number") from None
        out.append(Constraint(models[m["res"]], value))
    return out


def run(args) -> int:
    from ..fileio import check_writable, dumps
    from ..front import budget_range, exact_front, uniform_points, write_csv
    from ..hwcost.memory import MemoryCost
    from ..problem import Constraint, Problem, tie_groups
    from ..profile import Profile

    budgets = budget_range(args.budgets)
    extra = constraints(args.constraint)
    for path in (args.out, args.plot):
        if path:
            check_writable(path, args.force)
    if args.out and args.plot and args.out == args.plot:
        raise bad("--plot", args.plot, "must differ from --out")
    opts = {k: v for k, v in (("backend", args.backend), ("time_limit", args.time_limit)) if v is not None}
    if args.profile:
        profile = Profile.load(args.profile)
    else:
        from ..data import default_profile_path

        profile = Profile.load(default_profile_path())
    ties = [g for spec in args.tie for g in tie_groups(profile.names, _tie_tokens(spec))]
    problem = Problem(profile, [Constraint(MemoryCost(count_overhead=args.count_overhead), budgets[0]), *extra],
                      pins=_pins(args.pin), ties=ties, min_bits=args.min_bits, max_bits=args.max_bits)
    rows = exact_front(problem, budgets, **opts)
    uniform = uniform_points(problem, min(budgets), max(budgets))
    if not any(r["status"] != "infeasible" for r in rows):
        m = min(problem.compile().min_totals()[0] / problem.constraints[0].cost.scale(profile), 1e300)
        raise bad("--budgets", args.budgets, f"every budget is infeasible; the smallest feasible "
                  f"{problem.constraints[0].cost.resource} is {m:.4f}")
    if args.out:
        write_csv(rows + uniform, profile.bits, args.out, args.force)
    if args.plot:
        from ..plots import front_plot

        model = profile.meta.get("model", "profile")
        title = f"{model}: {profile.n_units} units, {int(profile.n_params.sum()):,} weights, {profile.meta.get('estimator', '')} scores"
        front_plot(rows, uniform, sorted(set(profile.bits)), title, args.plot, args.force)
    if args.json:
        sys.stdout.write(dumps({"front": rows, "uniform": uniform}))
    else:
        _table(rows, uniform, problem.constraints[0].cost.resource)
        for path in (args.out, args.plot):
            if path:
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
