"""The reliability cases of issue 15, run against the real `bitalloc` command, as a table.

Each case is a command with a hostile or careless input; it is run in a fresh folder (a
subprocess `python -m bitalloc.cli ...`, this checkout first on PYTHONPATH) and the table keeps
its exit code, its stderr (one line expected), and the files left in the folder afterwards
(temp files included). tests/test_reliability.py runs the same CASES in-process as regression
tests; this script writes docs/reliability.md:

    PYTHONPATH=. python scripts/reliability_table.py [--out docs/reliability.md] [--fuzz 100]

--fuzz N also runs the hypothesis fuzz (tests/test_fuzz.py, N examples per property) and puts
its statistics in the page.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ---- fixtures the cases start from -------------------------------------------------------
def small_profile_doc(names=("layers.0.q_proj", "layers.0.k_proj", "layers.1.q_proj", "layers.1.k_proj")) -> dict:
    """A 4-unit profile JSON (candidates 2, 4, 8 bits)."""
    return {"schema": "bitalloc.profile/1", "bits": [2, 4, 8],
            "units": [{"name": n, "n_params": 100 * (i + 1), "shape": [10, 10 * (i + 1)]} for i, n in enumerate(names)],
            "sensitivity": [[(i + 1) * 4.0 ** -b for b in (2, 4, 8)] for i in range(len(names))],
            "meta": {"estimator": "test", "group_size": 128}}


def deep_json(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def digits_files(folder: Path) -> None:
    """d.json (a weight_error profile of digits-cnn, layer units), da.json (its allocation at 4
    bits per weight), dq.safetensors (applied, group size 128), dc.json (a channel-granularity
    profile of 40 of the 122 channel units, as `measured --option units=40` makes) and dca.json
    (its allocation): what the apply/verify cases start from."""
    from bitalloc.cli.app import main

    for argv in (["profile", "--model", "digits-cnn", "--estimator", "weight_error", "--out", "d.json"],
                 ["solve", "--profile", "d.json", "--budget", "4", "--out", "da.json"],
                 ["apply", "--model", "digits-cnn", "--allocation", "da.json", "--out", "dq.safetensors"],
                 ["profile", "--model", "digits-cnn", "--estimator", "weight_error", "--granularity", "channel", "--group-size", "32",
                  "--out", "dcfull.json"]):
        if not (folder / argv[argv.index("--out") + 1]).exists():
            _in(folder, main, argv)
    from bitalloc.profile import Profile

    full = Profile.load(folder / "dcfull.json")
    keep = sorted(set(round(i * (full.n_units - 1) / 39) for i in range(40)))
    doc = full.to_json()
    doc["units"] = [doc["units"][i] for i in keep]
    doc["sensitivity"] = [doc["sensitivity"][i] for i in keep]
    (folder / "dc.json").write_text(json.dumps(doc))
    _in(folder, main, ["solve", "--profile", "dc.json", "--budget", "4", "--out", "dca.json", "--force"])


def _in(folder: Path, fn, *args):
    old = os.getcwd()
    os.chdir(folder)
    try:
        rc = fn(*args)
    finally:
        os.chdir(old)
    if rc not in (0, None):
        raise RuntimeError(f"fixture step {args} failed with {rc}")


def forge_group_size_1(src: Path, dst: Path) -> None:
    """The issue's forgery: the packed file of `src` rewritten with group_size 1, one float16
    scale per weight, 4-bit codes all 1 and zero 0 (so every weight decodes to its scale, the
    model's weights in fp16), metadata and sha256 recomputed: 24 bits per weight stored."""
    import numpy as np
    from safetensors.numpy import save

    from bitalloc.quant.pack import FORMAT, digest, pack_levels, read

    pk = read(src)
    settings = dict(pk.settings, group_size=1, zero="int", symmetric=False)
    tensors, records = {}, []
    from bitalloc.quant.codec import decode_unit

    for c in pk.codes:
        rows, cols = (int(x) for x in c.record["shape"])
        w = decode_unit(c, pk.settings).astype(np.float16)
        b = 4
        tensors[f"{c.name}.q"] = pack_levels(np.ones((rows, cols), np.int64), b)
        tensors[f"{c.name}.scale"] = np.ascontiguousarray(w)
        tensors[f"{c.name}.zero"] = pack_levels(np.zeros((rows, cols), np.int64), b)
        records.append(dict(c.record, bits=b, format="int4", offset=0))
    alloc = dict(pk.allocation, bits={r["name"]: 4 for r in records})
    meta = {"format": FORMAT, "allocation": json.dumps(alloc), "quantizer": json.dumps(settings),
            "units": json.dumps(records), "sha256": digest(tensors)}
    dst.write_bytes(save(tensors, metadata=meta))


def over_budget_allocation(folder: Path) -> None:
    """da.json with its avg_bits budget lowered below what its bits take (3 < 4)."""
    d = json.loads((folder / "da.json").read_text())
    d["budgets"] = {"avg_bits": 3.0}
    (folder / "over.json").write_text(json.dumps(d))


def llm_allocation(folder: Path) -> None:
    (folder / "llm.json").write_text(json.dumps({"schema": "bitalloc.allocation/1", "status": "feasible",
                                                 "solver": "x", "bits": {"model.layers.0.mlp.up_proj": 4}}))


# ---- the cases ----------------------------------------------------------------------------
@dataclass
class Case:
    """argv: the command after `bitalloc`; setup(folder): files it starts from; rc: the exit code
    it must end with; pattern: a phrase of its one-line stderr; left: files that may be in the
    folder afterwards besides what setup made (none by default); digits: needs the digits files;
    env_hide: optional packages made unimportable (the base install); slow: not in the fast tests."""

    name: str
    argv: list[str]
    rc: int
    pattern: str
    setup: Callable[[Path], None] | None = None
    left: tuple[str, ...] = ()
    digits: bool = False
    hide: tuple[str, ...] = ()
    slow: bool = False
    input: str = ""
    lines: int = 1  # stderr lines expected (1: the error; apply/verify may first print "loading")
    check: Callable[[Path], str | None] | None = None  # extra check on the folder: None if fine


def _write(name: str, text: str):
    return lambda d: (d / name).write_text(text)


def _profile(name: str, doc: dict):
    return _write(name, json.dumps(doc))


def _link(name: str, target: str):
    return lambda d: os.symlink(target, d / name)


def _mkdir(name: str):
    return lambda d: (d / name).mkdir()


def _both(*fns):
    def setup(d):
        for f in fns:
            f(d)
    return setup


def _valid_json(name: str, key: str | None = None):
    def check(d: Path):
        try:
            doc = json.loads((d / name).read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        except Exception as e:
            return f"{name} is not valid JSON: {e}"
        return None if key is None or key in json.dumps(doc) else f"{name} lacks {key!r}"
    return check


P = small_profile_doc()
CASES = [
    Case("verify: forged packed file (group_size 1, fp16 scale per weight, sha256 recomputed)",
         ["verify", "--model", "digits-cnn", "--allocation", "da.json", "--packed", "forged.safetensors",
          "--out", "r.json"], 1, "quantizer group_size: the file has 1",
         setup=lambda d: forge_group_size_1(d / "dq.safetensors", d / "forged.safetensors"), digits=True,
         left=("r.json",), input="24 bits/weight stored, metadata says 4", lines=0),
    Case("solve --out ''", ["solve", "--budget", "3.25", "--out", ""], 2, "empty path", input="empty --out"),
    Case("solve --out dangling link", ["solve", "--budget", "3.25", "--out", "link.json"], 2, "dangling symbolic link",
         setup=_link("link.json", "nowhere/x.json"), input="symlink to a missing file"),
    Case("solve --out into a folder that refuses files", ["solve", "--budget", "3.25", "--out", "/proc/x.json"], 2,
         "cannot create files", input="/proc (read-only to files)"),
    Case("solve --out under a file", ["solve", "--budget", "3.25", "--out", "f.txt/a.json"], 2, "is not a folder",
         setup=_write("f.txt", "x"), input="parent is a file"),
    Case("solve --out a folder --force", ["solve", "--budget", "3.25", "--out", "dir", "--force"], 2,
         "is a folder, not a file", setup=_mkdir("dir"), input="--out names a folder"),
    Case("solve --out existing file", ["solve", "--budget", "3.25", "--out", "a.json"], 2, "file exists",
         setup=_write("a.json", "{}"), input="no --force"),
    Case("solve: several budgets, one --out name", ["solve", "--budget", "3,3", "--out", "a{budget}.json"], 2,
         "each budget once", input="two budgets would write one file"),
    Case("pareto --out under a file", ["pareto", "--budgets", "3:4:0.5", "--out", "f.txt/front.csv"], 2,
         "is not a folder", setup=_write("f.txt", "x"), input="parent is a file"),
    Case("pareto --plot a folder --force", ["pareto", "--budgets", "3:4:0.5", "--out", "front.csv", "--plot", "dir",
                                           "--force"], 2, "is a folder, not a file", setup=_mkdir("dir"),
         input="--plot names a folder; --out must not be written"),
    Case("pareto --plot == --out", ["pareto", "--budgets", "3:4:0.5", "--out", "x.png", "--plot", "./x.png"], 2,
         "must differ from --out", input="same file twice"),
    Case("apply --out under a file (before loading the model)",
         ["apply", "--model", "digits-cnn", "--allocation", "da.json", "--out", "f.txt/q.safetensors"], 2,
         "is not a folder", setup=_write("f.txt", "x"), digits=True, input="parent is a file"),
    Case("apply --out a folder --force", ["apply", "--model", "digits-cnn", "--allocation", "da.json", "--out", "dir",
                                          "--force"], 2, "write FILE.safetensors", setup=_mkdir("dir"), digits=True,
         input="--out names a folder"),
    Case("apply: over-budget allocation", ["apply", "--model", "digits-cnn", "--allocation", "over.json", "--out",
                                           "q.safetensors"], 2, "breaks its own budget",
         setup=over_budget_allocation, digits=True, input="budgets.avg_bits 3, bits average 4"),
    Case("apply: allocation for another model (before loading)",
         ["apply", "--model", "digits-cnn", "--allocation", "llm.json", "--out", "q.safetensors"], 2,
         "allocation is for another model", setup=llm_allocation, digits=True, input="SmolLM2 unit names"),
    Case("apply: partial allocation (40 of 122 channel units)",
         ["apply", "--model", "digits-cnn", "--allocation", "dca.json", "--group-size", "32", "--out", "q.safetensors"],
         2, "is partial: it covers 40 of the 122 units", digits=True, input="measured --option units=40 style profile"),
    Case("apply --allow-partial 8", ["apply", "--model", "digits-cnn", "--allocation", "dca.json", "--group-size", "32",
                                     "--allow-partial", "8", "--out", "q.safetensors"], 0, "",
         digits=True, left=("q.safetensors",), input="the 82 missing units at 8 bits", lines=0),
    Case("solve: deeply nested profile JSON", ["solve", "--profile", "deep.json", "--budget", "3"], 2,
         "nested too deeply", setup=_write("deep.json", deep_json()), input="100000 nested lists"),
    Case("solve: unit name with a newline", ["solve", "--profile", "nl.json", "--budget", "3"], 2,
         "control characters", setup=_profile("nl.json", small_profile_doc(("a\nb", "c", "d", "e"))),
         input="name 'a\\nb'"),
    Case("solve: unit name with an escape", ["solve", "--profile", "esc.json", "--budget", "3"], 2,
         "control characters", setup=_profile("esc.json", small_profile_doc(("a\x1b[31m", "c", "d", "e"))),
         input="name 'a\\x1b[31m'"),
    Case("solve --tie with a typo", ["solve", "--profile", "p.json", "--budget", "4", "--tie", "q_proj,k_prj"], 2,
         "'k_prj' is no dotted part", setup=_profile("p.json", P), input="k_prj"),
    Case("solve --tie matching nothing", ["solve", "--profile", "p.json", "--budget", "4", "--tie", "foo,bar"], 2,
         "'foo' is no dotted part", setup=_profile("p.json", P), input="foo,bar"),
    Case("solve --pin matching nothing", ["solve", "--profile", "p.json", "--budget", "4", "--pin", "zz=8"], 2,
         "matches no unit", setup=_profile("p.json", P), input="zz=8"),
    Case("solve --workers 10000 --trials 2", ["solve", "--budget", "3.25", "--solver", "optuna", "--workers", "10000",
                                              "--trials", "2"], 2, "workers 10000", input="thousands of processes"),
    Case("solve --workers 2 --trials 1", ["solve", "--profile", "p.json", "--budget", "4", "--solver", "optuna",
                                          "--workers", "2", "--trials", "1"], 2, "at most the number of trials",
         setup=_profile("p.json", P), input="more workers than trials"),
    Case("solve --trials 2^64", ["solve", "--budget", "3.25", "--solver", "optuna", "--trials", str(2**64)], 2,
         "n_trials 18446744073709551616", input="2^64"),
    Case("solve --solver optuna on the base install", ["solve", "--budget", "3.25", "--solver", "optuna", "--out",
                                                       "a.json"], 2, "pip install 'bitalloc[search]'",
         hide=("optuna",), input="optuna not installed"),
    Case("pareto --plot on the base install", ["pareto", "--budgets", "3:4:0.5", "--out", "front.csv", "--plot",
                                               "front.png"], 2, "pip install 'bitalloc[plots]'",
         hide=("matplotlib",), input="matplotlib not installed; no CSV either"),
    Case("profile on the base install", ["profile", "--model", "digits-cnn", "--estimator", "fisher", "--out", "p.json"],
         2, "pip install 'bitalloc[models]'", hide=("torch",), input="torch not installed"),
    Case("report --plot on the base install", ["report", "--allocation", "a.json", "--plot", "bits.png"], 2,
         "pip install 'bitalloc[plots]'", hide=("matplotlib",), setup=_write("a.json", "{}"), input="matplotlib not installed"),
    Case("export --format gguf without gguf", ["export", "--allocation", "a.json", "--format", "gguf", "--out", "x.gguf"],
         2, "pip install 'bitalloc[export]'", hide=("gguf",), setup=_write("a.json", "{}"), input="gguf not installed"),
    Case("export json of a channel allocation", ["export", "--allocation", "dca.json", "--format", "json", "--out",
                                                 "bits.json"], 0, "", digits=True, left=("bits.json",),
         input="examples/ptq_pipeline.py's step 5", lines=0, check=_valid_json("bits.json", "conv1:c")),
    Case("scorecard digits-cnn --samples 64 --bits 2,3,4 (layer)",
         ["scorecard", "--model", "digits-cnn", "--samples", "64", "--bits", "2,3,4", "--out", "card.json"], 0, "",
         left=("card.json",), slow=True, input="one unit per layer: undefined ranks", lines=0,
         check=_valid_json("card.json", "spearman_units")),
]


# ---- running a case -----------------------------------------------------------------------
HIDE = """import sys
for name in {hide!r}:
    sys.modules[name] = None
from bitalloc.cli.app import main
sys.exit(main(sys.argv[1:]))
"""


def run_case(case: Case, folder: Path, digits_dir: Path | None = None) -> dict:
    """Run `case` in `folder` (a fresh one) as a subprocess; {rc, stderr, left, ok, why}."""
    if case.digits:
        for f in digits_dir.iterdir():
            if f.is_file():
                (folder / f.name).write_bytes(f.read_bytes())
    if case.setup:
        case.setup(folder)
    before = set(os.listdir(folder))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = HIDE.format(hide=case.hide)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, *case.argv], cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    left = sorted(set(os.listdir(folder)) - before)
    return judge(case, p.returncode, p.stderr, left, folder, p.stdout) | {"seconds": seconds}


def judge(case: Case, rc: int, stderr: str, left: list[str], folder: Path, stdout: str = "") -> dict:
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("loading ")
             and "\r" not in ln and "step/s" not in ln]
    why = []
    if rc != case.rc:
        why.append(f"exit {rc}, expected {case.rc}")
    if case.lines == 1 and len(lines) != 1:
        why.append(f"{len(lines)} stderr lines")
    if case.pattern and case.pattern not in stderr + stdout:
        why.append(f"no {case.pattern!r} in the output")
    if "Traceback" in stderr:
        why.append("traceback")
    extra = [f for f in left if f not in case.left]
    if extra:
        why.append(f"left {extra}")
    if case.check:
        msg = case.check(folder)
        if msg:
            why.append(msg)
    first = next((ln for ln in lines if ln.startswith("bitalloc:")), "")
    if not first and case.pattern:  # verify: the failures are in its report (stdout)
        first = next((ln for ln in stdout.splitlines() if case.pattern in ln), "")
    return {"rc": rc, "line": first, "left": left, "ok": not why, "why": "; ".join(why)}


def table(results: list[tuple[Case, dict]]) -> str:
    out = ["| # | command | input | exit | one line (stderr) | files left | ok |", "|---:|---|---|---:|---|---|---|"]
    for i, (c, r) in enumerate(results, 1):
        cmd = "bitalloc " + " ".join(a if a else "''" for a in c.argv)
        line = r["line"].replace("|", "\\|")
        out.append(f"| {i} | `{cmd}` | {c.input} | {r['rc']} | {line} | {', '.join(r['left']) or 'none'} | "
                   f"{'✓' if r['ok'] else '✗ ' + r['why']} |")
    return "\n".join(out)


# ---- faults: kill -9, SIGTERM and two writers at once -------------------------------------
WRITER = """import os, signal, sys, time
import bitalloc.fileio as f
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even when started in the background (SIG_IGN)
real = os.fsync
def slow(fd):  # the temp is complete but not published: the child is killed here
    print("writing", flush=True)
    time.sleep(600)
f.os.fsync = slow
from bitalloc.cli.app import main
sys.exit(main(sys.argv[1:]))
"""


def kill_while_writing(folder: Path, sig: int) -> dict:
    """`bitalloc solve --out a.json` stopped by `sig` while its temp file is written; then a
    second run (`solve --out b.json`) in the same folder. Returns what was left after each."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", WRITER, "solve", "--budget", "3.25", "--out", "a.json"],
                             cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while child.stdout.readline().strip() != "writing":
        if child.poll() is not None:
            raise RuntimeError(f"writer ended early: {child.stderr.read()}")
    during = sorted(os.listdir(folder))
    child.send_signal(sig)
    rc = child.wait()
    after_kill = sorted(os.listdir(folder))
    nxt = subprocess.run([sys.executable, "-m", "bitalloc.cli", "solve", "--budget", "3.25", "--out", "b.json"],
                         cwd=folder, env=env, capture_output=True, text=True)
    return {"rc": rc, "during": during, "after_kill": after_kill, "next_rc": nxt.returncode,
            "after_next": sorted(os.listdir(folder))}


RACER = """import os, sys, time
import bitalloc.fileio as f
go = float(sys.argv[1])
real = f._publish_file
def at_once(*a):  # both writers publish at the same instant
    time.sleep(max(0.0, go - time.time()))
    return real(*a)
f._publish_file = at_once
from bitalloc.cli.app import main
sys.exit(main(sys.argv[2:]))
"""


def two_writers(folder: Path, budgets=("3", "4")) -> dict:
    """Two `solve --out a.json` runs (different budgets) publishing at the same instant."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    go = time.time() + 6.0
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(go), "solve", "--budget", b, "--out", "a.json"],
                              cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for b in budgets]
    rcs = [p.wait() for p in procs]
    errs = [p.stderr.read() for p in procs]
    return {"rcs": sorted(rcs), "errors": [e.strip() for e in errs if e.strip()], "left": sorted(os.listdir(folder))}


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "reliability.md"))
    ap.add_argument("--fuzz", type=int, default=0, help="hypothesis examples per fuzz property (0: skip)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        digits = tmp / "digits"
        digits.mkdir()
        digits_files(digits)
        results = []
        for i, case in enumerate(CASES):
            folder = tmp / f"case{i}"
            folder.mkdir()
            r = run_case(case, folder, digits)
            print(f"{'ok ' if r['ok'] else 'BAD'} {r['rc']} {case.name}: {r['line'][:100]} ({r['seconds']:.1f} s)",
                  file=sys.stderr)
            results.append((case, r))
        faults = []
        for name, sig in (("kill -9", signal.SIGKILL), ("SIGTERM", signal.SIGTERM), ("SIGINT", signal.SIGINT)):
            folder = tmp / f"fault-{sig}"
            folder.mkdir()
            faults.append((name, kill_while_writing(folder, sig)))
        race = []
        for i in range(10):
            folder = tmp / f"race{i}"
            folder.mkdir()
            race.append(two_writers(folder))
    FUZZ_N[0] = args.fuzz
    fuzz = run_fuzz(args.fuzz) if args.fuzz else None
    Path(args.out).write_text(page(results, faults, race, fuzz))
    print(f"wrote {args.out}", file=sys.stderr)
    if not all(r["ok"] for _, r in results):
        sys.exit(1)


FUZZ_N = [0]


def run_fuzz(n: int) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), BITALLOC_FUZZ_EXAMPLES=str(n))
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_fuzz.py"),
                        "-m", "slow or not slow", "--hypothesis-show-statistics"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    keep = [ln for ln in p.stdout.splitlines() if "passing" in ln or "::" in ln or "passed" in ln or "failed" in ln]
    return "\n".join(keep) + f"\n(wall {time.perf_counter() - t:.0f} s, exit {p.returncode})"


def page(results, faults, race, fuzz) -> str:
    import platform

    lines = ["# Reliability: nothing half-written, nothing fooled, every bad input one line", "",
             f"Produced by `PYTHONPATH=. python scripts/reliability_table.py --fuzz {FUZZ_N[0]}` "
             f"(python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
             f"{os.getloadavg()[0]:.1f} on a shared 2-core machine). Every case "
             "runs `bitalloc` as a subprocess in a fresh folder; \"files left\" lists what the command added to the "
             "folder (temp files included). The same cases are regression tests (tests/test_reliability.py).", "",
             "## How outputs are published", "",
             "- `bitalloc.fileio.check_writable` runs before any heavy work, for every output of every command "
             "(`--out`, `--plot`, `--save-profiles`): empty path, a folder, a dangling link (without --force), a "
             "missing / non-folder / unwritable parent (probed by creating a file: a read-only mount or root's "
             "os.access are not trusted) are one line, exit 2.",
             "- `bitalloc.fileio.publishing`: the output is written to `.NAME.bitalloc-PID-N.tmp` in the target "
             "folder, fsynced, then published with `os.link` (fails if the target exists, so two writers never both "
             "succeed) or, with --force, `os.replace`; the folder is fsynced. Folders (`folder=True`) are built "
             "the same way and published with renameat2(RENAME_NOREPLACE).",
             "- The temp is removed on every exit path: exceptions, SIGINT, SIGTERM, SIGHUP (handlers remove the "
             "process's temps, then do what the signal did before). After `kill -9` the next run that checks an "
             "output in that folder removes temps whose PID is no longer alive.",
             "- Commands with several outputs (solve with several budgets, pareto --out/--plot, scorecard) build "
             "them in memory and publish them together (`publish_all`): if one fails, the others are removed.",
             "- One error handler (`bitalloc.cli.app.main`): BitallocError, OSError, JSON errors (incl. "
             "RecursionError), missing optional packages (`pip install 'bitalloc[extra]'`, checked up front by "
             "`bitalloc.extras.require`) are one line, exit 2; anything else is one line, exit 1 (a bug; "
             "--debug shows the traceback). Control characters in messages are escaped, so it stays one line.",
             "", "## Cases", "", table(results), "", "## Faults", "",
             "| fault | exit | files during | after the fault | next run's exit | after the next run |",
             "|---|---:|---|---|---:|---|"]
    for name, f in faults:
        lines.append(f"| {name} while `solve --out a.json` writes | {f['rc']} | {', '.join(f['during'])} | "
                     f"{', '.join(f['after_kill']) or 'none'} | {f['next_rc']} | {', '.join(f['after_next'])} |")
    wins = sum(r["rcs"] == [0, 2] for r in race)
    lines += ["", f"Two writers of `solve --out a.json` (budgets 3 and 4) publishing at the same instant, "
              f"{len(race)} tries: exactly one succeeded and the other ended with one line, exit 2, in {wins} of "
              f"{len(race)}; files left: {sorted({tuple(r['left']) for r in race})}; the loser's line: "
              f"`{next((e for r in race for e in r['errors']), '')}`."]
    if fuzz:
        lines += ["", "## Fuzz (hypothesis)", "",
                  "tests/test_fuzz.py: profile JSON documents (valid ones mutated: wrong types, NaN/inf/huge "
                  "numbers, missing and extra keys, control characters and unicode in names, nesting) and CLI "
                  "argument lists (solve, pareto, report, export, mcu plan with hostile values) through "
                  "`bitalloc.cli.main` in-process. Property: exit 0 with every named output valid, or exit 2 with "
                  "exactly one stderr line and no file written. The fast suite runs each property with "
                  "max_examples=60 (BITALLOC_FUZZ_EXAMPLES overrides); this run (--fuzz N: N examples for each fast property, "
                  "10 N for each slow one):", "", "```", fuzz, "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
