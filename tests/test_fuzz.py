"""Property-based fuzz (hypothesis) of profile JSON and CLI arguments through `bitalloc.cli.main`,
in-process. Every outcome is exit 0 with every output it names written and valid, or exit 2
with exactly one stderr line and no file written. BITALLOC_FUZZ_EXAMPLES sets the examples per
property (fast suite: 60); the slow variants run 10x that."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bitalloc.cli.app import main  # noqa: E402

N = int(os.environ.get("BITALLOC_FUZZ_EXAMPLES", "60"))
SETTINGS = dict(deadline=None, derandomize=False, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                             HealthCheck.too_slow])

NAMES = ["layers.0.q_proj", "layers.0.k_proj", "layers.1.q_proj", "layers.1.k_proj"]


def base_doc() -> dict:
    return {"schema": "bitalloc.profile/1", "bits": [2, 4, 8],
            "units": [{"name": n, "n_params": 100 * (i + 1), "shape": [10, 10 * (i + 1)]} for i, n in enumerate(NAMES)],
            "sensitivity": [[(i + 1) * 4.0 ** -b for b in (2, 4, 8)] for i in range(4)],
            "meta": {"estimator": "fuzz", "group_size": 128}}


numbers = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1, -1, 2**53, 2**63, 1e308, 1e-320]))
texts = st.one_of(st.text(max_size=12), st.sampled_from(["", "a\nb", "x\x1b[1m", "\x00", "a:g1", "a.b.c", "é"]))
json_values = st.recursive(st.one_of(st.none(), st.booleans(), numbers, texts),
                           lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(texts, inner, max_size=4)), max_leaves=12)
PATHS = [("meta", "symmetric"), ("meta", "outlier_fraction"), ("units",), ("units", 0), ("units", 1, "name"), ("units", 2, "n_params"), ("units", 0, "shape"),
         ("units", 3, "layer"), ("units", 1, "index"), ("units", 0, "axis"), ("bits",), ("bits", 1), ("formats",),
         ("sensitivity",), ("sensitivity", 0), ("sensitivity", 2, 1), ("meta",), ("meta", "group_size"),
         ("schema",), ("sidecar",), ("n_units",)]


@st.composite
def profile_docs(draw):
    doc = base_doc()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        value = draw(json_values)
        target = doc
        try:
            for key in path[:-1]:
                target = target[key]
            if draw(st.booleans()) or not isinstance(target, (dict, list)):
                target[path[-1]] = value
            elif isinstance(target, dict):
                target.pop(path[-1], None)
            else:
                del target[path[-1]]
        except (KeyError, IndexError, TypeError):
            pass
    return doc


def check_outcome(rc: int, err: str, folder: Path, before: set[str], outputs: list[str]):
    new = sorted(set(os.listdir(folder)) - before)
    if rc == 2:
        # one error line; a deprecated alias (--device) may add its one-line note before it
        lines = [l for l in err.splitlines() if not l.startswith("bitalloc: note: ")]
        assert len(lines) == 1 and lines[0].startswith("bitalloc: error: ") and err.endswith("\n"), err
        assert new == [], f"exit 2 but wrote {new}: {err}"
        return
    assert rc == 0, f"exit {rc}: {err}"
    assert not [n for n in new if n.endswith(".tmp")], new
    for name in outputs:
        p = folder / name
        assert p.is_file() and p.stat().st_size > 0, f"{name} not written"
    for name in new:  # every file it wrote (several budgets: a.b3.json, a.b4.json) is valid
        p = folder / name
        if name.endswith(".json"):
            json.loads(p.read_text(), parse_constant=lambda c: pytest.fail(f"{name} holds {c}"))


def run_in(folder: Path, argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    old = os.getcwd()
    os.chdir(folder)
    try:
        rc = main(argv)
    finally:
        os.chdir(old)
    return rc, capsys.readouterr().err


def _profile_property(doc, budget, capsys):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        text = json.dumps(doc, allow_nan=True)
        (folder / "p.json").write_text(text)
        before = set(os.listdir(folder))
        rc, err = run_in(folder, ["solve", "--profile", "p.json", "--budget", budget, "--out", "a.json"], capsys)
        check_outcome(rc, err, folder, before, [] if "," in budget else ["a.json"])


budgets = st.one_of(st.floats(0, 20).map(lambda x: f"{x:.3g}"), st.sampled_from(["nan", "inf", "-1", "", "3,4", "1e400"]),
                    st.text(max_size=6))


@settings(max_examples=N, **SETTINGS)
@given(doc=profile_docs(), budget=budgets)
def test_fuzz_profile_json(doc, budget, capsys):
    _profile_property(doc, budget, capsys)


# ---- CLI arguments ------------------------------------------------------------------------
values = st.one_of(st.sampled_from(["", "0", "-1", "1", "3", "3.25", "nan", "inf", "1e309", str(2**64), "-0",
                                    "a\nb", "--out", "p.json", "a.json", "x.csv", ".", "..", "/", "/proc/x",
                                    "dir", "f.txt/x", "q_proj,k_proj", "*=8", "layers.0.*=4", "2:6:0.5", "3:2:1",
                                    "avg_bits<=3", "latency_ms<=1", "json", "gguf", "cortex-m7", "ilp", "greedy",
                                    "dmmv", "max", "sum"]),
                   st.text(max_size=8), st.integers(-10, 2**65).map(str))
FLAGS = {
    "solve": ["--profile", "--budget", "--solver", "--objective", "--time-limit", "--gap", "--pin", "--tie",
              "--min-bits", "--max-bits", "--constraint", "--device", "--cost-option", "--out", "--backend"],
    "pareto": ["--profile", "--budgets", "--backend", "--time-limit", "--pin", "--tie", "--min-bits", "--max-bits",
               "--out", "--constraint"],
    "report": ["--allocation", "--profile"],
    "export": ["--allocation", "--format", "--out", "--group-size", "--fused", "--merge", "--type-map", "--model"],
    "mcu": ["--profile", "--device", "--out"],
}
SWITCHES = ["--force", "--json", "--count-overhead", "--round-up"]
REQUIRED = {"solve": ["--budget", "3"], "pareto": ["--budgets", "3:4:1"], "report": ["--allocation", "a.json"],
            "export": ["--allocation", "a.json", "--format", "json", "--out", "e.json"],
            "mcu": ["plan", "--device", "cortex-m7", "--profile", "p.json", "--out", "plan.csv"]}


@st.composite
def argvs(draw):
    cmd = draw(st.sampled_from(sorted(FLAGS)))
    argv = list(REQUIRED[cmd]) if draw(st.integers(0, 3)) else []
    for _ in range(draw(st.integers(0, 4))):
        flag = draw(st.sampled_from(FLAGS[cmd] + SWITCHES))
        argv += [flag] if flag in SWITCHES else [flag, draw(values)]
    if cmd == "mcu" and (not argv or argv[0] != "plan"):
        argv = ["plan", *argv]
    if cmd in ("solve", "pareto") and "--profile" not in argv:
        argv += ["--profile", "p.json"]
    return [cmd, *[a for a in argv if a != "--debug"]]  # --debug shows tracebacks by design


def _outputs(argv: list[str]) -> list[str]:
    """The files a successful run must have written (the last value of each output flag)."""
    out = {}
    for i, a in enumerate(argv[:-1]):
        if a in ("--out", "--plot"):
            out[a] = argv[i + 1]
    if argv[0] == "solve" and "--out" in out and "," in _last(argv, "--budget", ""):
        return []  # one file per budget: names derived
    return [v for v in out.values() if v and not v.startswith("/")]


def _last(argv, flag, default):
    idx = [i for i, a in enumerate(argv[:-1]) if a == flag]
    return argv[idx[-1] + 1] if idx else default


def _setup(folder: Path) -> None:
    doc = base_doc()
    (folder / "p.json").write_text(json.dumps(doc))
    (folder / "a.json").write_text(json.dumps({"schema": "bitalloc.allocation/1", "status": "optimal", "solver": "ilp",
                                               "bits": {n: 4 for n in doc["units"] and NAMES}, "avg_bits": 4.0,
                                               "budgets": {"avg_bits": 4.0}}))
    (folder / "dir").mkdir()
    (folder / "f.txt").write_text("x")


def _cli_property(argv, capsys):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        _setup(folder)
        before = set(os.listdir(folder))
        rc, err = run_in(folder, argv, capsys)
        outs = [o for o in _outputs(argv) if not (folder / o).exists() or o not in before]
        if rc == 0 and "--force" in argv:
            outs = [o for o in _outputs(argv)]
            new = sorted(set(os.listdir(folder)) - before)
            assert not [n for n in new if n.endswith(".tmp")], new
            for o in outs:
                assert (folder / o).is_file(), (argv, o)
            return
        check_outcome(rc, err, folder, before, outs)


@settings(max_examples=N, **SETTINGS)
@given(argv=argvs())
def test_fuzz_cli_arguments(argv, capsys):
    _cli_property(argv, capsys)


@pytest.mark.slow
@settings(max_examples=10 * N, **SETTINGS)
@given(doc=profile_docs(), budget=budgets)
def test_fuzz_profile_json_long(doc, budget, capsys):
    _profile_property(doc, budget, capsys)


@pytest.mark.slow
@settings(max_examples=10 * N, **SETTINGS)
@given(argv=argvs())
def test_fuzz_cli_arguments_long(argv, capsys):
    _cli_property(argv, capsys)


def test_fuzz_found_cases_stay_fixed(capsys):
    """Inputs that once ended in a traceback or a stray file (kept as plain regression cases)."""
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        text = json.dumps(base_doc())
        (folder / "p.json").write_text(text[:-1] + ', "x": ' + "[" * 50_000 + "]" * 50_000 + "}")
        before = set(os.listdir(folder))
        rc, err = run_in(folder, ["solve", "--profile", "p.json", "--budget", "3", "--out", "a.json"], capsys)
        check_outcome(rc, err, folder, before, [])
        assert "nested too deeply" in err
    _cli_property(["solve", "--budget", "3", "--out", "", "--profile", "p.json"], capsys)
    _cli_property(["report", "--allocation", "a.json", "--profile", "p.json"], capsys)
