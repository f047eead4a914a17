"""`bitalloc report`: an allocation's bit map per layer (table and plot) and its totals."""
from __future__ import annotations

import argparse

from bitalloc.errors import bad


def add_parser(sub) -> None:
    s = sub.add_parser("report", help="bit map per layer and totals of an allocation (table, --plot PNG)")
    s.add_argument("--allocation", required=True, help="allocation JSON (from bitalloc solve --out)")
    s.add_argument("--profile", help="its profile: weights per unit, expected loss per bit-width, totals rechecked")
    s.add_argument("--plot", help="bit map as PNG (heat map by block and module type, or bars)")
    s.add_argument("--force", action="store_true", help="overwrite --plot")
    s.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    s.set_defaults(func=run)


def run(args) -> int:
    from bitalloc.allocation import Allocation
    from bitalloc.fileio import check_writable
    from bitalloc.profile import Profile
    from bitalloc.report.tables import render

    if args.plot is not None:
        from bitalloc.extras import require

        require("matplotlib", why="--plot")
        check_writable(args.plot, args.force, "--plot")
    alloc = Allocation.load(args.allocation)
    if not alloc.bits:
        raise bad("--allocation", args.allocation, f"holds no bits (status {alloc.status}): nothing to report")
    profile = Profile.load(args.profile) if args.profile else None
    from bitalloc.report.tables import per_bits

    rows = per_bits(alloc, profile) if profile is not None else None
    if args.plot is not None:
        from bitalloc.report.plots import bits_plot

        weights = dict(zip(profile.names, profile.n_params.tolist())) if profile is not None else None
        budget = ", ".join(f"{k} <= {v:g}" for k, v in alloc.budgets.items())
        title = f"{alloc.solver} ({alloc.status}): {len(alloc.bits)} units, {alloc.avg_bits:.3f} bits/weight" + \
                (f", budget {budget}" if budget else "")
        bits_plot(alloc.bits, title, args.plot, weights, args.force)
    render([alloc])
    if rows is not None:
        _table(rows)
    if args.plot is not None:
        print(f"wrote {args.plot}")
    return 0


def _table(rows) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="per bit-width (from --profile)", show_edge=False)
    for c in ("bits", "units", "weights", "share of weights", "expected loss increase"):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(str(r["bits"]), str(r["units"]), f"{r['weights']:,}", f"{100 * r['share']:.1f}%", f"{r['loss']:.6g}")
    t.add_row("all", str(sum(r["units"] for r in rows)), f"{sum(r['weights'] for r in rows):,}", "100.0%",
              f"{sum(r['loss'] for r in rows):.6g}")
    Console().print(t)
