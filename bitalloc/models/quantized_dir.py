"""A quantized transformers model as a directory that loads back.

    out/
      quantized.safetensors   the packed file (quant/pack.py): levels, scales, zeros of every
                              allocated unit, the allocation and quantizer settings in its metadata
      rest.safetensors        every other tensor of the model (embeddings, norms, biases, the head)
      config.json, tokenizer files   from the model (save_pretrained)
      bitalloc.json           what the folder is: format, source, architecture, kind, units

`bitalloc.load_model(out)` (and `--model out`) rebuilds the model from config.json, loads
rest.safetensors and decodes the packed units into it: the same weights `apply` left in memory.
The folder is written next to its final place and renamed, so a half-written folder never
appears under `out`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from bitalloc.errors import BitallocError

MARKER = "bitalloc.json"
PACKED, REST = "quantized.safetensors", "rest.safetensors"
FORMAT = "bitalloc.model-dir/1"


def save_directory(q, task, out, force: bool = False) -> Path:
    """Write `q` (a QuantizedModel of `task.model`) as the folder `out` (see the module docstring)."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and not force:
        raise BitallocError(f"--out {str(out)!r}: exists (pass --force to overwrite)")
    if not out.parent.exists():
        raise BitallocError(f"--out {str(out)!r}: folder {str(out.parent)!r} does not exist")
    model = task.model
    if not hasattr(model, "save_pretrained"):
        raise BitallocError(f"--out {str(out)!r}: {type(model).__name__} is not a transformers model; "
                            "write the packed file instead (--out FILE.safetensors)")
    quantized = {f"{c.record['layer']}.weight" for c in q.codes}
    rest, seen = {}, set()
    for name, t in model.state_dict().items():
        if name in quantized:
            continue
        key = (t.data_ptr(), tuple(t.shape)) if t.numel() else None
        if key is not None and key in seen:  # a tied tensor: tie_weights() restores it
            continue
        seen.add(key)
        rest[name] = t.detach().to("cpu").contiguous()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / PACKED).write_bytes(q.to_bytes())
        save_file(rest, str(tmp / REST), metadata={"format": FORMAT})
        model.config.save_pretrained(str(tmp))
        tok = getattr(task, "tokenizer", None)
        if tok is not None:
            tok.save_pretrained(str(tmp))
        info = {"format": FORMAT, "source": task.meta.get("source"), "architecture": task.meta.get("architecture"),
                "kind": task.meta.get("kind"), "units": len(q.codes), "quantizer": q.settings.to_json(),
                "dtype": str(next(model.parameters()).dtype).replace("torch.", "")}
        (tmp / MARKER).write_text(json.dumps(info, indent=1), encoding="utf-8")
        os.chmod(tmp, 0o755)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def is_quantized_directory(path) -> bool:
    return (Path(path) / MARKER).is_file()


def load_weights(model, path) -> None:
    """Fill `model` (built from the folder's config) with rest.safetensors and the decoded packed units."""
    import torch
    from safetensors.torch import load_file

    from bitalloc.quant.pack import read

    path = Path(path)
    rest = load_file(str(path / REST))
    packed = read(path / PACKED)
    quantized = {f"{c.record['layer']}.weight" for c in packed.codes}
    missing, unexpected = model.load_state_dict(rest, strict=False)
    if unexpected:
        raise BitallocError(f"--model {str(path)!r}: {REST} holds {unexpected[0]!r}, not a tensor of this architecture")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    left = [m for m in missing if m not in quantized and m in names and not _tied(model, m)]
    if left:
        raise BitallocError(f"--model {str(path)!r}: tensor {left[0]!r} is in neither {REST} nor {PACKED}")
    with torch.no_grad():
        packed.load_into(model)


def _tied(model, name: str) -> bool:
    """True when parameter `name` shares storage with another parameter that was loaded."""
    params = dict(model.named_parameters(remove_duplicate=False))
    p = params.get(name)
    return p is not None and sum(q is p for q in params.values()) > 1
