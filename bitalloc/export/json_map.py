"""`json`: a plain {unit name: bits} map, keys in the allocation's order."""
from __future__ import annotations

from bitalloc.fileio import dumps
from bitalloc.export import register
from bitalloc.export.base import TextExporter
from bitalloc.export.names import check_model


@register("json")
class JsonMap(TextExporter):
    """model: optional model name (smollm2, minilm, digits-cnn) whose modules the names must be.
    Any units: whole layers, `layer:gN` groups and `layer:cN` channels."""

    any_units = True

    def __init__(self, model: str | None = None):
        self.model = model

    def render(self, bits):
        check_model(bits, self.model)
        return dumps(bits), [], {}
