"""Allocation → formats of downstream tools, one module per format, found by name.

    bitalloc.export.export(alloc, "gguf", "model.gguf")        # or "llama.cpp", "gptq", "hqq", "json", ...
    bitalloc.export.FORMATS.names()

Each format is an Exporter (base.py) registered under its name; heavy imports (gguf) happen only
when that format is used.
"""
from bitalloc.registry import Registry

FORMATS = Registry("export format", {
    "json": "bitalloc.export.json_map",
    "llama.cpp": "bitalloc.export.llamacpp",
    "gptq": "bitalloc.export.gptq",
    "hqq": "bitalloc.export.hqq",
    "hqq-dynamic": "bitalloc.export.hqq",
    "gguf": "bitalloc.export.gguf",
})
register = FORMATS.register


def get_exporter(name: str, **options):
    """An exporter of format `name` with its options (unknown options are refused by name)."""
    return FORMATS.create(name, **options)


def export(allocation, fmt: str, out, force: bool = False, **options):
    """Write `allocation` (an Allocation, a path to one, or a name → bits dict) as format `fmt`
    to `out` atomically; returns an ExportResult (path, what was written, notes on fallbacks)."""
    return get_exporter(fmt, **options).write(allocation, out, force=force)
