"""`bitalloc solve --solver optuna` flags, their checks, and the tables printed after the run."""
from __future__ import annotations

from bitalloc.errors import bad

FLAGS = ("trials", "sampler", "workers", "storage", "study", "seed", "objectives", "space", "max_params",
         "population")


def add_args(s) -> None:
    g = s.add_argument_group("optuna solver (--solver optuna)")
    g.add_argument("--trials", type=int, default=None, help="trials of this run, over all workers (100)")
    g.add_argument("--sampler", default=None, help="tpe (default) or nsga2")
    g.add_argument("--workers", type=int, default=None, help="worker processes on one study (1)")
    g.add_argument("--storage", default=None,
                   help="study storage URL: sqlite:///study.db, postgresql://user@host/db (resumable, shared)")
    g.add_argument("--study", default=None, help="study name in --storage (default: bitalloc)")
    g.add_argument("--seed", type=int, default=None, help="sampler seed (worker i uses seed + i)")
    g.add_argument("--objectives", default=None,
                   help="comma-separated: score (the profile's loss), avg_bits, avg_bits_with_overhead; "
                        "default score, or score,<budget resource> with nsga2")
    g.add_argument("--space", default=None, help="auto (default), unit (one parameter per unit) or shift (per layer)")
    g.add_argument("--max-params", type=int, default=None, help="auto space: per-unit up to this many free units (256)")
    g.add_argument("--population", type=int, default=None, help="nsga2 population size (50)")


def options(args, resource: str) -> dict:
    """Solver options from the flags; `resource` is the budget's resource (nsga2's second objective)."""
    if args.solver != "optuna":
        given = [f for f in FLAGS if getattr(args, f) is not None]
        if given:
            raise bad("--" + given[0].replace("_", "-"), getattr(args, given[0]), f"only applies to --solver optuna, not {args.solver}")
        return {}
    opts = {}
    for flag, key in (("trials", "n_trials"), ("sampler", "sampler"), ("workers", "workers"), ("storage", "storage"),
                      ("study", "study"), ("seed", "seed"), ("space", "space"), ("max_params", "max_params"),
                      ("population", "population_size")):
        if getattr(args, flag) is not None:
            opts[key] = getattr(args, flag)
    if args.workers is not None and args.workers < 1:
        raise bad("--workers", args.workers, "must be at least 1")
    if args.trials is not None and args.trials < 1:
        raise bad("--trials", args.trials, "must be at least 1")
    if args.objectives is not None:
        opts["objectives"] = tuple(o.strip() for o in args.objectives.split(",") if o.strip())
    elif args.sampler == "nsga2":
        opts["objectives"] = ("score", resource)
    return opts


def render(alloc, console=None) -> None:
    """Trials per worker and, with several objectives, the Pareto set."""
    from rich.console import Console
    from rich.table import Table

    m = alloc.meta
    if "trials_per_worker" not in m:
        return
    console = console or Console()
    t = Table(title=f"optuna study {m['study']!r} in {m['storage']}: {m['trials_total']} trials "
                    f"({m['trials_this_run']} this run, {m['feasible_trials']} within budget)", show_edge=False)
    t.add_column("worker (host:pid)")
    t.add_column("trials this run", justify="right")
    for w, n in m["trials_per_worker"].items():
        t.add_row(w, str(n))
    console.print(t)
    if m.get("pareto"):
        f = Table(title=f"Pareto set ({len(m['pareto'])} allocations)", show_edge=False)
        f.add_column("trial", justify="right")
        for name in m["objectives"]:
            f.add_column(name, justify="right")
        for p in m["pareto"]:
            f.add_row(str(p["trial"]), *[f"{v:.6g}" for v in p["values"]])
        console.print(f)
