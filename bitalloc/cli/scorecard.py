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
    s.add_argument("--estimators", default=DEFAULT_ESTIMATORS,
                   help=f"comma-separated ({DEFAULT_ESTIMATORS}); also local, hybrid, hybrid:BASE (calibrate BASE)")
    s.add_argument("--measured-units", type=int, default=None,
                   help="measure only this many units, evenly spread (default: all)")
    s.add_argument("--measured", help="reuse a measured profile JSON instead of measuring again (comma-separated: shards, merged)")
    s.add_argument("--save-profiles", help="folder to write each estimator's profile into")
    s.add_argument("--reuse", action="store_true",
                   help="load an estimator's profile from --save-profiles (MODEL.NAME.json) where it exists")
    s.add_argument("--measured-score", default=None, choices=("loss", "kl"),
                   help="rank against the measured loss increase or KL (both are recorded; default: the "
                        "measured profile's own sensitivity)")
    s.add_argument("--markdown", help="write the tables (all cells and per bit-width) to this Markdown file")
    s.add_argument("--out", required=True, help="scorecard JSON")
    s.add_argument("--plot", help="scorecard PNG")
    s.set_defaults(func=run)


def run(args) -> int:
    from bitalloc.fileio import atomic_write, check_writable, dumps
    from bitalloc.profile import Profile
    from bitalloc.report.scorecard import card_rows, markdown, measured_as, merge_measured, per_bit_markdown, plot
    from bitalloc.sensitivity import ESTIMATORS

    bits = check_model_args(args)
    names = [e.strip() for e in args.estimators.split(",") if e.strip()]
    for n in names:
        est, _, base = n.partition(":")
        ESTIMATORS.get(est)
        if base and est != "hybrid":
            raise bad("--estimators", n, "NAME:BASE is for hybrid only (hybrid:fisher)")
        if base:
            ESTIMATORS.get(base)
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
    if args.markdown:
        outs.append((args.markdown, "--markdown"))
    if args.reuse and not args.save_profiles:
        raise bad("--reuse", True, "needs --save-profiles (the folder to reuse profiles from)")
    for path, flag in outs:
        check_writable(path, args.force, flag)
    if args.plot is not None and Path(args.plot).absolute() == Path(args.out).absolute():
        raise bad("--plot", args.plot, "must differ from --out")
    save_dir = Path(args.save_profiles) if args.save_profiles is not None else None
    if save_dir is not None and not save_dir.is_dir():
        raise bad("--save-profiles", str(save_dir), "must be an existing folder")
    saved = [] if save_dir is None else [save_dir / f"{args.model}.{n.replace(':', '-')}.json"
                                         for n in ["measured", *names]]
    for path in ([] if args.reuse else saved[0 if not args.measured else 1:]):
        check_writable(path, args.force, "--save-profiles")
    if args.measured is not None:
        for x in args.measured.split(","):
            if x:
                Profile.load(x)  # a bad file fails before the model loads

    task = load_task_from_args(args)
    name = task.name
    common = dict(bits=bits, granularity=args.granularity, group_size=args.group_size)
    if args.measured:
        paths = [x for x in args.measured.split(",") if x]
        measured = merge_measured([Profile.load(x) for x in paths]) if len(paths) > 1 else Profile.load(paths[0])
    else:
        opts = {"units": args.measured_units} if args.measured_units else {}
        measured = _run(ESTIMATORS.create("measured", **common, **opts), task, "measured", name)
        if save_dir is not None:
            measured.save(save_dir / f"{args.model}.measured.json", force=args.force)
    if args.measured_score:
        measured = measured_as(measured, {"kl": "kl", "loss": "loss_increase"}[args.measured_score])
    profiles = {}
    for n in names:
        path = save_dir / f"{args.model}.{n.replace(':', '-')}.json" if save_dir is not None else None
        if args.reuse and path.exists():
            profiles[n] = Profile.load(path)
            continue
        est, _, base = n.partition(":")
        if est == "hybrid":
            opts = {"base": base} if base else {}
            if args.measured_score:
                opts["score"] = args.measured_score
            h = ESTIMATORS.create("hybrid", **common, **opts)
            update, close = progress_bar(f"{n} on {args.model}")
            try:
                profiles[n] = h.estimate(task, progress=update, base_profile=profiles.get(h.base),
                                         measured_profile=measured)
            finally:
                close()
            # scored on the units it was not calibrated on (its calibration units are measured cells)
            fitted = set(profiles[n].meta["measured_units"])
            keep = [i for i, nm in enumerate(profiles[n].names) if nm not in fitted]
            p = profiles[n]
            if keep:
                profiles[n] = Profile([p.units[i] for i in keep], p.bits, p.sensitivity[keep], formats=p.formats,
                                      meta={**p.meta, "scored_on": "units not used for calibration"})
        else:
            profiles[n] = _run(ESTIMATORS.create(n, **common), task, n, args.model)
        if path is not None:
            profiles[n].save(path, force=True)
    rows = card_rows(profiles, measured)
    title = f"{args.model}, {args.granularity}, {args.samples} samples" + (
        f", vs measured {args.measured_score}" if args.measured_score else "")
    atomic_write(args.out, dumps({"schema": "bitalloc.report.scorecard/1", "model": args.model, "granularity":
                                  args.granularity, "samples": args.samples, "seq_len": args.seq_len,
                                  "seed": args.seed, "rows": rows}), args.force)
    if args.plot:
        plot(rows, profiles, measured, title, args.plot)
    text = markdown(rows, title) + "\n\nSpearman across units per bit-width:\n\n" + per_bit_markdown(rows, measured.bits)
    if args.markdown:
        atomic_write(args.markdown, text + "\n", args.force)
    print(text)
    return 0


def _run(estimator, task, name: str, model: str):
    update, close = progress_bar(f"{name} on {model}")
    try:
        return estimator.estimate(task, progress=update)
    finally:
        close()
