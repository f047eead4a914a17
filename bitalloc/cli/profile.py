"""`bitalloc profile`: score a real model's units with one estimator and write a profile."""
from __future__ import annotations

import sys

from bitalloc.cli._common import add_model_args, check_model_args, load_task_from_args, parse_options, progress_bar

KINDS = ("weight", "kv")


def add_parser(sub) -> None:
    s = sub.add_parser("profile", help="estimate the sensitivity of a real model's units")
    add_model_args(s)
    s.add_argument("--estimator", help="hessian, fisher, lrp, salience, measured, local, hybrid, weight_error; kv (the default with --kind kv)")
    s.add_argument("--kind", default="weight", choices=KINDS,
                   help="weight (default): the linear layers; kv: each attention layer's key and value cache")
    s.set_defaults(group_size=None, bits=None)  # weights: group 128, bits 2,3,4,5,6,8; kv: group 32 (KIVI), bits 2,4,8
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="estimator option, e.g. probes=16, outlier_fraction=0.01, units=40 (measured)")
    s.add_argument("--candidates", default=None, metavar="FMT,FMT,...",
                   help="candidate formats instead of --bits, e.g. int4,int3,fp4_e2m1,mxfp4,nvfp4,int8 "
                        "(int<b>[_g<N>], fp8_e4m3, fp8_e5m2, fp6_e2m3, fp6_e3m2, fp4_e2m1, mxfp4, mxfp6, mxfp8, nvfp4, fp16; "
                        "GGML types for llama.cpp: q2_k, q3_k, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0, f16)")
    s.add_argument("--imatrix", default=None, metavar="FILE",
                   help="also write llama.cpp's importance matrix (sum of squared inputs per column) from the "
                        "calibration data: FILE.gguf (llama-imatrix's format) or FILE.dat (legacy)")
    s.add_argument("--quantizer", default=None,
                   help="measured: the weight quantizer candidates are scored with, rtn (default) or gptq")
    s.add_argument("--out", required=True, help="profile JSON to write (a .npz sidecar for large profiles)")
    s.add_argument("--executor", default="local", choices=("local", "ray"),
                   help="local (default): this process; ray: measured/local/fisher cells sharded over Ray actors "
                        "(pip install ray), each loading the model once")
    s.add_argument("--workers", type=int, default=2, help="Ray actors (--executor ray; default 2)")
    s.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (auto, or ray://HEAD:10001); default: a local Ray on this machine")
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


def describe_task(task) -> str:
    """Lines on what was found: layers, device and dtype, and the tie groups a runtime may need."""
    from bitalloc.models.layers import suggest_ties

    m = task.meta
    lines = [f"{task.name}: {len(task.layers)} layers ({task.layers[0]} ... {task.layers[-1]}) on "
             f"{m.get('device', '?')} in {m.get('dtype', '?')}"]
    if m.get("unused_layers"):
        lines.append(f"  left out (the loss does not reach them): {', '.join(m['unused_layers'][:4])}")
    ties = suggest_ties(task.layers)
    if ties:
        lines.append("  suggested tie groups (runtimes fuse these): " + " ".join(f"--tie {','.join(t)}" for t in ties))
    return "\n".join(lines)


def run(args) -> int:
    from bitalloc.errors import bad
    from bitalloc.fileio import check_writable
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
    from bitalloc.extras import require, require_model

    require_model(args.model)
    if args.estimator == "lrp":
        require("zennit", why="--estimator lrp")

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
    if args.imatrix:
        if kv:
            raise bad("--imatrix", args.imatrix, "takes --kind weight")
        check_writable(args.imatrix, args.force)
    if args.executor == "ray":
        from bitalloc.sensitivity.ray_executor import KINDS, RayExecutor

        if args.estimator not in KINDS:
            raise bad("--executor ray estimator", args.estimator, f"allowed: {', '.join(KINDS)}")
        executor = RayExecutor(workers=args.workers, address=args.ray_address)
        executor.start()  # Ray missing or the cluster unreachable: fail before the model loads
    elif args.workers != 2 or args.ray_address:
        raise bad("--workers/--ray-address", args.ray_address or args.workers, "need --executor ray")
    estimator = ESTIMATORS.create(args.estimator, bits=bits, granularity=args.granularity,
                                  group_size=args.group_size, **options)
    task = load_task_from_args(args)
    estimator.units(task)  # group size against the layers: fail before any work
    print(describe_task(task), file=sys.stderr)
    update, close = progress_bar(f"{args.estimator} on {args.model}")
    try:
        if args.executor == "ray":
            import functools

            from bitalloc.models.loader import load_model

            factory = functools.partial(load_model, args.model, calib=args.calib, samples=args.samples,
                                        seq_len=args.seq_len, seed=args.seed)
            profile = executor.run(estimator, task, factory, progress=update)
        else:
            profile = estimator.estimate(task, progress=update)
    finally:
        close()
    from bitalloc.hwcost.graph import attach_graph

    attach_graph(profile, task)  # one more forward pass on one sample: the layer graph for peak SRAM
    profile.save(args.out, force=args.force)
    if args.imatrix:
        from bitalloc.sensitivity.imatrix import collect

        path = collect(task).write(args.imatrix, force=args.force)
        print(f"wrote {path} (llama.cpp imatrix)", file=sys.stderr)
    print(f"wrote {args.out}: {profile.n_units} units x {len(profile.bits)} candidates, "
          f"{profile.meta.get('seconds', 0):.1f} s, passes: {profile.meta.get('passes', '?')}", file=sys.stderr)
    return 0
