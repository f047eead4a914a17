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
