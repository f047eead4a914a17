"""PuLP with its bundled CBC. PuLP does not expose CBC's dual bound, so the ILP solver reports
the LP relaxation bound when CBC stops before proving optimality."""
from __future__ import annotations

import warnings

from bitalloc.solvers.backends import Backend, register
from bitalloc.solvers.milp import BackendResult, Milp


@register("pulp")
class PulpBackend(Backend):
    def solve(self, m: Milp, time_limit, gap, hint):
        import pulp

        prob = pulp.LpProblem("bitalloc", pulp.LpMinimize)
        if hasattr(prob, "add_variable"):  # PuLP >= 3.3 attaches variables to the model
            xs = [prob.add_variable(f"x{j}", 0, 1, cat="Binary") for j in range(len(m.row))]
        else:
            xs = [pulp.LpVariable(f"x{j}", 0, 1, cat="Binary") for j in range(len(m.row))]
        t = None
        if m.smax is None:
            prob += pulp.LpAffineExpression(zip(xs, m.cost.tolist()))
        else:  # min-max: minimize t >= each free unit's chosen scaled score
            t = prob.add_variable("t", 0, 1) if hasattr(prob, "add_variable") else pulp.LpVariable("t", 0, 1)
            prob += pulp.LpAffineExpression([(t, 1)])
            for r, (lo, hi) in enumerate(m.assignments()):
                prob += pulp.LpAffineExpression([(xs[j], float(m.smax[j])) for j in range(lo, hi)] + [(t, -1)]) <= 0, f"max{r}"
        for r, (lo, hi) in enumerate(m.assignments()):
            prob += pulp.LpAffineExpression((xs[j], 1) for j in range(lo, hi)) == 1, f"one{r}"
        for i in range(m.n_rows):
            cols, a, _ = m.constraint(i)
            prob += pulp.LpAffineExpression(zip((xs[j] for j in cols.tolist()), a.tolist())) <= float(m.caps[i]), f"cap{i}"
        if hint is not None:
            for x, v in zip(xs + ([t] if t is not None else []), m.x_of(hint).tolist()):
                x.setInitialValue(v)
        with warnings.catch_warnings():  # PuLP 3.3 deprecates its bundled CBC for PuLP 4; it still ships it
            warnings.simplefilter("ignore", DeprecationWarning)
            # increment 0: CBC otherwise prunes nodes that cannot improve the incumbent by its default
            # cutoff increment, and returned answers 3e-6 (relative) above the optimum as optimal
            solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, gapRel=gap, warmStart=hint is not None,
                                       options=["increment 0"])
        prob.solve(solver)
        if prob.status == pulp.LpStatusInfeasible:
            if time_limit is not None:  # CBC stopped by the clock before any solution also says "Integer infeasible"
                return BackendResult(None, False, True, info={"status": "time limit, no solution"})
            return BackendResult(None, False, False, infeasible=True)
        has = prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
        choice = m.choice_of([x.varValue or 0.0 for x in xs]) if has else None
        proven = prob.sol_status == pulp.LpSolutionOptimal
        return BackendResult(choice, proven, not proven, bound=None,
                             info={"status": pulp.LpStatus[prob.status]})
