"""Quantizable layers of any torch model: which modules are units, and their weight as (out, in).

Every `nn.Linear`, `nn.Conv1d`, `nn.Conv2d` and transformers `Conv1D` (GPT-2's projections) is a
quantizable layer. bitalloc always sees a layer's weight as a 2-D (out, in·kh·kw) matrix: a
Linear's weight as stored, a conv kernel flattened, and a transformers `Conv1D` weight — stored
(in, out) — transposed. `as_2d` is the one place that knows this; estimators, apply, pack,
verify and export all go through it.
"""
from __future__ import annotations

import re

from bitalloc.errors import bad

KINDS = "nn.Linear, nn.Conv1d, nn.Conv2d, transformers Conv1D"
# runtime tie groups: name parts a kernel fuses into one matmul, so they usually share bits
TIE_FAMILIES = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("gate_proj", "up_proj"),
                ("w1", "w3"), ("fc1", "fc3"))


from bitalloc.weights import as_2d, from_2d, is_quantizable, is_transposed, shape2d, weight2d  # noqa: F401


def output_head(model) -> set[str]:
    """Names of the modules that hold the output head (an LM head, tied or not), if any."""
    names = set()
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is not None:
        names |= {n for n, m in model.named_modules() if m is head}
    return names


def discover(model, include: str | None = None, exclude: str | None = None, head: bool = False) -> list[str]:
    """Names of the quantizable layers of `model` in forward (registration) order.

    Embeddings are never units (not Linear/Conv); the output head (`get_output_embeddings()`) is
    left out unless `head`. include / exclude: regular expressions searched in the module name
    (include keeps only matching layers, exclude then drops matching ones)."""
    inc, exc = _regex("--include", include), _regex("--exclude", exclude)
    skip = set() if head else output_head(model)
    out = []
    for name, mod in model.named_modules():
        if not name or name in skip or not is_quantizable(mod):
            continue
        if inc is not None and not inc.search(name):
            continue
        if exc is not None and exc.search(name):
            continue
        out.append(name)
    if not out:
        raise bad("layers", f"include={include!r} exclude={exclude!r}",
                  f"no quantizable layer ({KINDS}) of {type(model).__name__} is left")
    return out


def _regex(field: str, text: str | None):
    if text is None or text == "":
        return None
    try:
        return re.compile(text)
    except re.error as e:
        raise bad(field, text, f"is not a regular expression ({e})") from None


def suggest_ties(layers: list[str]) -> list[tuple[str, ...]]:
    """Tie families (q/k/v, gate/up, ...) whose every member is the last name part of some layer:
    the `--tie` options a runtime that fuses them would need."""
    last = {n.rsplit(".", 1)[-1] for n in layers}
    return [fam for fam in TIE_FAMILIES if all(p in last for p in fam)]


def select(layers: list[str], include: str | None = None, exclude: str | None = None) -> list[str]:
    """`layers` filtered by include / exclude regular expressions (order kept)."""
    inc, exc = _regex("--include", include), _regex("--exclude", exclude)
    out = [n for n in layers if (inc is None or inc.search(n)) and (exc is None or not exc.search(n))]
    if not out:
        raise bad("layers", f"include={include!r} exclude={exclude!r}", "leave no layer of the model")
    return out
