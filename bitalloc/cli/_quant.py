"""Arguments shared by `bitalloc apply` and `bitalloc verify`: the model, the allocation and the quantizer."""
from __future__ import annotations


def add_quant_args(p) -> None:
    from bitalloc.cli._common import add_runtime_args

    p.add_argument("--model", required=True, help="smollm2, minilm, digits-cnn, a transformers model folder, "
                   "a .gguf file, or package.module:function returning a Task")
    add_runtime_args(p)
    p.add_argument("--allocation", help="allocation JSON (from bitalloc solve)")
    p.add_argument("--quantizer", default="rtn", help="weight quantizer: rtn (default), or another registered one")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="quantizer option")
    p.add_argument("--group-size", type=int, default=128, help="input columns per scale (128)")
    p.add_argument("--symmetric", action="store_true", help="symmetric grid (no zero-point)")
    p.add_argument("--zero", default="int", help="zero-point form: int (GPTQ/AWQ, default) or float (llama.cpp Q4_1)")
    p.add_argument("--samples", type=int, default=8, help="calibration samples, for quantizers that need inputs")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (calibration and held-out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite output files")
    p.add_argument("--allow-partial", type=int, nargs="?", const=8, default=None, metavar="BITS",
                   help="an allocation over a subset of a layer's units (a partial profile, e.g. measured "
                        "--option units=40): keep the missing units at BITS (8)")


def check_quant_args(args) -> dict:
    """Validate what needs no model; returns the keyword arguments of bitalloc.apply."""
    from bitalloc.apply.quantize import Settings
    from bitalloc.quant.quantizers import QUANTIZERS
    from bitalloc.cli._common import check_model, parse_options

    check_model(args)
    QUANTIZERS.get(args.quantizer)
    options = parse_options(args.option)
    Settings(args.quantizer, options, args.group_size, args.symmetric, args.zero)
    return dict(group_size=args.group_size, symmetric=args.symmetric, zero=args.zero, options=options)


def precheck_allocation(args, alloc):
    """Before the slow model load: the allocation's units against the model's module names and
    shapes (read cheaply), a partial allocation named as such (or filled with --allow-partial),
    and its own average-bits budgets recomputed from its bits. Returns the allocation to use."""
    from bitalloc.errors import BitallocError
    from bitalloc.verify.check import check_allocation, fill_partial, stated_budget_failures
    from bitalloc.zoo.demo import MODELS, module_shapes

    if args.model not in MODELS:  # a checkpoint of the user's: checked after loading
        return alloc
    shapes = module_shapes(args.model)
    where = f"--allocation {args.allocation!r}"
    check_allocation(alloc, list(shapes), args.group_size, where)  # another model: before the shapes matter
    if args.allow_partial is not None:
        alloc = fill_partial(alloc, shapes, args.group_size, args.allow_partial)
    units = check_allocation(alloc, shapes, args.group_size, where)
    fails = stated_budget_failures(alloc, units, args.group_size, args.symmetric)
    if fails:
        raise BitallocError(f"{where}: {fails[0]}: the allocation breaks its own budget (nothing written)")
    return alloc
