"""HiGHS through highspy, the model passed as arrays (no per-variable Python objects)."""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from bitalloc.solvers.backends import Backend, register
from bitalloc.solvers.milp import BackendResult, Milp

if TYPE_CHECKING:
    from bitalloc.solvers.compiled import Compiled


@contextlib.contextmanager
def _quiet_stdout():
    """highspy prints a banner from C++ when a Highs object is made; silence fd 1 meanwhile."""
    try:
        fd = os.dup(1)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(fd, 1)
        os.close(fd)


def new_highs():
    import highspy

    with _quiet_stdout():
        h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    return h


def pass_model(h, m: Milp, integer: bool = True):
    import highspy

    lp = highspy.HighsLp()
    J, n = len(m.row), m.n_col
    lower, upper = m.row_bounds()
    lp.num_col_, lp.num_row_ = n, len(lower)
    lp.col_cost_ = m.col_cost()
    lp.col_lower_ = np.zeros(n)
    lp.col_upper_ = np.ones(n)  # the max objective's t is scaled to [0, 1] too
    lp.row_lower_ = np.where(np.isfinite(lower), lower, -highspy.kHighsInf)
    lp.row_upper_ = upper
    start, index, value = m.rowwise()
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = start, index, value
    if integer:
        lp.integrality_ = [highspy.HighsVarType.kInteger] * J + [highspy.HighsVarType.kContinuous] * (n - J)
    h.passModel(lp)


@register("highs")
class HighsBackend(Backend):
    def solve(self, m: Milp, time_limit, gap, hint):
        import highspy

        t0 = time.perf_counter()
        h = self._run(m, time_limit, gap, hint)
        if hint is not None and _solution_disagrees(h, m):
            # HiGHS 1.16 can solve the MIP in presolve yet hand back the start we gave it as the
            # solution (its reported objective is the optimum's): solve again without the start.
            left = None if time_limit is None else max(time_limit - (time.perf_counter() - t0), 1e-3)
            h = self._run(m, left, gap, None)
        st = h.getModelStatus()
        info = h.getInfo()
        S = highspy.HighsModelStatus
        if st == S.kInfeasible:
            return BackendResult(None, False, False, infeasible=True)
        has = info.primal_solution_status == 2  # kSolutionStatusFeasible
        choice = m.choice_of(h.getSolution().col_value) if has else None
        bound = m.true_objective(info.mip_dual_bound) if np.isfinite(info.mip_dual_bound) else None
        return BackendResult(choice, st == S.kOptimal, st == S.kTimeLimit, bound=bound,
                             info={"status": h.modelStatusToString(st), "nodes": int(info.mip_node_count)})

    @staticmethod
    def _run(m: Milp, time_limit, gap, hint):
        h = configured_highs(m, time_limit, gap, hint)
        h.run()
        return h


def configured_highs(m: Milp, time_limit, gap: float, hint=None):
    """A HiGHS instance holding `m`, with bitalloc's tolerances, the relative `gap`, a time limit
    (seconds, or None) and an optional starting allocation; not yet run."""
    import highspy

    h = new_highs()
    pass_model(h, m)
    h.setOptionValue("mip_rel_gap", gap)
    h.setOptionValue("mip_abs_gap", 0.0)
    h.setOptionValue("mip_feasibility_tolerance", 1e-9)
    h.setOptionValue("primal_feasibility_tolerance", 1e-9)
    if time_limit is not None:
        h.setOptionValue("time_limit", float(time_limit))
    if hint is not None:
        sol = highspy.HighsSolution()
        sol.col_value = m.x_of(hint)
        h.setSolution(sol)
    return h


def _solution_disagrees(h, m: Milp) -> bool:
    """True when the returned solution's objective is not the objective HiGHS reports for it."""
    info = h.getInfo()
    if info.primal_solution_status != 2:
        return False
    got = float(m.col_cost() @ np.asarray(h.getSolution().col_value, dtype=np.float64))
    want = float(info.objective_function_value)
    return abs(got - want) > 1e-9 * max(1.0, abs(want))


# ---- exact helpers on HiGHS: LP bound, smallest reachable total, a first feasible point ----
def lp_bound(m: Milp) -> float | None:
    """Value of the LP relaxation (HiGHS simplex): a lower bound for any integer solution."""
    h = new_highs()
    pass_model(h, m, integer=False)
    h.run()
    import highspy

    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    return m.true_objective(h.getInfo().objective_function_value)


def min_total(comp: Compiled, i: int, time_limit: float | None = None) -> float:
    """Smallest total of constraint i (max over its rows) over choices of the allowed cells of
    `comp` while every other constraint stays within its cap; inf when the others cannot all be
    met. Exact MILP: minimize t subject to every row of constraint i <= t (comp.S is only read
    for which cells are allowed)."""
    import highspy

    caps = np.array(comp.caps, dtype=np.float64)
    caps[i] = 0.0
    rows = comp.rows
    m = Milp.build(replace(comp, S=np.where(comp.allowed, 0.0, np.inf), caps=caps, objective="sum"))
    h = new_highs()
    pass_model(h, m)
    mine = np.flatnonzero(m.cons == i)
    h.addCol(1.0, 0.0, highspy.kHighsInf, len(mine), (len(m.free) + mine).astype(np.int32), -1.0 / m.row_scale[mine])
    h.setOptionValue("mip_rel_gap", 1e-9)
    h.setOptionValue("mip_abs_gap", 0.0)
    if time_limit is not None:
        h.setOptionValue("time_limit", float(time_limit))
    h.run()
    if h.getModelStatus() == highspy.HighsModelStatus.kInfeasible:
        return float("inf")
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:  # out of time: the proven lower bound
        return float(h.getInfo().mip_dual_bound)
    x = np.asarray(h.getSolution().col_value)
    choice = m.choice_of(x[:-1])
    return max((r.total(choice) for r in rows[i]), default=0.0)


def find_feasible(comp: Compiled, time_limit: float | None = None) -> tuple[np.ndarray | None, bool]:
    """(an allocation meeting every row, or None; True when None means proven infeasible).
    HiGHS on the 0/1 program with the true objective, stopped at its first solution: the repair of
    last resort, so that heuristics never call a feasible problem infeasible."""
    import highspy

    m = Milp.build(comp)
    h = new_highs()
    pass_model(h, m)
    h.setOptionValue("mip_max_improving_sols", 1)
    h.setOptionValue("mip_feasibility_tolerance", 1e-9)
    h.setOptionValue("primal_feasibility_tolerance", 1e-9)
    if time_limit is not None:
        h.setOptionValue("time_limit", float(time_limit))
    h.run()
    if h.getInfo().primal_solution_status != 2:
        return None, h.getModelStatus() == highspy.HighsModelStatus.kInfeasible
    choice = m.choice_of(h.getSolution().col_value)
    return (choice, False) if comp.feasible(choice) else (None, False)
