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
    from bitalloc.quant.pack import read
    from bitalloc.verify.budgets import verify

    kw = check_quant_args(args)
    if not args.allocation and not args.packed:
        raise bad("--allocation", None, "give --allocation, --packed, or both")
    if args.seeds < 1:
        raise bad("--seeds", args.seeds, "must be at least 1")
    if args.held_out is not None and args.held_out < 1:
        raise bad("--held-out", args.held_out, "must be at least 1")
    alloc = Allocation.load(args.allocation) if args.allocation else None
    if args.packed:
        from bitalloc.apply.save import PACKED, is_quantized_directory

        if is_quantized_directory(args.packed):  # a folder written by `bitalloc apply`
            args.packed = str(Path(args.packed) / PACKED)
        read(args.packed)  # a damaged file fails here, before the model loads
    out = Path(args.out) if args.out else Path(args.allocation or args.packed).with_suffix(".verify.json")
    check_writable(out, args.force)
    task = load_task_from_args(args, held_out=args.held_out)
    report = verify(task, alloc, args.packed, args.quantizer, baselines=args.baselines, seeds=args.seeds,
                    progress=lambda s: print(f"  evaluating {s} ...", file=sys.stderr), **kw)
    atomic_write(out, dumps(report.to_json()), force=True)
    print(report.tables())
    print(f"wrote {out}")
    return 0 if report.ok else 1
