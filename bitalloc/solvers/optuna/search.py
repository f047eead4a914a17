"""optuna: black-box search over allocations, for objectives that are not a sum of per-unit
scores (the measured loss of the quantized model) or several objectives at once.

    bitalloc.solve(problem, solver="optuna", evaluate=fn, n_trials=200)   # fn(Allocation) -> float | tuple

- Samplers `tpe` (single or multi-objective) and `nsga2`; with several objectives the result
  is the study's Pareto set (`solver.front`, and `meta["pareto"]` of the returned Allocation,
  which is the front's point with the best first objective).
- Budgets are Optuna constraints (`trial.set_constraint`, normalized excess over the cap; Optuna
  5 replaced `constraints_func` by it); only trials within every budget are ever returned, and
  each returned allocation is re-checked against the compiled budgets. Trials over budget skip
  the user's `evaluate` (their values are +inf; the samplers rank them by violation).
- Warm start: a new study starts with the ILP (greedy above 20,000 rows) allocation at the
  budget as a finished trial, evaluated here; with several objectives also the ILP at three
  smaller budgets.
- Objectives without `evaluate`: `objectives=("score",)` is the profile's own objective (sum or
  max of the unit scores); resource names (`avg_bits`, `avg_bits_with_overhead`, a constraint's
  resource) add their totals as further objectives, all minimized.
- Search space: see optuna_space (one categorical per unit up to `max_params` free units, else
  a per-layer shift of the warm start).
- Storage: `storage` URL + `study` name make the study persistent and resumable; `workers` > 1
  forks that many processes on it (see optuna_run).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import time
import warnings
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from bitalloc.errors import BitallocError, bad
from bitalloc.hwcost.memory import MemoryCost
from bitalloc.solvers.bounds import min_totals
from bitalloc.solvers.compiled import REL_TOL, Compiled
from bitalloc.solvers import register
from bitalloc.solvers.base import Result, Solver, build_allocation
from bitalloc.solvers.optuna.run import RunSpec, run, tag
from bitalloc.solvers.optuna.space import Space
from bitalloc.solvers.optuna.storage import open_storage, shown

if TYPE_CHECKING:
    from bitalloc.problem import Problem

SAMPLERS = ("tpe", "nsga2")
WARM_STARTS = ("auto", "ilp", "greedy", "none")
SPACES = ("auto", "unit", "shift")
GREEDY_FROM = 20_000  # rows from which the warm start is the greedy rather than the ILP


MAX_TRIALS = 10**6  # trials of one run (a study can be resumed for more)


def max_workers() -> int:
    """Most worker processes one run may start: 4 per CPU core, at most 64."""
    import os

    return max(1, min(64, 4 * (os.cpu_count() or 1)))


@register("optuna")
class OptunaSolver(Solver):
    objectives = ("sum", "max")

    def __init__(self, n_trials: int = 100, sampler: str = "tpe", workers: int = 1, storage: str | None = None,
                 study: str | None = None, seed: int | None = None, evaluate: Callable | None = None,
                 objectives: Sequence[str] | None = None, directions: Sequence[str] | None = None,
                 warm_start: str = "auto", space: str = "auto", max_params: int = 256,
                 population_size: int = 50, progress: Callable | None = None, time_limit: float | None = None):
        super().__init__(time_limit)
        for name, v, low, high in (("n_trials", n_trials, 1, MAX_TRIALS), ("workers", workers, 1, max_workers()),
                                   ("max_params", max_params, 1, MAX_TRIALS), ("population_size", population_size, 2, MAX_TRIALS)):
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise bad(name, v, f"must be an integer from {low} to {high}"
                          + (" (4 worker processes per CPU core, at most 64)" if name == "workers" else ""))
        if workers > n_trials:
            raise bad("workers", workers, f"must be at most the number of trials ({n_trials}): a worker needs a trial")
        if seed is not None and not isinstance(seed, bool) and isinstance(seed, int) and not 0 <= seed <= 2**32 - 1 - workers:
            raise bad("seed", seed, f"must be from 0 to {2**32 - 1 - workers} (worker i uses seed + i)")
        for name, v, allowed in (("sampler", sampler, SAMPLERS), ("warm_start", warm_start, WARM_STARTS),
                                 ("space", space, SPACES)):
            if v not in allowed:
                raise bad(name, v, f"allowed: {', '.join(allowed)}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise bad("seed", seed, "must be an integer")
        if evaluate is not None and not callable(evaluate):
            raise bad("evaluate", type(evaluate).__name__, "must be a callable fn(allocation) -> float | tuple")
        if evaluate is not None and objectives is not None:
            raise bad("objectives", ",".join(objectives), "give either evaluate or objectives, not both")
        if directions is not None and (not directions or any(d not in ("minimize", "maximize") for d in directions)):
            raise bad("directions", directions, "must be a non-empty list of 'minimize' / 'maximize'")
        if study is not None and (not isinstance(study, str) or not study):
            raise bad("study", study, "must be a non-empty name")
        self.n_trials, self.sampler, self.workers, self.seed = n_trials, sampler, workers, seed
        self.evaluate, self.directions, self.warm_start, self.space = evaluate, directions, warm_start, space
        self.goals = tuple(objectives or ("score",))
        if directions is not None and evaluate is None and len(directions) != len(self.goals):
            raise bad("directions", directions, f"need one per objective ({', '.join(self.goals)})")
        self.max_params, self.population_size, self.progress = max_params, population_size, progress
        self.storage, self.study_name = storage, study or "bitalloc"
        if storage is not None:
            open_storage(storage)  # unreachable or malformed: a one-line error now, before any work
        self.front: list = []

    # ---- driver ---------------------------------------------------------------------------
    def solve_budgets(self, problem: Problem, budgets):
        self._problems = [problem if b is None else problem.with_budget(b) for b in budgets]
        self._budgets = list(budgets)
        return super().solve_budgets(problem, budgets)

    def _problem_for(self, comp: Compiled) -> tuple[Problem, str]:
        """The Problem whose caps `comp` has, and the study name for it."""
        for b, prob in zip(self._budgets, self._problems):
            caps = [k.budget * k.cost.scale(prob.profile) for k in prob.constraints]
            if np.allclose(caps, comp.caps, rtol=1e-12, atol=0):
                name = self.study_name if len(self._budgets) == 1 else f"{self.study_name}.b{b:g}"
                return prob, name
        raise AssertionError("no budget matches the compiled caps")

    def _solve(self, comp: Compiled, warm: Result | None) -> Result:
        import optuna

        t0 = time.perf_counter()
        prob, name = self._problem_for(comp)
        self._check_goals(prob)
        labels = prob.profile.candidate_labels()
        start = self._warm(comp)
        rep = _representatives(comp.group)
        space = Space.build(comp, [prob.profile.names[i] for i in rep], [prob.profile.layers[i] for i in rep],
                            labels, start.choice if start else _cheapest(comp), self.space, self.max_params)
        ev = _Evaluator(self, prob, comp, space, labels)
        fingerprint = self._fingerprint(comp, space)
        with _quiet(optuna):
            tmp = contextlib.ExitStack()
            url = self.storage
            if url is None and self.workers > 1:  # forked workers need a shared store: a temporary journal
                import tempfile

                url = "journal://" + str(tmp.enter_context(tempfile.TemporaryDirectory()) + "/study.log")
            with tmp:
                storage = open_storage(url)
                study, n_warm = self._open_study(optuna, storage, name, fingerprint, ev, *self._starts(comp, start, warm))
                n_before = len(study.get_trials(deepcopy=False))
                spec = RunSpec(url, name, self.n_trials, self.workers, self.seed, self.time_limit)
                try:
                    run(spec, study, self._sampler, ev.objective, self.progress)
                except KeyboardInterrupt:
                    raise KeyboardInterrupt(self._resume_hint(study, name)) from None
                except RuntimeError as e:
                    raise BitallocError(f"optuna workers failed: {e}") from None
                return self._collect(study, prob, comp, space, labels, ev, start, n_before, n_warm, t0)

    # ---- pieces ---------------------------------------------------------------------------
    def _check_goals(self, prob: Problem) -> None:
        if self.evaluate is not None:
            return
        allowed = ["score", "avg_bits", "avg_bits_with_overhead"] + [c.cost.resource for c in prob.constraints]
        for g in self.goals:
            if g not in allowed:
                raise bad("objectives", g, f"allowed: {', '.join(dict.fromkeys(allowed))} (or pass evaluate=fn)")

    def _warm(self, comp: Compiled) -> Result | None:
        kind = self.warm_start
        if kind == "none":
            return None
        if kind == "auto":
            kind = "greedy" if len(comp.S) > GREEDY_FROM and len(comp.C) == 1 else "ilp"
        from bitalloc.solvers import get_solver

        res = get_solver(kind)._solve(comp, None)
        return res if res.choice is not None and comp.feasible(res.choice) else None

    def _fingerprint(self, comp: Compiled, space: Space) -> str:
        h = hashlib.sha256(space.fingerprint().encode())
        h.update(np.asarray(comp.caps, dtype=np.float64).tobytes())
        h.update(f"{comp.objective};{'evaluate' if self.evaluate else ','.join(self.goals)}".encode())
        return h.hexdigest()[:16]

    def _open_study(self, optuna, storage, name: str, fingerprint: str, ev: "_Evaluator", starts: list, lower: list):
        """Load the study, or create it with the warm starts evaluated here and added as finished
        trials (not enqueued: SQLite cannot hand a queued trial to exactly one of several workers)."""
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            study = None
        if study is not None:
            old = study.user_attrs.get("bitalloc_fingerprint")
            if old != fingerprint:
                raise bad("study", name, f"in {shown(self.storage or 'memory')} was made for another problem, budget, "
                          f"objective or search space (fingerprint {old} != {fingerprint}); give a new study name")
            return study, 0
        def evaluated(choices):
            return [(c, ev.values(c)) for c in choices
                    if ev.space.encode(c, ev.labels) is not None and max(ev.constraints(c).values()) <= 0]

        done = evaluated(starts)
        directions = self.directions
        if directions is None:
            n = len(done[0][1]) if done and self.evaluate is not None else len(ev.names)
            directions = ["minimize"] * n
        if len(directions) > 1:
            done += evaluated(lower)
        study = optuna.create_study(study_name=name, storage=storage, directions=list(directions), load_if_exists=True)
        study.set_user_attr("bitalloc_fingerprint", fingerprint)
        seen = set()
        for choice, values in done:
            params = ev.space.encode(choice, ev.labels)
            if tuple(params.items()) in seen or len(values) != len(directions):
                continue
            seen.add(tuple(params.items()))
            study.add_trial(optuna.trial.create_trial(
                params=params, distributions=ev.space.distributions(), values=values,
                constraints=ev.constraints(choice), user_attrs={"warm_start": True}))
        return study, len(seen)

    def _starts(self, comp: Compiled, start: Result | None, warm: Result | None) -> tuple[list, list]:
        """Warm-start choices: the ILP/greedy answer and the previous budget's; and, used only
        with several objectives, the exact answers at three smaller budgets (lower on the front)."""
        out = [r.choice for r in (start, warm) if r is not None and r.choice is not None]
        lower = []
        if start is not None and (self.evaluate is not None or len(self.goals) > 1):
            low = min_totals(comp)
            for f in (0.25, 0.5, 0.75):
                r = self._warm(comp.with_caps(low + f * (comp.caps - low)))
                if r is not None:
                    lower.append(r.choice)
        return out, lower

    def _sampler(self, seed: int):
        import optuna

        if self.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=self.population_size, seed=seed)
        return optuna.samplers.TPESampler(seed=seed)

    def _resume_hint(self, study, name: str) -> str:
        if self.storage is None:
            return "the study was in memory (give --storage and --study to make it resumable)"
        n = len(study.get_trials(deepcopy=False))
        return f"study {name!r} in {shown(self.storage)} keeps its {n} trials; run the same command again to continue it"

    def _collect(self, study, prob, comp, space, labels, ev, start, n_before, n_warm, t0) -> Result:
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        ok, rejected = [], 0
        for t in done:
            if all(v <= 0 for v in t.constraints.values()) and all(math.isfinite(v) for v in t.values):
                choice = space.decode(t.params, labels)
                if comp.feasible(choice):
                    ok.append((t, choice))
                else:
                    rejected += 1
        per_worker: dict[str, int] = {}
        for t in trials[n_before:]:
            if "pid" in t.user_attrs and t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED):
                w = f"{t.user_attrs.get('host', '?')}:{t.user_attrs.get('pid', '?')}"
                per_worker[w] = per_worker.get(w, 0) + 1
        info = {"sampler": self.sampler, "study": study.study_name, "storage": shown(self.storage or "memory"),
                "workers": self.workers, "trials_total": len(trials), "trials_this_run": len(trials) - n_before,
                "warm_start_trials": n_warm,
                "trials_per_worker": per_worker, "feasible_trials": len(ok), "search_space": space.kind,
                "search_params": len(space.names), "objectives": ev.objective_names(study), "directions": ev.directions(study),
                "warm_start": None if start is None else comp.objective_value(start.choice),
                "seconds_in_search": round(time.perf_counter() - t0, 3)}
        if rejected:
            info["rejected_over_budget"] = rejected
        if not ok:
            return Result(None, "time_limit", info={**info, "reason": "no trial within every budget"})
        sign = [1.0 if d == "minimize" else -1.0 for d in info["directions"]]
        if len(study.directions) == 1:
            t, choice = min(ok, key=lambda tc: (sign[0] * tc[0].values[0], tc[0].number))
            info["values"] = list(t.values)
            exact = start is not None and comp.objective == "sum" and self.evaluate is None and self.goals == ("score",)
            bound = start.bound if exact else None  # the ILP's bound holds for the additive score only
            self.front = []
            return Result(choice, "feasible", bound, {**info, "trial": t.number})
        front = _pareto(ok, sign)
        self.front = [build_allocation(prob, comp, Result(c, "feasible", None, {"trial": t.number, "values": list(t.values)}),
                                       self.name, 0.0) for t, c in front]
        info["pareto"] = [{"trial": t.number, "values": list(t.values), "avg_bits": a.avg_bits, "score": a.objective}
                          for (t, _), a in zip(front, self.front)]
        t, choice = front[0]
        return Result(choice, "feasible", None, {**info, "trial": t.number, "values": list(t.values)})


class _Evaluator:
    """The trial function: params → choice → budgets as constraints → objective values."""

    def __init__(self, solver: OptunaSolver, prob: Problem, comp: Compiled, space: Space, labels):
        self.solver, self.prob, self.comp, self.space, self.labels = solver, prob, comp, space, labels
        self.names = ["evaluate"] if solver.evaluate else list(solver.goals)
        self.scales = [c.cost.scale(prob.profile) for c in prob.constraints]
        self.resources = [c.cost.resource for c in prob.constraints]

    def objective_names(self, study) -> list[str]:
        n = len(study.directions)
        return self.names if not self.solver.evaluate or n == 1 else [f"evaluate[{i}]" for i in range(n)]

    def directions(self, study) -> list[str]:
        return ["minimize" if d.name == "MINIMIZE" else "maximize" for d in study.directions]

    def constraints(self, choice) -> dict[str, float]:
        """resource → (total − cap) / max(|cap|, 1) minus the feasibility tolerance: <= 0 within budget."""
        out = {}
        for res, t, cap in zip(self.resources, self.comp.totals(choice), self.comp.caps):
            scale = max(abs(cap), 1.0)
            out[res] = float((t - cap) / scale - REL_TOL)
        return out

    def values(self, choice) -> list[float]:
        if self.solver.evaluate is not None:
            alloc = build_allocation(self.prob, self.comp, Result(choice, "feasible"), "optuna", 0.0)
            v = self.solver.evaluate(alloc)
            vals = list(v) if isinstance(v, (tuple, list, np.ndarray)) else [v]
            try:
                return [float(x) for x in vals]
            except (TypeError, ValueError):
                raise bad("evaluate result", v, "must be a number or a tuple of numbers") from None
        out = []
        totals = None
        for g in self.solver.goals:
            if g == "score":
                out.append(self.comp.objective_value(choice))
            elif g in self.resources:
                totals = self.comp.totals(choice) if totals is None else totals
                i = self.resources.index(g)
                out.append(float(totals[i] / self.scales[i]))
            else:
                out.append(MemoryCost(count_overhead=g == "avg_bits_with_overhead").total(
                    self.prob.profile, choice[self.comp.group]))
        return out

    def objective(self, worker: int):
        def f(trial):
            tag(trial, worker)
            choice = self.space.decode(self.space.suggest(trial), self.labels)
            cons = self.constraints(choice)
            for res, v in cons.items():
                trial.set_constraint(res, v)
            n = len(trial.study.directions)
            if self.solver.evaluate is not None and max(cons.values()) > 0:
                trial.set_user_attr("evaluated", False)  # over budget: never a result, not worth a model run
                return [math.inf] * n if n > 1 else math.inf
            vals = self.values(choice)
            if len(vals) != n:
                raise bad("evaluate result", vals, f"the study has {n} objective(s); return that many numbers")
            return vals if n > 1 else vals[0]
        return f


def _pareto(ok, sign) -> list:
    """Non-dominated (trial, choice) pairs (objectives signed so smaller is better), one per
    distinct value vector, sorted by the first objective."""
    V = np.array([[s * v for s, v in zip(sign, t.values)] for t, _ in ok])
    keep = []
    for i in np.lexsort(V.T[::-1]):
        if any(np.all(V[j] <= V[i]) for j in keep):
            continue  # dominated by, or equal to, a point already kept
        keep.append(i)
    return [ok[i] for i in keep]


def _representatives(group: np.ndarray) -> np.ndarray:
    """(M,) first unit of each merged row."""
    return np.unique(group, return_index=True)[1]


def _cheapest(comp: Compiled) -> np.ndarray:
    """(M,) cheapest allowed candidate in the first budget (the base point without a warm start)."""
    cost = comp.C[0] if comp.C else np.zeros(comp.S.shape)
    return np.argmin(np.where(comp.allowed, cost, np.inf), axis=1)


@contextlib.contextmanager
def _quiet(optuna):
    """Optuna's per-trial INFO lines and experimental warnings off while we run; restored after."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)
