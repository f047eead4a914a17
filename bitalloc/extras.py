"""Optional packages: which extra of `pip install 'bitalloc[...]'` brings each, and one-line errors
when one is missing. Commands call `require` before any work or output, so a base install
(`pip install .`: numpy, highspy, pulp, ortools, rich) gets one line naming the extra."""
from __future__ import annotations

import importlib.util

from bitalloc.errors import BitallocError

EXTRA_OF = {  # top-level module → the extra that installs it (pyproject.toml)
    "torch": "models", "transformers": "models", "accelerate": "models", "safetensors": "models",
    "sklearn": "models", "scipy": "models", "tqdm": "models", "PIL": "models",
    "gguf": "export", "optuna": "search", "networkx": "search", "matplotlib": "plots",
    "psycopg": "postgres", "hypothesis": "test", "pytest": "test",
}
# what each real model needs besides torch (zoo/demo.py)
MODEL_MODULES = {"smollm2": ("transformers", "gguf", "tqdm"), "minilm": ("transformers", "safetensors", "tqdm"),
                 "digits-cnn": ("sklearn", "safetensors", "tqdm")}


def available(module: str) -> bool:
    """True when `module` can be imported (without importing it; a module set to None in
    sys.modules, as tests do to hide it, counts as missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def message(module: str, why: str | None = None) -> str:
    """`<why> needs the optional package 'optuna': pip install 'bitalloc[search]'`."""
    top = module.split(".")[0]
    extra = EXTRA_OF.get(top)
    fix = f"pip install 'bitalloc[{extra}]'" if extra else f"pip install {top}"
    return f"{why + ' needs' if why else 'needs'} the optional package {top!r}, which is not installed: {fix}"


def require(*modules: str, why: str | None = None) -> None:
    """Raise a one-line BitallocError for the first of `modules` that is not installed."""
    for m in modules:
        if not available(m):
            raise BitallocError(message(m, why))


def require_model(model: str, why: str | None = None) -> None:
    """torch and what the demo `model` needs to load (see MODEL_MODULES)."""
    require("torch", *MODEL_MODULES.get(model, ()), why=why or f"--model {model}")
