"""`bitalloc scorecard`: every estimator against the measured loss increase on one real model."""
from __future__ import annotations

import sys
from pathlib import Path

from bitalloc.errors import bad
from bitalloc.cli._common import add_model_args, check_model_args, load_task_from_args, progress_bar

DEFAULT_ESTIMATORS = "weight_error,hessian,fisher,lrp,salience"


def add_parser(sub) -> None:
    s = sub.add_parser("scorecard", help="rank correlation of each estimator with the measured loss increase")
    add_model_args(s)
    s.add_argument("--estimators", default=DEFAULT_ESTIMATORS, help=f"comma-separated ({DEFAULT_ESTIMATORS})")
    s.add_argument("--measured-units", type=int, default=None,
                   help="measure only this many units, evenly spread (default: all)")
    s.add_argument("--measured", help="reuse a measured profile JSON instead of measuring again")
    s.add_argument("--save-profiles", help="folder to write each estimator's profile into")
    s.add_argument("--out", required=True, help="scorecard JSON")
    s.add_argument("--plot", help="scorecard PNG")
    s.set_defaults(func=run)


def run(args) -> int:
    from bitalloc.fileio import atomic_write, check_writable, dumps
    from bitalloc.profile import Profile
    from bitalloc.report.scorecard import card_rows, markdown, plot
    from bitalloc.sensitivity import ESTIMATORS

    bits = check_model_args(args)
    names = [e.strip() for e in args.estimators.split(",") if e.strip()]
    for n in names:
        ESTIMATORS.get(n)
        if n == "measured":
            raise bad("--estimators", n, "measured is the reference; it is always run")
    if args.measured_units is not None and args.measured_units < 2:
        raise bad("--measured-units", args.measured_units, "must be at least 2")
    outs = [args.out] + ([args.plot] if args.plot else [])
    for path in outs:
        check_writable(path, args.force)
    save_dir = Path(args.save_profiles) if args.save_profiles else None
    if save_dir is not None and not save_dir.is_dir():
        raise bad("--save-profiles", str(save_dir), "must be an existing folder")

    task = load_task_from_args(args)
    name = task.name
    common = dict(bits=bits, granularity=args.granularity, group_size=args.group_size)
    if args.measured:
        measured = Profile.load(args.measured)
    else:
        opts = {"units": args.measured_units} if args.measured_units else {}
        measured = _run(ESTIMATORS.create("measured", **common, **opts), task, "measured", name)
        if save_dir is not None:
            measured.save(save_dir / f"{name}.measured.json", force=args.force)
    profiles = {}
    for n in names:
        profiles[n] = _run(ESTIMATORS.create(n, **common), task, n, name)
        if save_dir is not None:
            profiles[n].save(save_dir / f"{name}.{n}.json", force=args.force)
    rows = card_rows(profiles, measured)
    title = f"{name}, {args.granularity}, {args.samples} samples"
    atomic_write(args.out, dumps({"schema": "bitalloc.report.scorecard/1", "model": name, "granularity":
                                  args.granularity, "samples": args.samples, "seq_len": args.seq_len,
                                  "seed": args.seed, "rows": rows}), args.force)
    if args.plot:
        plot(rows, profiles, measured, title, args.plot)
    print(markdown(rows, title))
    return 0


def _run(estimator, task, name: str, model: str):
    update, close = progress_bar(f"{name} on {model}")
    try:
        return estimator.estimate(task, progress=update)
    finally:
        close()
