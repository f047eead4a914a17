"""Baseline allocations at a budget, for judging a solver's allocation: uniform and random.

- uniform: every unit at the same bits (the budget's floor and ceiling bit-widths);
- random: every unit starts at the floor bits, then units in a random order (seeded) move up to
  the ceiling bits while the parameter-weighted average stays within the budget. It hits the
  budget to within one unit and spends it on random units: the same budget as the solver's
  allocation, with no knowledge of where the bits matter.
"""
from __future__ import annotations

import math

import numpy as np

from bitalloc.errors import bad


def bracket(budget: float) -> tuple[int, int]:
    """(floor, ceil) integer bit-widths around an average budget in bits per weight."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget < 1:
        raise bad("budget", budget, "must be a number of bits per weight >= 1")
    lo = int(math.floor(budget + 1e-9))
    return lo, max(lo, int(math.ceil(budget - 1e-9)))


def uniform(names, bits: int) -> dict[str, int]:
    return {s: int(bits) for s in names}


def random_at_budget(names, n_params, budget: float, seed: int) -> dict[str, int]:
    """Floor bits everywhere, then random units (order from `seed`) raised to ceil bits while the
    average over `n_params` (one count per unit) stays <= budget."""
    lo, hi = bracket(budget)
    n = np.asarray(n_params, dtype=np.int64)
    bits = np.full(len(n), lo, dtype=np.int64)
    if hi > lo:
        room = budget * float(n.sum()) - float((n * lo).sum())
        for i in np.random.default_rng(seed).permutation(len(n)):
            step = float(n[i]) * (hi - lo)
            if step <= room + 1e-9 * max(room, 1.0):
                bits[i] = hi
                room -= step
    return {s: int(b) for s, b in zip(names, bits)}


def average_bits(bits: dict[str, int], n_params: dict[str, int]) -> float:
    total = sum(n_params[s] for s in bits)
    return sum(b * n_params[s] for s, b in bits.items()) / total
