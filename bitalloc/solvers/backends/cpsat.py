"""OR-Tools CP-SAT on integer-scaled data.

Objective: the scaled costs (in [0, 1]) times 1e9, rounded; the rounding moves any solution's
objective by at most (free units)/2 · 1e-9, which the reported bound subtracts, so the bound stays
certified (objective `max`: an integer t ≥ each free unit's rounded score, slack half a step).
Constraints: exact integers when the costs are integers (bits), else scaled by
1e9 / max and rounded up with the cap rounded down (never admits an over-budget solution).
"""
from __future__ import annotations

import numpy as np

from bitalloc.solvers.backends import Backend, register
from bitalloc.solvers.milp import BackendResult, Milp

RES = 1e9


@register("cpsat")
class CpSatBackend(Backend):
    def solve(self, m: Milp, time_limit, gap, hint):
        from ortools.sat.python import cp_model

        model = cp_model.CpModel()
        J = len(m.row)
        xs = [model.NewBoolVar(f"x{j}") for j in range(J)]
        for lo, hi in m.assignments():
            model.AddExactlyOne(xs[lo:hi])
        for i in range(m.n_rows):
            cols, _, a = m.constraint(i)
            coef, icap = _integer_row(a, m.raw_caps[i])
            model.Add(cp_model.LinearExpr.WeightedSum([xs[j] for j in cols.tolist()], coef.tolist()) <= icap)
        if m.smax is None:
            q = np.round(m.cost * RES).astype(np.int64)
            model.Minimize(cp_model.LinearExpr.WeightedSum(xs, q.tolist()))
        else:  # min-max: t >= each free unit's chosen score (integers at RES resolution)
            q = np.round(m.smax * RES).astype(np.int64)
            t = model.NewIntVar(0, int(RES), "t")
            for lo, hi in m.assignments():
                model.Add(cp_model.LinearExpr.WeightedSum(xs[lo:hi], q[lo:hi].tolist()) <= t)
            model.Minimize(t)
        if hint is not None:
            for x, v in zip(xs, m.x_of(hint)[:J].astype(int).tolist()):
                model.AddHint(x, v)
        solver = cp_model.CpSolver()
        # 8 workers even on fewer cores: below 8, CP-SAT's portfolio drops its LP-based workers and
        # proving optimality of a 210-unit knapsack takes minutes instead of 0.1 s (2-core CI).
        solver.parameters.num_workers = 8
        solver.parameters.relative_gap_limit = gap
        if time_limit is not None:
            solver.parameters.max_time_in_seconds = float(time_limit)
        st = solver.Solve(model)
        if st == cp_model.INFEASIBLE:
            return BackendResult(None, False, False, infeasible=True)
        if st not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return BackendResult(None, False, True, info={"status": solver.StatusName(st)})
        x = np.array([solver.Value(v) for v in xs], dtype=np.float64)
        if m.smax is None:
            slack = 0.5 * max(len(m.free), 1) / RES  # rounding of the free units' costs
            value = float(q @ x)
        else:  # the max of rounded scores is within half a step of the true max
            slack = 0.5 / RES
            value = float(q[x > 0.5].max()) if (x > 0.5).any() else 0.0
        bound = m.true_objective(solver.BestObjectiveBound() / RES - slack)
        obj = m.true_objective(value / RES + slack)  # worst case true value of this solution
        rel = (obj - bound) / abs(obj) if obj else 0.0
        proven = st == cp_model.OPTIMAL and rel <= max(gap, 1e-6)
        return BackendResult(m.choice_of(x), proven, st != cp_model.OPTIMAL, bound=bound,
                             info={"status": solver.StatusName(st), "scaling_slack": slack * m.obj_scale})


def _integer_row(a: np.ndarray, cap: float) -> tuple[np.ndarray, int]:
    if not len(a):
        return a.astype(np.int64), int(np.floor(cap + 1e-9 * max(abs(cap), 1.0)))
    if np.all(a == np.round(a)) and np.abs(a).max() * len(a) < 2**62:
        return a.astype(np.int64), int(np.floor(cap + 1e-9 * max(abs(cap), 1.0)))
    s = RES / max(float(np.abs(a).max()), 1e-300)
    return np.ceil(a * s).astype(np.int64), int(np.floor(cap * s))
