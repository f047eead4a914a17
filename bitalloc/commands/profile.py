"""`bitalloc profile`: score a real model's units with one estimator and write a profile."""
from __future__ import annotations

import sys

from ._common import add_model_args, check_model_args, parse_options, progress_bar

KINDS = ("weight", "kv")


def add_parser(sub) -> None:
    s = sub.add_parser("profile", help="estimate the sensitivity of a real model's units")
    add_model_args(s)
    s.add_argument("--estimator", help="hessian, fisher, lrp, salience, measured, weight_error; kv (the default with --kind kv)")
    s.add_argument("--kind", default="weight", choices=KINDS,
                   help="weight (default): the linear layers; kv: each attention layer's key and value cache")
    s.set_defaults(group_size=None, bits=None)  # weights: group 128, bits 2,3,4,5,6,8; kv: group 32 (KIVI), bits 2,4,8
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="estimator option, e.g. probes=16, outlier_fraction=0.01, units=40 (measured)")
    s.add_argument("--out", required=True, help="profile JSON to write (a .npz sidecar for large profiles)")
    s.set_defaults(func=run)


def run(args) -> int:
    from ..errors import bad
    from ..fileio import check_writable
    from ..models import load_task
    from ..sensitivity import ESTIMATORS

    kv = args.kind == "kv"
    if args.group_size is None:
        args.group_size = 32 if kv else 128
    if args.bits is None:
        args.bits = "2,4,8" if kv else "2,3,4,5,6,8"
    if args.estimator is None:
        if not kv:
            raise bad("--estimator", None, "required with --kind weight: hessian, fisher, lrp, salience, measured, weight_error")
        args.estimator = "kv"
    if kv != (args.estimator == "kv"):
        raise bad("--estimator", args.estimator, "the kv estimator scores --kind kv (the caches), the others --kind weight")
    bits = check_model_args(args)
    ESTIMATORS.get(args.estimator)
    check_writable(args.out, args.force)
    estimator = ESTIMATORS.create(args.estimator, bits=bits, granularity=args.granularity,
                                  group_size=args.group_size, **parse_options(args.option))
    print(f"loading {args.model} ...", file=sys.stderr)
    task = load_task(args.model, samples=args.samples, seq_len=args.seq_len, seed=args.seed)
    estimator.units(task)  # group size against the layers: fail before any work
    update, close = progress_bar(f"{args.estimator} on {args.model}")
    try:
        profile = estimator.estimate(task, progress=update)
    finally:
        close()
    profile.save(args.out, force=args.force)
    print(f"wrote {args.out}: {profile.n_units} units x {len(profile.bits)} candidates, "
          f"{profile.meta.get('seconds', 0):.1f} s, passes: {profile.meta.get('passes', '?')}", file=sys.stderr)
    return 0
