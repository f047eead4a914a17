"""Hardware cost models, one per file, found by name (`get_cost_model("memory")`)."""
from bitalloc.registry import Registry

COST_MODELS = Registry("cost model", {"memory": "bitalloc.hwcost.memory",
                                      "latency": "bitalloc.hwcost.latency",
                                      "measured": "bitalloc.hwcost.latency",
                                      "mcu": "bitalloc.hwcost.mcu",
                                      "fpga": "bitalloc.hwcost.fpga",
                                      "kv_memory": "bitalloc.hwcost.kv_memory",
                                      "gguf_size": "bitalloc.export.gguf_size"})
register = COST_MODELS.register


def get_cost_model(name: str, **options):
    return COST_MODELS.create(name, **options)
