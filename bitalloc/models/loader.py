"""`load_model`: a Task from a built-in name, a transformers folder, a GGUF file, or
`package.module:function`.

    task = bitalloc.load_model("path/to/qwen2-0.5b", calib="notes.txt", samples=16, seq_len=256,
                               device="cuda", dtype="bfloat16")
    profile = bitalloc.profile(task, estimator="fisher")

Built-in names resolve through BUILTIN (name → "module:function", imported only when asked for),
so the library never imports bitalloc.zoo by itself.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

from bitalloc.errors import BitallocError, bad

BUILTIN = {"smollm2": "bitalloc.zoo.demo:smollm2_task", "minilm": "bitalloc.zoo.demo:minilm_task",
           "digits-cnn": "bitalloc.zoo.demo:digits_task"}
_FUNCTION = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
ALLOWED = ("a built-in name (" + ", ".join(BUILTIN) + "), a transformers model folder (config.json + "
           "*.safetensors), a .gguf file, or package.module:function returning a Task")


def model_source(spec) -> str:
    """builtin | directory | gguf | function: what `spec` names, checked without loading anything."""
    if not isinstance(spec, (str, Path)) or not str(spec):
        raise bad("--model", spec, f"must be {ALLOWED}")
    text = str(spec)
    if text in BUILTIN:
        return "builtin"
    p = Path(text)
    if p.is_dir():
        from bitalloc.models.hf import check_directory

        check_directory(p)
        return "directory"
    if p.is_file():
        if p.suffix.lower() == ".gguf":
            return "gguf"
        raise bad("--model", text, f"is a file but not a .gguf; must be {ALLOWED}")
    if _FUNCTION.fullmatch(text) and not p.suffix:
        return "function"
    raise bad("--model", text, f"no such folder or file; must be {ALLOWED}")


def load_model(path_or_name, calib=None, samples: int = 8, seq_len: int = 128, device: str = "auto",
               dtype: str = "auto", include: str | None = None, exclude: str | None = None, seed: int = 0,
               held_out: int | None = None, device_map=None):
    """A Task ready for `bitalloc.profile`, `apply` and `verify`.

    path_or_name: see ALLOWED; calib: a .txt / .jsonl (field `text`) / folder of .txt/.md files
    (default: the built-in pydoc text), for image classifiers a folder of images (required);
    samples: calibration sequences (causal LMs: token windows of `seq_len`; encoders / classifiers:
    paragraphs of at most `seq_len` tokens; image classifiers: images); held_out: evaluation samples
    (default 8 windows / 64 paragraphs / the other images up to 64), from a disjoint part of the data;
    device: auto | cpu | cuda | cuda:N | mps; dtype: auto | float32 | bfloat16 | float16 (the model
    is loaded once, in that dtype); include / exclude: regular expressions on module names;
    device_map: "auto" spreads a model larger than one GPU over the devices (accelerate)."""
    from bitalloc.models.device import check_dtype_name, resolve_device, resolve_dtype

    kind = model_source(path_or_name)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise bad("samples", samples, "must be a positive integer")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise bad("seq_len", seq_len, "must be an integer >= 2")
    if held_out is not None and (isinstance(held_out, bool) or not isinstance(held_out, int) or held_out < 1):
        raise bad("held_out", held_out, "must be a positive integer")
    if calib is not None and not Path(calib).exists():
        raise BitallocError(f"--calib {str(calib)!r}: no such file or folder")
    if device_map not in (None, "auto") and not isinstance(device_map, dict):
        raise bad("device_map", device_map, "must be None, 'auto' or a dict (accelerate)")
    check_dtype_name(dtype)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    from bitalloc.models.layers import _regex

    _regex("--include", include), _regex("--exclude", exclude)
    common = dict(calib=calib, samples=samples, seq_len=seq_len, seed=seed, held_out=held_out)
    if kind in ("directory", "gguf"):
        from bitalloc.models.hf import load_directory, load_gguf

        load = load_directory if kind == "directory" else load_gguf
        return load(str(path_or_name), device=dev, dtype=dt, device_map=device_map, include=include,
                    exclude=exclude, **common)
    fn = _function(BUILTIN[str(path_or_name)] if kind == "builtin" else str(path_or_name))
    params = inspect.signature(fn).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    extra = dict(device=dev, dtype=dt, include=include, exclude=exclude, device_map=device_map)
    kw = {k: v for k, v in {**common, **extra}.items() if takes_all or k in params}
    if calib is not None and "calib" not in kw:
        raise bad("--calib", str(calib), f"{path_or_name} does not take calibration files")
    task = fn(**kw)
    from bitalloc.models.task import Task

    if not isinstance(task, Task):
        raise bad("--model", str(path_or_name), f"returned {type(task).__name__}, not a bitalloc Task")
    if "device" not in kw or "dtype" not in kw:
        task.to(dev, dt)
    if "include" not in kw:
        task.select(include, exclude)
    return task


def _function(spec: str):
    import importlib

    module, _, attr = spec.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise bad("--model", spec, f"module {module!r} cannot be imported ({e})") from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise bad("--model", spec, f"module {module!r} has no function {attr!r}")
    return fn
