"""Module names: transformers (model.layers.12.self_attn.v_proj) ↔ GGUF (blk.12.attn_v.weight) for
every architecture gguf-py's tensor-name map knows (`gguf.get_tensor_name_map`), and checking
that an allocation's units belong to a model.

A model is a built-in name, a transformers folder, a .gguf file, or None (Llama naming). Its GGUF
architecture comes from the GGUF header (`general.architecture`) or the folder's config.json
(`model_type`, with the few names GGUF spells differently mapped in GGUF_ARCH).
"""
from __future__ import annotations

import functools

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

from bitalloc.errors import BitallocError, bad

GGUF_ARCH = {"mistral": "llama", "mixtral": "llama", "gpt_neox": "gptneox", "stablelm_epoch": "stablelm"}
_TOP = {"model.embed_tokens": "token_embd", "lm_head": "output"}


@dataclass(frozen=True)
class ModelNames:
    """arch: GGUF architecture name; n_blocks: decoder blocks; gguf: the model's GGUF file (or None)."""

    arch: str = "llama"
    n_blocks: int = 512
    gguf: Path | None = None

    def tmap(self):
        import gguf

        arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(self.arch)
        if arch is None:
            raise bad("GGUF architecture", self.arch, "is not in gguf-py's tensor-name map")
        return _tmap(arch, self.n_blocks)


@functools.lru_cache(maxsize=16)
def _tmap(arch, n_blocks):
    """gguf-py's tensor-name map (building one takes ~0.3 s for 512 blocks: cached)."""
    import gguf

    return gguf.get_tensor_name_map(arch, n_blocks)


def model_names(model: str | None = None, source=None) -> ModelNames:
    """ModelNames of a model spec and/or a source GGUF (the GGUF wins)."""
    if source is not None:
        return _from_gguf(Path(source))
    if model is None:
        return ModelNames()
    if model == "smollm2":
        from bitalloc.models.loader import BUILTIN  # noqa: F401  (the built-in table names it)

        return _from_gguf(_builtin_gguf())
    p = Path(model)
    if p.is_file() and p.suffix.lower() == ".gguf":
        return _from_gguf(p)
    if p.is_dir():
        from bitalloc.models.hf import check_directory

        cfg = check_directory(p)
        mt = cfg["model_type"]
        n = cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg.get("num_layers") or 512
        return ModelNames(GGUF_ARCH.get(mt, mt), int(n), None)
    return ModelNames()


def _builtin_gguf() -> Path:
    import importlib

    from bitalloc.models.loader import BUILTIN

    module = BUILTIN["smollm2"].split(":")[0]
    return importlib.import_module(module).smollm2_gguf()


def _from_gguf(p: Path) -> ModelNames:
    from gguf import GGUFReader

    if not p.is_file():
        raise BitallocError(f"--source {str(p)!r}: no such GGUF file")
    try:
        r = GGUFReader(str(p))
        arch = str(r.fields["general.architecture"].contents())
    except Exception as e:
        raise BitallocError(f"GGUF {str(p)!r}: cannot be read ({type(e).__name__}: {e})") from None
    blocks = r.fields.get(f"{arch}.block_count")
    return ModelNames(arch, int(blocks.contents()) if blocks is not None else 512, p)


def gguf_name(name: str, names: ModelNames = ModelNames()) -> str | None:
    """GGUF tensor name of a transformers module (`blk.12.attn_v.weight`), or None if it has none."""
    if name in _TOP:
        return _TOP[name] + ".weight"
    return names.tmap().get_name(name + ".weight", try_suffixes=(".weight",))


def hf_name(tensor: str, names: ModelNames = ModelNames(), prefer: str = "model.layers.") -> str | None:
    """Inverse of gguf_name (several transformers spellings map to one GGUF name: the one that
    starts with `prefer` wins, else the first)."""
    base = tensor[:-len(".weight")] if tensor.endswith(".weight") else tensor
    for k, v in _TOP.items():
        if v == base:
            return k
    hits = [k for k, (_, g) in names.tmap().mapping.items() if g == base and not k.endswith(".weight")]
    if not hits:
        return None
    return next((k for k in hits if k.startswith(prefer)), hits[0])


def gguf_names(bits: dict[str, int], fmt: str, names: ModelNames = ModelNames()) -> dict[str, str]:
    """unit name → GGUF tensor name for every unit; a unit with no GGUF name is refused."""
    out = {}
    for name in bits:
        g = gguf_name(name, names)
        if g is None:
            raise bad("allocation unit", name, f"has no GGUF tensor name in architecture {names.arch!r} ({fmt} takes the "
                      "modules gguf-py's tensor-name map knows): allocation for another model?")
        out[name] = g
    return out


def model_modules(model: str) -> set[str]:
    """Names of the quantizable modules of a model (built-in name, transformers folder or GGUF),
    found without loading its weights where possible."""
    from bitalloc.models.loader import model_source

    kind = model_source(model)
    if kind == "builtin" and model == "smollm2" or kind == "gguf":
        from gguf import GGUFReader

        names = model_names(model)
        return {n for t in GGUFReader(str(names.gguf)).tensors if len(t.shape) == 2
                and (n := hf_name(t.name, names)) and n not in _TOP}
    if kind == "directory":
        return _directory_modules(model)
    from bitalloc.models.loader import load_model

    return set(load_model(model, samples=1, device="cpu").layers)


def _directory_modules(path) -> set[str]:
    """Quantizable layers of a transformers folder, from its config on the meta device (no weights)."""
    from accelerate import init_empty_weights

    from bitalloc.models.hf import auto_class, load_config, model_kind
    from bitalloc.models.layers import discover

    config = load_config(path)
    cls = auto_class(model_kind(config))
    with init_empty_weights():
        model = cls.from_config(config)
    return set(discover(model))


def check_model(bits: dict[str, int], model: str | None) -> None:
    """Refuse an allocation whose unit names are not modules of `model` (None: no check)."""
    if model is None:
        return
    known = model_modules(model)
    unknown = [n for n in bits if n.split(":")[0] not in known]
    if unknown:
        raise bad("allocation unit", unknown[0], f"is not a module of model {model!r} ({len(unknown)} of {len(bits)} "
                  "units unknown): allocation for another model?")


def source_gguf(model: str | None, source=None) -> Path:
    """The GGUF file a model's tensors come from: `source` if given, else the model's own
    (smollm2, or a --model that is a .gguf file)."""
    if source is not None:
        p = Path(source)
        if not p.is_file():
            raise BitallocError(f"--source {str(p)!r}: no such GGUF file")
        return p
    if model is None:
        return _builtin_gguf()
    names = model_names(model)
    if names.gguf is None:
        raise bad("--model", model, "has no GGUF file; GGUF export starts from smollm2, a .gguf --model or a --source GGUF")
    return names.gguf


def gguf_row_lengths(path) -> dict[str, int]:
    """GGUF tensor name → weights per row (ne0, the input dimension) of every 2-D tensor."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # a truncated or foreign file: one line, not a traceback
        raise BitallocError(f"GGUF {str(path)!r}: cannot be read ({type(e).__name__}: {e})") from None
    return {t.name: int(t.shape[0]) for t in reader.tensors if len(t.shape) == 2}


_ = re  # kept for callers that import names.re
