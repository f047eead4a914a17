"""--solver auto (exact where quick, else greedy + ILP polish, time limit on the wall clock),
columnar allocations (array bits, npz sidecar), streaming greedy from disk."""
import itertools
import time

import numpy as np
import pytest

import bitalloc
from bitalloc import Problem, Profile
from bitalloc.allocation import Allocation
from bitalloc.columns import Names, UnitMap
from bitalloc.errors import BitallocError
from bitalloc.solvers import get_solver
from bitalloc.solvers.stream import stream_greedy

BITS = [2, 3, 4, 5, 6, 8]


def synthetic(n, seed=0, names=None, formats=None):
    """Loss w·4^-b with 5 % noise, 3 % of units with one null candidate (benchmarks/solvers.py)."""
    rng = np.random.default_rng(seed)
    w = 10.0 ** rng.uniform(-3, 1, n)
    S = w[:, None] * 4.0 ** -np.array(BITS, float) * (1 + 0.05 * rng.standard_normal((n, len(BITS))))
    null = np.flatnonzero(rng.random(n) < 0.03)
    S[null, rng.integers(0, len(BITS), len(null))] = np.inf
    n_params = rng.choice([576 * 128, 1536 * 128, 192 * 128], n)
    names = names or Names.from_list([f"model.layers.{i // 64}.mlp.down_proj:g{i % 64}" for i in range(n)])
    return Profile.from_columns(names, n_params, BITS, S, formats=formats)


@pytest.mark.parametrize("seed", range(12))
def test_auto_equals_brute_force_on_tiny_problems(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 6))
    p = synthetic(n, seed, names=[f"u{i}" for i in range(n)])
    budget = float(rng.uniform(2.2, 6))
    a = bitalloc.solve(p, budget)
    assert a.solver == "auto"
    C = p.n_params[:, None] * np.asarray(BITS)[None, :]
    best = min((sum(p.sensitivity[i, k] for i, k in enumerate(ch)), ch)
               for ch in itertools.product(range(len(BITS)), repeat=n)
               if sum(C[i, k] for i, k in enumerate(ch)) <= budget * p.n_params.sum() * (1 + 1e-12))
    assert a.status == "optimal"
    assert a.objective == pytest.approx(best[0], rel=1e-9)
    assert a.gap <= 1e-9


@pytest.mark.parametrize("n,budget", [(300, 3.25), (1000, 2.6), (2000, 4.1)])
def test_auto_equals_ilp_on_small_problems(n, budget):
    p = synthetic(n, seed=n)
    a = bitalloc.solve(p, budget)
    ref = bitalloc.solve(p, budget, solver="ilp")
    assert ref.status == "optimal" and a.status == "optimal", (a.status, a.meta)
    assert a.objective == pytest.approx(ref.objective, rel=1e-9)
    assert a.avg_bits <= budget * (1 + 1e-12)


def test_auto_reported_gap_is_a_valid_bound():
    """Restricted polish (few units freed): the answer is not proven, but the true optimum lies
    between the bound and the objective, and the gap is what they say."""
    p = synthetic(3000, seed=7)
    a = bitalloc.solve(p, 3.25, exact_units=40)
    assert a.meta["polish_exact"] is False and a.meta["polish_units"] == 40
    opt = bitalloc.solve(p, 3.25, solver="ilp")
    assert opt.status == "optimal"
    assert a.bound <= opt.objective * (1 + 1e-12) <= a.objective * (1 + 1e-12)
    assert a.gap == pytest.approx((a.objective - a.bound) / a.objective)
    assert a.objective <= a.meta["greedy_objective"]  # the polish never makes it worse


def test_auto_holds_its_time_limit_on_the_wall_clock():
    """~3.5·10⁴ free units: HiGHS alone overruns a 2 s limit by many seconds (root setup)."""
    p = synthetic(100_000, seed=0)
    prob = Problem.average_bits(p, 3.25)
    limit = 2.0
    t0 = time.perf_counter()
    a = get_solver("auto", time_limit=limit, exact_units=50_000).solve(prob)
    wall = time.perf_counter() - t0
    assert wall <= 1.1 * limit + 0.5, (wall, a.meta)  # + compile and allocation of 10⁵ units
    assert a.ok and a.status in ("time_limit", "feasible", "optimal")
    assert a.bound is not None and 0 <= a.gap < 1e-4
    assert a.avg_bits <= 3.25 * (1 + 1e-12)


def test_auto_options_are_checked():
    with pytest.raises(BitallocError, match="time_limit"):
        get_solver("auto", time_limit=-1)
    with pytest.raises(BitallocError, match="exact_units"):
        get_solver("auto", exact_units=0)


@pytest.mark.parametrize("sidecar", [False, True])
def test_allocation_with_array_bits_round_trips(tmp_path, sidecar):
    p = synthetic(500, seed=1, formats=["int2", "int3", "fp4_e2m1", "int5", "int6", "int8"])
    a = bitalloc.solve(p, 3.25, solver="greedy")
    assert isinstance(a.bits, UnitMap) and isinstance(a.formats, UnitMap)
    path = a.save(tmp_path / "a.json", sidecar=sidecar)
    assert (tmp_path / "a.npz").exists() == sidecar
    b = Allocation.load(path)
    assert dict(b.bits) == dict(a.bits) and dict(b.formats) == dict(a.formats)
    assert b.objective == a.objective and b.status == a.status and b.totals == a.totals
    assert np.array_equal(b.choice(p), a.choice(p))
    assert np.array_equal(a.choice(p), Allocation.from_json(a.to_json()).choice(p))  # by-name path agrees
    assert b.to_json() == a.to_json()


def test_allocation_sidecar_is_checked(tmp_path):
    a = bitalloc.solve(synthetic(50, seed=2), 3.0, solver="greedy")
    path = a.save(tmp_path / "a.json", sidecar=True)
    (tmp_path / "a.npz").write_bytes(b"not a zip")
    with pytest.raises(BitallocError, match="sidecar"):
        Allocation.load(path)


def test_profile_loads_columnar(tmp_path):
    p = synthetic(2000, seed=4)
    q = Profile.load(p.save(tmp_path / "p.json", sidecar=True))
    assert isinstance(q.names, Names) and q.names == p.names and q.names[1999] == p.names[1999]
    assert list(q.layers)[:2] == ["model.layers.0.mlp.down_proj"] * 2
    with pytest.raises(BitallocError, match="duplicate"):
        Profile.from_columns(Names.from_list(["a", "b", "a"]), np.ones(3, np.int64), [4], np.ones((3, 1)))


@pytest.mark.parametrize("budget", [2.4, 3.25, 8.0])
def test_streaming_greedy_equals_in_memory(tmp_path, budget):
    p = synthetic(20_000, seed=5)
    path = p.save(tmp_path / "p.json", sidecar=True)
    a = get_solver("greedy").solve(Problem.average_bits(Profile.load(path), budget))
    b = stream_greedy(path, budget, block=3000)
    assert np.array_equal(a.bits.array, b.bits.array)
    assert b.objective == pytest.approx(a.objective, rel=1e-12)
    assert b.bound == pytest.approx(a.bound, rel=1e-9) and b.status == a.status
    assert b.avg_bits <= budget * (1 + 1e-12)


def test_cli_stream_equals_greedy(tmp_path, capsys):
    from bitalloc.cli import main

    p = synthetic(3000, seed=6)
    path = p.save(tmp_path / "p.json", sidecar=True)
    out = tmp_path / "a.json"
    assert main(["solve", "--profile", str(path), "--budget", "3.25", "--stream", "--out", str(out)]) == 0
    a = Allocation.load(out)
    ref = bitalloc.solve(Profile.load(path), 3.25, solver="greedy")
    assert dict(a.bits) == dict(ref.bits) and a.objective == pytest.approx(ref.objective, rel=1e-12)
    capsys.readouterr()
    assert main(["solve", "--profile", str(path), "--budget", "3.25", "--stream", "--pin", "x=4"]) == 2
    assert "does not apply with --stream" in capsys.readouterr().err


# ---- memory at 10⁶ units (docs/solvers-at-scale.md): no copies on the greedy's path ----------
def test_compiled_shares_the_profile_scores_and_keeps_rank_one_costs_as_factors():
    from bitalloc.solvers.compiled import Outer

    p = synthetic(500, seed=7)
    comp = Problem.average_bits(p, 3.25).compile()
    assert np.shares_memory(comp.S, p.sensitivity) and not comp.S.flags.writeable
    C = comp.C[0]
    assert isinstance(C, Outer) and C.shape == (500, len(BITS))
    dense = p.n_params[:, None].astype(np.float64) * np.asarray(BITS, float)[None, :]
    assert np.array_equal(np.asarray(C), dense) and np.array_equal(C[:, 3], dense[:, 3])
    rows, cols = np.arange(500), np.arange(500) % len(BITS)
    assert np.array_equal(C[rows, cols], dense[rows, cols]) and np.array_equal(np.asarray(C[rows[::7]]), dense[::7])
    assert np.array_equal(2.0 * C - dense, dense) and float(C.sum()) == float(dense.sum())  # the rest: the full matrix
    pinned = Problem.average_bits(p, 3.25, pins={p.names[0]: 4}).compile()  # a pin changes scores: a copy
    assert not np.shares_memory(pinned.S, p.sensitivity) and np.isinf(pinned.S[0]).sum() == len(BITS) - 1


@pytest.mark.parametrize("budget", [2.1, 3.25, 6.5])
def test_greedy_on_factored_costs_equals_greedy_on_the_dense_matrix(budget):
    from dataclasses import replace

    from bitalloc.solvers.compiled import Row

    p = synthetic(5000, seed=8)
    comp = Problem.average_bits(p, budget).compile()
    dense = replace(comp, S=np.array(comp.S), rows=[[Row(np.asarray(comp.C[0]))]])
    a, b = get_solver("greedy")._solve(comp, None), get_solver("greedy")._solve(dense, None)
    assert np.array_equal(a.choice, b.choice) and a.bound == b.bound and a.info == b.info


def test_frontier_efficiency_is_computed_as_it_was_stored():
    from bitalloc.solvers.frontier import frontier

    p = synthetic(3000, seed=9)
    comp = Problem.average_bits(p, 3.0).compile()
    fr = frontier(comp.S, np.asarray(comp.C[0]))
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.where(np.arange(len(fr.dc))[:, None] < fr.n_seg[None, :], -fr.ds / fr.dc, -1.0)
    assert np.array_equal(fr.eff, ref) and (fr.n_seg < len(BITS) - 1).any()  # some padded units
    flat = np.arange(fr.dc.size)[::11]
    assert np.array_equal(fr.eff_flat(flat), ref.ravel()[flat])


def test_names_are_checked_batch_by_batch():
    from bitalloc.units import check_names

    names = Names.from_list([f"u{i}" for i in range(70_000)] + ["bad\tname"])
    with pytest.raises(BitallocError, match="control"):
        check_names(names)
    check_names(Names.from_list([f"u{i}" for i in range(70_000)]))
    with pytest.raises(BitallocError, match="non-empty"):
        Profile.from_columns(Names(np.frombuffer(b"a\n\nc", np.uint8)), np.ones(3, np.int64), [4], np.ones((3, 1)))
    n = Names.from_list(["ab", "c", "déf"])
    assert list(n) == ["ab", "c", "déf"] and n[2] == "déf" and n[-1] == "déf" and list(n.starts) == [0, 3, 5]


def test_tables_of_a_large_allocation_show_60_units_without_a_dict_of_every_unit():
    import io

    from rich.console import Console

    from bitalloc.report.tables import render

    a = bitalloc.solve(synthetic(30_000, seed=10), 3.25, solver="greedy")
    buf = io.StringIO()
    render([a], console=Console(file=buf, width=120))
    text = buf.getvalue()
    assert "29940 more (use --json or --out)" in text and "units per bit-width" in text
    assert a.bits._index is None  # no name → row dict was built


def test_cli_out_of_a_large_allocation_is_the_sidecar_form(tmp_path, capsys):
    from bitalloc.cli import main

    path = synthetic(20_000, seed=11).save(tmp_path / "p.json", sidecar=True)
    out = tmp_path / "a.json"
    assert main(["solve", "--profile", str(path), "--budget", "3.25", "--solver", "greedy", "--out", str(out)]) == 0
    assert (tmp_path / "a.npz").exists() and out.stat().st_size < 10_000
    a, ref = Allocation.load(out), bitalloc.solve(Profile.load(path), 3.25, solver="greedy")
    assert np.array_equal(a.bits.array, ref.bits.array) and a.objective == ref.objective
    capsys.readouterr()
    outs = [tmp_path / "b.b3.json", tmp_path / "b.b3.5.json"]
    (tmp_path / "b.b3.5.npz").write_bytes(b"old")  # the second budget's sidecar is in the way
    assert main(["solve", "--profile", str(path), "--budget", "3,3.5", "--solver", "greedy", "--out", str(tmp_path / "b.json")]) == 2
    assert "exists" in capsys.readouterr().err
    assert not any(p.exists() for p in outs) and (tmp_path / "b.b3.5.npz").read_bytes() == b"old"
