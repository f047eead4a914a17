"""Problem: a Profile plus budgets, the allowed mask, pinned and tied units, and the objective.

`Problem.compile()` turns it into `Compiled`, the plain arrays every solver works on: tied units
merged into one row (their scores and costs summed), pins and bit limits folded into the
allowed mask (disallowed cells are `inf` in S), and every constraint turned into linear rows:
one dense row for a resource that is a sum over units, one sparse row per liveness point for a
resource that is a max (CostModel.rows), so `total <= cap` is exactly `every row <= cap`.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from bitalloc.errors import BitallocError, bad
from bitalloc.hwcost.base import CostModel
from bitalloc.hwcost.memory import MemoryCost
from bitalloc.profile import Profile

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


@dataclass(frozen=True)
class Row:
    """One linear row of a constraint: Σ_j C[j, choice[idx[j]]] <= the constraint's cap.

    C: (n, K) float64 base-unit costs; idx: (n,) distinct merged-unit rows of S, or None for
    all M rows in order (then C is (M, K)). An additive constraint is one row with idx None."""

    C: np.ndarray
    idx: np.ndarray | None = None

    def total(self, choice: np.ndarray) -> float:
        sel = choice if self.idx is None else choice[self.idx]
        return float(self.C[np.arange(len(sel)), sel].sum())

    def cheapest(self, allowed: np.ndarray) -> np.ndarray:
        """(n,) smallest cost of each of the row's units over its allowed candidates (allowed: (M, K))."""
        best = np.full(len(self.C), np.inf)
        for k in range(self.C.shape[1]):  # column by column: no (n, K) temporaries
            ok = allowed[:, k] if self.idx is None else allowed[self.idx, k]
            np.minimum(best, np.where(ok, self.C[:, k], np.inf), out=best)
        return best


@dataclass
class Compiled:
    """What solvers see.

    S: (M, K) float64 score of each merged unit at each candidate, inf where not allowed;
    rows: for each constraint, its linear rows (Row); the constraint's total is the max over its
    rows of the row sums (one row for an additive resource, one per liveness point for peak SRAM);
    caps: (n_constraints,) caps in base units; group: (N,) row of S for each profile unit;
    objective: `sum` or `max`; names: resource name of each constraint.
    """

    S: np.ndarray
    rows: list[list[Row]]
    caps: np.ndarray
    group: np.ndarray
    objective: str = "sum"
    names: tuple[str, ...] = ()

    @property
    def allowed(self) -> np.ndarray:
        return np.isfinite(self.S)

    @property
    def additive(self) -> bool:
        """True when every constraint is a single row over all units (a plain sum)."""
        return all(len(rs) == 1 and rs[0].idx is None for rs in self.rows)

    @property
    def C(self) -> list[np.ndarray]:
        """(M, K) cost matrix of each constraint; only for additive constraints (see `additive`)."""
        if not self.additive:
            i = next(i for i, rs in enumerate(self.rows) if len(rs) != 1 or rs[0].idx is not None)
            raise BitallocError(f"constraint {self.names[i] if self.names else i} is a max over "
                                f"{len(self.rows[i])} rows, not a sum over units: this code path needs additive costs")
        return [rs[0].C for rs in self.rows]

    def flat(self) -> list[tuple[int, Row]]:
        """Every linear row as (constraint index, Row)."""
        return [(i, r) for i, rs in enumerate(self.rows) for r in rs]

    def min_totals(self) -> np.ndarray:
        """Smallest reachable total of each constraint on its own (exact, also for a max over rows)."""
        ok = self.allowed
        return np.array([_min_total(rs, ok) for rs in self.rows])

    def min_totals_jointly(self, time_limit: float | None = None) -> np.ndarray:
        """Smallest total of each constraint while every other constraint keeps its cap (exact
        MILP per constraint; inf when the others cannot be met together)."""
        from bitalloc.solvers.milp import min_total

        return np.array([min_total(self.allowed, self.rows, self.caps, i, time_limit) for i in range(len(self.rows))])

    def totals(self, choice: np.ndarray) -> np.ndarray:
        return np.array([max((r.total(choice) for r in rs), default=0.0) for rs in self.rows])

    def objective_value(self, choice: np.ndarray) -> float:
        v = self.S[np.arange(len(choice)), choice]
        return float(v.max() if self.objective == "max" else v.sum())

    def feasible(self, choice: np.ndarray) -> bool:
        rows = np.arange(len(choice))
        return bool(np.isfinite(self.S[rows, choice]).all()) and all(
            fits(t, cap) for t, cap in zip(self.totals(choice), self.caps))

    def with_caps(self, caps) -> "Compiled":
        return replace(self, caps=np.asarray(caps, dtype=np.float64))


def _min_total(rows: list[Row], ok: np.ndarray) -> float:
    """min over allowed choices of max over rows. Each row alone is smallest at each unit's cheapest
    candidate; when one candidate of every unit is cheapest in all the unit's rows (always for one
    row, and when rows scale the same per-unit costs), that choice reaches the max of the row minima.
    Otherwise the min-max is solved exactly as a small MILP."""
    mins = [r.cheapest(ok) for r in rows]
    lower = max((float(m.sum()) for m in mins), default=0.0)
    if len(rows) <= 1:
        return lower
    common = ok.copy()
    for r, m in zip(rows, mins):
        sub = (r.C == m[:, None]) & (ok if r.idx is None else ok[r.idx])
        if r.idx is None:
            common &= sub
        else:
            common[r.idx] &= sub
    if common.any(axis=1).all():
        return lower
    from bitalloc.solvers.milp import min_total

    return min_total(ok, [rows], np.zeros(1), 0)


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
        caps = np.array([c.budget * c.cost.scale(p) for c in self.constraints], dtype=np.float64)
        group = self.groups()
        m = int(group.max()) + 1
        if m < p.n_units:
            S = _merge(S, group, m, self.objective)
            if (~np.isfinite(S)).all(axis=1).any():
                g = int(np.argmax((~np.isfinite(S)).all(axis=1)))
                members = [p.names[i] for i in np.flatnonzero(group == g)]
                raise bad("tie", ",".join(members[:4]), "tied units have no allowed candidate in common")
        rows = [constraint_rows(c.cost, p, group, m) for c in self.constraints]
        return Compiled(S, rows, caps, group, self.objective, tuple(c.cost.resource for c in self.constraints))


def constraint_rows(cost: CostModel, profile: Profile, group: np.ndarray, m: int) -> list[Row]:
    """The linear rows of one cost model on the merged units (tied units' costs summed)."""
    N, K = profile.n_units, len(profile.bits)
    if cost.additive:  # the fast path of 10⁶-unit problems: shape checked, values trusted as before
        C = np.asarray(cost.costs(profile), dtype=np.float64)
        if C.shape != (N, K):
            raise bad(f"cost model {cost.name}: cost matrix shape", C.shape, f"must be {(N, K)}")
        return [Row(C if m == N else _merge(C, group, m, "sum"))]
    out = []
    for p_, (idx, C) in enumerate(cost.rows(profile)):
        idx = np.asarray(idx)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or (len(idx) and (idx.min() < 0 or idx.max() >= N)):
            raise bad(f"cost model {cost.name} row {p_}: unit indices", idx[:4].tolist(), f"must be integers in [0, {N})")
        C = _checked(cost, np.asarray(C, dtype=np.float64), (len(idx), K), f" row {p_}")
        g, inv = np.unique(group[idx], return_inverse=True)
        if len(g) < len(idx):  # tied (or repeated) units of the row share one merged row
            merged = np.zeros((len(g), K))
            np.add.at(merged, inv, C)
            C = merged
        elif not np.array_equal(g, group[idx]):
            C = C[np.argsort(group[idx], kind="stable")]
        out.append(Row(C) if len(g) == m else Row(C, g))
    return out


def _checked(cost: CostModel, C: np.ndarray, shape: tuple, where: str) -> np.ndarray:
    if C.shape != shape:
        raise bad(f"cost model {cost.name}{where}: cost matrix shape", C.shape, f"must be {shape}")
    if not np.isfinite(C).all():
        raise bad(f"cost model {cost.name}{where}: costs", "nan/inf", "must be finite (mark candidates infeasible instead)")
    return C


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


def unmatched_tokens(names: list[str], tokens: Sequence[str]) -> list[str]:
    """The `tokens` of a tie that are no whole dotted part of any unit name (a typo: tie_groups
    would silently leave them out)."""
    parts: set[str] = set()
    for s in names:
        parts.update(s.partition(":")[0].split("."))
    return [t for t in tokens if t not in parts]
