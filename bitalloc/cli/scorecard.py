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
    from bitalloc.fileio import check_writable, dumps, publish_all
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
    from bitalloc.extras import require, require_model

    require_model(args.model)
    require("scipy", why="scorecard")
    if args.plot is not None:
        require("matplotlib", why="--plot")
    outs = [(args.out, "--out")] + ([(args.plot, "--plot")] if args.plot is not None else [])
    for path, flag in outs:
        check_writable(path, args.force, flag)
    if args.plot is not None and Path(args.plot).absolute() == Path(args.out).absolute():
        raise bad("--plot", args.plot, "must differ from --out")
    save_dir = Path(args.save_profiles) if args.save_profiles is not None else None
    if save_dir is not None and not save_dir.is_dir():
        raise bad("--save-profiles", str(save_dir), "must be an existing folder")
    saved = [] if save_dir is None else [save_dir / f"{args.model}.{n}.json" for n in ["measured", *names]]
    for path in saved[0 if not args.measured else 1:]:
        check_writable(path, args.force, "--save-profiles")
    if args.measured is not None:
        measured_given = Profile.load(args.measured)  # a bad file fails before the model loads

    task = load_task_from_args(args)
    name = task.name
    common = dict(bits=bits, granularity=args.granularity, group_size=args.group_size)
    outputs = []  # everything is written at the end, together: a failure leaves no file
    if args.measured is not None:
        measured = measured_given
    else:
        opts = {"units": args.measured_units} if args.measured_units else {}
        measured = _run(ESTIMATORS.create("measured", **common, **opts), task, "measured", name)
        if save_dir is not None:
            outputs.append((saved[0], dumps(measured.to_json()), "--save-profiles"))
    profiles = {}
    for n in names:
        profiles[n] = _run(ESTIMATORS.create(n, **common), task, n, name)
        if save_dir is not None:
            outputs.append((save_dir / f"{args.model}.{n}.json", dumps(profiles[n].to_json()), "--save-profiles"))
    rows = card_rows(profiles, measured)
    title = f"{args.model}, {args.granularity}, {args.samples} samples"
    outputs.insert(0, (args.out, dumps({"schema": "bitalloc.report.scorecard/1", "model": args.model, "granularity":
                                        args.granularity, "samples": args.samples, "seq_len": args.seq_len,
                                        "seed": args.seed, "rows": rows}), "--out"))
    if args.plot is not None:
        outputs.insert(1, (args.plot, plot(rows, profiles, measured, title, None), "--plot"))
    publish_all(outputs, args.force)
    print(markdown(rows, title))
    return 0


def _run(estimator, task, name: str, model: str):
    update, close = progress_bar(f"{name} on {model}")
    try:
        return estimator.estimate(task, progress=update)
    finally:
        close()
