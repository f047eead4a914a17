"""Problem: a Profile plus budgets, the allowed mask, pinned and tied units, and the objective.

`Problem.compile()` turns it into `Compiled`, the plain arrays every solver works on: tied units
merged into one row (their scores and costs summed), pins and bit limits folded into the
allowed mask (disallowed cells are `inf` in S).
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from .errors import BitallocError, bad
from .hwcost.base import CostModel
from .hwcost.memory import MemoryCost
from .profile import Profile

OBJECTIVES = ("sum", "max")
REL_TOL = 1e-12  # a total within this relative distance of its cap counts as within budget


def fits(total: float, cap: float) -> bool:
    return total <= cap + REL_TOL * max(abs(cap), 1.0)


@dataclass(frozen=True)
class Constraint:
    """`cost` total (in its user unit) must stay <= `budget`."""

    cost: CostModel
    budget: float

    def __post_init__(self):
        b = self.budget
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b < 0:
            raise bad(f"budget for {self.cost.resource}", b, "must be a finite number >= 0")


@dataclass
class Compiled:
    """What solvers see.

    S: (M, K) float64 score of each merged unit at each candidate, inf where not allowed;
    C: one (M, K) float64 cost matrix per constraint, base units; caps: (n_constraints,) caps;
    group: (N,) row of S for each profile unit; objective: `sum` or `max`.
    """

    S: np.ndarray
    C: list[np.ndarray]
    caps: np.ndarray
    group: np.ndarray
    objective: str = "sum"

    @property
    def allowed(self) -> np.ndarray:
        return np.isfinite(self.S)

    def min_totals(self) -> np.ndarray:
        """Smallest reachable total of each constraint on its own (cheapest allowed candidate per row)."""
        out = []
        for c in self.C:
            best = np.full(len(self.S), np.inf)
            for k in range(self.S.shape[1]):  # column by column: no (M, K) temporaries
                np.minimum(best, np.where(np.isfinite(self.S[:, k]), c[:, k], np.inf), out=best)
            out.append(best.sum())
        return np.array(out)

    def totals(self, choice: np.ndarray) -> np.ndarray:
        rows = np.arange(len(choice))
        return np.array([c[rows, choice].sum() for c in self.C])

    def objective_value(self, choice: np.ndarray) -> float:
        v = self.S[np.arange(len(choice)), choice]
        return float(v.max() if self.objective == "max" else v.sum())

    def feasible(self, choice: np.ndarray) -> bool:
        rows = np.arange(len(choice))
        return bool(np.isfinite(self.S[rows, choice]).all()) and all(
            fits(t, cap) for t, cap in zip(self.totals(choice), self.caps))

    def with_caps(self, caps) -> "Compiled":
        return replace(self, caps=np.asarray(caps, dtype=np.float64))


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

    # ---- compile ------------------------------------------------------------------------
    def mask(self) -> np.ndarray:
        """(N, K) bool: allowed by the profile, the bit limits, cost-model feasibility and pins."""
        p = self.profile
        ok = p.allowed.copy()
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

    def compile(self) -> Compiled:
        p = self.profile
        ok = self.mask()
        S = np.where(ok, p.sensitivity, np.inf)
        Cs = [c.cost.costs(p) for c in self.constraints]
        caps = np.array([c.budget * c.cost.scale(p) for c in self.constraints], dtype=np.float64)
        group = self.groups()
        m = int(group.max()) + 1
        if m < p.n_units:
            S = _merge(S, group, m, self.objective)
            Cs = [_merge(c, group, m, "sum") for c in Cs]
            if (~np.isfinite(S)).all(axis=1).any():
                g = int(np.argmax((~np.isfinite(S)).all(axis=1)))
                members = [p.names[i] for i in np.flatnonzero(group == g)]
                raise bad("tie", ",".join(members[:4]), "tied units have no allowed candidate in common")
        return Compiled(S, Cs, caps, group, self.objective)


def _merge(a: np.ndarray, group: np.ndarray, m: int, how: str) -> np.ndarray:
    out = np.zeros((m, a.shape[1])) if how == "sum" else np.full((m, a.shape[1]), -np.inf)
    (np.add if how == "sum" else np.maximum).at(out, group, a)
    return out


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
