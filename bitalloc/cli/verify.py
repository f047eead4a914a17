"""`bitalloc verify`: budgets recomputed from the quantized weights, quality against baselines."""
from __future__ import annotations

import sys
from pathlib import Path

from bitalloc.cli._quant import add_quant_args, check_quant_args


def add_parser(sub) -> None:
    s = sub.add_parser("verify", help="check an allocation's budgets from the quantized weights; measure quality")
    add_quant_args(s)
    s.add_argument("--packed", help="packed file or folder from bitalloc apply (default: apply the allocation in memory)")
    s.add_argument("--baselines", action="store_true", help="also uniform (floor/ceil bits) and random allocations")
    s.add_argument("--seeds", type=int, default=3, help="random baselines (3)")
    s.add_argument("--held-out", type=int, default=None, help="held-out sequences / sentences (model default)")
    s.add_argument("--runtime", default="torch", choices=("torch", "llama.cpp"),
                   help="torch (default): apply the allocation in the model; llama.cpp: load --gguf file(s) in "
                        "llama.cpp and measure perplexity there (needs the llamacpp extra)")
    s.add_argument("--gguf", action="append", default=[], metavar="FILE",
                   help="with --runtime llama.cpp: GGUF file(s) on the same held-out windows; files after the first "
                        "get the paired loss difference to it (repeatable)")
    s.add_argument("--threads", type=int, default=2, help="llama.cpp threads (2)")
    s.add_argument("--out", help="report JSON (default: <allocation>.verify.json)")
    s.set_defaults(func=run)


def run_llamacpp(args) -> int:
    from bitalloc.errors import bad
    from bitalloc.fileio import atomic_write, check_writable, dumps
    from bitalloc.verify import llamacpp

    if not args.gguf:
        raise bad("--gguf", None, "--runtime llama.cpp needs at least one --gguf FILE")
    if args.model != "smollm2":
        raise bad("--model", args.model, "--runtime llama.cpp measures language models: smollm2")
    for g in args.gguf:
        if not Path(g).is_file():
            raise bad("--gguf", g, "no such file")
    if args.threads < 1:
        raise bad("--threads", args.threads, "must be at least 1")
    out = Path(args.out) if args.out else Path(args.gguf[0]).with_suffix(".llamacpp.json")
    check_writable(out, args.force)
    llamacpp.library()  # not installed: one line before any work
    report = llamacpp.runtime_report(args.gguf, args.held_out or 8, args.seq_len, args.seed, args.threads)
    print(f"llama.cpp, {report['windows']} held-out windows x {report['seq_len']} tokens")
    print("| file | MiB | perplexity | vs first: dloss +- SE (nats) |\n|---|---:|---:|---|")
    for f in report["files"]:
        vs = f"{f['vs_first']['mean']:+.4f} +- {f['vs_first']['se']:.4f}" if "vs_first" in f else ""
        print(f"| {f['file']} | {f['bytes'] / 2**20:.2f} | {f['perplexity']:.3f} | {vs} |")
    atomic_write(out, dumps(report), force=True)
    print(f"wrote {out}")
    return 0


def run(args) -> int:
    from bitalloc.allocation import Allocation
    from bitalloc.errors import bad
    from bitalloc.fileio import atomic_write, check_writable, dumps
    from bitalloc.cli._common import load_task_from_args
    from bitalloc.extras import require_model
    from bitalloc.quant.pack import read
    from bitalloc.verify.budgets import verify

    kw = check_quant_args(args)
    if args.runtime == "llama.cpp":
        return run_llamacpp(args)
    if args.gguf:
        raise bad("--gguf", args.gguf[0], "is measured with --runtime llama.cpp")
    if not args.allocation and not args.packed:
        raise bad("--allocation", None, "give --allocation, --packed, or both")
    if args.seeds < 1:
        raise bad("--seeds", args.seeds, "must be at least 1")
    if args.held_out is not None and args.held_out < 1:
        raise bad("--held-out", args.held_out, "must be at least 1")
    require_model(args.model)
    if args.packed:
        from bitalloc.models.quantized_dir import PACKED, is_quantized_directory

        if is_quantized_directory(args.packed):  # a folder written by `bitalloc apply`
            args.packed = str(Path(args.packed) / PACKED)
    out = args.out if args.out is not None else str(Path(args.allocation or args.packed).with_suffix(".verify.json"))
    check_writable(out, args.force)
    pk = read(args.packed) if args.packed else None  # a damaged file fails here, before the model loads
    g = int(pk.settings["group_size"]) if pk is not None else args.group_size
    if args.allocation:
        alloc = precheck_names(args, Allocation.load(args.allocation), g)
    else:
        alloc = None
        precheck_names(args, Allocation.from_json(pk.allocation, where=f"packed file {args.packed!r}"), g)
    task = load_task_from_args(args, held_out=args.held_out)
    report = verify(task, alloc, args.packed, args.quantizer, baselines=args.baselines, seeds=args.seeds,
                    progress=lambda s: print(f"  evaluating {s} ...", file=sys.stderr), **kw)
    atomic_write(out, dumps(report.to_json()), force=args.force)
    print(report.tables())
    print(f"wrote {out}")
    return 0 if report.ok else 1


def precheck_names(args, alloc, group_size: int):
    """The allocation's units against the model's modules (and --allow-partial), before the load."""
    from bitalloc.verify.check import check_allocation, fill_partial
    from bitalloc.zoo.demo import MODELS, module_shapes

    if args.model not in MODELS:  # a checkpoint of the user's: checked after loading
        return alloc
    shapes = module_shapes(args.model)
    where = f"--allocation {args.allocation!r}" if args.allocation else f"packed file {args.packed!r}"
    check_allocation(alloc, list(shapes), group_size, where)
    if args.allow_partial is not None:
        alloc = fill_partial(alloc, shapes, group_size, args.allow_partial)
    return alloc
