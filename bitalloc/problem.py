"""Problem: a Profile plus budgets, the allowed mask, pinned and tied units, and the objective.

`Problem.compile()` turns it into `Compiled` (bitalloc/solvers/compiled.py), the plain arrays
every solver works on.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from bitalloc.errors import BitallocError, bad
from bitalloc.hwcost.constraint import Constraint
from bitalloc.hwcost.memory import MemoryCost
from bitalloc.profile import Profile
from bitalloc.solvers.compiled import Compiled, compile_problem

OBJECTIVES = ("sum", "max")


@dataclass
class Problem:
    """Choose one candidate per unit of `profile`.

    constraints: budgets (default: average nominal bits, `budget` bits per weight);
    pins: {unit-name glob: bits (int) or candidate label/format (str)}; ties: groups of unit
    names that must share one candidate; min_bits / max_bits: limits on nominal bits;
    allowed: optional (N, K) bool mask ANDed with the profile's; objective: `sum` or `max`.
    """

    profile: Profile
    constraints: Sequence[Constraint] = ()
    pins: dict = field(default_factory=dict)
    ties: Sequence[Sequence[str]] = ()
    min_bits: int | None = None
    max_bits: int | None = None
    allowed: np.ndarray | None = None
    objective: str = "sum"

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise bad("objective", self.objective, f"allowed: {', '.join(OBJECTIVES)}")
        self.constraints = list(self.constraints)
        for c in self.constraints:
            if not isinstance(c, Constraint):
                raise bad("constraints", type(c).__name__, "each must be a bitalloc.Constraint")
        for field_, v in (("min_bits", self.min_bits), ("max_bits", self.max_bits)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise bad(field_, v, "must be a positive integer")

    @classmethod
    def average_bits(cls, profile: Profile, budget: float, count_overhead: bool = False, **kw) -> "Problem":
        """The common case: average bits per weight <= budget."""
        return cls(profile, [Constraint(MemoryCost(count_overhead=count_overhead), budget)], **kw)

    def with_budget(self, budget: float) -> "Problem":
        """Same problem, first constraint's budget replaced."""
        if not self.constraints:
            raise BitallocError("problem has no constraint whose budget could be set")
        return replace(self, constraints=[Constraint(self.constraints[0].cost, budget), *self.constraints[1:]])

    def with_constraints(self, pairs, **changes) -> "Problem":
        """Same problem with constraints [(cost model, budget), ...] (and any other fields in
        `changes`), for code that must not import this module (solvers' row generation)."""
        return replace(self, constraints=[Constraint(c, b) for c, b in pairs], **changes)

    # ---- compile ------------------------------------------------------------------------
    def mask(self) -> np.ndarray:
        """(N, K) bool: allowed by the profile, the bit limits, cost-model feasibility and pins."""
        p = self.profile
        ok = p.allowed  # a new array
        bits = np.asarray(p.bits)
        if self.min_bits is not None:
            ok &= bits[None, :] >= self.min_bits
        if self.max_bits is not None:
            ok &= bits[None, :] <= self.max_bits
        if self.allowed is not None:
            a = np.asarray(self.allowed, dtype=bool)
            if a.shape != ok.shape:
                raise bad("allowed", f"shape {a.shape}", f"must be {ok.shape}")
            ok &= a
        for c in self.constraints:
            f = c.cost.feasible(p)
            if f is not None:
                ok &= f
        for i, k in self.pinned().items():
            if not ok[i, k]:
                raise bad(f"pin of unit {p.names[i]!r}", p.candidate_labels()[k],
                          "that candidate is not allowed for this unit (null sensitivity, a bit limit or the target)")
            ok[i] = False
            ok[i, k] = True
        dead = ~ok.any(axis=1)
        if dead.any():
            i = int(np.argmax(dead))
            raise bad("unit", p.names[i], "has no allowed candidate left after --min-bits/--max-bits/pins")
        return ok

    def pinned(self) -> dict[int, int]:
        """unit row → candidate index, from the glob patterns in `pins`."""
        p = self.profile
        labels = p.candidate_labels()
        out: dict[int, int] = {}
        for pattern, cand in self.pins.items():
            k = resolve_candidate(p, cand, f"pin {pattern}={cand}")
            rows = match_units(p.names, pattern)
            if not rows:
                raise bad("pin", f"{pattern}={cand}", "the pattern matches no unit name (a glob on the whole name or a dotted suffix)")
            for i in rows:
                if out.get(i, k) != k:
                    raise bad("pin", f"{pattern}={cand}", f"unit {p.names[i]!r} is also pinned to {labels[out[i]]}")
                out[i] = k
        return out

    def groups(self) -> np.ndarray:
        """(N,) merged-row index of each unit: tied units share a row (union-find over ties)."""
        n = self.profile.n_units
        if not self.ties:
            return np.arange(n)
        index = self.profile.index()
        parent = list(range(n))

        def find(i):
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for tie in self.ties:
            rows = []
            for s in tie:
                if s not in index:
                    raise bad("tie", s, "names no unit of the profile")
                rows.append(index[s])
            for r in rows[1:]:
                parent[find(r)] = find(rows[0])
        roots = np.array([find(i) for i in range(n)])
        _, group = np.unique(roots, return_inverse=True)
        return group

    def compile(self) -> "Compiled":
        """The plain arrays every solver works on (see bitalloc.solvers.compiled)."""
        return compile_problem(self)


def match_units(names: list[str], pattern: str) -> list[int]:
    """Rows whose name matches the glob `pattern`, as a whole name or as a dotted suffix
    (`lm_head` matches `model.lm_head`; `mlp.down_proj` matches every block's down_proj)."""
    return [i for i, s in enumerate(names)
            if fnmatch.fnmatchcase(s, pattern) or fnmatch.fnmatchcase(s, "*." + pattern)]


def resolve_candidate(profile: Profile, cand, field: str) -> int:
    """Candidate index for `cand`: an int bit-width (unique among candidates) or a label/format."""
    labels = profile.candidate_labels()
    if isinstance(cand, str) and cand.isdigit():
        cand = int(cand)
    if isinstance(cand, int) and not isinstance(cand, bool):
        hits = [k for k, b in enumerate(profile.bits) if b == cand]
        if len(hits) > 1:
            raise bad(field, cand, f"several candidates have {cand} bits; name one of {', '.join(labels[k] for k in hits)}")
    else:
        hits = [k for k, (lab, f) in enumerate(zip(labels, profile.formats)) if cand in (lab, f)]
    if not hits:
        raise bad(field, cand, f"not a candidate of this profile (candidates: {', '.join(labels)})")
    return hits[0]


def tie_groups(names: list[str], tokens: Sequence[str]) -> list[list[str]]:
    """Tie units whose names differ only in which of `tokens` they contain, e.g. tokens
    (q_proj, k_proj, v_proj) ties `layers.3.self_attn.q_proj` with `layers.3.self_attn.k_proj`
    and `...v_proj` (and `...q_proj:g7` with `...k_proj:g7`). Tokens match whole dotted parts."""
    buckets: dict[str, list[str]] = {}
    toks = set(tokens)
    for s in names:
        head, sep, tail = s.partition(":")
        parts = head.split(".")
        hit = [j for j, part in enumerate(parts) if part in toks]
        if not hit:
            continue
        j = hit[-1]
        key = ".".join(parts[:j] + ["*"] + parts[j + 1:]) + sep + tail
        buckets.setdefault(key, []).append(s)
    return [g for g in buckets.values() if len(g) > 1]


def unmatched_tokens(names: list[str], tokens: Sequence[str]) -> list[str]:
    """The `tokens` of a tie that are no whole dotted part of any unit name (a typo: tie_groups
    would silently leave them out)."""
    parts: set[str] = set()
    for s in names:
        parts.update(s.partition(":")[0].split("."))
    return [t for t in tokens if t not in parts]
