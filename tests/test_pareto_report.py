"""`bitalloc pareto` (exact front vs brute force and the ILP, uniform points) and `bitalloc report`
(bit map, per-bit-width table, totals rechecked), and their plots."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import bitalloc
from bitalloc import BitallocError
from bitalloc.cli.app import main
from bitalloc.report.pareto import budget_range
from bitalloc.report.plots import grid, layer_bits

from conftest import avg_bits_of, brute_force

PNG = b"\x89PNG\r\n\x1a\n"


def cli(capsys, *args):
    code = main([str(a) for a in args])
    return code, capsys.readouterr()


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("text, expected", [
    ("2.5:6:0.25", [2.5 + 0.25 * i for i in range(15)]),
    ("3:3:1", [3.0]),
    ("3:4:0.3", [3.0, 3.3, 3.6, 3.9]),
    ("3,3.25,4", [3.0, 3.25, 4.0]),
])
def test_budget_range(text, expected):
    assert budget_range(text) == pytest.approx(expected)


@pytest.mark.parametrize("text, pattern", [
    ("6:2.5:0.25", "empty or inverted"), ("2:6:0", "empty or inverted"), ("2:6:-1", "empty or inverted"),
    ("", "is empty"), ("a:b:c", "START:STOP:STEP"), ("1:2", "START:STOP:STEP"), ("2:nan:1", "empty or inverted"),
])
def test_budget_range_bad(text, pattern):
    with pytest.raises(BitallocError, match=pattern):
        budget_range(text)


def test_front_equals_brute_force_and_beats_uniform(capsys, tmp_path, make_profile):
    p = make_profile(seed=4, n_units=5, n_cands=4, p_null=0.0)
    p.save(tmp_path / "p.json")
    lo, hi = min(p.bits), max(p.bits)
    out, plot = tmp_path / "front.csv", tmp_path / "front.png"
    code, cap = cli(capsys, "pareto", "--profile", tmp_path / "p.json", "--budgets", f"{lo}:{hi}:0.5",
                    "--out", out, "--plot", plot)
    assert code == 0, cap.err
    rows = read_csv(out)
    front = [r for r in rows if r["kind"] == "front"]
    assert [float(r["budget"]) for r in front] == pytest.approx(budget_range(f"{lo}:{hi}:0.5"))
    prev = np.inf
    for r in front:
        b = float(r["budget"])
        ref = brute_force(p, budgets=[b])
        assert float(r["objective"]) == pytest.approx(ref.best, rel=1e-9, abs=1e-12)
        assert float(r["avg_bits"]) <= b + 1e-12 and float(r["objective"]) <= prev + 1e-12  # more bits never hurt
        assert sum(float(r[f"share_{k}bit"] or 0) for k in p.bits) == pytest.approx(1.0)
        prev = float(r["objective"])
    uniform = [r for r in rows if r["kind"] == "uniform"]
    assert [int(r["bits"]) for r in uniform] == [b for b in p.bits if lo <= b <= hi]
    for r in uniform:
        k = p.bits.index(int(r["bits"]))
        assert float(r["objective"]) == pytest.approx(p.sensitivity[:, k].sum())
        assert float(r["avg_bits"]) == pytest.approx(int(r["bits"]))
        same = [f for f in front if float(f["budget"]) == pytest.approx(int(r["bits"]))]
        for f in same:  # the exact front at the uniform's budget is at least as good
            assert float(f["objective"]) <= float(r["objective"]) + 1e-12
    assert plot.read_bytes()[:8] == PNG and plot.stat().st_size > 20_000


def test_constraint_holds_along_the_front(capsys, tmp_path, smollm_path, smollm):
    out = tmp_path / "f.csv"
    code, cap = cli(capsys, "pareto", "--profile", smollm_path, "--budgets", "3:5:2",
                    "--constraint", "avg_bits_with_overhead<=4", "--out", out)
    assert code == 0, cap.err
    front = [r for r in read_csv(out) if r["kind"] == "front"]
    assert all(float(r["avg_bits_with_overhead"]) <= 4 + 1e-9 for r in front)
    assert float(front[-1]["avg_bits"]) < 4  # the fixed constraint binds at the top of the sweep
    from bitalloc import Constraint, Problem
    from bitalloc.hwcost.memory import MemoryCost

    prob = Problem(smollm, [Constraint(MemoryCost(), 5.0), Constraint(MemoryCost(count_overhead=True), 4.0)])
    assert float(front[-1]["objective"]) == pytest.approx(bitalloc.solve(prob).objective, rel=1e-9)
    uni = {int(r["bits"]): r["within_budgets"] for r in read_csv(out) if r["kind"] == "uniform"}
    assert uni == {3: "True", 4: "False", 5: "False"}  # every candidate bit-width in the range


def test_pareto_takes_the_hardware_constraints_of_solve(capsys, smollm_path, smollm):
    """`--constraint latency_ms<=... --device ...` means the same problem in pareto as in solve."""
    hw = ["--constraint", "latency_ms<=1200", "--target", "cortex-m7"]
    code, cap = cli(capsys, "pareto", "--profile", smollm_path, "--budgets", "3:5:1", "--json", *hw)
    assert code == 0, cap.err
    front = json.loads(cap.out)["front"]
    assert [r["status"] for r in front] == ["optimal"] * 3
    assert front[-1]["objective"] > bitalloc.solve(smollm, budget=5).objective * (1 + 1e-6)  # latency binds at 5 bits
    for r in front:
        code, cap = cli(capsys, "solve", "--profile", smollm_path, "--budget", str(r["budget"]), "--json", *hw)
        assert code == 0, cap.err
        a = json.loads(cap.out)
        assert r["latency_ms"] <= 1200 * (1 + 1e-9)
        assert r["latency_ms"] == pytest.approx(a["totals"]["latency_ms"], rel=1e-9)
        assert r["objective"] == pytest.approx(a["objective"], rel=1e-9)


def test_pareto_json_matches_solve(capsys, smollm_path, smollm):
    code, cap = cli(capsys, "pareto", "--profile", smollm_path, "--budgets", "3,3.25", "--json")
    assert code == 0, cap.err
    doc = json.loads(cap.out)
    for r in doc["front"]:
        assert r["objective"] == pytest.approx(bitalloc.solve(smollm, budget=r["budget"]).objective, rel=1e-12)


@pytest.mark.parametrize("args, pattern", [
    (["--budgets", "6:2.5:0.25"], "empty or inverted"),
    (["--budgets", "2.5:6:0"], "empty or inverted"),
    (["--budgets", "1:1.5:0.25"], "every budget is infeasible"),
    (["--budgets", "3:4:1", "--constraint", "latency_ms<=3"], "needs a hardware target"),
    (["--budgets", "3:4:1", "--constraint", "latency_ms<=3", "--target", "nope"], "nope"),
    (["--budgets", "3:4:1", "--constraint", "watts<=3"], "allowed (the unit is part of the name)"),
    (["--budgets", "3:4:1", "--constraint", "avg_bits=3"], "RESOURCE<=NUMBER"),
    (["--budgets", "3:4:1", "--constraint", "avg_bits<=3", "--cost-option", "reuse_factor=4"], "--cost-option"),
])
def test_pareto_bad_input_writes_nothing(capsys, tmp_path, smollm_path, args, pattern):
    out, plot = tmp_path / "f.csv", tmp_path / "f.png"
    code, cap = cli(capsys, "pareto", "--profile", smollm_path, "--out", out, "--plot", plot, *args)
    assert code == 2 and pattern in cap.err and len(cap.err.strip().splitlines()) == 1
    assert not out.exists() and not plot.exists()


def test_pareto_refuses_to_overwrite(capsys, tmp_path, smollm_path):
    out = tmp_path / "f.csv"
    out.write_text("keep")
    code, cap = cli(capsys, "pareto", "--profile", smollm_path, "--budgets", "3:4:1", "--out", out)
    assert code == 2 and "--force" in cap.err and out.read_text() == "keep"


# ---- report ------------------------------------------------------------------------------------
def test_report_table_plot_and_totals(capsys, tmp_path, smollm_path, smollm):
    a = bitalloc.solve(smollm, budget=3.25)
    a.save(tmp_path / "a.json")
    plot = tmp_path / "bits.png"
    code, cap = cli(capsys, "report", "--allocation", tmp_path / "a.json", "--profile", smollm_path, "--plot", plot)
    assert code == 0, cap.err
    assert plot.read_bytes()[:8] == PNG and "per bit-width" in cap.out and "106,168,320" in cap.out
    from bitalloc.report.tables import per_bits

    rows = per_bits(a, smollm)
    assert sum(r["weights"] for r in rows) == int(smollm.n_params.sum())
    assert sum(r["loss"] for r in rows) == pytest.approx(a.objective, rel=1e-12)
    assert sum(r["share"] * r["bits"] for r in rows) == pytest.approx(avg_bits_of(smollm, a.bits))
    code, cap = cli(capsys, "report", "--allocation", tmp_path / "a.json", "--plot", plot)  # exists, no --force
    assert code == 2 and "--force" in cap.err


def test_report_without_profile_and_bars(capsys, tmp_path, make_profile):
    p = make_profile(seed=1, n_units=6, n_cands=3, p_null=0.0)
    a = bitalloc.solve(p, budget=float(np.mean(p.bits)))
    a.save(tmp_path / "a.json")
    code, cap = cli(capsys, "report", "--allocation", tmp_path / "a.json", "--plot", tmp_path / "b.png")
    assert code == 0, cap.err and (tmp_path / "b.png").read_bytes()[:8] == PNG


def test_report_wrong_profile_is_refused(capsys, tmp_path, smollm, make_profile):
    a = bitalloc.solve(smollm, budget=3.25)
    a.save(tmp_path / "a.json")
    other = bitalloc.Profile.from_columns(smollm.names, smollm.n_params * 2, smollm.bits, smollm.sensitivity)
    other.save(tmp_path / "o.json")
    code, cap = cli(capsys, "report", "--allocation", tmp_path / "a.json", "--profile", tmp_path / "o.json")
    assert code == 2 and "does not match --profile" in cap.err and len(cap.err.strip().splitlines()) == 1


def test_grid_and_layer_bits():
    bits = {f"model.layers.{i}.{m}": i + j for i in range(3) for j, m in enumerate(("self_attn.q_proj", "mlp.up_proj"))}
    blocks, mods, a = grid(bits)
    assert blocks == ["model.layers.0", "model.layers.1", "model.layers.2"] and mods == ["self_attn.q_proj", "mlp.up_proj"]
    assert a.tolist() == [[0, 1, 2], [1, 2, 3]]
    assert grid({"conv1": 4, "fc": 8}) is None
    lb = layer_bits({"l.fc:g0": 2, "l.fc:g1": 4, "m": 8}, {"l.fc:g0": 3.0, "l.fc:g1": 1.0, "m": 1.0})
    assert lb == {"l.fc": pytest.approx(2.5), "m": 8}
