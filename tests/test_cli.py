"""The `bitalloc` command: one-line errors with exit 2, safe --out, several budgets, JSON output."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bitalloc import Allocation, BitallocError, Profile
from bitalloc.cli.app import main
from bitalloc.data import default_profile_path

from conftest import avg_bits_of, profile_doc


def run(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, pattern: str | None = None):
    assert rc == 2
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, f"stderr is not one line: {err!r}"
    assert err.startswith("bitalloc: error: ")
    if pattern:
        assert re.search(pattern, err), err


def write_doc(path: Path, change=None, text: str | None = None) -> Path:
    doc = profile_doc()
    if change:
        change(doc)
    path.write_text(text if text is not None else json.dumps(doc))
    return path


def bad_profile(kind: str, tmp_path: Path) -> Path:
    p = tmp_path / "bad.json"
    good = json.dumps(profile_doc())
    if kind == "malformed":
        return write_doc(p, text=good.replace("]", "", 1))
    if kind == "truncated":
        return write_doc(p, text=good[: len(good) * 2 // 3])
    if kind == "missing":
        return tmp_path / "nope.json"
    if kind == "schema":
        return write_doc(p, lambda d: d.update(schema="bitalloc.profile/0"))
    if kind == "rows":
        return write_doc(p, lambda d: d["sensitivity"].append([1, 1, 1]))
    if kind == "nan":
        return write_doc(p, text=good.replace("0.0625", "NaN"))
    if kind == "negative":
        return write_doc(p, lambda d: d["sensitivity"][1].__setitem__(2, -1e-3))
    if kind == "n_params":
        return write_doc(p, lambda d: d["units"][2].__setitem__("n_params", 0))
    if kind == "duplicate":
        return write_doc(p, lambda d: d["units"][1].__setitem__("name", "layers.0.proj"))
    raise AssertionError(kind)


PROFILE_ERRORS = [
    ("malformed", r"not valid JSON \(line 1, column \d+"),
    ("truncated", r"not valid JSON"),
    ("missing", r"profile '.*nope\.json': no such file"),
    ("schema", r"schema 'bitalloc\.profile/0'"),
    ("rows", r"sensitivity '4 rows': must have one row per unit \(3\)"),
    ("nan", r"sensitivity\[0\]\[0\] NaN"),
    ("negative", r"sensitivity\[1\]\[2\] \(unit 'layers\.1\.proj'\) -0\.001"),
    ("n_params", r"units\[2\]: unit 'layers\.2\.proj' n_params 0"),
    ("duplicate", r"units name 'layers\.0\.proj'.*unique"),
]


@pytest.mark.parametrize("kind,pattern", PROFILE_ERRORS, ids=[k for k, _ in PROFILE_ERRORS])
def test_bad_profile(capsys, tmp_path, kind, pattern):
    out = tmp_path / "alloc.json"
    rc, stdout, err = run(capsys, "solve", "--profile", bad_profile(kind, tmp_path), "--budget", "4", "--out", out)
    assert_one_line_error(rc, err, pattern)
    assert not out.exists()
    assert list(tmp_path.glob(".*")) == []


OPTION_ERRORS = [  # (extra arguments, regex on the message)
    (["--budget", "three"], r"--budget 'three': must be a number"),
    (["--budget", "3,x"], r"--budget '3,x'"),
    (["--budget", "nan"], r"budget for avg_bits nan: must be a finite number"),
    (["--budget", "1.5"], r"budget 1\.5 is below the smallest feasible avg_bits 2\.0000"),
    (["--budget", "4", "--solver", "simplex"], r"solver 'simplex': allowed: .*greedy.*ilp"),
    (["--budget", "4", "--solver", "ilp", "--backend", "gurobi"], r"backend 'gurobi': allowed: cpsat, highs, highs-child, pulp"),
    (["--budget", "4", "--solver", "greedy", "--backend", "highs"], r"only applies to --solver ilp"),
    (["--budget", "4", "--pin", "lm_head=8"], r"pin 'lm_head=8': the pattern matches no unit"),
    (["--budget", "4", "--pin", "*.0.*=7"], r"7: not a candidate of this profile \(candidates: 2, 4, 8\)"),
    (["--budget", "4", "--pin", "=8"], r"--pin '=8': must be GLOB=BITS"),
    (["--budget", "4", "--tie", "q_proj"], r"--tie 'q_proj': must name at least two"),
    (["--budget", "4", "--min-bits", "9"], r"no allowed candidate left"),
    (["--budget", "4", "--time-limit", "soon"], r"argument --time-limit: invalid float value: 'soon'"),
    (["--budget", "4", "--time-limit", "-1"], r"time_limit -1\.0: must be a positive number"),
    (["--budget", "4", "--gap", "2"], r"gap 2\.0: must be a relative gap"),
    (["--budget", "4", "--frobnicate"], r"unrecognized arguments: --frobnicate"),
    ([], r"give --budget \(bits per weight\) and/or --constraint"),
]


@pytest.mark.parametrize("args,pattern", OPTION_ERRORS, ids=[" ".join(a) or "no-budget" for a, _ in OPTION_ERRORS])
def test_bad_options(capsys, tmp_path, args, pattern):
    prof = write_doc(tmp_path / "p.json")
    out = tmp_path / "alloc.json"
    rc, stdout, err = run(capsys, "solve", "--profile", prof, "--out", out, *args)
    assert_one_line_error(rc, err, pattern)
    assert not out.exists()


def test_pin_candidate_not_allowed_for_unit(capsys, tmp_path):
    prof = write_doc(tmp_path / "p.json", lambda d: d["sensitivity"][0].__setitem__(2, None))
    rc, _, err = run(capsys, "solve", "--profile", prof, "--budget", "4", "--pin", "layers.0.proj=8")
    assert_one_line_error(rc, err, r"pin of unit 'layers\.0\.proj' '?8'?: that candidate is not allowed")


def test_no_subcommand(capsys):
    rc, _, err = run(capsys)
    assert_one_line_error(rc, err, r"required: cmd")


def test_budget_below_minimum_names_a_feasible_budget(capsys, smollm_path, tmp_path):
    """The smallest feasible budget in the message, rounded for display, is itself feasible."""
    pin = "model.layers.0.self_attn.k_proj=3"  # minimum 2 + 110592/106168320 = 2.0010417 (not 2.0010)
    out = tmp_path / "a.json"
    rc, _, err = run(capsys, "solve", "--profile", smollm_path, "--budget", "2", "--pin", pin, "--out", out)
    assert_one_line_error(rc, err, r"budget 2 is below the smallest feasible avg_bits (\d+\.\d+)")
    shown = float(re.search(r"avg_bits (\d+\.\d+)", err).group(1))
    assert shown == 2.0011
    assert not out.exists()
    rc, out_text, err = run(capsys, "solve", "--profile", smollm_path, "--budget", shown, "--pin", pin, "--json")
    assert rc == 0, err
    assert json.loads(out_text)["status"] == "optimal"


def test_debug_raises(capsys, tmp_path):
    missing = tmp_path / "nope.json"
    for argv in (["--debug", "solve", "--profile", str(missing), "--budget", "3"],
                 ["solve", "--profile", str(missing), "--budget", "3", "--debug"]):
        with pytest.raises(BitallocError, match="no such file"):
            main(argv)


# ---- output files -------------------------------------------------------------------------
def test_out_written_and_not_overwritten_without_force(capsys, smollm_path, smollm, tmp_path):
    out = tmp_path / "alloc.json"
    rc, stdout, err = run(capsys, "solve", "--profile", smollm_path, "--budget", "3.25", "--out", out)
    assert rc == 0, err
    assert f"wrote {out}" in stdout
    a = Allocation.load(out)
    assert a.status == "optimal" and a.budgets == {"avg_bits": 3.25}
    assert avg_bits_of(smollm, a.bits) <= 3.25
    first = out.read_text()

    rc, _, err = run(capsys, "solve", "--profile", smollm_path, "--budget", "4", "--out", out)
    assert_one_line_error(rc, err, r"--out '.*alloc\.json': file exists \(pass --force to overwrite\)")
    assert out.read_text() == first

    rc, _, err = run(capsys, "solve", "--profile", smollm_path, "--budget", "4", "--out", out, "--force")
    assert rc == 0, err
    assert Allocation.load(out).budgets == {"avg_bits": 4.0}
    assert sorted(f.name for f in tmp_path.iterdir()) == ["alloc.json", "smollm.profile.json"]  # no temp files


def test_failed_solve_leaves_existing_out_alone(capsys, smollm_path, tmp_path):
    out = tmp_path / "alloc.json"
    out.write_text("precious")
    rc, _, err = run(capsys, "solve", "--profile", smollm_path, "--budget", "1", "--out", out, "--force")
    assert_one_line_error(rc, err, r"below the smallest feasible")
    assert out.read_text() == "precious"


def test_out_folder_missing(capsys, smollm_path, tmp_path):
    out = tmp_path / "no" / "such" / "a.json"
    rc, _, err = run(capsys, "solve", "--profile", smollm_path, "--budget", "3", "--out", out)
    assert_one_line_error(rc, err, r"folder .* does not exist")


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    from bitalloc import fileio

    path = tmp_path / "a.json"
    path.write_text("old")

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", boom)
    with pytest.raises(OSError):
        fileio.atomic_write(path, "new" * 1000, force=True)
    assert path.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]  # the temp file is removed


def test_several_budgets(capsys, smollm_path, smollm, tmp_path):
    out = tmp_path / "a.json"
    rc, stdout, err = run(capsys, "solve", "--profile", smollm_path, "--budget", "2.5,3,4", "--out", out)
    assert rc == 0, err
    assert not out.exists()
    objs = []
    for b in ("2.5", "3", "4"):
        path = tmp_path / f"a.b{b}.json"
        assert f"wrote {path}" in stdout
        a = Allocation.load(path)
        assert a.budgets == {"avg_bits": float(b)} and a.status == "optimal"
        assert avg_bits_of(smollm, a.bits) <= float(b)
        objs.append(a.objective)
    assert objs[0] > objs[1] > objs[2]
    # a name template; and one existing target stops the whole run before anything is written
    (tmp_path / "t-3.json").write_text("x")
    rc, _, err = run(capsys, "solve", "--profile", smollm_path, "--budget", "2.5,3", "--out", tmp_path / "t-{budget}.json")
    assert_one_line_error(rc, err, r"t-3\.json'?: file exists")
    assert not (tmp_path / "t-2.5.json").exists()
    rc, _, err = run(capsys, "solve", "--profile", smollm_path, "--budget", "2.5,3", "--out", tmp_path / "t-{budget}.json", "--force")
    assert rc == 0
    assert Allocation.load(tmp_path / "t-3.json").budgets == {"avg_bits": 3.0}


def test_json_output(capsys, smollm_path, smollm):
    rc, stdout, err = run(capsys, "solve", "--profile", smollm_path, "--budget", "3.25", "--json")
    assert rc == 0 and err == ""
    d = json.loads(stdout)
    assert d["schema"] == "bitalloc.allocation/1" and d["status"] == "optimal"
    assert set(d["bits"]) == set(smollm.names)
    assert avg_bits_of(smollm, d["bits"]) <= 3.25 * (1 + 1e-12)
    assert d["avg_bits"] == pytest.approx(avg_bits_of(smollm, d["bits"]), rel=1e-12)
    assert Allocation.from_json(d).to_json() == d

    rc, stdout, _ = run(capsys, "solve", "--profile", smollm_path, "--budget", "3,4", "--json", "--solver", "greedy")
    docs = json.loads(stdout)
    assert [x["budgets"]["avg_bits"] for x in docs] == [3.0, 4.0]
    for x in docs:
        assert x["solver"] == "greedy" and avg_bits_of(smollm, x["bits"]) <= x["budgets"]["avg_bits"]


@pytest.mark.parametrize("backend", ["highs", "pulp", "cpsat"])
def test_backends_and_options(capsys, smollm_path, smollm, backend):
    rc, stdout, err = run(capsys, "solve", "--profile", smollm_path, "--budget", "3", "--backend", backend,
                          "--time-limit", "30", "--gap", "1e-9", "--json")
    assert rc == 0, err
    d = json.loads(stdout)
    assert d["meta"]["backend"] == backend and d["status"] == "optimal"
    assert avg_bits_of(smollm, d["bits"]) <= 3.0


def test_tables_output(capsys, smollm_path, tmp_path):
    rc, stdout, err = run(capsys, "solve", "--profile", smollm_path, "--budget", "3.25")
    assert rc == 0, err
    assert "bits per layer" in stdout and "optimal" in stdout and "avg_bits" in stdout
    # names without numbered blocks: a per-unit table
    prof = write_doc(tmp_path / "p.json", lambda d: [u.__setitem__("name", f"unit{i}") for i, u in enumerate(d["units"])])
    rc, stdout, err = run(capsys, "solve", "--profile", prof, "--budget", "4")
    assert rc == 0, err
    assert "bits per unit" in stdout and "unit2" in stdout


def test_count_overhead_flag(capsys, smollm_path, smollm):
    rc, stdout, _ = run(capsys, "solve", "--profile", smollm_path, "--budget", "4", "--count-overhead", "--json")
    d = json.loads(stdout)
    assert d["budgets"] == {"avg_bits_with_overhead": 4.0}
    assert d["avg_bits_with_overhead"] <= 4.0
    # 32 bits of scale + zero per 128-column group: 0.25 bits/weight, a bit more for 576-wide rows (5 groups)
    assert 0.25 <= d["avg_bits_with_overhead"] - d["avg_bits"] <= 32 * 5 / 576


# ---- tie / pin / min-bits -----------------------------------------------------------------
def blocks(bits: dict) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for name, b in bits.items():
        m = re.match(r"model\.layers\.(\d+)\.\w+\.(\w+)$", name)
        out.setdefault(m.group(1), {})[m.group(2)] = b
    return out


def test_tie_pin_min_bits(capsys, smollm_path, smollm):
    rc, stdout, _ = run(capsys, "solve", "--profile", smollm_path, "--budget", "3.25", "--json")
    free = blocks(json.loads(stdout)["bits"])
    # without the tie q/k/v differ somewhere, so the tie below has something to do
    assert any(len({b["q_proj"], b["k_proj"], b["v_proj"]}) > 1 for b in free.values())
    assert any(b < 3 for blk in free.values() for b in blk.values())

    rc, stdout, err = run(capsys, "solve", "--profile", smollm_path, "--budget", "3.25", "--json",
                          "--tie", "q_proj,k_proj,v_proj", "--tie", "gate_proj,up_proj",
                          "--pin", "*.0.*=8", "--min-bits", "3")
    assert rc == 0, err
    d = json.loads(stdout)
    assert d["status"] == "optimal"
    got = blocks(d["bits"])
    assert len(got) == 30
    for blk in got.values():
        assert blk["q_proj"] == blk["k_proj"] == blk["v_proj"]
        assert blk["gate_proj"] == blk["up_proj"]
    assert set(got["0"].values()) == {8}
    assert min(d["bits"].values()) >= 3
    assert avg_bits_of(smollm, d["bits"]) <= 3.25
    # q/k/v differ across blocks: the tie is per block, not global
    assert len({blk["q_proj"] for blk in got.values()}) > 1


def test_max_bits(capsys, smollm_path, smollm):
    rc, stdout, _ = run(capsys, "solve", "--profile", smollm_path, "--budget", "8", "--max-bits", "5", "--json")
    d = json.loads(stdout)
    assert set(d["bits"].values()) == {5}


# ---- console script and the embedded profile ------------------------------------------------
def console_script() -> str:
    exe = Path(sys.executable).with_name("bitalloc")
    found = str(exe) if exe.exists() else shutil.which("bitalloc")
    assert found, "the `bitalloc` console script is not installed (pip install -e .)"
    return found


def test_console_script(tmp_path, smollm_path, smollm):
    out = tmp_path / "a.json"
    r = subprocess.run([console_script(), "solve", "--profile", str(smollm_path), "--budget", "3.5", "--out", str(out),
                        "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert avg_bits_of(smollm, d["bits"]) <= 3.5
    assert Allocation.load(out).to_json()["bits"] == d["bits"]

    r = subprocess.run([console_script(), "solve", "--profile", str(tmp_path / "missing.json"), "--budget", "3"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and "no such file" in r.stderr

    r = subprocess.run([console_script(), "--debug", "solve", "--profile", str(tmp_path / "missing.json"), "--budget", "3"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" in r.stderr and "BitallocError" in r.stderr


needs_default = pytest.mark.skipif(not default_profile_path().exists(),
                                   reason=f"embedded default profile {default_profile_path().name} not generated yet")


@needs_default
def test_default_profile_in_process(capsys):
    p = Profile.load(default_profile_path())
    rc, stdout, err = run(capsys, "solve", "--budget", "3.25", "--json")
    assert rc == 0, err
    d = json.loads(stdout)
    assert d["status"] == "optimal"
    assert set(d["bits"]) == set(p.names)
    assert avg_bits_of(p, d["bits"]) <= 3.25
    assert avg_bits_of(p, d["bits"]) > 3.2  # the budget is used, not wasted


@needs_default
def test_default_profile_without_torch():
    code = ("import sys; from bitalloc.cli import main; rc = main(['solve','--budget','3.25','--json']); "
            "assert rc == 0, rc; assert 'torch' not in sys.modules, 'torch was imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(default_profile_path()))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["budgets"] == {"avg_bits": 3.25} and d["status"] == "optimal"
