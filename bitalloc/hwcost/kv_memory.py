"""KVMemoryCost: KV-cache storage in bytes per token of context (units of kind `kv`)."""
from __future__ import annotations

import numpy as np

from bitalloc.errors import bad
from bitalloc.hwcost import register
from bitalloc.hwcost.base import CostModel


@register("kv_memory")
class KVMemoryCost(CostModel):
    """Bytes of KV cache per token of context, summed over the kv units (other units cost 0).

    A kv unit at candidate k stores n_params (cached elements per token) values of bits[k], plus,
    for a quantized candidate when `count_overhead`, its scale/zero pairs: ceil(n_params / g) per
    token for per-token grouping; n_params / g per token for per-channel grouping (groups of g
    tokens), amortized over a long context (`context=None`) or exactly for a context of
    `context` tokens (the ragged last group counted whole, then divided by `context`).
    Grouping, group size and scale/zero bits come from the profile's `meta["kv"]` (written by
    the `kv` estimator), or from `config` (a `bitalloc.kvcache.KVQuantConfig`).
    """

    resource = "kv_bytes_per_token"
    unit = "bytes/token"

    def __init__(self, count_overhead: bool = True, context: int | None = None, config=None):
        if context is not None and (isinstance(context, bool) or not isinstance(context, int) or context < 1):
            raise bad("context", context, "must be a positive number of tokens, or None (amortized)")
        if isinstance(config, dict):  # from a CostSpec
            from bitalloc.quant.kvcache import KVQuantConfig

            config = KVQuantConfig(**config)
        self.count_overhead, self.context, self.config = count_overhead, context, config

    def costs(self, profile) -> np.ndarray:
        from bitalloc.quant.kvcache import KVQuantConfig, cache_of, unit_bits_per_token

        config = self.config or KVQuantConfig.from_meta(profile.meta)
        kv = [i for i, kind in enumerate(profile.kinds) if kind == "kv"]
        if not kv:
            raise bad("profile", profile.meta.get("model", "?"), "has no units of kind kv (profile it with --kind kv)")
        quantized = [config.quantizer(f) is not None for f in profile.format_objects]
        C = np.zeros((profile.n_units, len(profile.bits)))
        for i in kv:
            axis = config.axis(cache_of(profile.names[i]))
            for k, (b, q) in enumerate(zip(profile.bits, quantized)):
                C[i, k] = unit_bits_per_token(int(profile.n_params[i]), b, q and self.count_overhead,
                                              axis, config, self.context) / 8
        return C
