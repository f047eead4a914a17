"""`llama.cpp`: the --tensor-type-file of llama-quantize.

One `regex=type` entry per line (llama-quantize reads whitespace-separated entries, no comments);
each regex is searched in the GGUF tensor name and the first match wins, so every entry is
anchored on one full name: `^blk\\.12\\.attn_v\\.weight$=q4_K`. Types per ggml_types.TYPE_FOR_BITS.
With the model's GGUF known (--model smollm2 or --source), rows that cannot take the K-quant get
the fallback type written explicitly (the same one the `gguf` format uses); without it the
first-choice type is written and llama-quantize applies its own fallback.
"""
from __future__ import annotations

import re

from bitalloc.export import register
from bitalloc.export.base import TextExporter
from bitalloc.quant.ggml_types import choose, llama_name, parse_type_map, type_table
from bitalloc.export.names import gguf_names, gguf_row_lengths, model_names, source_gguf


@register("llama.cpp")
class LlamaCppTypes(TextExporter):
    """model / source: where tensor shapes come from (optional); type_map: bits → GGML type
    overrides, a dict or `4=Q4_1,...`."""

    def __init__(self, model: str | None = None, source=None, type_map: dict | str | None = None):
        self.model, self.source = model, source
        self.table = type_table(parse_type_map(type_map) if isinstance(type_map, str) else type_map)

    def render(self, bits):
        names = model_names(self.model, self.source)
        tensors = gguf_names(bits, "llama.cpp", names)
        rows = None
        if names.gguf is not None:
            path = names.gguf
            rows = gguf_row_lengths(path)
            missing = [n for n, t in tensors.items() if t not in rows]
            if missing:
                from bitalloc.errors import bad

                raise bad("allocation unit", missing[0], f"has no tensor {tensors[missing[0]]} in {path.name} "
                          f"({len(missing)} units missing): allocation for another model?")
        lines, fallbacks = [], {}
        for name, b in bits.items():
            t, fell = choose(b, rows[tensors[name]] if rows else None, self.table)
            if fell:
                key = (self.table[b][0], t)
                fallbacks[key] = fallbacks.get(key, 0) + 1
            lines.append(f"^{re.escape(tensors[name])}$={llama_name(t)}")
        notes = [f"{n} tensor(s) with rows not a multiple of the {a} block written as {t}" for (a, t), n in sorted(fallbacks.items())]
        return "\n".join(lines) + "\n", notes, {}


def parse(text: str) -> list[tuple[str, str]]:
    """(regex, type) entries of a tensor-type file, read as llama-quantize reads it."""
    out = []
    for entry in text.split():
        pattern, sep, qtype = entry.partition("=")
        if not sep or not pattern or not qtype:
            raise ValueError(f"malformed tensor type entry {entry!r}")
        out.append((pattern.lower(), qtype))
    return out


def type_of(entries: list[tuple[str, str]], tensor: str) -> str | None:
    """The type llama-quantize gives `tensor` (first entry whose regex is found in the name)."""
    for pattern, qtype in entries:
        if re.search(pattern, tensor):
            return qtype
    return None
