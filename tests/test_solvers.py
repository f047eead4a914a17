"""Solvers against brute force: the ILP (every backend) is exact, greedy is bracketed by its bound."""
from __future__ import annotations

import math

import numpy as np
import pytest

import bitalloc
from bitalloc import BitallocError, Constraint, Problem, Profile
from bitalloc.hwcost.base import CostModel
from bitalloc.hwcost.memory import MemoryCost
from bitalloc.solvers import get_solver
from bitalloc.solvers.base import Result, Solver

from conftest import avg_bits_of, brute_force, random_profile

BACKENDS = ["highs", "pulp", "cpsat"]
N_CASES = 40
REL = 1e-7


def close(a: float, b: float, rel: float = REL) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b)) + 1e-15


# ---- random small cases --------------------------------------------------------------------
def make_case(seed: int) -> dict:
    """A random profile with random pins, ties, bit limits and a budget that is feasible,
    exactly at the smallest feasible average, or below it. Structure that admits no assignment
    at all is re-drawn (covered by its own tests)."""
    rng = np.random.default_rng(1000 + seed)
    while True:
        n, k = int(rng.integers(2, 7)), int(rng.integers(3, 6))
        p = random_profile(rng, n, k)
        opts: dict = {}
        if rng.random() < 0.4:  # pin one unit (exact name) or a glob over a block
            i = int(rng.integers(n))
            allowed = np.flatnonzero(np.isfinite(p.sensitivity[i]))
            b = p.bits[int(rng.choice(allowed))]
            pat = p.names[i] if rng.random() < 0.6 else p.names[i].split(".")[0] + ".*"
            opts["pins"] = {pat: b}
        if rng.random() < 0.4 and n >= 3:  # tie two or three units
            r = rng.choice(n, size=int(rng.integers(2, 4)), replace=False)
            opts["ties"] = [[p.names[j] for j in r]]
        if rng.random() < 0.25:
            opts["min_bits"] = int(rng.choice(p.bits[:2]))
        if rng.random() < 0.25:
            opts["max_bits"] = int(rng.choice(p.bits[-2:]))
        ref = brute_force(p, **opts)
        if ref.min_avg is None:
            continue
        u = rng.random()
        max_avg = max(p.bits)
        if u < 0.15:
            budget = ref.min_avg * (1 - rng.uniform(0.01, 0.3))  # infeasible
        elif u < 0.25:
            budget = ref.min_avg  # exactly the smallest feasible average
        else:
            budget = float(rng.uniform(ref.min_avg, max_avg))
        return {"profile": p, "opts": opts, "budget": budget, "ref": brute_force(p, [budget], **opts)}


_CASES: dict[int, dict] = {}


def case(seed: int) -> dict:
    if seed not in _CASES:
        _CASES[seed] = make_case(seed)
    return _CASES[seed]


def test_cases_cover_every_feature():
    """The random cases exercise what they claim to (a guard against a silently weak generator)."""
    cs = [case(s) for s in range(N_CASES)]
    assert sum("pins" in c["opts"] for c in cs) >= 5
    assert sum("ties" in c["opts"] for c in cs) >= 5
    assert sum("min_bits" in c["opts"] or "max_bits" in c["opts"] for c in cs) >= 5
    assert sum(c["ref"].best is None for c in cs) >= 3
    assert sum(bool(np.isinf(c["profile"].sensitivity).any()) for c in cs) >= 10
    assert sum(c["budget"] == c["ref"].min_avg for c in cs) >= 2


def check_allocation(p: Profile, a, budget: float, opts: dict):
    """Properties every returned allocation must have, recomputed from its bits."""
    assert a.ok
    assert set(a.bits) == set(p.names)
    assert avg_bits_of(p, a.bits) <= budget * (1 + 1e-12) + 1e-12
    assert math.isclose(a.avg_bits, avg_bits_of(p, a.bits), rel_tol=1e-12)
    choice = a.choice(p)
    vals = p.sensitivity[np.arange(p.n_units), choice]
    assert np.isfinite(vals).all(), "a unit got a candidate that is not allowed (null)"
    assert close(a.objective, float(vals.sum()), 1e-9)
    import fnmatch
    for pat, b in opts.get("pins", {}).items():
        for s in p.names:
            if fnmatch.fnmatchcase(s, pat):
                assert a.bits[s] == b, f"pinned unit {s} got {a.bits[s]} bits, not {b}"
    for tie in opts.get("ties", []):
        assert len({a.bits[s] for s in tie}) == 1, f"tied units got different bits: {[a.bits[s] for s in tie]}"
    if "min_bits" in opts:
        assert min(a.bits.values()) >= opts["min_bits"]
    if "max_bits" in opts:
        assert max(a.bits.values()) <= opts["max_bits"]
    if a.bound is not None:
        assert a.bound <= a.objective * (1 + 1e-12) + 1e-15
        assert a.gap is not None and a.gap >= 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(N_CASES))
def test_ilp_equals_brute_force(seed, backend):
    c = case(seed)
    p, opts, budget, ref = c["profile"], c["opts"], c["budget"], c["ref"]
    a = bitalloc.solve(p, budget, backend=backend, **opts)
    assert a.solver == "ilp"
    if ref.best is None:
        assert a.status == "infeasible"
        assert a.bits == {} and not a.ok
        assert math.isclose(a.min_budgets["avg_bits"], ref.min_avg, rel_tol=1e-9)
        # the reported smallest budget is itself feasible
        again = bitalloc.solve(p, a.min_budgets["avg_bits"], backend=backend, **opts)
        assert again.status == "optimal"
        return
    assert a.status == "optimal", (a.status, a.meta)
    assert close(a.objective, ref.best), (a.objective, ref.best)
    assert a.gap is not None and a.gap <= 1e-6, f"status optimal with gap {a.gap}"
    check_allocation(p, a, budget, opts)


@pytest.mark.parametrize("seed", range(N_CASES))
def test_greedy_between_bound_and_optimum(seed):
    c = case(seed)
    p, opts, budget, ref = c["profile"], c["opts"], c["budget"], c["ref"]
    a = bitalloc.solve(p, budget, solver="greedy", **opts)
    assert a.solver == "greedy"
    if ref.best is None:
        assert a.status == "infeasible"
        assert math.isclose(a.min_budgets["avg_bits"], ref.min_avg, rel_tol=1e-9)
        return
    assert a.status in ("optimal", "feasible")
    check_allocation(p, a, budget, opts)
    assert a.bound is not None
    assert a.bound <= ref.best * (1 + 1e-9) + 1e-12, "greedy's LP bound exceeds the true optimum"
    assert a.objective >= ref.best * (1 - 1e-9) - 1e-12
    if a.status == "optimal":
        assert close(a.objective, ref.best)


@pytest.mark.parametrize("seed", range(12))
def test_greedy_nonconvex_rows(seed):
    """Rows that are neither monotone nor convex, with nulls, unsorted bit lists and formats."""
    rng = np.random.default_rng(seed)
    n, k = 5, 5
    bits = [8, 2, 4, 3, 6]  # not sorted: cost columns out of order
    S = rng.random((n, k)) ** 3 * 10
    S[rng.random((n, k)) < 0.25] = np.inf
    S[:, 1] = np.where(np.isfinite(S).any(1), S[:, 1], 1.0)
    p = Profile.from_columns([f"u{i}" for i in range(n)], rng.integers(1, 30, n), bits, S)
    for budget in (2.0, 3.0, 4.5, 6.0, 8.0):
        ref = brute_force(p, [budget])
        g = bitalloc.solve(p, budget, solver="greedy")
        if ref.best is None:
            assert g.status == "infeasible"
            continue
        check_allocation(p, g, budget, {})
        assert g.bound <= ref.best * (1 + 1e-9) + 1e-12
        assert g.objective >= ref.best * (1 - 1e-9) - 1e-12
        e = bitalloc.solve(p, budget)
        assert e.status == "optimal" and close(e.objective, ref.best)


def test_candidates_sharing_a_bit_width():
    """Two formats at 4 bits (same cost): the solver picks by loss; formats are reported."""
    p = Profile.from_columns(["a", "b", "c"], [10, 20, 30], [2, 4, 4, 8], [[5, 1, 0.5, 0], [4, 2, 3, 0.1], [9, 3, 1, 0.2]],
                             formats=["int2", "int4", "fp4_e2m1", "int8"])
    for solver in ("ilp", "greedy"):
        a = bitalloc.solve(p, 4.0, solver=solver)
        assert a.bits == {"a": 4, "b": 4, "c": 4}
        assert a.formats == {"a": "fp4_e2m1", "b": "int4", "c": "fp4_e2m1"}
        assert a.objective == pytest.approx(0.5 + 2 + 1)
        assert (a.choice(p) == [2, 1, 2]).all()


# ---- several constraints -------------------------------------------------------------------
class SquareBits(CostModel):
    """A test resource: n_params · bits², per weight (a stand-in for multiplier area)."""

    resource = "bits_squared"
    unit = "bits²/weight"

    def costs(self, profile):
        return profile.n_params[:, None] * np.asarray(profile.bits, float)[None, :] ** 2

    def scale(self, profile):
        return float(profile.n_params.sum())


class NoThreeBitKernel(CostModel):
    """A target without a 3-bit kernel: cost is MACs, and 3-bit candidates are infeasible."""

    resource = "macs"

    def costs(self, profile):
        return np.repeat(profile.n_params[:, None].astype(float), len(profile.bits), 1)

    def feasible(self, profile):
        return np.repeat((np.asarray(profile.bits) != 3)[None, :], profile.n_units, 0)


def user_costs(p: Profile, constraints) -> list[np.ndarray]:
    return [c.cost.costs(p) / c.cost.scale(p) for c in constraints]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(10))
def test_ilp_several_constraints(seed, backend):
    rng = np.random.default_rng(500 + seed)
    n = int(rng.integers(3, 6))
    p = random_profile(rng, n, 4)
    p.meta["group_size"] = 8  # so the overhead is large enough to matter
    models = [MemoryCost(), MemoryCost(count_overhead=True) if seed % 2 else SquareBits()]
    uc = [c.costs(p) / c.scale(p) for c in models]
    ok = np.isfinite(p.sensitivity)
    lo = [np.where(ok, c, np.inf).min(1).sum() for c in uc]
    hi = [np.where(ok, c, -np.inf).max(1).sum() for c in uc]
    fr = rng.uniform(0.05, 0.9, size=2)
    budgets = [float(lo[i] + fr[i] * (hi[i] - lo[i])) for i in range(2)]
    cons = [Constraint(m, b) for m, b in zip(models, budgets)]
    ref = brute_force(p, budgets, costs=uc)
    a = get_solver("ilp", backend=backend).solve(Problem(p, cons))
    if ref.best is None:
        assert a.status == "infeasible" and not a.bits
        return
    assert a.status == "optimal"
    assert close(a.objective, ref.best)
    choice = a.choice(p)
    rows = np.arange(n)
    for c, cap, m in zip(uc, budgets, models):
        total = c[rows, choice].sum()
        assert total <= cap * (1 + 1e-12)
        assert math.isclose(a.totals[m.resource], total, rel_tol=1e-9)
        assert a.budgets[m.resource] == cap


def test_several_constraints_binding_both():
    """Hand-made: each budget alone allows a better answer; together only one assignment fits."""
    # unit a: 100 weights, unit b: 1 weight. bits [2, 4, 8].
    p = Profile.from_columns(["a", "b"], [100, 1], [2, 4, 8], [[3, 2, 0], [3, 1, 0]])
    sq = SquareBits()
    # avg bits <= 4: (a8,b2) has avg (800+2)/101 = 7.9 no; a4,b8 = (400+8)/101 = 4.04 no; a4,b4 = 4 ok
    # bits² <= 16: a4,b4 = 16 ok; a2,b8 = (400+64)/101 = 4.6 ok -> loss 3 vs a4,b4 loss 3
    for backend in BACKENDS:
        prob = Problem(p, [Constraint(MemoryCost(), 4.0), Constraint(sq, 16.0)])
        a = get_solver("ilp", backend=backend).solve(prob)
        ref = brute_force(p, [4.0, 16.0], costs=user_costs(p, prob.constraints))
        assert a.status == "optimal" and close(a.objective, ref.best)
        alone = get_solver("ilp", backend=backend).solve(Problem(p, [Constraint(sq, 16.0)]))
        assert alone.objective <= a.objective


def test_cost_model_feasibility_mask():
    p = Profile.from_columns(["a", "b"], [10, 10], [2, 3, 4], [[5, 1, 0.9], [5, 1, 0.9]])
    prob = Problem(p, [Constraint(MemoryCost(), 3.0), Constraint(NoThreeBitKernel(), 1e9)])
    a = get_solver("ilp").solve(prob)
    assert a.status == "optimal"
    assert sorted(a.bits.values()) == [2, 4]  # 3 bits would be better but has no kernel
    assert a.objective == pytest.approx(5.9)


class OneBudgetSolver(Solver):
    """A solver that handles one additive budget only: the base class must refuse the rest."""

    name = "one-budget"
    max_constraints = 1

    def _solve(self, comp, warm):
        return Result(np.argmin(comp.S, axis=1), "feasible")


def test_solver_refuses_more_constraints_than_it_handles(make_profile):
    p = make_profile(1, 4, 4)
    prob = Problem(p, [Constraint(MemoryCost(), 6.0), Constraint(SquareBits(), 50.0)])
    with pytest.raises(BitallocError, match=r"constraints 2: solver one-budget handles at most 1"):
        OneBudgetSolver().solve(prob)


def test_non_additive_cost_gets_rows_in_every_solver(make_profile):
    """A solver that only takes sums still solves a max-over-rows constraint: solve_budgets adds
    the rows (no refusal, no error text read), and the answer meets the real (max) total."""
    class PeakSram(SquareBits):
        resource = "peak_sram"
        additive = False

        def rows(self, profile):
            C = self.costs(profile)
            return [(np.array([0, 1]), C[:2]), (np.array([1, 2]), C[1:3])]

    prob = Problem(make_profile(3), [Constraint(PeakSram(), 80.0)])
    a = OneBudgetSolver().solve(prob)
    assert a.ok and a.meta["rows"]["rows_total"] == {"peak_sram": 2} and a.meta["rows"]["rows_added"] >= 1
    assert PeakSram().total(prob.profile, a.choice(prob.profile)) <= 80.0
    assert a.totals["peak_sram"] == PeakSram().total(prob.profile, a.choice(prob.profile))


def test_problem_without_constraints_refused(make_profile):
    with pytest.raises(BitallocError, match="constraints"):
        get_solver("ilp").solve(Problem(make_profile(3)))


# ---- structure errors ----------------------------------------------------------------------
def test_structural_errors(make_profile):
    p = Profile.from_columns(["l0.a", "l0.b", "l1.a"], [10, 10, 10], [2, 4, 8],
                             [[1, np.inf, 0], [np.inf, 0.5, np.inf], [1, 0.5, 0]])
    with pytest.raises(BitallocError, match="pin of unit 'l0.a'"):  # pinned to a null cell
        bitalloc.solve(p, 8, pins={"l0.a": 4})
    with pytest.raises(BitallocError, match="matches no unit"):
        bitalloc.solve(p, 8, pins={"nothing*": 4})
    with pytest.raises(BitallocError, match="not a candidate"):
        bitalloc.solve(p, 8, pins={"l1.a": 5})
    with pytest.raises(BitallocError, match="also pinned"):
        bitalloc.solve(p, 8, pins={"l1.*": 4, "*.a": 2})
    with pytest.raises(BitallocError, match="no allowed candidate in common"):
        bitalloc.solve(p, 8, ties=[["l0.a", "l0.b"]])
    with pytest.raises(BitallocError, match="names no unit"):
        bitalloc.solve(p, 8, ties=[["l0.a", "zz"]])
    with pytest.raises(BitallocError, match="no allowed candidate left"):
        bitalloc.solve(p, 8, min_bits=3, max_bits=3)
    with pytest.raises(BitallocError, match="min_bits"):
        bitalloc.solve(p, 8, min_bits=0)
    with pytest.raises(BitallocError, match="budget"):
        bitalloc.solve(p, float("nan"))
    with pytest.raises(BitallocError, match="solver 'dp'"):
        bitalloc.solve(p, 8, solver="dp")
    with pytest.raises(BitallocError, match="backend 'glpk'"):
        bitalloc.solve(p, 8, backend="glpk")
    with pytest.raises(BitallocError, match="time_limit"):
        bitalloc.solve(p, 8, time_limit=0)


# ---- budgets hold, pins and ties on a realistic profile --------------------------------------
SOLVERS = [("ilp", {"backend": b}) for b in BACKENDS] + [("greedy", {})]


@pytest.mark.parametrize("solver,opts", SOLVERS, ids=[f"{s}-{o.get('backend', '')}" for s, o in SOLVERS])
def test_smollm_budget_pins_ties(solver, opts, smollm):
    from bitalloc import tie_groups

    ties = tie_groups(smollm.names, ["q_proj", "k_proj", "v_proj"]) + tie_groups(smollm.names, ["gate_proj", "up_proj"])
    assert len(ties) == 60 and all(len(t) in (2, 3) for t in ties)
    pins = {"*.0.*": 8, "model.layers.29.mlp.down_proj": 6}
    for budget in (2.5, 3.25, 4.0):
        a = bitalloc.solve(smollm, budget, solver=solver, pins=pins, ties=ties, **opts)
        assert a.status in (("optimal",) if solver == "ilp" else ("optimal", "feasible"))
        check_allocation(smollm, a, budget, {"pins": pins, "ties": ties})
        assert sum(1 for s in smollm.names if ".0." in s) == 7
        # at 3.25 bits and up the budget is nearly spent (no lazy under-use)
        assert avg_bits_of(smollm, a.bits) > budget - 0.05


def test_smollm_backends_agree(smollm):
    objs = {b: bitalloc.solve(smollm, 3.25, backend=b).objective for b in BACKENDS}
    g = bitalloc.solve(smollm, 3.25, solver="greedy")
    best = min(objs.values())
    assert all(close(v, best) for v in objs.values()), objs
    assert g.bound <= best * (1 + 1e-9) and g.objective >= best * (1 - 1e-9)
    assert g.gap < 0.05  # greedy is close on a convex, many-unit profile


@pytest.mark.parametrize("solver,opts", SOLVERS, ids=[f"{s}-{o.get('backend', '')}" for s, o in SOLVERS])
def test_count_overhead_budget(solver, opts, smollm):
    """--count-overhead: the budget holds with group metadata counted (hand formula per unit)."""
    a = bitalloc.solve(smollm, 4.0, solver=solver, count_overhead=True, **opts)
    assert a.ok
    n = smollm.n_params.astype(float)
    groups = smollm.rows * np.ceil(smollm.cols / 128)
    b = np.array([a.bits[s] for s in smollm.names], float)
    with_overhead = (n * b + groups * 32).sum() / n.sum()
    assert with_overhead <= 4.0 * (1 + 1e-12)
    assert math.isclose(a.avg_bits_with_overhead, with_overhead, rel_tol=1e-12)
    assert a.avg_bits < a.avg_bits_with_overhead
    assert set(a.budgets) == {"avg_bits_with_overhead"}


# ---- several budgets -----------------------------------------------------------------------
@pytest.mark.parametrize("solver,opts", SOLVERS, ids=[f"{s}-{o.get('backend', '')}" for s, o in SOLVERS])
def test_solve_budgets_monotone(solver, opts, smollm):
    budgets = [2.0, 2.5, 3.0, 3.25, 4.0, 5.0, 8.0]
    allocs = bitalloc.solve_budgets(smollm, budgets, solver=solver, **opts)
    assert len(allocs) == len(budgets)
    for a, b in zip(allocs, budgets):
        assert a.budgets == {"avg_bits": b}
        check_allocation(smollm, a, b, {})
    # the LP bound is monotone for every solver; exact objectives are monotone too
    bounds = [a.bound for a in allocs]
    assert all(x >= y * (1 - 1e-9) for x, y in zip(bounds, bounds[1:])), bounds
    if solver == "ilp":
        objs = [a.objective for a in allocs]
        assert all(x >= y * (1 - 1e-9) for x, y in zip(objs, objs[1:])), objs
        assert all(a.status == "optimal" for a in allocs)
    assert set(allocs[-1].bits.values()) == {8}
    assert set(allocs[0].bits.values()) == {2}
    # each equals a fresh single solve
    for a, b in zip(allocs, budgets):
        assert close(a.objective, bitalloc.solve(smollm, b, solver=solver, **opts).objective, 1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_solve_budgets_several_constraints_warm(backend, make_profile):
    """Several budgets with two constraints: the first budget varies, each result is exact."""
    p = make_profile(7, 5, 4, p_null=0.0)
    p.meta["group_size"] = 8
    base = Problem(p, [Constraint(MemoryCost(), 3.0), Constraint(SquareBits(), 40.0)])
    budgets = sorted({2.0, 3.0, 4.0, 5.0, 6.0, float(max(p.bits))})
    allocs = get_solver("ilp", backend=backend).solve_budgets(base, budgets)
    assert len(allocs) == len(budgets)
    prev = math.inf
    for a, b in zip(allocs, budgets):
        prob = base.with_budget(b)
        ref = brute_force(p, [b, 40.0], costs=user_costs(p, prob.constraints))
        if ref.best is None:
            assert a.status == "infeasible"
            continue
        assert a.status == "optimal" and close(a.objective, ref.best)
        assert a.objective <= prev * (1 + 1e-9)
        prev = a.objective


def test_cpsat_proves_optimality_quickly(smollm):
    """CP-SAT on a 210-unit profile is a fraction of a second; with fewer than 8 workers its
    portfolio has no LP-based search and this took minutes on a 2-core machine."""
    for budget in (3.0, 4.0):
        a = bitalloc.solve(smollm, budget, backend="cpsat", time_limit=20)
        assert a.status == "optimal", (budget, a.status, a.wall_s)
        assert a.wall_s < 10


def test_infeasible_min_budget_reported(smollm):
    a = bitalloc.solve(smollm, 1.5)
    assert a.status == "infeasible" and not a.ok
    assert a.min_budgets == {"avg_bits": pytest.approx(2.0)}
    pinned = bitalloc.solve(smollm, 2.0, pins={"*.0.*": 8})
    n0 = sum(int(smollm.n_params[i]) for i, s in enumerate(smollm.names) if ".0." in s)
    want = (2 * smollm.n_params.sum() + 6 * n0) / smollm.n_params.sum()
    assert pinned.status == "infeasible"
    assert math.isclose(pinned.min_budgets["avg_bits"], want, rel_tol=1e-12)
    assert bitalloc.solve(smollm, pinned.min_budgets["avg_bits"], pins={"*.0.*": 8}).status == "optimal"


# ---- time limit ----------------------------------------------------------------------------
def big_problem(n: int = 4000, seed: int = 3) -> Profile:
    rng = np.random.default_rng(seed)
    bits = [2, 3, 4, 5, 6, 8]
    S = rng.random((n, 6)) * rng.lognormal(0, 2, (n, 1))  # non-monotone rows: hard for bounds
    S[rng.random((n, 6)) < 0.1] = np.inf
    S[:, 0] = np.where(np.isfinite(S).any(1), S[:, 0], 1.0)
    return Profile.from_columns([f"u{i}" for i in range(n)], rng.integers(1000, 100000, n), bits, S)


@pytest.fixture(scope="module")
def big():
    return big_problem()


@pytest.mark.parametrize("backend", BACKENDS)
def test_time_limit_still_returns_a_fitting_allocation(backend, big):
    a = bitalloc.solve(big, 3.3, backend=backend, time_limit=0.001)
    assert a.status in ("optimal", "time_limit", "feasible"), (a.status, a.meta)
    check_allocation(big, a, 3.3, {})
    assert a.bound is not None and a.bound <= a.objective
    g = bitalloc.solve(big, 3.3, solver="greedy")
    assert a.objective <= g.objective * (1 + 1e-12)  # never worse than its greedy start


def test_time_limit_several_constraints_without_start(big):
    """Two budgets and no greedy start: a tiny time limit gives either an allocation that fits
    or an honest `time_limit` with no bits, never a false `infeasible`."""
    cons = [Constraint(MemoryCost(), 3.3), Constraint(SquareBits(), 14.0)]
    for backend in BACKENDS:
        a = get_solver("ilp", backend=backend, time_limit=0.001).solve(Problem(big, cons))
        assert a.status in ("optimal", "time_limit", "feasible"), (backend, a.status, a.meta)
        if a.bits:
            check_allocation(big, a, 3.3, {})
            assert a.totals["bits_squared"] <= 14.0 * (1 + 1e-12)


# ---- beyond brute-force sizes ----------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_ilp_matches_plain_milp_on_medium_problems(seed):
    """80 units, non-convex rows with nulls: every backend (with reduced-cost fixing and a greedy
    start) reaches the optimum of the plain MILP solved by HiGHS with no start and no fixing."""
    from bitalloc.solvers.backends.highs import HighsBackend
    from bitalloc.solvers.milp import Milp

    rng = np.random.default_rng(900 + seed)
    p = random_profile(rng, 80, 6, p_null=0.15, convex=bool(seed % 2))
    lo, hi = min(p.bits), max(p.bits)
    budget = float(lo + rng.uniform(0.2, 0.8) * (hi - lo))
    comp = Problem.average_bits(p, budget).compile()
    m = Milp.build(comp)
    r = HighsBackend().solve(m, None, 1e-12, None)
    assert r.proven
    want = comp.objective_value(r.choice)
    for backend in BACKENDS:
        a = bitalloc.solve(p, budget, backend=backend)
        assert a.status == "optimal", (backend, a.status)
        assert close(a.objective, want, 1e-7), (backend, a.objective, want)
        check_allocation(p, a, budget, {})


def test_pulp_infeasible_under_time_limit_is_not_trusted(monkeypatch, make_profile):
    """CBC stopped by the clock before any solution reports "Integer infeasible"; that must
    not turn a feasible problem into `infeasible` (the greedy start is returned instead)."""
    import pulp

    def stopped(self, solver=None, **kw):
        self.status, self.sol_status = pulp.LpStatusInfeasible, pulp.LpSolutionNoSolutionFound
        return self.status

    monkeypatch.setattr(pulp.LpProblem, "solve", stopped)
    p = make_profile(4, 6, 4)
    budget = float(np.mean(p.bits))
    a = bitalloc.solve(p, budget, backend="pulp", time_limit=0.5)
    assert a.status == "time_limit" and a.ok
    check_allocation(p, a, budget, {})
