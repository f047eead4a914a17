"""Module names: transformers (model.layers.12.self_attn.v_proj) ↔ GGUF (blk.12.attn_v.weight),
and checking that an allocation's units belong to a model."""
from __future__ import annotations

import importlib
import re

from bitalloc.errors import bad

# GGUF tensor part → transformers module of a Llama-family block
LLAMA_LINEARS = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj"}
# The demo models named by `model=` (smollm2, minilm, digits-cnn) come from this catalog module,
# found by name when asked for: the library has no import of bitalloc.zoo (import contracts).
MODEL_CATALOG = "bitalloc.zoo.demo"


def _catalog():
    return importlib.import_module(MODEL_CATALOG)

_BLOCK = re.compile(r"model\.layers\.(\d+)\.(.+)")
_TO_GGUF = {module: part for part, module in LLAMA_LINEARS.items()}
_TOP = {"model.embed_tokens": "token_embd.weight", "lm_head": "output.weight"}
_FROM_GGUF = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


def gguf_name(name: str) -> str | None:
    """GGUF tensor name of a Llama-family transformers module, or None if it has none."""
    if name in _TOP:
        return _TOP[name]
    m = _BLOCK.fullmatch(name)
    if m and m.group(2) in _TO_GGUF:
        return f"blk.{m.group(1)}.{_TO_GGUF[m.group(2)]}.weight"
    return None


def hf_name(tensor: str) -> str | None:
    """Inverse of gguf_name."""
    for k, v in _TOP.items():
        if v == tensor:
            return k
    m = _FROM_GGUF.fullmatch(tensor)
    if m and m.group(2) in LLAMA_LINEARS:
        return f"model.layers.{m.group(1)}.{LLAMA_LINEARS[m.group(2)]}"
    return None


def gguf_names(bits: dict[str, int], fmt: str) -> dict[str, str]:
    """unit name → GGUF tensor name for every unit; a unit with no GGUF name is refused."""
    out = {}
    for name in bits:
        g = gguf_name(name)
        if g is None:
            raise bad("allocation unit", name, f"has no GGUF tensor name ({fmt} takes Llama-family modules such as "
                      "model.layers.12.self_attn.v_proj or mlp.down_proj): allocation for another model?")
        out[name] = g
    return out


def model_modules(model: str) -> set[str]:
    """Names of the quantizable modules of a real model (bitalloc.models.MODELS)."""
    cat = _catalog()
    if model not in cat.MODELS:
        raise bad("--model", model, f"allowed: {', '.join(cat.MODELS)}")
    return set(cat.module_shapes(model))  # read from the GGUF / safetensors header: no weights loaded


def check_model(bits: dict[str, int], model: str | None) -> None:
    """Refuse an allocation whose unit names are not modules of `model` (None: no check)."""
    if model is None:
        return
    known = model_modules(model)
    unknown = [n for n in bits if n.split(":")[0] not in known]
    if unknown:
        raise bad("allocation unit", unknown[0], f"is not a module of model {model!r} ({len(unknown)} of {len(bits)} "
                  "units unknown): allocation for another model?")


def source_gguf(model: str | None, source=None):
    """The GGUF file a model's tensors come from: `source` if given, else the model's own
    (only smollm2 ships as GGUF)."""
    from pathlib import Path

    from bitalloc.errors import BitallocError

    if source is not None:
        p = Path(source)
        if not p.is_file():
            raise BitallocError(f"--source {str(p)!r}: no such GGUF file")
        return p
    if model in (None, "smollm2"):
        return _catalog().smollm2_gguf()
    raise bad("--model", model, "has no GGUF file; GGUF export and shapes come from smollm2 or a --source GGUF")


def gguf_row_lengths(path) -> dict[str, int]:
    """GGUF tensor name → weights per row (ne0, the input dimension) of every 2-D tensor."""
    from gguf import GGUFReader

    from bitalloc.errors import BitallocError

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # a truncated or foreign file: one line, not a traceback
        raise BitallocError(f"GGUF {str(path)!r}: cannot be read ({type(e).__name__}: {e})") from None
    return {t.name: int(t.shape[0]) for t in reader.tensors if len(t.shape) == 2}
