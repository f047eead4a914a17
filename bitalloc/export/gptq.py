"""`gptq`: GPTQModel's QuantizeConfig with its `dynamic` per-module overrides, as JSON.

    QuantizeConfig(**json.load(open("gptq.json")))

`dynamic` maps a regex to overrides: `+:regex` (or no prefix) = quantize with these `bits` /
`group_size`; `-:regex` = leave unquantized (value {}). GPTQModel (and vLLM when loading) take
the first rule whose regex `re.match`es the full module name, else the top-level `bits`, so each
rule is anchored at both ends. Fused kernels (vLLM's qkv_proj, gate_up_proj) load q/k/v and
gate/up as one module and give it one config: such pieces get one rule that also names the
fused module, and pieces of one fused group with different bits are refused (fused="require"),
raised to the largest (fused="max"), or given separate rules (fused="split", fine for
GPTQModel itself but not for fused loading).
"""
from __future__ import annotations

import re
from collections import Counter

from bitalloc.errors import bad
from bitalloc.fileio import dumps
from bitalloc.export import register
from bitalloc.export.base import TextExporter, fit_bits
from bitalloc.export.names import check_model

BITS = (2, 3, 4, 8)
FUSED = (("q_proj", "k_proj", "v_proj", "qkv_proj"), ("gate_proj", "up_proj", "gate_up_proj"))
FUSED_MODES = ("require", "max", "split")


def fused_group(name: str) -> tuple[str, tuple[str, ...]] | None:
    """(parent prefix, family) if `name` is a piece of a fused module, e.g. q_proj → qkv."""
    parent, _, leaf = name.rpartition(".")
    for family in FUSED:
        if leaf in family[:-1]:
            return parent, family
    return None


@register("gptq")
class GptqDynamic(TextExporter):
    """group_size: columns per scale (−1 = per row); sym / desc_act: GPTQ settings for every
    module; round_up: widths GPTQ lacks (5, 6, 7) go to the next one up instead of an error;
    fused: require | max | split (see module doc); model: optional check of the unit names."""

    def __init__(self, group_size: int = 128, sym: bool = True, desc_act: bool = False, round_up: bool = False,
                 fused: str = "require", model: str | None = None):
        if isinstance(group_size, bool) or not isinstance(group_size, int) or not (group_size == -1 or group_size > 0):
            raise bad("group_size", group_size, "must be a positive integer or -1 (one group per row)")
        if fused not in FUSED_MODES:
            raise bad("fused", fused, f"allowed: {', '.join(FUSED_MODES)}")
        self.group_size, self.sym, self.desc_act = group_size, sym, desc_act
        self.round_up, self.fused, self.model = round_up, fused, model

    def render(self, bits):
        check_model(bits, self.model)
        bits, notes = fit_bits(bits, BITS, "GPTQ", self.round_up)
        groups: dict[tuple, list[str]] = {}
        for name in bits:
            g = fused_group(name) if self.fused != "split" else None
            groups.setdefault(g or (name, None), []).append(name)
        raised = 0
        for (parent, family), names in groups.items():
            widths = {bits[n] for n in names}
            if family is None or len(widths) == 1:
                continue
            if self.fused == "require":
                shown = ", ".join(f"{n.rpartition('.')[2]}={bits[n]}" for n in names)
                raise bad(f"fused module {parent}.{family[-1]}", shown, "pieces of one fused module need one bit-width "
                          "(solve with --tie q_proj,k_proj,v_proj --tie gate_proj,up_proj, or export with --fused max / split)")
            top = max(widths)
            raised += sum(bits[n] != top for n in names)
            bits.update({n: top for n in names})
        if raised:
            notes.append(f"{raised} fused piece(s) raised to the largest width of their fused module (--fused max)")
        quantized = [b for b in bits.values() if b < 16]
        default = Counter(quantized).most_common(1)[0][0] if quantized else 4
        dynamic = {}
        for (head, family), names in groups.items():
            b = bits[names[0]]
            if b == default:
                continue
            if family is None:
                pattern = re.escape(head) + "$"
            else:
                leaves = [n.rpartition(".")[2] for n in names] + [family[-1]]
                pattern = re.escape(head + ".") + "(?:" + "|".join(leaves) + ")$"
            if b >= 16:
                dynamic["-:" + pattern] = {}
            else:
                dynamic["+:" + pattern] = {"bits": b, "group_size": self.group_size}
        config = {"bits": default, "group_size": self.group_size, "sym": self.sym, "desc_act": self.desc_act,
                  "dynamic": dynamic}
        return dumps(config), notes, {"default_bits": default, "rules": len(dynamic)}


def bits_of(config: dict, module: str) -> int | None:
    """Bits GPTQModel gives `module` under `config` (None: left unquantized), as dynamic_get does."""
    for pattern, overrides in config.get("dynamic", {}).items():
        if pattern.startswith("-:"):
            if re.match(pattern[2:], module):
                return None
        elif re.match(pattern.removeprefix("+:"), module):
            return overrides.get("bits", config["bits"])
    return config["bits"]
