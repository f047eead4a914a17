"""bitalloc: choose a bit-width for every layer, group or channel of a network under hardware budgets.

    task = bitalloc.load_model("path/to/model")          # a transformers folder, a .gguf, a built-in name
    profile = bitalloc.profile(task, estimator="fisher")  # or bitalloc.Profile.load("p.json")
    alloc = bitalloc.solve(profile, budget=3.25)          # `auto`: exact where fast, else bounded gap
    alloc.save("a.json")
    bitalloc.export.export(alloc, "gguf", "q.gguf")     # after `import bitalloc.export`; formats in bitalloc/export/

Heavy dependencies (torch, solvers' libraries) are imported only when used.
"""
from __future__ import annotations

from bitalloc.allocation import Allocation
from bitalloc.apply.quantize import QuantizedModel, apply  # the function shadows the module name, as intended
from bitalloc.errors import BitallocError
from bitalloc.hwcost.constraint import Constraint
from bitalloc.problem import Problem, tie_groups
from bitalloc.profile import Profile
from bitalloc.units import Unit
from bitalloc.verify.budgets import verify
from bitalloc.models.loader import load_model
from bitalloc.models.task import Task
from bitalloc.sensitivity import profile_task as profile  # the function shadows the module name, as `apply` does
from bitalloc.quant.pack import read as load_packed

__version__ = "0.1.0"
__all__ = ["Allocation", "BitallocError", "Constraint", "Problem", "Profile", "Unit", "solve",
           "solve_budgets", "load_default_profile", "tie_groups", "__version__",
           "apply", "verify", "load_packed", "QuantizedModel", "load_model", "profile", "Task"]


def solve(problem_or_profile, budget: float | None = None, solver=None, **options) -> Allocation:
    """Solve a Problem, or a Profile at an average of `budget` bits per weight.

    solver: a name (`auto` by default, `ilp`, `greedy`, `dmmv`, `optuna`) or a Solver instance (then
    no options). options go to the solver by name (`time_limit` (default 10 s) and `gap` for auto;
    `backend`, `time_limit`, `gap` for ilp; for `solver="optuna"`:
    `evaluate=fn` with fn(Allocation) -> float | tuple, `n_trials`, `sampler` (tpe | nsga2),
    `objectives`, `storage`, `study`, `workers`, `seed`); with a Profile, the Problem options
    (`pins`, `ties`, `min_bits`, `max_bits`, `count_overhead`) are accepted too. Every constraint
    works with every solver: a max over rows (peak SRAM) is handled natively by ilp and greedy
    and by lazily added rows otherwise (bitalloc/solvers/rows.py).
    """
    return solve_budgets(problem_or_profile, [budget], solver, **options)[0]


def solve_budgets(problem_or_profile, budgets, solver=None, **options) -> list[Allocation]:
    """One Allocation per budget (the problem is compiled once and each run warm-starts the next)."""
    from bitalloc.solvers import get_solver
    from bitalloc.solvers.base import Solver

    solver = solver or ("ilp" if "backend" in options else "auto")  # a backend names the ILP
    problem_keys = {"pins", "ties", "min_bits", "max_bits", "count_overhead", "objective", "allowed"}
    pkw = {k: options.pop(k) for k in list(options) if k in problem_keys}
    if isinstance(problem_or_profile, Profile):
        if budgets[0] is None:
            raise BitallocError("budget None: give an average bits-per-weight budget with a Profile")
        problem = Problem.average_bits(problem_or_profile, budgets[0], **pkw)
    else:
        if pkw:
            raise BitallocError(f"options {sorted(pkw)}: set these on the Problem, not in solve()")
        problem = problem_or_profile
    if isinstance(solver, Solver):
        if options:
            raise BitallocError(f"options {sorted(options)}: set these on the Solver instance, not in solve()")
        return solver.solve_budgets(problem, budgets)
    return get_solver(solver, **options).solve_budgets(problem, budgets)


def load_default_profile() -> Profile:
    """The embedded SmolLM2-135M profile (one unit per linear layer, candidates 2,3,4,5,6,8)."""
    from bitalloc.data import default_profile_path

    return Profile.load(default_profile_path())
