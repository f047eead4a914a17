"""Weight quantizers for `apply`, one per file, found by name (`get_quantizer("rtn")`)."""
from ..registry import Registry

QUANTIZERS = Registry("quantizer", {"rtn": "bitalloc.quantizers.rtn", "dmmv": "bitalloc.quantizers.dmmv"})
register = QUANTIZERS.register


def get_quantizer(name: str, **options):
    return QUANTIZERS.create(name, **options)
