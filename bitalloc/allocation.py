"""Allocation: the chosen candidate of every unit, with totals, budgets and how it was found."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bitalloc.errors import BitallocError, bad
from bitalloc.fileio import atomic_write, dumps, read_json

SCHEMA = "bitalloc.allocation/1"
STATUSES = ("optimal", "feasible", "infeasible", "time_limit")


@dataclass
class Allocation:
    """bits: unit name → nominal bits; formats: unit name → number format (only when the profile
    names formats); avg_bits / avg_bits_with_overhead: bits per weight without / with group
    metadata and outliers; objective: total (or worst) expected loss increase; bound: proven lower
    bound on the optimum (None if the solver has none); gap: (objective − bound) / |objective|;
    status: one of STATUSES; totals / budgets: resource → value in its user unit; min_budgets:
    for an infeasible problem, the smallest budget of each resource that could be met on its
    own; wall_s: solver wall time in seconds."""

    bits: dict[str, int]
    status: str
    solver: str
    objective: float | None = None
    bound: float | None = None
    gap: float | None = None
    avg_bits: float | None = None
    avg_bits_with_overhead: float | None = None
    totals: dict[str, float] = field(default_factory=dict)
    budgets: dict[str, float] = field(default_factory=dict)
    min_budgets: dict[str, float] = field(default_factory=dict)
    formats: dict[str, str] | None = None
    wall_s: float = 0.0
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise bad("status", self.status, f"allowed: {', '.join(STATUSES)}")

    @property
    def ok(self) -> bool:
        """True when the allocation holds a solution that meets every budget."""
        return self.status in ("optimal", "feasible", "time_limit") and bool(self.bits)

    def to_json(self) -> dict:
        d = {"schema": SCHEMA}
        for k, v in asdict(self).items():
            if v is None and k == "formats":
                continue
            d[k] = v
        return d

    @classmethod
    def from_json(cls, d: dict, where: str = "allocation") -> "Allocation":
        if d.get("schema") != SCHEMA:
            raise bad(f"{where}: schema", d.get("schema"), f"expected {SCHEMA!r}")
        names = set(cls.__dataclass_fields__)
        unknown = set(d) - names - {"schema"}
        if unknown:
            raise bad(f"{where}: field", sorted(unknown)[0], f"allowed fields: {', '.join(sorted(names))}")
        _check_fields(d, where)
        return cls(**{k: v for k, v in d.items() if k != "schema"})

    def save(self, path, force: bool = False) -> Path:
        return atomic_write(path, dumps(self.to_json()), force)

    @classmethod
    def load(cls, path) -> "Allocation":
        return cls.from_json(read_json(path, "allocation"), where=f"allocation {str(path)!r}")

    def choice(self, profile) -> np.ndarray:
        """(N,) candidate index of each profile unit."""
        labels = {(b, f): k for k, (b, f) in enumerate(zip(profile.bits, profile.formats))}
        by_bits = {b: k for k, b in reversed(list(enumerate(profile.bits)))}
        out = np.empty(profile.n_units, dtype=np.int64)
        for i, s in enumerate(profile.names):
            if s not in self.bits:
                raise bad("allocation", s, "unit of the profile has no bits in the allocation")
            b = self.bits[s]
            k = labels.get((b, self.formats[s])) if self.formats else by_bits.get(b)
            if k is None:
                raise bad(f"allocation bits of {s!r}", b, "is not a candidate of the profile")
            out[i] = k
        return out


def _check_fields(d: dict, where: str) -> None:
    bits = d.get("bits")
    if not isinstance(bits, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                             and 1 <= v <= 32 for k, v in bits.items()):
        raise bad(f"{where}: bits", bits, "must map each unit name to an integer bit-width from 1 to 32")
    from bitalloc.units import check_names

    try:
        check_names(list(bits))
    except BitallocError as e:
        raise BitallocError(f"{where}: {e}") from None
    for k in ("status", "solver"):
        if not isinstance(d.get(k), str):
            raise bad(f"{where}: {k}", d.get(k), "must be a string")
    for k in ("objective", "bound", "gap", "avg_bits", "avg_bits_with_overhead", "wall_s"):
        v = d.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise bad(f"{where}: {k}", v, "must be a number or null")
    for k in ("totals", "budgets", "min_budgets"):
        v = d.get(k, {})
        if not isinstance(v, dict) or not all(isinstance(x, (int, float)) for x in v.values()):
            raise bad(f"{where}: {k}", v, "must map resource names to numbers")
    f = d.get("formats")
    if f is not None and (not isinstance(f, dict) or set(f) != set(bits)):
        raise bad(f"{where}: formats", f, "must map the same unit names as bits to format names")
