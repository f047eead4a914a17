"""Solver: Problem → Allocation. Subclasses implement `_solve(compiled, warm) -> Result`."""
from __future__ import annotations

from abc import ABC, abstractmethod

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from bitalloc.allocation import Allocation
from bitalloc.errors import bad
from bitalloc.hwcost.memory import MemoryCost
from bitalloc.solvers.bounds import min_totals, min_totals_jointly
from bitalloc.solvers.compiled import Compiled, fits

if TYPE_CHECKING:
    from bitalloc.problem import Problem


@dataclass
class Result:
    """choice: (M,) candidate per merged row, or None; status as in Allocation; bound: proven
    lower bound on the optimum, or None; info: solver details kept in Allocation.meta."""

    choice: np.ndarray | None
    status: str
    bound: float | None = None
    info: dict = field(default_factory=dict)


class Solver(ABC):
    """Base class. `solve(problem)` for one problem; `solve_budgets(problem, budgets)` for the
    same problem at several values of its first budget (compiled once, warm-started)."""

    name = "solver"
    objectives: tuple[str, ...] = ("sum",)
    max_constraints: int | None = None
    non_additive = False  # takes constraints whose total is a max over rows (peak SRAM) natively;
                          # otherwise solve_budgets adds their rows lazily (rows.py)

    def __init__(self, time_limit: float | None = None):
        if time_limit is not None and (isinstance(time_limit, bool) or not isinstance(time_limit, (int, float))
                                       or not math.isfinite(time_limit) or time_limit <= 0):
            raise bad("time_limit", time_limit, "must be a positive number of seconds")
        self.time_limit = time_limit

    @abstractmethod
    def _solve(self, comp: Compiled, warm: Result | None) -> Result:
        """One run at the caps of `comp`; `warm` is the previous budget's result, if any."""

    def solve(self, problem: Problem) -> Allocation:
        return self.solve_budgets(problem, [None])[0]

    def solve_budgets(self, problem: Problem, budgets: Sequence[float | None]) -> list[Allocation]:
        self._check(problem)
        if not self.non_additive and any(not c.cost.additive for c in problem.constraints):
            from bitalloc.solvers.rows import solve_with_rows  # rows generated lazily (see rows.py)

            out = []
            for b in budgets:
                prob = problem if b is None else problem.with_budget(b)
                a = solve_with_rows(self, prob)
                a.set_constraints(constraint_specs(prob))  # the real budgets, not the generated rows
                out.append(a)
            return out
        t0 = time.perf_counter()
        comp = problem.compile()
        compile_s = time.perf_counter() - t0
        out, warm = [], None
        for b in budgets:
            prob = problem if b is None else problem.with_budget(b)
            t0 = time.perf_counter()
            c = comp.with_caps([k.budget * k.cost.scale(prob.profile) for k in prob.constraints])
            res = self._infeasible(c) or self._solve(c, warm)
            if res.choice is not None and res.status != "infeasible" and not c.feasible(res.choice):
                res = repaired(c, res, self.time_limit)
            if problem.objective != "sum":
                res.info = {**res.info, "objective": problem.objective}
            out.append(build_allocation(prob, c, res, self.name, time.perf_counter() - t0 + compile_s))
            compile_s = 0.0
            warm = res if res.choice is not None else warm
        return out

    def _check(self, problem: Problem):
        if problem.objective not in self.objectives:
            raise bad("objective", problem.objective, f"solver {self.name} supports: {', '.join(self.objectives)}")
        if not problem.constraints:
            raise bad("constraints", "none", "give at least one budget")
        if self.max_constraints is not None and len(problem.constraints) > self.max_constraints:
            raise bad("constraints", len(problem.constraints),
                      f"solver {self.name} handles at most {self.max_constraints}; use --solver ilp")

    @staticmethod
    def _infeasible(comp: Compiled) -> Result | None:
        if all(fits(t, cap) for t, cap in zip(min_totals(comp), comp.caps)):
            return None
        return Result(None, "infeasible")


def repaired(comp: Compiled, res: Result, time_limit: float | None) -> Result:
    """A result whose choice breaks a budget, made feasible: `repair`, else an exact search."""
    choice = repair(comp, res.choice)
    if comp.feasible(choice):
        return Result(choice, "feasible", res.bound, {**res.info, "repaired": True})
    from bitalloc.solvers.backends.highs import find_feasible

    choice, proven = find_feasible(comp, time_limit)
    if choice is None:
        return Result(None, "infeasible" if proven else "time_limit", res.bound, {**res.info, "repaired": False})
    return Result(choice, "feasible", res.bound, {**res.info, "repaired": True})


def repair(comp: Compiled, choice: np.ndarray, max_moves: int | None = None) -> np.ndarray:
    """Move units to cheaper candidates, least loss per unit of (weighted) excess first, until every
    row of every budget fits or no move helps. A heuristic: the result may still break a budget."""
    choice = choice.copy()
    rows = np.arange(len(choice))
    allowed = comp.allowed
    flat = comp.flat()
    caps = np.array([comp.caps[i] for i, _ in flat])
    for _ in range(max_moves or len(choice) * comp.S.shape[1]):
        over = np.array([r.total(choice) for _, r in flat]) - caps
        if all(fits(t, cap) for t, cap in zip(over + caps, caps)):
            return choice
        saved = np.zeros(comp.S.shape)  # Σ over broken rows of weight · cost saved by each move
        for (_, r), o, cap in zip(flat, over, caps):
            if o <= 0:
                continue
            w = o / max(cap, 1e-300) / max(cap, 1e-300)
            if r.idx is None:
                saved += w * (r.C[rows, choice][:, None] - r.C)
            else:
                saved[r.idx] += w * (r.C[np.arange(len(r.idx)), choice[r.idx]][:, None] - r.C)
        loss = comp.S - comp.S[rows, choice][:, None]
        score = np.where(allowed & (saved > 0), loss / np.where(saved > 0, saved, 1), np.inf)
        i, k = np.unravel_index(np.argmin(score), score.shape)
        if not np.isfinite(score[i, k]):
            break
        choice[i] = k
    return choice


def build_allocation(problem: Problem, comp: Compiled, res: Result, solver: str, wall: float) -> Allocation:
    a = _allocation(problem, comp, res, solver, wall)
    a.set_constraints(constraint_specs(problem))
    return a


def constraint_specs(problem: Problem) -> list[dict]:
    """Each budget with its cost model's spec; a model that cannot be stored as data (an option
    that is not a JSON value, a row of a lazily generated constraint) is left out."""
    from bitalloc.errors import BitallocError

    out = []
    for c in problem.constraints:
        if "#row" in c.cost.resource:
            continue
        try:
            out.append(c.spec())
        except BitallocError:
            continue
    return out


def _allocation(problem: Problem, comp: Compiled, res: Result, solver: str, wall: float) -> Allocation:
    p = problem.profile
    budgets = {c.cost.resource: float(c.budget) for c in problem.constraints}
    if res.choice is None:
        mins, info = [], res.info
        if res.status == "infeasible":
            mins = min_totals(comp)
            if all(fits(t, cap) for t, cap in zip(mins, comp.caps)):  # each fits alone, not together
                mins = min_totals_jointly(comp)
                info = {**info, "min_budgets": "each with the other budgets held"}
        return Allocation({}, res.status, solver, budgets=budgets, wall_s=wall, meta=info,
                          min_budgets={c.cost.resource: float(m / c.cost.scale(p))
                                       for c, m in zip(problem.constraints, mins)})
    choice = res.choice[comp.group]
    objective = comp.objective_value(res.choice)
    mins = min_totals(comp) if res.status == "infeasible" else []  # an infeasible answer with bits: least violation
    gap = None
    if res.bound is not None:
        bound = min(res.bound, objective)
        gap = float((objective - bound) / abs(objective)) if objective else 0.0
    else:
        bound = None
    status = res.status
    if status == "feasible" and gap is not None and gap <= 1e-12:
        status = "optimal"  # the certified bound meets the objective
    from bitalloc.columns import UnitMap

    # columnar: unit name → value views on (N,) arrays; a dict only if someone asks for one
    bits = UnitMap(p.names, np.asarray(p.bits, dtype=np.int8)[choice])
    formats = UnitMap(p.names, choice.astype(np.int16), list(p.formats)) if p.has_formats else None
    totals = {"avg_bits": MemoryCost().total(p, choice),
              "avg_bits_with_overhead": MemoryCost(count_overhead=True).total(p, choice)}
    totals.update({c.cost.resource: float(t / c.cost.scale(p))  # from the compiled matrices: no rebuild
                   for c, t in zip(problem.constraints, comp.totals(res.choice))})
    return Allocation(bits, status, solver, objective=objective, bound=bound, gap=gap,
                      avg_bits=totals["avg_bits"], avg_bits_with_overhead=totals["avg_bits_with_overhead"],
                      totals=totals, budgets=budgets, formats=formats, wall_s=wall, meta={**res.info, **storage_of(p)},
                      min_budgets={c.cost.resource: float(m / c.cost.scale(p)) for c, m in zip(problem.constraints, mins)})


def storage_of(profile) -> dict:
    """What `verify` holds a packed file to, kept in the allocation's meta: "storage", the quantizer
    settings the profile was estimated with (group_size, symmetric, zero: those its meta names);
    for a profile with kv units, "kv" (its KV quantization settings, meta["kv"]) and
    "kv_elements" (each kv unit's cached elements per token, the geometry the budget was solved on)."""
    st = {k: profile.meta[k] for k in ("group_size", "symmetric", "zero") if profile.meta.get(k) is not None}
    out = {"storage": st} if st else {}
    kv = _kv_rows(profile)
    if len(kv):
        if profile.meta.get("kv") is not None:
            out["kv"] = dict(profile.meta["kv"])
        out["kv_elements"] = {profile.names[i]: int(profile.n_params[i]) for i in kv}
    return out


def _kv_rows(profile) -> np.ndarray:
    """Indices of the profile's units of kind `kv` (without a Python loop over coded kinds)."""
    from bitalloc.columns import Coded

    kinds = profile.kinds
    if isinstance(kinds, Coded):
        return np.flatnonzero(kinds.codes == kinds.table.index("kv")) if "kv" in kinds.table else np.array([], int)
    return np.array([i for i, k in enumerate(kinds) if k == "kv"], dtype=int)
