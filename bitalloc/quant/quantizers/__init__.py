"""Weight quantizers for `apply`, one per file, found by name (`get_quantizer("rtn")`)."""
from bitalloc.registry import Registry

QUANTIZERS = Registry("quantizer", {"rtn": "bitalloc.quant.quantizers.rtn", "dmmv": "bitalloc.quant.quantizers.dmmv",
                                    "gptq": "bitalloc.quant.quantizers.gptq"})
register = QUANTIZERS.register


def get_quantizer(name: str, **options):
    return QUANTIZERS.create(name, **options)
