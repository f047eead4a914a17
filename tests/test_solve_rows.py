"""`bitalloc solve --constraint sram_kb<=...` with the solvers that only take sums (greedy through
its own rows, dmmv and optuna through the rows Solver.solve_budgets adds, solvers/rows.py): the peak SRAM recomputed from
the returned bits stays within the budget, the answer is no better than the exact ILP's, and a
budget below the smallest feasible peak is one clear line (exit 2)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bitalloc import Allocation, Profile
from bitalloc.cli.app import main
from bitalloc.hwcost import get_cost_model
from bitalloc.hwcost.memory import MemoryCost

from conftest import SMOLLM_BITS, smollm_units

HW = ["--constraint", "sram_kb<=3", "--target", "cortex-m7"]
SOLVERS = {"greedy": [], "dmmv": [], "optuna": ["--trials", "10", "--seed", "0"]}


@pytest.fixture(scope="module")
def two_blocks(tmp_path_factory):
    """The first two SmolLM-like blocks (14 units): at 6 bits per weight the unconstrained peak
    SRAM on a Cortex-M7 is 3.5625 KiB, so `sram_kb<=3` binds."""
    units = smollm_units()[:14]
    w = np.random.default_rng(0).lognormal(0, 1, len(units)) * np.array([u.n_params for u in units]) * 1e-6
    p = Profile(units, list(SMOLLM_BITS), w[:, None] * 4.0 ** -np.asarray(SMOLLM_BITS, float)[None, :])
    path = tmp_path_factory.mktemp("rows") / "p.json"
    p.save(path)
    return p, path


def solve(capsys, path, solver, *extra):
    code = main(["solve", "--profile", str(path), "--budget", "6", "--solver", solver, "--json", *extra])
    return code, capsys.readouterr()


@pytest.mark.parametrize("solver", SOLVERS)
def test_peak_sram_budget_holds_with_every_solver(capsys, two_blocks, solver):
    p, path = two_blocks
    sram = get_cost_model("mcu", metric="sram", device="cortex-m7", unit="kb")
    code, cap = solve(capsys, path, solver, *SOLVERS[solver])
    assert code == 0, cap.err
    free = Allocation.from_json(json.loads(cap.out))
    assert sram.total(p, free.choice(p)) > 3  # without the constraint the peak is over budget
    code, cap = solve(capsys, path, solver, *HW, *SOLVERS[solver])
    assert code == 0, cap.err
    a = Allocation.from_json(json.loads(cap.out))
    choice = a.choice(p)
    assert a.ok and sram.total(p, choice) <= 3 + 1e-9 and MemoryCost().total(p, choice) <= 6 + 1e-9
    assert a.totals["sram_kb"] == pytest.approx(sram.total(p, choice))
    if solver != "greedy":  # no native max over rows: solve_budgets added the violated rows
        assert a.meta["rows"]["rows_added"] >= 1 and a.meta["rows"]["rows_total"] == {"sram_kb": len(sram.rows(p))}
    objective = ["--objective", "max"] if solver == "dmmv" else []
    code, cap = solve(capsys, path, "ilp", *HW, *objective)
    assert code == 0, cap.err
    assert a.objective >= json.loads(cap.out)["objective"] * (1 - 1e-9)  # the ILP is exact


@pytest.mark.parametrize("solver", SOLVERS)
def test_infeasible_peak_sram_is_one_line(capsys, two_blocks, solver):
    _, path = two_blocks
    code, cap = solve(capsys, path, solver, "--constraint", "sram_kb<=2.5", "--target", "cortex-m7", *SOLVERS[solver])
    err = [line for line in cap.err.replace("\r", "\n").splitlines() if line.startswith("bitalloc")]
    assert code == 2 and cap.out == "" and len(err) == 1 and "Traceback" not in cap.err
    assert "sram_kb <= 2.5 is below the smallest feasible sram_kb 3.0000" in err[0]
