"""Arguments and checks shared by the commands: the real-model flags (profile, scorecard), the
profile to solve, the problem flags (pins, ties, bit limits) and hardware constraints (solve, pareto)."""
from __future__ import annotations

import argparse

from bitalloc.errors import bad


def add_model_args(p) -> None:
    p.add_argument("--model", required=True, help="smollm2, minilm, digits-cnn, a transformers model folder "
                   "(config.json + *.safetensors), a .gguf file, or package.module:function returning a Task")
    add_runtime_args(p)
    p.add_argument("--granularity", default="layer", help="layer (default), group or channel")
    p.add_argument("--group-size", type=int, default=128, help="input columns per quantization group (128)")
    p.add_argument("--bits", default="2,3,4,5,6,8", help="candidate bit-widths (2,3,4,5,6,8)")
    p.add_argument("--samples", type=int, default=8, help="calibration sequences / sentences / images")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per calibration sequence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite output files")


def add_runtime_args(p) -> None:
    """--calib, --torch-device, --dtype, --include, --exclude, --device-map: how a model is loaded and run."""
    p.add_argument("--calib", default=None, metavar="PATH",
                   help="calibration text: .txt, .jsonl (field 'text') or a folder of .txt/.md (default: pydoc text); "
                        "a disjoint part is held out for evaluation")
    p.add_argument("--torch-device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", help="auto (float32 on cpu, bfloat16/float16 on a GPU), float32, bfloat16, float16")
    p.add_argument("--include", default=None, metavar="REGEX", help="only layers whose name matches")
    p.add_argument("--exclude", default=None, metavar="REGEX", help="leave out layers whose name matches")
    p.add_argument("--device-map", default=None, choices=("auto",),
                   help="auto: spread a model larger than one GPU over the devices (accelerate)")


def load_task_from_args(args, held_out=None):
    """The Task of --model with the runtime flags (checked by `check_model`)."""
    import sys

    from bitalloc.models.loader import load_model

    print(f"loading {args.model} ...", file=sys.stderr)
    return load_model(args.model, calib=args.calib, samples=args.samples, seq_len=args.seq_len, seed=args.seed,
                      held_out=held_out, device=args.torch_device, dtype=args.dtype, include=args.include,
                      exclude=args.exclude, device_map=args.device_map)


def parse_bits(text: str) -> tuple[int, ...]:
    try:
        bits = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise bad("--bits", text, "must be comma-separated integers, e.g. 2,3,4,8") from None
    if not bits or any(not 1 <= b <= 16 for b in bits) or len(set(bits)) != len(bits):
        raise bad("--bits", text, "must be distinct bit-widths from 1 to 16")
    return bits


def parse_options(items: list[str]) -> dict:
    """`key=value` pairs; values become int, float, bool or stay strings."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise bad("--option", item, "must be KEY=VALUE, e.g. probes=16")
        out[key.replace("-", "_")] = _value(value)
    return out


def _value(v: str):
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def check_model(args) -> None:
    """--model, --samples, --seq-len and the runtime flags, shared by every command that loads a
    real model: checked before anything heavy is imported or loaded."""
    from pathlib import Path

    from bitalloc.models.device import check_device_name, check_dtype_name
    from bitalloc.models.layers import _regex
    from bitalloc.models.loader import model_source

    if model_source(args.model) == "directory":  # the architecture too: transformers' config, no weights
        from bitalloc.models.hf import load_config, model_kind

        model_kind(load_config(args.model))
    check_device_name(args.torch_device)
    check_dtype_name(args.dtype)
    from bitalloc.models.device import resolve_device, resolve_dtype

    resolve_dtype(args.dtype, resolve_device(args.torch_device))  # a device or dtype this machine lacks
    _regex("--include", args.include), _regex("--exclude", args.exclude)
    if args.calib is not None and not Path(args.calib).exists():
        raise bad("--calib", args.calib, "no such file or folder")
    if args.samples < 1:
        raise bad("--samples", args.samples, "must be at least 1")
    if args.seq_len < 2:
        raise bad("--seq-len", args.seq_len, "must be at least 2")


def check_model_args(args) -> tuple[int, ...]:
    """Validate everything that does not need the model, before the (slow) load."""
    from bitalloc.units import GRANULARITIES

    check_model(args)
    if args.granularity not in GRANULARITIES:
        raise bad("--granularity", args.granularity, f"allowed: {', '.join(GRANULARITIES)}")
    if args.group_size < 1:
        raise bad("--group-size", args.group_size, "must be a positive integer")
    return parse_bits(args.bits)


def progress_bar(desc: str):
    """(callback, close()) drawing a tqdm bar on stderr. The callback takes `(done, total)` from
    estimators that count their steps, or one status string from those that iterate to a
    tolerance (Hutchinson probes), shown next to the bar."""
    from bitalloc.extras import available

    if not available("tqdm"):  # a base install: no bar, the work is the same
        return (lambda *args: None), (lambda: None)
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="step", leave=False, dynamic_ncols=True)

    def update(*args):
        if len(args) == 2:
            done, total = args
            if bar.total != total:
                bar.total = total
            bar.n = done
        else:
            bar.set_postfix_str(str(args[0]), refresh=False)
            bar.n += 1
        bar.refresh()

    return update, bar.close


# ---- hardware constraints: `--constraint latency_ms<=3.5` (parsed by bitalloc.hwcost.parse) ----
def fit_reports(constraints) -> dict[str, str]:
    from bitalloc.hwcost.parse import fit_reports as reports

    return reports(constraints)


def add_constraint_args(s, what: str = "hardware budget") -> None:
    """--constraint / --device / --device-profile / --target-spec / --cost-option (`constraints_from_args`)."""
    s.add_argument("--constraint", action="append", default=[], metavar="RESOURCE<=N",
                   help=f"{what}, unit in the name: latency_ms<=3.5, flash_kb<=512, sram_kb<=128, mcycles<=20, "
                        "lut<=50000, dsp<=100, bram<=40, avg_bits_with_overhead<=4.5 (repeatable)")
    s.add_argument("--target", default=None, help="hardware target of --constraint: cortex-m4, cortex-m7, rpi4-a72, a100, "
                                                  "h100, b200, host-cpu, vu9p, z7020 (bitalloc/data/devices)")
    s.add_argument("--device", dest="target_alias", default=None, help=argparse.SUPPRESS)
    s.add_argument("--device-profile", default=None, metavar="M.CSV",
                   help="measured costs (bitalloc measure / an on-device harness); missing rows from the "
                        "analytic model scaled by a fitted factor; sets --device")
    s.add_argument("--target-spec", default=None, metavar="SPEC.json",
                   help="spec of a device bitalloc has no spec of (the schema of bitalloc/data/devices/*.json); "
                        "needed with a partial --device-profile of such a device")
    s.add_argument("--cost-option", action="append", default=[], metavar="KEY=VALUE",
                   help="cost-model option, e.g. reuse_factor=4 (fpga)")


def target_from_alias(args) -> None:
    """`--device` is the old name of `--target` (kept, with a one-line note)."""
    import sys

    alias = getattr(args, "target_alias", None)
    if alias is not None:
        print("bitalloc: note: --device is deprecated for the hardware target; use --target "
              "(--torch-device picks the torch device)", file=sys.stderr)
        if args.target is not None and args.target != alias:
            raise bad("--device", alias, f"conflicts with --target {args.target!r}")
        args.target = alias
        args.target_alias = None


def constraints_from_args(args) -> list:
    """The Constraints of `--constraint` (with --device, --device-profile, --target-spec, --cost-option)."""
    from bitalloc.hwcost.parse import parse_constraints

    target_from_alias(args)
    return parse_constraints(args.constraint, args.target, args.device_profile or None,
                             parse_options(args.cost_option), getattr(args, "target_spec", None))


def add_profile_arg(s) -> None:
    s.add_argument("--profile", help="profile JSON (default: the embedded SmolLM2-135M profile)")


def load_profile(path):
    """The profile at `path`, or the embedded default one."""
    from bitalloc import load_default_profile
    from bitalloc.profile import Profile

    return Profile.load(path) if path else load_default_profile()


def add_problem_args(s) -> None:
    """--count-overhead, --pin, --tie, --min-bits, --max-bits (see `problem_options`)."""
    s.add_argument("--count-overhead", action="store_true",
                   help="budget counts group scale/zero bits and outliers (ExLlamaV2/llama.cpp style)")
    s.add_argument("--pin", action="append", default=[], metavar="GLOB=BITS", help="fix matching units' bits")
    s.add_argument("--tie", action="append", default=[], metavar="A,B,C",
                   help="units differing only in these name parts share bits, e.g. q_proj,k_proj,v_proj")
    s.add_argument("--min-bits", type=int, default=None)
    s.add_argument("--max-bits", type=int, default=None)


def problem_options(args, profile) -> dict:
    """Problem keyword arguments from the flags of `add_problem_args` (pins, ties, bit limits)."""
    from bitalloc.problem import tie_groups, unmatched_tokens

    pins = {}
    for item in args.pin:
        pattern, sep, cand = item.rpartition("=")
        if not sep or not pattern or not cand:
            raise bad("--pin", item, "must be GLOB=BITS, e.g. 'lm_head=8' or '*.0.*=8'")
        pins[pattern] = cand
    ties = []
    for spec in args.tie:
        toks = [t.strip() for t in spec.split(",") if t.strip()]
        if len(toks) < 2:
            raise bad("--tie", spec, "must name at least two name parts, e.g. q_proj,k_proj,v_proj")
        missing = unmatched_tokens(profile.names, toks)
        if missing:
            raise bad("--tie", spec, f"{missing[0]!r} is no dotted part of any unit name (a typo?); "
                      f"e.g. {profile.names[0]!r}")
        groups = tie_groups(profile.names, toks)
        if not groups:
            raise bad("--tie", spec, "ties no units: no two unit names differ only in these parts")
        ties += groups
    return dict(pins=pins, ties=ties, min_bits=args.min_bits, max_bits=args.max_bits)
