"""KV-cache quantization (KVTuner, KIVI): units of kind `kv`, fake-quantizing the cache inside attention.

One unit per cache of each attention layer: `model.layers.12.self_attn.k_cache` (keys) and
`...v_cache` (values). A unit's `n_params` is the number of cached elements per token
(n_kv_heads · head_dim, 192 in SmolLM2), so a profile's average bits is bits per cached element.

Grouping (where each scale/zero pair applies), per cache, an option of `KVQuantConfig`:
- `token` (per-token): each token's n_kv_heads·head_dim channels in groups of `group_size`
  consecutive channels (head-major order, so with group_size | head_dim no group spans two heads);
- `channel` (per-channel): each channel's sequence of tokens in groups of `group_size`
  consecutive tokens (the last group of a sequence may be ragged).
Default (KIVI): keys per-channel, values per-token, group 32, asymmetric with a float minimum
(scale and min stored in 16 bits each). The quantizer is `quant.IntQuant`, the same code that
scores and applies weight candidates.

The cache is quantized where it lives: HF Llama caches keys after RoPE, so the post-RoPE keys
and the values are fake-quantized right before the attention kernel (a registered attention
function, `bitalloc_kv`, that wraps the model's own one). Every query then attends to the
quantized keys and values of all tokens, itself included: the usual fake-quant evaluation of a
quantized cache (KVTuner, KIVI perplexity).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass

from bitalloc.errors import bad
from bitalloc.quant.formats.spec import default_format
from bitalloc.quant.integer import IntQuant, quantizer_for
from bitalloc.units import Unit

AXES = ("token", "channel")
CACHES = {"k_cache": "key", "v_cache": "value"}
ATTN_NAME = "bitalloc_kv"  # the attention implementation registered with transformers
_STATE = "_bitalloc_kv"  # attribute set on each attention module while a plan is active


@dataclass(frozen=True)
class KVQuantConfig:
    """How a cache candidate is quantized and stored.

    group_size: elements per scale/zero pair: channels of one token (`token` axis) or tokens of
    one channel (`channel` axis); None = one pair per token / per channel over the whole context.
    key_axis / value_axis: `token` or `channel` (see the module docstring). symmetric / zero: the
    IntQuant form (`float`: a float minimum, as KIVI stores it; `int`: integer zero-point).
    scale_bits / zero_bits: storage of each scale and zero (no zero when symmetric).
    """

    group_size: int | None = 32
    key_axis: str = "channel"
    value_axis: str = "token"
    symmetric: bool = False
    zero: str = "float"
    scale_bits: int = 16
    zero_bits: int = 16

    def __post_init__(self):
        g = self.group_size
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
            raise bad("kv group_size", g, "must be a positive integer or None (one group per token / channel)")
        for field, v in (("key_axis", self.key_axis), ("value_axis", self.value_axis)):
            if v not in AXES:
                raise bad(field, v, f"allowed: {', '.join(AXES)}")
        for field, v in (("scale_bits", self.scale_bits), ("zero_bits", self.zero_bits)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise bad(field, v, "must be a non-negative integer number of bits")
        IntQuant(4, g, self.symmetric, self.zero)  # validates symmetric/zero

    def axis(self, cache: str) -> str:
        """`token` or `channel` for cache `key` / `value`."""
        return self.key_axis if cache == "key" else self.value_axis

    @property
    def meta_bits(self) -> int:
        """Bits stored per group: a scale, and a zero unless symmetric."""
        return self.scale_bits + (0 if self.symmetric else self.zero_bits)

    def quantizer(self, fmt: str):
        """IntQuant for an integer format (`int4`), None for a kept float (`fp16`)."""
        return quantizer_for(fmt, self.group_size, self.symmetric, self.zero)

    def to_meta(self) -> dict:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict | None) -> "KVQuantConfig":
        """The config a profile's `meta["kv"]` records (defaults for missing fields)."""
        d = dict((meta or {}).get("kv") or {})
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def is_cache_name(name: str) -> bool:
    """True for a kv unit's name (`<attention layer>.k_cache` / `.v_cache`)."""
    return name.rpartition(".")[2] in CACHES


def cache_of(name: str) -> str:
    """`key` or `value` for a kv unit name ending in `.k_cache` / `.v_cache`."""
    suffix = name.rsplit(".", 1)[-1]
    if suffix not in CACHES:
        raise bad("kv unit", name, "must end in .k_cache or .v_cache")
    return CACHES[suffix]


def attention_modules(model) -> dict[str, object]:
    """name → attention module (has k_proj, v_proj and layer_idx), in model order."""
    out = {n: m for n, m in model.named_modules()
           if hasattr(m, "k_proj") and hasattr(m, "v_proj") and hasattr(m, "layer_idx")}
    if not out:
        raise bad("model", type(model).__name__, "has no attention modules with k_proj/v_proj (a Llama-style model)")
    return out


def kv_units(model, config: KVQuantConfig | None = None) -> list[Unit]:
    """Two units per attention layer (keys, then values), kind `kv`.

    n_params: cached elements per token (k_proj/v_proj output features); shape (1, n_params);
    macs: multiply-accumulates per cached token per query token (q·k for keys, weights·v for
    values: n_heads · head_dim); extra: cache (`key`/`value`), grouping (its axis) and group_size."""
    config = config or KVQuantConfig()
    units = []
    for name, m in attention_modules(model).items():
        macs = int(m.q_proj.out_features)
        for suffix, cache in CACHES.items():
            n = int((m.k_proj if cache == "key" else m.v_proj).out_features)
            units.append(Unit(f"{name}.{suffix}", name, kind="kv", n_params=n, macs=macs, shape=(1, n),
                              extra={"cache": cache, "grouping": config.axis(cache), "group_size": config.group_size}))
    return units


def cache_rows(x, axis: str):
    """A cache tensor `x: (batch, kv_heads, tokens, head_dim)` as the 2-D float32 numpy array
    IntQuant quantizes (groups run along its columns): `token` axis: rows are tokens, columns the
    kv_heads·head_dim channels (head-major); `channel` axis: rows are (kv_head, channel) pairs,
    columns the tokens."""
    if axis not in AXES:
        raise bad("axis", axis, f"allowed: {', '.join(AXES)}")
    b, h, t, d = x.shape
    if axis == "token":
        rows = x.permute(0, 2, 1, 3).reshape(b * t, h * d)
    else:
        rows = x.permute(0, 1, 3, 2).reshape(b * h * d, t)
    return rows.detach().float().cpu().numpy()


def _from_rows(a, like, axis: str):
    import torch

    b, h, t, d = like.shape
    out = torch.from_numpy(a)
    out = out.reshape(b, t, h, d).permute(0, 2, 1, 3) if axis == "token" else out.reshape(b, h, d, t).permute(0, 1, 3, 2)
    return out.to(like.device, like.dtype).contiguous()


def encode_cache(x, fmt: str, axis: str, config: KVQuantConfig):
    """(q, scale, zero) of a cache tensor, as stored (IntQuant.encode on `cache_rows`)."""
    q = config.quantizer(fmt)
    if q is None:
        raise bad("format", fmt, "is a float format: nothing to encode")
    return q.encode(cache_rows(x, axis))


def fake_quant_cache(x, fmt: str, axis: str, config: KVQuantConfig):
    """Quantize and dequantize a cache tensor `x: (batch, kv_heads, tokens, head_dim)` (torch)
    along `axis` (see `cache_rows`). Returns the same shape and dtype. `fp16`/`bf16` round to
    that float type; `fp32` returns x."""
    import torch

    q = config.quantizer(fmt)
    if q is None:
        dt = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(fmt)
        return x if dt is None else x.to(dt).to(x.dtype)
    return _from_rows(q.fake_quant(cache_rows(x, axis)), x, axis)


def kv_format(value) -> str:
    """A plan entry (bits as int, or a format name) → format name."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad("kv bits", value, "must be an integer bit-width or a format name such as 'int4' or 'fp16'")
    return default_format(value)


def _attention(module, query, key, value, attention_mask, **kwargs):
    """The registered attention function: quantize this layer's cache, then run the model's own kernel."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama.modeling_llama import eager_attention_forward

    state = getattr(module, _STATE, None)
    if state is None:
        raise RuntimeError(f"attention implementation {ATTN_NAME!r} used outside bitalloc.kvcache.kv_quantized")
    base, key_fmt, value_fmt, config = state
    if key_fmt is not None:
        key = fake_quant_cache(key, key_fmt, config.key_axis, config)
    if value_fmt is not None:
        value = fake_quant_cache(value, value_fmt, config.value_axis, config)
    fn = eager_attention_forward if base == "eager" else ALL_ATTENTION_FUNCTIONS.get_interface(base, eager_attention_forward)
    return fn(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    if ATTN_NAME not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(ATTN_NAME, _attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, sdpa_mask)  # the mask our wrapped kernels take


def _configs(model) -> list:
    """Every distinct config object the model's modules read `_attn_implementation` from."""
    seen = {}
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and hasattr(c, "_attn_implementation"):
            seen[id(c)] = c
    return list(seen.values())


@contextlib.contextmanager
def kv_quantized(model, plan: dict, config: KVQuantConfig | None = None):
    """Inside: each attention layer's cache is fake-quantized as `plan` says.

    plan: kv unit name (`model.layers.3.self_attn.k_cache`) → bits (int) or format (`int4`,
    `fp16`); caches not named stay unquantized. On exit the model's attention implementation is
    restored (also after an error). The base kernel is the model's own (`sdpa` or `eager`); its
    mask follows sdpa's form, so the base must take an sdpa-style mask."""
    config = config or KVQuantConfig()
    mods = attention_modules(model)
    fmts: dict[str, dict[str, str]] = {}
    for unit, value in plan.items():
        cache = cache_of(unit)
        layer = unit.rsplit(".", 1)[0]
        if layer not in mods:
            raise bad("kv unit", unit, f"names no attention layer of the model ({next(iter(mods))}.k_cache, ...)")
        fmt = kv_format(value)
        config.quantizer(fmt)  # unknown formats fail before any forward
        fmts.setdefault(layer, {})[cache] = fmt
    _register()
    configs = _configs(model)
    saved = [c._attn_implementation for c in configs]
    base = saved[0] if saved and saved[0] != ATTN_NAME else "sdpa"
    if base not in ("sdpa", "eager"):
        raise bad("attention implementation", base, "KV fake-quant wraps 'sdpa' or 'eager'")
    try:
        for name, m in mods.items():
            f = fmts.get(name, {})
            setattr(m, _STATE, (base, f.get("key"), f.get("value"), config))
        for c in configs:
            c._attn_implementation = ATTN_NAME
        yield
    finally:
        for c, s in zip(configs, saved):
            c._attn_implementation = s
        for m in mods.values():
            if hasattr(m, _STATE):
                delattr(m, _STATE)


def uniform_plan(units: list[Unit] | list[str], bits) -> dict:
    """Every kv unit at the same bits / format."""
    return {(u if isinstance(u, str) else u.name): bits for u in units}


def plan_of(allocation) -> dict:
    """An Allocation's units → format name (`Allocation.format_of`: its label, or its bits' default)."""
    return {name: allocation.format_of(name).name for name in allocation.bits}


def bits_per_token(units: list[Unit], plan: dict, config: KVQuantConfig | None = None,
                   context: int | None = None) -> float:
    """KV-cache storage per token of context in bits, for `plan` (see hwcost/kv_memory.py).

    context: None = amortized over a long context (per-channel groups of `group_size` tokens
    charged 1/group_size of a scale/zero pair per token); an int T = the exact storage of T
    tokens divided by T (a ragged last token group counts whole)."""
    config = config or KVQuantConfig()
    total = 0.0
    for u in units:
        if u.name not in plan:
            continue
        fmt = kv_format(plan[u.name])
        total += unit_bits_per_token(u.n_params, bits_of(fmt), config.quantizer(fmt) is not None,
                                     config.axis(cache_of(u.name)), config, context)
    return total


def bits_of(fmt: str) -> int:
    digits = "".join(ch for ch in fmt if ch.isdigit())
    return int(digits) if digits else 16


def unit_bits_per_token(elements: int, bits: int, quantized: bool, axis: str, config: KVQuantConfig,
                        context: int | None = None) -> float:
    """Bits per token of one cache: `elements` values of `bits` plus its scale/zero share."""
    value = elements * bits
    if not quantized:
        return float(value)
    g = config.group_size
    if axis == "token":
        groups = math.ceil(elements / min(g, elements)) if g is not None else 1
        return float(value + groups * config.meta_bits)
    if context is None:  # per-channel: amortized over the token groups
        per_token = 0.0 if g is None else elements * config.meta_bits / g
    else:
        n_groups = 1 if g is None else math.ceil(context / min(g, context))
        per_token = elements * n_groups * config.meta_bits / context
    return float(value + per_token)


def verify_kv(task, plan: dict, config: KVQuantConfig | None = None, uniform=(2, 4, 8)) -> list[dict]:
    """Held-out quality of the model with its KV cache quantized as `plan`, next to uniform
    plans at each of `uniform` and the unquantized cache. Weights stay as they are.

    Returns one row per plan: {"plan": label, **task.quality(model), "bits_per_element",
    "bytes_per_token"} (bits per element: average nominal bits over the kv units; bytes per
    token: storage with scales/zeros, amortized)."""
    config = config or KVQuantConfig()
    units = kv_units(task.model, config)
    names = {u.name for u in units}
    missing = sorted(names - set(plan))
    if missing:
        raise bad("kv plan", missing[0], f"has no bits ({len(missing)} of {len(names)} kv units missing)")
    plans = [("allocation", plan)] + [(f"uniform {b}", uniform_plan(units, b)) for b in uniform]
    rows = []
    for label, p in plans + [("unquantized", {})]:
        with kv_quantized(task.model, p, config):
            q = task.quality(task.model)
        n = sum(u.n_params for u in units)
        avg = sum(u.n_params * bits_of(kv_format(p.get(u.name, "fp16"))) for u in units) / n
        full = {u.name: p.get(u.name, "fp16") for u in units}
        rows.append({"plan": label, **q, "bits_per_element": avg,
                     "bytes_per_token": bits_per_token(units, full, config) / 8})
    return rows
