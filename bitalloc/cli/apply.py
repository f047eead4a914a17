"""`bitalloc apply`: quantize a real model as an allocation says and write the packed file."""
from __future__ import annotations

import sys

from bitalloc.cli._quant import add_quant_args, check_quant_args


def add_parser(sub) -> None:
    s = sub.add_parser("apply", help="quantize a real model per an allocation; write the packed safetensors file")
    add_quant_args(s)
    s.add_argument("--out", required=True, help="FILE.safetensors: the packed file; any other path (transformers "
                   "models): a folder that loads back (packed units, the rest, config and tokenizer)")
    s.set_defaults(func=run)


def run(args) -> int:
    from bitalloc.allocation import Allocation
    from bitalloc.apply.quantize import Settings, apply, plan
    from bitalloc.errors import BitallocError, bad
    from bitalloc.extras import require_model
    from bitalloc.fileio import check_writable
    from bitalloc.verify.budgets import check_budgets
    from bitalloc.cli._common import load_task_from_args, progress_bar
    from bitalloc.cli._quant import precheck_allocation

    kw = check_quant_args(args)
    if not args.allocation:
        raise bad("--allocation", None, "required: the allocation JSON to apply")
    require_model(args.model)
    alloc = Allocation.load(args.allocation)
    to_dir = not str(args.out).endswith(".safetensors")
    if to_dir and args.model in ("digits-cnn",):
        raise bad("--out", args.out, f"model {args.model} is no transformers model: write FILE.safetensors")
    check_writable(args.out, args.force, folder=to_dir) if to_dir else check_writable(args.out, args.force)
    alloc = precheck_allocation(args, alloc)
    task = load_task_from_args(args)
    plan(task.model, alloc, Settings(args.quantizer, kw["options"], args.group_size, args.symmetric, args.zero))
    update, close = progress_bar(f"apply to {task.name}")
    try:
        q = apply(task.model, alloc, args.quantizer, calib=task.calib, forward=task.loss, macs=task.macs,
                  progress=update, **kw)
    finally:
        close()
    report = check_budgets(q.packed(), task.model, alloc, task=task)
    if report.failures:  # refused before writing: no packed file of a broken allocation
        more = f" (+{len(report.failures) - 1} more)" if len(report.failures) > 1 else ""
        raise BitallocError(f"{report.failures[0]}{more}; nothing written")
    if to_dir:
        from bitalloc.models.quantized_dir import save_directory

        save_directory(q, task, args.out, force=args.force)
    else:
        q.save(args.out, force=args.force)
    t = report.totals
    kv = f" + {len(q.kv['units'])} kv-cache units (recorded)" if q.kv else ""
    print(f"wrote {args.out}: {len(q.codes)} units{kv}, {t['n_params']:,} weights, {t['avg_bits']:.4f} bits/weight "
          f"({t['avg_bits_with_overhead']:.4f} with scales/zeros, {t['file_bits_per_weight']:.4f} in the file); "
          f"quantizer {q.settings.describe()}")
    if t.get("filled_units"):
        print(f"  {t['filled_units']} units missing from the allocation kept at {t['filled_bits']} bits "
              f"(--allow-partial); whole model {t['model_avg_bits']:.4f} bits/weight; budgets hold for the "
              f"{t['n_params_allocated']:,} allocated weights")
    return 0
