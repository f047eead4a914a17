"""Issue 15 regression tests: every case of scripts/reliability_table.py (in-process, hidden
packages in a subprocess), kill -9 / SIGTERM while writing, two writers at once, exclusive
publishing, verify against a forged packed file, NaN-free scorecards, the examples."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bitalloc import BitallocError
from bitalloc.cli.app import main
from bitalloc.fileio import atomic_write, check_writable, clean_stale, publishing, temp_path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("reliability_table", ROOT / "scripts" / "reliability_table.py")
rt = importlib.util.module_from_spec(spec)
sys.modules["reliability_table"] = rt
spec.loader.exec_module(rt)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("digits")
    rt.digits_files(d)
    return d


def _run_inprocess(case, folder: Path, digits_dir, capsys, monkeypatch):
    if case.digits:
        for f in digits_dir.iterdir():
            if f.is_file():
                (folder / f.name).write_bytes(f.read_bytes())
    if case.setup:
        case.setup(folder)
    before = set(os.listdir(folder))
    monkeypatch.chdir(folder)
    capsys.readouterr()
    rc = main(list(case.argv))
    out, err = capsys.readouterr()
    left = sorted(set(os.listdir(folder)) - before)
    return rt.judge(case, rc, err, left, folder, out)


FAST = [c for c in rt.CASES if not c.hide and not c.slow]


@pytest.mark.parametrize("case", FAST, ids=[c.name for c in FAST])
def test_case(case, tmp_path, digits_dir, capsys, monkeypatch):
    r = _run_inprocess(case, tmp_path, digits_dir if case.digits else None, capsys, monkeypatch)
    assert r["ok"], (r["why"], r["line"])


HIDDEN = [c for c in rt.CASES if c.hide]


@pytest.mark.parametrize("case", HIDDEN, ids=[c.name for c in HIDDEN])
def test_optional_package_missing_is_one_line_naming_the_extra(case, tmp_path):
    """The base install: the package is made unimportable (sys.modules[name] = None) in a
    subprocess; one line naming `pip install 'bitalloc[extra]'`, exit 2, nothing written."""
    r = rt.run_case(case, tmp_path)
    assert r["ok"], (r["why"], r["line"])


@pytest.mark.parametrize("argv,extra", [
    (["solve", "--budget", "3.25", "--solver", "optuna"], "search"),
    (["pareto", "--budgets", "3:4:1", "--plot", "x.png"], "plots"),
    (["profile", "--model", "digits-cnn", "--estimator", "fisher", "--out", "p.json"], "models"),
    (["scorecard", "--model", "digits-cnn", "--out", "c.json"], "models"),
    (["apply", "--model", "digits-cnn", "--allocation", "a.json", "--out", "q.safetensors"], "models"),
    (["verify", "--model", "digits-cnn", "--allocation", "a.json"], "models"),
    (["measure", "--plan", "plan.csv", "--out", "m.csv"], "models"),
    (["export", "--allocation", "a.json", "--format", "llama.cpp", "--out", "t.txt"], "export"),
])
def test_every_subcommand_without_its_extras(argv, extra, tmp_path):
    """Every optional package hidden at once: each subcommand that needs one says which extra."""
    hide = ("optuna", "matplotlib", "torch", "transformers", "gguf", "safetensors", "sklearn", "scipy", "tqdm")
    case = rt.Case("x", argv, 2, f"pip install 'bitalloc[{extra}]'", hide=hide,
                   setup=rt._write("a.json", "{}"))
    r = rt.run_case(case, tmp_path)
    assert r["ok"], (r["why"], r["line"])


def test_base_install_solve_still_works(tmp_path):
    hide = ("optuna", "matplotlib", "torch", "transformers", "gguf", "safetensors", "sklearn", "scipy", "tqdm")
    case = rt.Case("x", ["solve", "--budget", "3.25", "--out", "a.json"], 0, "", hide=hide, left=("a.json",), lines=0)
    r = rt.run_case(case, tmp_path)
    assert r["ok"], r


# ---- publishing ---------------------------------------------------------------------------
def test_atomic_write_is_exclusive_without_force(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write(p, "one", force=False)
    with pytest.raises(BitallocError, match="file exists"):
        atomic_write(p, "two", force=False)
    assert p.read_text() == "one"
    atomic_write(p, "three", force=True)
    assert p.read_text() == "three"
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_target_appearing_during_the_write_is_not_replaced(tmp_path):
    """The check-then-rename race of the old atomic_write: a file created after the check."""
    p = tmp_path / "a.txt"
    with pytest.raises(BitallocError, match="written meanwhile by another run"):
        with publishing(p, force=False) as tmp:
            tmp.write_text("mine")
            p.write_text("theirs")
    assert p.read_text() == "theirs" and os.listdir(tmp_path) == ["a.txt"]


def test_dangling_link_needs_force_and_temp_removed_on_error(tmp_path):
    link = tmp_path / "l.json"
    os.symlink(tmp_path / "missing" / "x", link)
    with pytest.raises(BitallocError, match="dangling"):
        check_writable(link, force=False)
    with pytest.raises(RuntimeError):
        with publishing(tmp_path / "b.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["l.json"]
    atomic_write(link, "x", force=True)  # replaces the link itself
    assert not link.is_symlink() and link.read_text() == "x"


def test_stale_temps_of_dead_pids_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".a.json.bitalloc-{pid}-0.tmp"
    stale.write_text("half")
    (tmp_path / f".d.bitalloc-{pid}-3.tmp").mkdir()
    mine = temp_path(tmp_path / "b.json")
    mine.write_text("in progress")
    other = tmp_path / ".c.json.1234abcd.tmp"  # not ours: never touched
    other.write_text("x")
    removed = clean_stale(tmp_path)
    assert sorted(p.name for p in removed) == sorted([stale.name, f".d.bitalloc-{pid}-3.tmp"])
    assert sorted(os.listdir(tmp_path)) == sorted([mine.name, other.name])


def test_folder_output_is_built_aside_and_renamed(tmp_path):
    out = tmp_path / "model"
    with publishing(out, folder=True) as tmp:
        (tmp / "w.bin").write_bytes(b"x" * 10)
        assert not out.exists()
    assert (out / "w.bin").read_bytes() == b"x" * 10
    with pytest.raises(BitallocError, match="folder exists"):
        check_writable(out, force=False, folder=True)
    with publishing(out, force=True, folder=True) as tmp:
        (tmp / "v.bin").write_bytes(b"y")
    assert os.listdir(out) == ["v.bin"] and os.listdir(tmp_path) == ["model"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["kill-9", "SIGTERM", "SIGINT"])
def test_killed_while_writing_leaves_neither_target_nor_temp(tmp_path, sig):
    r = rt.kill_while_writing(tmp_path, sig)
    assert any(n.startswith(".a.json.bitalloc-") for n in r["during"])  # it was killed mid-write
    if sig != signal.SIGKILL:  # the handlers removed the temp at once
        assert r["after_kill"] == []
        assert r["rc"] in (-sig, 130)
    assert r["next_rc"] == 0 and r["after_next"] == ["b.json"]  # no a.json, no temp


def test_two_writers_at_once_exactly_one_wins(tmp_path):
    r = rt.two_writers(tmp_path)
    assert r["rcs"] == [0, 2] and r["left"] == ["a.json"], r
    assert len(r["errors"]) == 1 and "file exists" in r["errors"][0] and "\n" not in r["errors"][0]


# ---- verify is not fooled -----------------------------------------------------------------
def test_verify_catches_the_group_size_1_forgery(digits_dir, tmp_path, capsys, monkeypatch):
    from bitalloc.quant.pack import read
    from bitalloc.verify.budgets import check_budgets

    forged = tmp_path / "forged.safetensors"
    rt.forge_group_size_1(digits_dir / "dq.safetensors", forged)
    pk = read(forged)  # sha256 recomputed: the file reads back fine
    report = check_budgets(pk)
    assert report.totals["avg_bits"] == pytest.approx(4.0)
    assert report.totals["avg_bits_with_overhead"] == pytest.approx(24.0)
    text = "\n".join(report.failures)
    assert "quantizer group_size: the file has 1, the allocation's profile was estimated with 128" in text
    assert "avg_bits_with_overhead 24.0000 counted from the bytes stored > 4.2901" in text
    monkeypatch.chdir(digits_dir)
    rc = main(["verify", "--model", "digits-cnn", "--allocation", "da.json", "--packed", str(forged),
               "--out", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 1 and "24.0000" in out and "FAILED" in out
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is False


def test_verify_checks_scale_dtype_and_stray_tensors(digits_dir, tmp_path):
    import numpy as np
    from safetensors.numpy import save

    from bitalloc.quant.pack import digest, read
    from bitalloc.verify.budgets import check_budgets

    pk = read(digits_dir / "dq.safetensors")
    raw = (digits_dir / "dq.safetensors").read_bytes()
    meta = rt_meta(raw)
    t = dict(pk.tensors)
    name = pk.codes[0].name
    t[f"{name}.scale"] = t[f"{name}.scale"].astype(np.float32)  # 32-bit scales where 16 are counted
    t["hidden.payload"] = np.zeros(1000, np.uint8)
    meta["sha256"] = digest(t)
    p = tmp_path / "x.safetensors"
    p.write_bytes(save(t, metadata=meta))
    fails = "\n".join(check_budgets(read(p)).failures)
    assert f"unit {name}: scales stored as float32" in fails
    assert "1 tensor(s) of no unit, 1,000 bytes: hidden.payload" in fails


def rt_meta(raw: bytes) -> dict:
    import struct

    n = struct.unpack("<Q", raw[:8])[0]
    return dict(json.loads(raw[8:8 + n])["__metadata__"])


# ---- scorecard NaN, examples ---------------------------------------------------------------
def test_scorecard_undefined_ranks_are_null_and_na():
    import numpy as np

    from bitalloc import Profile, Unit
    from bitalloc.report.scorecard import card_rows, markdown

    units = [Unit(f"l{i}", n_params=10) for i in range(2)]  # too few units for a rank correlation
    a = Profile(units, [2, 4], np.array([[1.0, 0.5], [2.0, 1.0]]))
    m = Profile(units, [2, 4], np.array([[1.0, 1.0], [1.0, 1.0]]))  # constant
    rows = card_rows({"a": a}, m)
    text = json.dumps(rows, allow_nan=False)  # valid JSON: no NaN
    assert rows[0]["spearman_units"] is None and rows[0]["spearman_cells"] is None and "null" in text
    assert "n/a" in markdown(rows, "t")


@pytest.mark.slow
def test_scorecard_digits_layer_granularity_writes_valid_json(tmp_path, capsys, monkeypatch):
    case = next(c for c in rt.CASES if c.slow and c.argv[0] == "scorecard")
    r = _run_inprocess(case, tmp_path, None, capsys, monkeypatch)
    assert r["ok"], r


@pytest.mark.slow
def test_ptq_pipeline_example_runs_as_written(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "examples" / "ptq_pipeline.py"), "--out", str(tmp_path / "o"),
                        "--samples", "64", "--seeds", "1"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads((tmp_path / "o" / "bits.json").read_text())["conv1:c0"] in (2, 3, 4, 8)
    assert sorted(os.listdir(tmp_path / "o")) == ["allocation.json", "bits.json", "model.q.safetensors",
                                                  "profile.json", "verify.json"]
