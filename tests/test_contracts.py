"""Stage contracts as objects (issue 13): cost models round-trip through specs, an allocation
stores each budget with its spec, `verify` rebuilds every model and re-checks every budget from
the applied weights (a tampered allocation is caught), device profiles from a device bitalloc
has no spec of, and the import contracts."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import bitalloc
from bitalloc import Allocation, BitallocError, Constraint, Problem, Profile
from bitalloc.allocation import constraints_digest
from bitalloc.cli.app import main
from bitalloc.fileio import dumps
from bitalloc.hwcost import get_cost_model
from bitalloc.hwcost.base import CostModel
from bitalloc.hwcost.parse import parse_constraints

from conftest import brute_force

ROOT = Path(__file__).resolve().parents[1]
G = 16


# ---- specs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kw", [("memory", {"count_overhead": True, "group_size": 64}),
                                     ("latency", {"device": "cortex-m7", "unit": "us"}),
                                     ("mcu", {"metric": "sram", "device": "cortex-m4", "unit": "kb"}),
                                     ("mcu", {"metric": "cycles", "device": "cortex-m7", "unit": "k"}),
                                     ("fpga", {"metric": "dsp", "device": "vu9p", "reuse_factor": 4}),
                                     ("kv_memory", {"context": 512})])
def test_cost_model_spec_round_trips_through_json(name, kw, smollm):
    m = get_cost_model(name, **kw)
    d = json.loads(json.dumps(m.spec().to_json()))
    m2 = CostModel.from_spec(d)
    assert type(m2) is type(m) and m2.resource == m.resource and m2.spec() == m.spec()
    if name != "kv_memory":  # (the smollm profile has no kv units)
        assert np.array_equal(m2.costs(smollm), m.costs(smollm))


def test_bad_spec_is_one_line():
    with pytest.raises(BitallocError, match="cost spec field 'colour'"):
        CostModel.from_spec({"name": "memory", "colour": 1})
    with pytest.raises(BitallocError, match="cost model 'nope'"):
        CostModel.from_spec({"name": "nope"})


# ---- digits-cnn: latency + flash + SRAM, applied and verified -------------------------------
@pytest.fixture
def cnn_profile(cnn):
    from bitalloc.hwcost.graph import attach_graph

    units = cnn.units("layer", G)
    rng = np.random.default_rng(0)
    bits = [2, 3, 4, 8]
    S = rng.lognormal(0, 1, (len(units), 1)) * 4.0 ** -np.asarray(bits, float)[None, :]
    p = Profile(units, bits, S, meta={"group_size": G})
    attach_graph(p, cnn)
    return p


def budgets_at(p, texts, bits=4):
    """Each resource's budget: its total with every unit at `bits` (so all hold together and bind)."""
    k = p.bits.index(bits)
    out = []
    for t in texts:
        c = parse_constraints([f"{t}<=1e30"], device="cortex-m7")[0]
        out.append(f"{t}<={c.cost.total(p, np.full(p.n_units, k)):.9g}")
    return out


def test_latency_flash_sram_allocation_verified_from_the_weights(cnn, cnn_profile):
    from bitalloc.apply.quantize import apply
    from bitalloc.verify.budgets import check_budgets

    p = cnn_profile
    texts = budgets_at(p, ["latency_ms", "flash_kb", "sram_kb"])
    cons = parse_constraints(texts, device="cortex-m7")
    a = bitalloc.solve(Problem(p, cons), solver="ilp")
    assert a.ok and [c["resource"] for c in a.constraints] == ["latency_ms", "flash_kb", "sram_kb"]
    assert all(c["cost"]["device"] == "cortex-m7" for c in a.constraints)
    a = Allocation.from_json(json.loads(dumps(a.to_json())))  # the stored form
    q = apply(cnn.model, a, group_size=G, macs=cnn.macs)  # unit records carry MACs (latency, cycles)
    pk = q.packed()
    rep = check_budgets(pk, cnn.model, a, task=cnn)
    assert rep.ok, rep.failures
    got = {b["resource"]: b for b in rep.budgets}
    assert set(got) == {"latency_ms", "flash_kb", "sram_kb"}
    for r, b in got.items():  # re-checked by the rebuilt model, from the applied units: the solver's figure
        assert b["source"] == f"cost model {'latency' if r == 'latency_ms' else 'mcu'} on cortex-m7"
        assert b["total"] == pytest.approx(a.totals[r], rel=1e-9) and b["total"] <= b["budget"] * (1 + 1e-9)
        assert b["spec"] == next(c["cost"] for c in a.constraints if c["resource"] == r)

    def tampered(edit, rehash=False):
        d = json.loads(dumps(a.to_json()))
        edit(d)
        if rehash:
            d["constraints_sha256"] = constraints_digest(d["constraints"])
        return check_budgets(pk, cnn.model, Allocation.from_json(d), task=cnn).failures

    def loosen(d):  # a budget edited in the constraint list (not its digest)
        d["constraints"][0]["budget"] *= 10
    f = tampered(loosen)
    assert any("edited after the solve" in x for x in f) and any("in budgets but" in x for x in f), f

    def tighten(d):  # both budget copies and the digest edited: the tighter budget is broken
        d["budgets"]["sram_kb"] = d["constraints"][2]["budget"] = a.totals["sram_kb"] * 0.5
    f = tampered(tighten, rehash=True)
    assert len(f) == 1 and f[0].startswith("budget sram_kb:") and "> " in f[0], f

    def other_device(d):  # the spec edited (and re-hashed): priced on another target, not the solver's figure
        d["constraints"][0]["cost"]["device"] = "cortex-m4"
    f = tampered(other_device, rehash=True)
    assert any(x.startswith("budget latency_ms: recomputed") and "the solver reported" in x for x in f), f

    def other_unit(d):
        d["constraints"][1]["cost"]["options"]["unit"] = "b"
    f = tampered(other_unit, rehash=True)
    assert any("builds a model of flash_b" in x for x in f), f


# ---- the library path equals the CLI's (SRAM budget, every solver) --------------------------
SOLVER_FLAGS = {"ilp": ([], {}), "greedy": ([], {}), "dmmv": ([], {}),
                "optuna": (["--trials", "10", "--seed", "0"], {"n_trials": 10, "seed": 0})}


@pytest.mark.parametrize("solver", SOLVER_FLAGS)
def test_library_solves_sram_budget_exactly_as_the_cli(capsys, tmp_path, solver):
    from conftest import SMOLLM_BITS, smollm_units

    units = smollm_units()[:14]
    w = np.random.default_rng(0).lognormal(0, 1, len(units)) * np.array([u.n_params for u in units]) * 1e-6
    p = Profile(units, list(SMOLLM_BITS), w[:, None] * 4.0 ** -np.asarray(SMOLLM_BITS, float)[None, :])
    path = tmp_path / "p.json"
    p.save(path)
    flags, opts = SOLVER_FLAGS[solver]
    code = main(["solve", "--profile", str(path), "--budget", "6", "--constraint", "sram_kb<=3", "--device", "cortex-m7",
                 "--solver", solver, "--json", *flags])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    cli = Allocation.from_json(json.loads(cap.out))
    prob = Problem.average_bits(p, 6.0, objective="max" if solver == "dmmv" else "sum")
    prob = replace(prob, constraints=[*prob.constraints, *parse_constraints(["sram_kb<=3"], device="cortex-m7")])
    lib = bitalloc.solve(prob, solver=solver, **opts)
    assert lib.ok and lib.bits == cli.bits and lib.totals["sram_kb"] == pytest.approx(cli.totals["sram_kb"])
    assert lib.totals["sram_kb"] <= 3 + 1e-9
    assert lib.constraints == cli.constraints  # the same budgets and specs stored
    from bitalloc.solvers import get_solver

    inst = bitalloc.solve(prob, solver=get_solver(solver, **opts))  # a Solver instance works the same
    assert inst.bits == lib.bits


# ---- device profiles from a device bitalloc has no spec of ----------------------------------
def board_profile():
    from test_hwcost import SHAPES, graph_profile

    return graph_profile(), SHAPES


def board_rows(p, skip=()):
    """my-board latency rows for every (layer, candidate): a8 kernels for ints, a32 for fp16."""
    rng = np.random.default_rng(3)
    lines = []
    for i, layer in enumerate(p.names):
        for b in p.bits:
            if (layer, b) in skip:
                continue
            a = 32 if b == 16 else 8
            lines.append(f"{layer},linear,{int(p.macs[i])},{b},{a},,k{b},latency,{rng.uniform(0.1, 2):.6f},ms,median,5,ok")
    return lines


def write_board(tmp_path, p, skip=()):
    path = tmp_path / "my-board.csv"
    path.write_text("#device=my-board\n#core=some core\n" + "layer,op,macs,w_bits,a_bits,group,kernel,metric,value,unit,stat,n,status\n"
                    + "".join(r + "\n" for r in board_rows(p, skip)))
    return path


def test_complete_profile_of_unknown_device_solves_like_brute_force(tmp_path):
    p, _ = board_profile()
    path = write_board(tmp_path, p)
    measured = {}
    for line in board_rows(p):
        f = line.split(",")
        measured[(f[0], int(f[3]))] = float(f[8])
    C = np.array([[measured[(s, b)] for b in p.bits] for s in p.names])  # ms per unit and candidate
    lat = parse_constraints(["latency_ms<=1"], device_profile=str(path))[0].cost
    assert lat.device.name == "my-board" and np.allclose(lat.costs(p) * 1e3, C)
    for frac in (0.2, 0.5, 0.8):
        cap = C.min(1).sum() + frac * (C.max(1).sum() - C.min(1).sum())
        a = bitalloc.solve(Problem(p, parse_constraints([f"latency_ms<={cap}"], device_profile=str(path))))
        ref = brute_force(p, [cap], costs=[C])
        assert a.status == "optimal" and a.objective == pytest.approx(ref.best, rel=1e-9)
        assert a.constraints[0]["cost"]["device"] == "my-board"
        assert a.constraints[0]["cost"]["device_profile_sha256"]


def test_partial_profile_of_unknown_device_names_missing_cells(tmp_path, capsys):
    p, _ = board_profile()
    path = write_board(tmp_path, p, skip={("B", 8), ("D", 2)})
    prof = tmp_path / "p.json"
    p.save(prof)
    code = main(["solve", "--profile", str(prof), "--device-profile", str(path), "--constraint", "latency_ms<=5"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "2 layer-candidate cells are not measured (B@int8, D@int2)" in err and "--target-spec" in err
    # with a spec file of the built-in schema, the missing cells come from the scaled analytic model
    spec = json.loads((ROOT / "bitalloc/data/devices/cortex-m7.json").read_text())
    spec["name"] = "my-board"
    (tmp_path / "my-board.json").write_text(json.dumps(spec))
    code = main(["solve", "--profile", str(prof), "--device-profile", str(path), "--target-spec",
                 str(tmp_path / "my-board.json"), "--constraint", "latency_ms<=5", "--json"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    a = Allocation.from_json(json.loads(cap.out))
    assert a.constraints[0]["cost"]["device_spec"]["name"] == "my-board"
    rebuilt = CostModel.from_spec(a.constraints[0]["cost"])  # spec, profile path and digest rebuild it
    assert rebuilt.total(p, a.choice(p)) == pytest.approx(a.totals["latency_ms"])
    path.write_text(path.read_text().replace("0.", "0.0", 1))  # the profile edited after the solve
    with pytest.raises(BitallocError, match="changed since the allocation was solved"):
        CostModel.from_spec(a.constraints[0]["cost"])


# ---- import contracts ------------------------------------------------------------------------
def test_import_contracts_hold():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install import-linter, in the test extra)")
    r = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "BROKEN" not in r.stdout


def test_solvers_never_import_torch_at_module_level():
    code = ("import sys, pkgutil, importlib, bitalloc.solvers as s\n"
            "for m in pkgutil.walk_packages(s.__path__, 'bitalloc.solvers.'):\n"
            "    importlib.import_module(m.name)\n"
            "import bitalloc.solvers.compiled, bitalloc.problem\n"
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_measure_writes_the_device_name_it_was_given_and_the_profile_solves(tmp_path, capsys):
    from bitalloc.hwcost.device.device_profile import DeviceProfile
    from bitalloc.hwcost.device.devices import load_device
    from bitalloc.hwcost.device.plan import make_plan, write_plan

    p = Profile.from_columns(["a", "b"], [64, 128], [4, 8], [[1.0, 0.5], [2.0, 0.1]], rows=[8, 8], cols=[8, 16],
                             macs=[64, 128])
    write_plan(tmp_path / "plan.csv", {"device": "host-cpu"}, make_plan(p, load_device("host-cpu")))
    out = tmp_path / "m.csv"
    rc = main(["measure", "--plan", str(tmp_path / "plan.csv"), "--device", "my-board", "--out", str(out),
               "--warmup", "0", "--repeats", "2"])
    assert rc == 0, capsys.readouterr().err
    dp = DeviceProfile.load(out)
    assert dp.header["device"] == "my-board"
    cons = parse_constraints(["latency_ms<=1e3"], device_profile=str(out))  # complete: no spec needed
    assert cons[0].cost.device.measured_only
    a = bitalloc.solve(Problem(p, cons))
    assert a.ok and a.bits == {"a": 8, "b": 8}  # the least loss within a loose budget


# ---- Format objects --------------------------------------------------------------------------
def test_format_objects_parsed_once_and_external_labels_refused_by_name():
    from bitalloc.hwcost.memory import MemoryCost

    p = Profile.from_columns(["a", "b"], [64, 64], [4, 4, 8], np.ones((2, 3)), rows=[8, 8], cols=[8, 8],
                             macs=[64, 64], formats=["q4_K", "mxfp4", "int8"])
    assert [(f.name, f.family, f.bits) for f in p.format_objects] == [("q4_K", "external", 4), ("mxfp4", "mx", 4),
                                                                      ("int8", "int", 8)]
    assert p.format_objects[1].block == 32
    assert MemoryCost().total(p, np.array([0, 2])) == 6.0  # nominal bits need only the bit-width
    with pytest.raises(BitallocError, match=r"format 'q4_K': is not a bitalloc format, so its quantizer is unknown"):
        MemoryCost(count_overhead=True).costs(p)  # no guessed overhead
    flash = get_cost_model("mcu", metric="flash", device="cortex-m7", unit="b")
    assert not flash.feasible(p)[:, 0].any()  # no kernel for an unknown label: infeasible, named
    with pytest.raises(BitallocError, match="format 'q4_K'"):
        from bitalloc.quant.pack import is_block_float

        is_block_float("q4_K")


def test_one_format_object_per_unit_through_apply_pack_verify_and_export(cnn, tmp_path):
    """Allocation.format_of is the one parsed Format of a unit: apply's plan, the codec's records
    read back from the packed file, verify and the exporters all get the same object, and a
    bits-only allocation gets its default format explicitly."""
    from bitalloc.apply.quantize import Settings, apply, plan
    from bitalloc.export.base import allocation_formats
    from bitalloc.quant.formats.spec import format_for
    from bitalloc.quant.pack import read
    from bitalloc.verify.budgets import check_budgets

    names = [u.name for u in cnn.units("layer", G)]
    fmts = {n: ("fp4_e2m1" if i == 0 else "int4") for i, n in enumerate(names)}
    a = Allocation(dict.fromkeys(names, 4), "feasible", "manual", formats=fmts)
    obj = {n: a.format_of(n) for n in names}
    assert obj[names[0]].family == "fp" and obj[names[1]] is format_for("int4", 4)
    p = Profile(cnn.units("layer", G), [4, 4], np.zeros((len(names), 2)), formats=["int4", "fp4_e2m1"])
    assert p.format_objects[0] is obj[names[1]] and p.format_objects[1] is obj[names[0]]  # the Profile's too
    steps = plan(cnn.model, a, Settings(group_size=G))
    assert all(f is obj[u.name] for u, _, f, _ in steps)
    q = apply(cnn.model, a, group_size=G, inplace=False)
    pk = read(q.save(tmp_path / "q.safetensors"))
    assert all(c.format is obj[c.name] for c in pk.codes)  # the records parse to the same objects
    assert check_budgets(pk, None, a).ok
    assert allocation_formats(a) == obj
    bits_only = Allocation({names[0]: 16, names[1]: 4}, "feasible", "manual")
    assert bits_only.format_of(names[0]).name == "fp16" and bits_only.format_of(names[1]) is obj[names[1]]


def test_format_bits_disagreement_is_one_line_at_apply_and_verify(cnn):
    from bitalloc.apply.quantize import apply
    from bitalloc.verify.budgets import check_budgets

    names = [u.name for u in cnn.units("layer", G)]
    good = Allocation(dict.fromkeys(names, 4), "feasible", "manual", formats=dict.fromkeys(names, "int4"))
    pk = apply(cnn.model, good, group_size=G, inplace=False).packed()
    bad_ = Allocation.from_json({**good.to_json(), "formats": {**dict.fromkeys(names, "int4"), names[1]: "int8"}})
    msg = rf"allocation unit '{names[1]}' at 4 bits: format 'int8': has 8-bit elements but the bits given are 4"
    with pytest.raises(BitallocError, match=msg) as e:
        apply(cnn.model, bad_, group_size=G, inplace=False)
    assert "\n" not in str(e.value) and "allowed" in str(e.value)
    with pytest.raises(BitallocError, match=msg):
        check_budgets(pk, None, bad_)
    with pytest.raises(BitallocError, match=r"allocation unit 'nope': is not a unit"):
        good.format_of("nope")
