"""Arguments and checks shared by the commands that load a real model (profile, scorecard)."""
from __future__ import annotations

from ..errors import bad


def add_model_args(p) -> None:
    p.add_argument("--model", required=True, help="smollm2, minilm or digits-cnn")
    p.add_argument("--granularity", default="layer", help="layer (default), group or channel")
    p.add_argument("--group-size", type=int, default=128, help="input columns per quantization group (128)")
    p.add_argument("--bits", default="2,3,4,5,6,8", help="candidate bit-widths (2,3,4,5,6,8)")
    p.add_argument("--samples", type=int, default=8, help="calibration sequences / sentences / images")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per calibration sequence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite output files")


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


def check_model_args(args) -> tuple[int, ...]:
    """Validate everything that does not need the model, before the (slow) load."""
    from ..models import MODELS
    from ..units import GRANULARITIES

    if args.model not in MODELS:
        raise bad("--model", args.model, f"allowed: {', '.join(MODELS)}")
    if args.granularity not in GRANULARITIES:
        raise bad("--granularity", args.granularity, f"allowed: {', '.join(GRANULARITIES)}")
    if args.group_size < 1:
        raise bad("--group-size", args.group_size, "must be a positive integer")
    if args.samples < 1:
        raise bad("--samples", args.samples, "must be at least 1")
    if args.seq_len < 2:
        raise bad("--seq-len", args.seq_len, "must be at least 2")
    return parse_bits(args.bits)


def progress_bar(desc: str):
    """(callback, close()) drawing a tqdm bar on stderr. The callback takes `(done, total)` from
    estimators that count their steps, or one status string from those that iterate to a
    tolerance (Hutchinson probes), shown next to the bar."""
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


# ---- hardware constraints: `--constraint latency_ms<=3.5` ---------------------------------
# resource name (with its unit) → (cost model, options)
RESOURCES = {
    **{f"latency_{u}": ("latency", {"unit": u}) for u in ("ms", "us", "s")},
    **{f"{m}_{u}": ("mcu", {"metric": m, "unit": u}) for m in ("flash", "sram") for u in ("kb", "b", "mb")},
    **{f"{u}cycles": ("mcu", {"metric": "cycles", "unit": u}) for u in ("", "k", "m")},
    **{m: ("fpga", {"metric": m}) for m in ("lut", "dsp", "bram")},
    "klut": ("fpga", {"metric": "lut", "unit": "k"}),
    "avg_bits": ("memory", {}),
    "avg_bits_with_overhead": ("memory", {"count_overhead": True}),
}
_DEVICE_MODELS = ("latency", "mcu", "fpga")


def parse_constraint(text: str, device: str | None = None, device_profile=None, options: dict | None = None):
    """`NAME<=NUMBER` → Constraint(cost model, budget); the unit is part of NAME (`flash_kb`: KiB).
    device / device_profile go to the device-bound models; `options` (e.g. reuse_factor) to
    whichever model accepts them."""
    import inspect
    import math
    import re

    from ..hwcost import COST_MODELS
    from ..problem import Constraint

    m = re.fullmatch(r"\s*([A-Za-z_]+)\s*<=\s*(\S+)\s*", text)
    if not m:
        raise bad("--constraint", text, f"must be RESOURCE<=NUMBER, e.g. latency_ms<=3.5; resources: {', '.join(RESOURCES)}")
    name, num = m.group(1).lower(), m.group(2)
    if name not in RESOURCES:
        raise bad("--constraint resource", name, f"allowed (the unit is part of the name): {', '.join(RESOURCES)}")
    try:
        budget = float(num)
    except ValueError:
        budget = float("nan")
    if not math.isfinite(budget) or budget < 0:
        raise bad(f"--constraint {name} budget", num, "must be a finite number >= 0")
    model, opts = RESOURCES[name]
    cls = COST_MODELS.get(model)
    opts = dict(opts)
    if model in _DEVICE_MODELS:
        if device is None and device_profile is None:
            from ..hwcost.devices import device_names

            raise bad("--device", None, f"resource {name} needs a target device; allowed: {', '.join(device_names())}")
        opts["device"] = device
        if device_profile is not None and model != "fpga":
            opts["device_profile"] = device_profile
    params = inspect.signature(cls.__init__).parameters
    opts.update({k: v for k, v in (options or {}).items() if k in params})
    return Constraint(cls(**opts), budget)


def fit_reports(constraints) -> dict[str, str]:
    """resource → one line on how its measured device profile was used (after costs were built)."""
    return {c.cost.resource: f"{c.cost.device_profile.path} on {c.cost.device.name}: {c.cost.fit.text()}"
            for c in constraints if getattr(c.cost, "fit", None) is not None}
