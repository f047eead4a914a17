"""Torch device and dtype from their names, checked before any model is loaded.

device: `auto` (cuda, else mps, else cpu), `cpu`, `cuda`, `cuda:N`, `mps`.
dtype: `auto` (float32 on cpu; bfloat16 on a GPU that has it, else float16), `float32`,
`bfloat16`, `float16`. An unknown name, a device this machine lacks or a dtype the device
cannot run is a one-line BitallocError.
"""
from __future__ import annotations

import re

from bitalloc.errors import bad

DEVICES = "auto, cpu, cuda, cuda:N, mps"
DTYPES = ("auto", "float32", "bfloat16", "float16")


def check_device_name(name: str) -> None:
    """Syntax only (no torch import): for the CLI's up-front checks."""
    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise bad("--torch-device", name, f"allowed: {DEVICES}")


def check_dtype_name(name: str) -> None:
    if name not in DTYPES:
        raise bad("--dtype", name, f"allowed: {', '.join(DTYPES)}")


def resolve_device(name: str = "auto"):
    """A torch.device this machine has (see the module docstring)."""
    import torch

    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise bad("--torch-device", name, "CUDA is not available on this machine (no GPU, or torch built "
                      f"without CUDA); allowed here: cpu{', mps' if _mps() else ''}")
        idx = int(name.split(":")[1]) if ":" in name else 0
        if idx >= torch.cuda.device_count():
            raise bad("--torch-device", name, f"this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", idx)
    if name == "mps" and not _mps():
        raise bad("--torch-device", name, "MPS (Apple GPU) is not available on this machine; allowed here: cpu"
                  + (", cuda" if torch.cuda.is_available() else ""))
    return torch.device(name)


def resolve_dtype(name: str, device):
    """The torch dtype for `name` on `device` (a dtype the device lacks is refused)."""
    import torch

    check_dtype_name(name)
    kind = device.type
    if name == "auto":
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if kind == "mps" else torch.float32
    dtype = getattr(torch, name)
    if kind == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        cap = torch.cuda.get_device_capability(device)
        raise bad("--dtype", name, f"{device} (compute capability {cap[0]}.{cap[1]}) has no bfloat16; use float16 or float32")
    if kind == "mps" and dtype == torch.bfloat16 and not _mps_bf16():
        raise bad("--dtype", name, "this MPS device (macOS < 14) has no bfloat16; use float16 or float32")
    return dtype


def accumulator_dtype(device):
    """float64 where the device has it (sums of many squared errors), float32 on MPS."""
    import torch

    return torch.float32 if getattr(device, "type", str(device)) == "mps" else torch.float64


def _mps() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def _mps_bf16() -> bool:
    import torch

    try:
        torch.zeros(1, dtype=torch.bfloat16, device="mps")
        return True
    except Exception:
        return False


def to_device(x, device, dtype=None):
    """Tensors inside `x` (a tensor, dict, tuple or list) moved to `device`; floating tensors
    cast to `dtype` when given."""
    import torch

    if isinstance(x, torch.Tensor):
        if dtype is not None and x.is_floating_point():
            return x.to(device=device, dtype=dtype)
        return x.to(device)
    if isinstance(x, dict):
        return type(x)((k, to_device(v, device, dtype)) for k, v in x.items())
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device, dtype) for v in x)
    return x
