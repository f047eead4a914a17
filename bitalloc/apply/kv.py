"""The KV-cache units of an allocation at apply time: what the packed file records so that `verify`
can recompute a `kv_bytes_per_token` budget.

A kv unit (`model.layers.3.self_attn.k_cache`, kind `kv`, bitalloc/quant/kvcache.py) has no
weights to quantize: the cache is quantized at run time. `apply` records, for each kv unit of the
allocation, its chosen format and bits and its geometry read from the model's own config (never
from the allocation): `elements` cached per token = num_key_value_heads · head_dim (head_dim =
config.head_dim, else hidden_size / num_attention_heads), and `macs` = num_attention_heads ·
head_dim per cached token per query, as `kv_units` counts them. Next to them: the KV quantization
settings (`KVQuantConfig`: grouping axis per cache, group size, scale/zero bits), so the bytes per
token follow from the file alone.

Packed metadata `kv` (JSON): {"config": KVQuantConfig fields, "units": [{name, layer, cache, bits,
format, elements, n_kv_heads, head_dim, macs}]}.
"""
from __future__ import annotations

from bitalloc.errors import bad
from bitalloc.quant.kvcache import KVQuantConfig, attention_modules, cache_of, is_cache_name

KV_FAMILIES = ("int", "float")  # integers (IntQuant on the cache) or kept in floating point


def is_kv_name(name: str, modules: dict) -> bool:
    """True for a unit name that is a cache of a module (`<attention>.k_cache` / `.v_cache`), not a layer."""
    return is_cache_name(name) and name not in modules and name.rpartition(".")[0] in modules


def kv_geometry(model) -> dict:
    """{n_heads, n_kv_heads, head_dim, elements} from `model.config` (a transformers config):
    elements = cached values per token per cache."""
    cfg = getattr(model, "config", None)
    heads = getattr(cfg, "num_attention_heads", None)
    if not isinstance(heads, int) or heads < 1:
        raise bad("model config num_attention_heads", heads, "kv units need a transformers model whose config "
                  "names num_attention_heads (and num_key_value_heads, head_dim or hidden_size)")
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None)
    if not head_dim:
        hidden = getattr(cfg, "hidden_size", None)
        if not isinstance(hidden, int) or hidden % heads:
            raise bad("model config hidden_size", hidden, f"must be a multiple of num_attention_heads {heads} "
                      "when the config has no head_dim")
        head_dim = hidden // heads
    return {"n_heads": int(heads), "n_kv_heads": int(kv_heads), "head_dim": int(head_dim),
            "elements": int(kv_heads) * int(head_dim)}


def kv_records(model, allocation, config: KVQuantConfig | dict | None = None) -> dict | None:
    """The packed file's `kv` metadata for the kv units of `allocation` (see the module
    docstring), None when it has none. config: the KV quantization settings (default: the
    allocation's meta["kv"], i.e. its profile's). A kv unit of no attention layer of `model`, or
    at a format the cache cannot be stored in, is a one-line error naming it."""
    mods = dict(model.named_modules())
    names = [n for n in allocation.bits if is_kv_name(n, mods)]
    if not names:
        return None
    if not isinstance(config, KVQuantConfig):
        config = KVQuantConfig.from_meta({"kv": config} if isinstance(config, dict) else allocation.meta)
    attention = attention_modules(model)
    geo = kv_geometry(model)
    units = []
    for name in names:
        layer = name.rpartition(".")[0]
        if layer not in attention:
            raise bad("allocation kv unit", name, f"{layer!r} is not an attention layer of this model (with "
                      "k_proj/v_proj); is the allocation for another model?")
        fmt = allocation.format_of(name)
        if fmt.family not in KV_FAMILIES:
            raise bad(f"allocation kv unit {name!r} format", fmt.name, "a KV cache is stored as integers (int2..int8) "
                      "or kept in floating point (fp16, bf16, fp32)")
        units.append({"name": name, "layer": layer, "cache": cache_of(name), "bits": fmt.bits, "format": fmt.name,
                      "elements": geo["elements"], "n_kv_heads": geo["n_kv_heads"], "head_dim": geo["head_dim"],
                      "macs": geo["n_heads"] * geo["head_dim"]})
    return {"config": config.to_meta(), "units": units}
