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
    s.add_argument("--out", help="report JSON (default: <allocation>.verify.json)")
    s.set_defaults(func=run)


def run(args) -> int:
    from bitalloc.allocation import Allocation
    from bitalloc.errors import bad
    from bitalloc.fileio import atomic_write, check_writable, dumps
    from bitalloc.cli._common import load_task_from_args
    from bitalloc.extras import require_model
    from bitalloc.quant.pack import read
    from bitalloc.verify.budgets import verify

    kw = check_quant_args(args)
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
