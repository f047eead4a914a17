"""`bitalloc solve`: solve a profile under budgets (never imports torch)."""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path

from bitalloc.errors import BitallocError, bad
from bitalloc.cli import _optuna
from bitalloc.cli._common import add_constraint_args, add_problem_args, add_profile_arg


def add_parser(sub) -> None:
    s = sub.add_parser("solve", help="solve a profile under budgets")
    add_profile_arg(s)
    s.add_argument("--budget", default=None, help="average bits per weight; several: 2.5,3,3.25,4")
    s.add_argument("--budget-mib", default=None, metavar="MIB",
                   help="size of the exported GGUF file in MiB (GGML candidates: q4_k, q5_0, ...); several: 84,88,97")
    s.add_argument("--source", default=None, help="with --budget-mib: the GGUF the export starts from "
                                                   "(default: the profile's source model file)")
    add_constraint_args(s)
    s.add_argument("--solver", default=None, help="auto (default; ilp when --backend is given: exact where it proves quickly, else greedy + ILP polish, "
                   "within --time-limit, proven gap reported), ilp (exact), greedy, dmmv (min-max) or optuna")
    s.add_argument("--objective", default=None,
                   help="sum (total expected loss; default) or max (worst unit's loss; default for dmmv)")
    s.add_argument("--backend", default=None, help="ilp backend: highs (default), pulp, cpsat")
    s.add_argument("--time-limit", type=float, default=None, help="seconds per budget (auto: default 10, held on the wall clock)")
    s.add_argument("--gap", type=float, default=None, help="relative optimality gap for ilp (default 1e-9)")
    add_problem_args(s)
    s.add_argument("--out", help="write the allocation JSON (from 20,000 units with an .npz sidecar of names and bits; "
                   "several budgets: {budget} in the name, or .b<budget> is added)")
    s.add_argument("--force", action="store_true", help="overwrite --out")
    s.add_argument("--json", action="store_true", help="print the allocation(s) as JSON instead of tables")
    s.add_argument("--stream", action="store_true",
                   help="greedy on a sidecar profile read block by block from disk (10^7 units; one --budget, "
                        "no other constraints, pins, ties or bit limits)")
    s.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)  # also accepted after the subcommand
    _optuna.add_args(s)
    s.set_defaults(func=run)


def _budgets(text: str, flag: str = "--budget", what: str = "bits per weight, e.g. 3.25 or 2.5,3,4") -> list[float]:
    out = []
    for part in text.split(","):
        try:
            v = float(part)
        except ValueError:
            raise bad(flag, text, f"must be a number or comma-separated numbers of {what}") from None
        out.append(v)
    if len(out) > MAX_BUDGETS:
        raise bad("--budget", f"{len(out)} budgets", f"at most {MAX_BUDGETS} in one run")
    return out


MAX_BUDGETS = 1000
def _gguf_source(source, profile):
    """The GGUF file whose layout prices --budget-mib: --source, else the profile's source file."""
    src = source or profile.meta.get("source")
    if not src or not str(src).endswith(".gguf") or not Path(src).is_file():
        raise bad("--source", source, "--budget-mib needs the GGUF the export starts from (the profile names none "
                  "that exists here)")
    return src


def run(args) -> int:
    from bitalloc import solve_budgets
    from bitalloc.fileio import dumps
    from bitalloc.export.gguf_size import GgufSizeCost
    from bitalloc.hwcost.constraint import Constraint
    from bitalloc.problem import Problem
    from bitalloc.solvers import SOLVERS, get_solver

    from bitalloc.cli._common import constraints_from_args, fit_reports, load_profile, problem_options

    if args.budget is None and args.budget_mib is None and not args.constraint:
        raise bad("--budget/--constraint", None, "give --budget (bits per weight) and/or --constraint RESOURCE<=N, "
                  "or --budget-mib (GGUF file size)")
    budgets = _budgets(args.budget) if args.budget is not None else [None]
    if args.stream:
        return _run_stream(args, budgets)
    mib = _budgets(args.budget_mib, "--budget-mib", "MiB, e.g. 88 or 84,88,97") if args.budget_mib is not None else None
    if mib is not None and args.budget is not None and len(mib) > 1:
        raise bad("--budget-mib", args.budget_mib, "takes one size when --budget is given too")
    constraints = constraints_from_args(args)
    if args.solver is None:
        args.solver = "ilp" if args.backend is not None else "auto"
    SOLVERS.get(args.solver)
    if args.solver == "optuna":
        from bitalloc.extras import require

        require("optuna", why="--solver optuna")
    outs = _out_paths(args.out, budgets, args.force) if args.out is not None else []
    constraints = constraints_from_args(args)
    opts = {}
    if args.time_limit is not None:
        opts["time_limit"] = args.time_limit
    if args.solver in ("ilp", "auto") and args.gap is not None:
        opts["gap"] = args.gap
    if args.solver == "ilp" and args.backend is not None:
        opts["backend"] = args.backend
    if args.solver not in ("ilp", "auto") and args.gap is not None:
        raise bad("--gap", args.gap, f"only applies to --solver ilp or auto, not {args.solver}")
    if args.solver != "ilp" and args.backend is not None:
        raise bad("--backend", args.backend, f"only applies to --solver ilp, not {args.solver}")
    opts.update(_optuna.options(args, "avg_bits_with_overhead" if args.count_overhead else "avg_bits"))
    solver = get_solver(args.solver, **opts)

    profile = load_profile(args.profile)
    kw = dict(problem_options(args, profile), objective=args.objective or ("max" if args.solver == "dmmv" else "sum"))
    if mib is not None:
        size = Constraint(GgufSizeCost(source=_gguf_source(args.source, profile)), mib[0])
        constraints = [*constraints, size] if args.budget is not None else [size, *constraints]
        if args.budget is None:
            budgets = mib
    if args.budget is not None:
        problem = Problem.average_bits(profile, budgets[0], count_overhead=args.count_overhead, **kw)
        problem = replace(problem, constraints=[*problem.constraints, *constraints])
    else:
        problem = Problem(profile, constraints, **kw)
    close = None
    if args.solver == "optuna":  # the bar only once every input has been checked
        from bitalloc.cli._common import progress_bar

        solver.progress, close = progress_bar("optuna trials")
    try:
        allocs = solve_budgets(problem, budgets, solver=solver)
    finally:
        if close:
            close()
    fits = fit_reports(problem.constraints)
    for a in allocs:
        if fits:
            a.meta["device_profile"] = fits
    for a, b in zip(allocs, budgets):
        if a.status == "infeasible":
            over = [(r, m) for r, m in a.min_budgets.items() if m > a.budgets.get(r, math.inf) * (1 + 1e-12)]
            res, m = over[0] if over else next(iter(a.min_budgets.items()))
            m = math.ceil(m * 1e4 - 1e-8) / 1e4  # rounded up, so the number shown is itself feasible
            if over:
                shown = f"{b:g}" if b is not None and res == next(iter(a.budgets)) else f"{res} <= {a.budgets[res]:g}"
                raise BitallocError(f"budget {shown} is below the smallest feasible {res} {m:.4f} for this profile"
                                    " (with its pins and limits); infeasible")
            raise BitallocError("budgets " + ", ".join(f"{r} <= {v:g}" for r, v in a.budgets.items())
                                + " cannot all be met at once (each alone can); infeasible")
        if not a.ok:
            shown = ", ".join(f"{r} <= {v:g}" for r, v in a.budgets.items())
            raise BitallocError(f"budget {shown}: no allocation found within --time-limit {args.time_limit}")
    if outs:
        _publish(allocs, outs, args.force)
    if args.json:
        docs = [a.to_json() for a in allocs]
        sys.stdout.write(dumps(docs[0] if len(docs) == 1 else docs))
    else:
        from bitalloc.report.tables import render

        for res, line in fits.items():
            print(f"{res}: {line}", file=sys.stderr)
        render(allocs)
        for a in allocs:
            _optuna.render(a)
        for path in outs:
            print(f"wrote {path}")
    return 0


def _run_stream(args, budgets) -> int:
    """`--stream`: the streaming greedy (bitalloc/solvers/stream.py) on a sidecar profile."""
    from bitalloc.fileio import dumps

    given = [f for f, v in (("--constraint", args.constraint), ("--pin", args.pin), ("--tie", args.tie),
                            ("--min-bits", args.min_bits), ("--max-bits", args.max_bits),
                            ("--count-overhead", args.count_overhead), ("--objective", args.objective)) if v]
    if given:
        raise bad(given[0], "given", "does not apply with --stream (one average-bits budget only)")
    if args.solver not in (None, "greedy"):
        raise bad("--solver", args.solver, "--stream runs the greedy")
    if args.budget is None or len(budgets) != 1:
        raise bad("--budget", args.budget, "--stream takes one average-bits budget")
    if not args.profile:
        raise bad("--profile", None, "--stream needs a profile saved with its .npz sidecar")
    outs = _out_paths(args.out, budgets, args.force) if args.out else []
    from bitalloc.solvers.stream import stream_greedy

    a = stream_greedy(args.profile, budgets[0])
    for path in outs:
        a.save(path, force=args.force)
    if args.json:
        sys.stdout.write(dumps(a.to_json()))
    else:
        print(f"greedy (streamed, {a.status}): {len(a.bits)} units, {a.avg_bits:.4f} bits/weight, objective "
              f"{a.objective:.6g}, gap {a.gap:.1e}, {a.wall_s:.2f} s")
        for path in outs:
            print(f"wrote {path}")
    return 0


def _publish(allocs, outs: list[Path], force: bool) -> None:
    """--out: every allocation as one JSON file, or, above SIDECAR_MIN_UNITS units, as
    `Allocation.save` writes it (JSON head + .npz sidecar of names and bits: no JSON object of
    every unit, ~250 MB at 10⁶ units); all or nothing: a failed write removes what this call wrote."""
    from bitalloc.allocation import SIDECAR_MIN_UNITS
    from bitalloc.fileio import check_writable, dumps, publish_all

    if all(len(a.bits) < SIDECAR_MIN_UNITS for a in allocs):
        publish_all([(path, dumps(a.to_json()), "--out") for a, path in zip(allocs, outs)], force)
        return
    for path in outs:
        check_writable(path.with_suffix(".npz"), force)
    done: list[Path] = []  # files this call wrote
    try:
        for a, path in zip(allocs, outs):
            new = [p for p in (path.with_suffix(".npz"), path) if not p.exists()]  # what this save creates
            try:
                a.save(path, force=force)
            finally:
                done += [p for p in new if p.exists()]
    except BaseException:
        if not force:  # with force an old file was replaced: removing the new one would lose both
            for p in done:
                p.unlink(missing_ok=True)
        raise


def _out_paths(out: str, budgets: list[float], force: bool) -> list[Path]:
    from bitalloc.fileio import check_writable

    if out == "":
        check_writable(out, force)
    if len(budgets) == 1:
        paths = [Path(out)]
    elif "{budget}" in out:
        paths = [Path(out.replace("{budget}", f"{b:g}")) for b in budgets]
    else:
        p = Path(out)
        paths = [p.with_name(f"{p.stem}.b{b:g}{p.suffix}") for b in budgets]
    if len(set(paths)) < len(paths):
        raise bad("--budget", ",".join(f"{b:g}" for b in budgets), "each budget once (two would write the same --out)")
    for path in paths:
        check_writable(path, force)
    return paths
