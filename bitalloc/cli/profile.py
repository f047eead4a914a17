"""`bitalloc profile`: score a real model's units with one estimator and write a profile."""
from __future__ import annotations

import sys

from bitalloc.cli._common import add_model_args, check_model_args, parse_options, progress_bar

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
    s.add_argument("--candidates", default=None, metavar="FMT,FMT,...",
                   help="candidate formats instead of --bits, e.g. int4,int3,fp4_e2m1,mxfp4,nvfp4,int8 "
                        "(int<b>[_g<N>], fp8_e4m3, fp8_e5m2, fp6_e2m3, fp6_e3m2, fp4_e2m1, mxfp4, mxfp6, mxfp8, nvfp4, fp16)")
    s.add_argument("--quantizer", default=None,
                   help="measured: the weight quantizer candidates are scored with, rtn (default) or gptq")
    s.add_argument("--out", required=True, help="profile JSON to write (a .npz sidecar for large profiles)")
    s.set_defaults(func=run)


def parse_candidates(text: str) -> tuple:
    """`int4,fp4_e2m1,8` → candidate names (bare numbers stay bit-widths), checked before any work."""
    from bitalloc.errors import BitallocError, bad
    from bitalloc.quant.formats.spec import parse_format

    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise bad("--candidates", text, "must be comma-separated formats, e.g. int4,fp4_e2m1,mxfp4,nvfp4,int8")
    cands = tuple(int(t) if t.isdigit() else t for t in items)
    try:
        names = [parse_format(c).name for c in cands]
    except BitallocError as e:
        raise BitallocError(f"--candidates: {e}") from None
    if len(set(names)) != len(names):
        raise bad("--candidates", text, "each candidate must appear once")
    return cands


def run(args) -> int:
    from bitalloc.errors import bad
    from bitalloc.fileio import check_writable
    from bitalloc.zoo.demo import load_task
    from bitalloc.sensitivity import ESTIMATORS

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
    if args.candidates is not None:
        bits = parse_candidates(args.candidates)
    ESTIMATORS.get(args.estimator)
    options = parse_options(args.option)
    if args.quantizer is not None:
        import inspect

        from bitalloc.quant.quantizers import QUANTIZERS

        QUANTIZERS.get(args.quantizer)
        if "quantizer" not in inspect.signature(ESTIMATORS.get(args.estimator).__init__).parameters:
            raise bad("--quantizer", args.quantizer, f"the {args.estimator} estimator scores round-to-nearest only; "
                      "use --estimator measured")
        options["quantizer"] = args.quantizer
    check_writable(args.out, args.force)
    estimator = ESTIMATORS.create(args.estimator, bits=bits, granularity=args.granularity,
                                  group_size=args.group_size, **options)
    print(f"loading {args.model} ...", file=sys.stderr)
    task = load_task(args.model, samples=args.samples, seq_len=args.seq_len, seed=args.seed)
    estimator.units(task)  # group size against the layers: fail before any work
    update, close = progress_bar(f"{args.estimator} on {args.model}")
    try:
        profile = estimator.estimate(task, progress=update)
    finally:
        close()
    from bitalloc.hwcost.graph import attach_graph

    attach_graph(profile, task)  # one more forward pass on one sample: the layer graph for peak SRAM
    profile.save(args.out, force=args.force)
    print(f"wrote {args.out}: {profile.n_units} units x {len(profile.bits)} candidates, "
          f"{profile.meta.get('seconds', 0):.1f} s, passes: {profile.meta.get('passes', '?')}", file=sys.stderr)
    return 0
