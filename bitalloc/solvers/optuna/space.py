"""Search spaces of the `optuna` solver: Optuna parameters ↔ a candidate per merged row of a Problem.

- `unit`: one categorical parameter per merged row (a unit, or a group of tied units) whose
  choices are the labels of its allowed candidates (`"4"`, `"fp4_e2m1"`); rows with a single
  allowed candidate (pinned) are fixed and get no parameter.
- `shift`: the reduced space for large problems (per-group or per-channel units of an LLM):
  rows are grouped by their layer (by numbered block, or consecutive layers, when there are more
  than `max_params` layers),
  and each group gets one categorical shift in {-2, ..., +2} applied to every row of the group,
  counted in steps along the row's allowed candidates sorted by cost, starting from the warm
  start (so the all-zero point is the warm start itself and the search refines it coarsely).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from bitalloc.solvers.compiled import Compiled

SHIFTS = (-2, -1, 0, 1, 2)
_BLOCK = re.compile(r"^(.*?\.\d+)\.")


@dataclass
class Space:
    """names: parameter names; choices: one tuple of categorical choices per parameter.
    kind: `unit` or `shift`; see the module docstring for how params map to a choice."""

    kind: str
    names: list[str]
    choices: list[tuple]
    base: np.ndarray            # (M,) candidate of every row when no parameter moves it
    rows: np.ndarray            # unit: (P,) row of each parameter; shift: (M,) parameter of each row
    order: np.ndarray | None = None  # shift: (M, K) allowed candidates of each row, cheapest first
    n_allowed: np.ndarray | None = None  # shift: (M,)
    pos0: np.ndarray | None = None       # shift: (M,) position of `base` in `order`

    @classmethod
    def build(cls, comp: Compiled, names: list[str], layers: list[str], labels: list[str],
              warm: np.ndarray, kind: str = "auto", max_params: int = 256) -> "Space":
        """names / layers: one per merged row (its first unit's name and layer);
        labels: (K,) candidate labels; warm: (M,) a feasible starting choice."""
        allowed = comp.allowed
        free = np.flatnonzero(allowed.sum(1) > 1)
        if kind == "auto":
            kind = "unit" if len(free) <= max_params else "shift"
        if kind == "unit":
            choices = [tuple(labels[k] for k in np.flatnonzero(allowed[r])) for r in free]
            fixed = np.argmax(allowed, axis=1)  # the only candidate of rows without a parameter
            return cls("unit", [names[r] for r in free], choices, fixed, free)
        cost = comp.C[0] if comp.C else np.zeros(allowed.shape)
        key = np.where(allowed, cost, np.inf)
        order = np.argsort(key, axis=1, kind="stable")
        n_allowed = allowed.sum(1)
        pos0 = np.argmax(order == warm[:, None], axis=1)
        group, keys = _layer_groups(layers, max_params)
        pnames = [f"shift:{key}" for key in keys]
        return cls("shift", pnames, [SHIFTS] * len(pnames), warm.copy(), group, order, n_allowed, pos0)

    def decode(self, params: dict, labels: list[str]) -> np.ndarray:
        """(M,) candidate per row for a trial's params."""
        if self.kind == "unit":
            index = {lab: k for k, lab in enumerate(labels)}
            choice = self.base.copy()
            choice[self.rows] = [index[params[n]] for n in self.names]
            return choice
        shift = np.array([params[n] for n in self.names], dtype=np.int64)[self.rows]
        pos = np.clip(self.pos0 + shift, 0, self.n_allowed - 1)
        return self.order[np.arange(len(pos)), pos]

    def encode(self, choice: np.ndarray, labels: list[str]) -> dict | None:
        """Params that decode to `choice`, or None if the space cannot express it."""
        if self.kind == "unit":
            return {n: labels[int(choice[r])] for n, r in zip(self.names, self.rows)}
        if np.array_equal(choice, self.base):
            return {n: 0 for n in self.names}
        return None

    def distributions(self) -> dict:
        from optuna.distributions import CategoricalDistribution

        return {n: CategoricalDistribution(c) for n, c in zip(self.names, self.choices)}

    def suggest(self, trial) -> dict:
        return {n: trial.suggest_categorical(n, c) for n, c in zip(self.names, self.choices)}

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.kind.encode())
        for n, c in zip(self.names, self.choices):
            h.update(f"{n}={c};".encode())
        h.update(self.base.tobytes())
        return h.hexdigest()[:16]


def _layer_groups(layers: list[str], max_groups: int) -> tuple[np.ndarray, list[str]]:
    """(M,) group of each row and each group's name: one group per layer; with more
    layers than `max_groups`, one per numbered block (`model.layers.7`) if the names have blocks
    and there are few enough; else consecutive layers merged into at most `max_groups`."""
    if len(set(layers)) > max_groups:
        blocks = [m[1] if (m := _BLOCK.match(lay)) else None for lay in layers]
        if None not in blocks and len(set(blocks)) <= max_groups:
            layers = blocks
    uniq: dict[str, int] = {}
    layer_id = np.array([uniq.setdefault(lay, len(uniq)) for lay in layers], dtype=np.int64)
    n = len(uniq)
    per = -(-n // max_groups)  # layers per group
    group = layer_id // per
    names = list(uniq)
    keys = [names[j] if per == 1 else f"{names[j]}..{names[min(j + per, n) - 1]}" for j in range(0, n, per)]
    return group, keys
