"""`hqq` and `hqq-dynamic`: configs for HQQ (half-quadratic quantization).

`hqq` is for hqq's own per-layer API: {full module name: BaseQuantizeConfig kwargs, or null to
keep the layer}, applied as

    for name, cfg in json.load(open("hqq.json")).items():
        if cfg: set_module(model, name, HQQLinear(get_module(model, name), BaseQuantizeConfig(**cfg)))

`hqq-dynamic` is transformers' `HqqConfig(dynamic_config=...)`, which keys by module *type*
(the name without `model`, `layers` and numbers: `self_attn.k_proj`), so every layer of one type
gets one config. When layers of a type differ it is refused (merge="refuse") or the type takes
its largest width (merge="max", with a note naming what was merged). Types whose every layer is
kept at 16 bits are left out (HqqConfig then leaves them unquantized).
"""
from __future__ import annotations

from bitalloc.errors import bad
from bitalloc.fileio import dumps
from bitalloc.export import register
from bitalloc.export.base import TextExporter, fit_bits
from bitalloc.export.names import check_model

BITS = (1, 2, 3, 4, 8)
MERGES = ("refuse", "max")


def linear_tag(name: str) -> str:
    """transformers' HQQ module tag: `model.layers.3.self_attn.k_proj` → `self_attn.k_proj`."""
    return ".".join(p for p in name.split(".") if p not in ("model", "layers") and not p.isnumeric())


class _Hqq(TextExporter):
    def __init__(self, group_size: int = 64, round_up: bool = False, model: str | None = None):
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 8 or group_size % 8:
            raise bad("group_size", group_size, "HQQ takes a positive multiple of 8")
        self.group_size, self.round_up, self.model = group_size, round_up, model

    def _fit(self, bits):
        check_model(bits, self.model)
        return fit_bits(bits, BITS, "HQQ", self.round_up)

    def _cfg(self, b: int):
        return None if b >= 16 else {"nbits": b, "group_size": self.group_size}


@register("hqq")
class HqqLayers(_Hqq):
    """group_size: weights per scale (multiple of 8); round_up: widths HQQ lacks (5, 6, 7) go to 8."""

    def render(self, bits):
        bits, notes = self._fit(bits)
        return dumps({name: self._cfg(b) for name, b in bits.items()}), notes, {}


@register("hqq-dynamic")
class HqqDynamic(_Hqq):
    """As `hqq`, plus merge: refuse | max when layers of one module type differ."""

    def __init__(self, group_size: int = 64, round_up: bool = False, model: str | None = None, merge: str = "refuse"):
        super().__init__(group_size, round_up, model)
        if merge not in MERGES:
            raise bad("merge", merge, f"allowed: {', '.join(MERGES)}")
        self.merge = merge

    def render(self, bits):
        bits, notes = self._fit(bits)
        by_tag: dict[str, dict[str, int]] = {}
        for name, b in bits.items():
            by_tag.setdefault(linear_tag(name), {})[name] = b
        config = {}
        for tag, members in by_tag.items():
            widths = sorted(set(members.values()))
            if len(widths) > 1:
                if self.merge == "refuse":
                    raise bad(f"hqq-dynamic module type {tag!r}", "/".join(map(str, widths)) + " bits",
                              f"HqqConfig(dynamic_config) gives all {len(members)} layers of a type one config; "
                              "use --format hqq (per layer) or --merge max")
                raised = sum(b != widths[-1] for b in members.values())
                notes.append(f"{tag}: {raised} of {len(members)} layers raised to {widths[-1]} bits "
                             f"(layers had {', '.join(map(str, widths))})")
            cfg = self._cfg(widths[-1])
            if cfg is not None:
                config[tag] = cfg
        return dumps(config), notes, {"module_types": len(config)}
