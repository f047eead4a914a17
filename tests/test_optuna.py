"""The optuna solver: budgets never violated, warm start, evaluate callback against brute force,
the Pareto set against the exact front, SQLite with 2 workers and resume, PostgreSQL, Ctrl-C."""
from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

import bitalloc
from bitalloc import BitallocError, Problem
from bitalloc.solvers import get_solver

from conftest import avg_bits_of

pytest.importorskip("optuna")


def small_profile(n_units=5, seed=3):
    rng = np.random.default_rng(seed)
    bits = [2, 3, 4, 8]
    n = rng.integers(10, 60, size=n_units)
    S = np.sort(rng.random((n_units, 4)), axis=1)[:, ::-1] * rng.lognormal(0, 1, (n_units, 1))
    return bitalloc.Profile.from_columns([f"blk{i // 2}.u{i}" for i in range(n_units)], n, bits, S.copy())


def test_default_objective_is_the_exact_optimum():
    p = small_profile()
    prob = Problem.average_bits(p, 3.2)
    a = bitalloc.solve(prob, solver="optuna", n_trials=15, seed=0)
    ilp = bitalloc.solve(prob)
    assert a.ok and a.objective == pytest.approx(ilp.objective, rel=1e-12)
    assert a.status == "optimal" and a.bound is not None  # warm start is the ILP: its bound is certified
    assert avg_bits_of(p, a.bits) <= 3.2 + 1e-12
    assert a.meta["trials_this_run"] == 15 and a.meta["search_space"] == "unit"


def test_evaluate_callback_finds_brute_force_optimum_and_skips_over_budget_trials():
    p = small_profile(n_units=3, seed=5)
    budget = 3.5
    calls = []

    def fn(alloc):  # not a sum over units: the sum of scores plus a penalty per distinct bit-width
        calls.append(dict(alloc.bits))
        assert avg_bits_of(p, alloc.bits) <= budget + 1e-12  # only allocations within budget are evaluated
        return alloc.objective + 0.3 * len(set(alloc.bits.values()))

    s = get_solver("optuna", n_trials=60, seed=0, evaluate=fn)
    a = s.solve(Problem.average_bits(p, budget))
    best = np.inf
    for combo in itertools.product(range(4), repeat=3):
        bits = {n: p.bits[k] for n, k in zip(p.names, combo)}
        if avg_bits_of(p, bits) <= budget + 1e-12:
            score = sum(p.sensitivity[i, k] for i, k in enumerate(combo))
            best = min(best, score + 0.3 * len(set(bits.values())))
    assert a.meta["values"][0] == pytest.approx(best, rel=1e-12)
    assert a.status == "feasible" and a.bound is None  # no bound for a black-box objective
    assert avg_bits_of(p, a.bits) <= budget + 1e-12
    evaluated = a.meta["feasible_trials"]
    assert len(calls) == evaluated  # the probe of the warm start is one of them
    assert a.meta["trials_total"] > evaluated  # some trials were over budget and not evaluated


def test_evaluate_tuple_gives_a_pareto_set():
    p = small_profile(n_units=4)
    s = get_solver("optuna", n_trials=40, seed=1, sampler="nsga2", population_size=8,
                   evaluate=lambda a: (a.objective, a.avg_bits_with_overhead))
    a = s.solve(Problem.average_bits(p, 4.0))
    vals = np.array([x["values"] for x in a.meta["pareto"]])
    assert len(vals) >= 2 and vals.shape[1] == 2
    for i, j in itertools.permutations(range(len(vals)), 2):
        assert not (np.all(vals[i] <= vals[j]) and np.any(vals[i] < vals[j])), "front point dominated"
    assert all(avg_bits_of(p, f.bits) <= 4.0 + 1e-12 for f in s.front)


def test_nsga2_front_is_feasible_and_never_beats_the_exact_front():
    p = small_profile(n_units=6)
    s = get_solver("optuna", n_trials=60, seed=2, sampler="nsga2", population_size=10, objectives=("score", "avg_bits"))
    a = s.solve(Problem.average_bits(p, 3.5))
    assert len(s.front) >= 3
    assert a.objective == s.front[0].objective == bitalloc.solve(p, budget=3.5).objective  # warm start on the front
    for f in s.front:
        assert avg_bits_of(p, f.bits) <= 3.5 + 1e-12
        exact = bitalloc.solve(p, budget=f.avg_bits)
        assert exact.objective <= f.objective + 1e-12


def test_shift_space_for_many_units_stays_within_budget():
    rng = np.random.default_rng(0)
    n = 400
    S = np.sort(rng.random((n, 4)), axis=1)[:, ::-1].copy()
    p = bitalloc.Profile.from_columns([f"m.layers.{i // 40}.fc:g{i % 40}" for i in range(n)], rng.integers(8, 64, n),
                                      [2, 3, 4, 8], S, layers=[f"m.layers.{i // 40}.fc" for i in range(n)])
    s = get_solver("optuna", n_trials=12, seed=0, evaluate=lambda a: a.objective * (1 + 0.01 * a.avg_bits))
    a = s.solve(Problem.average_bits(p, 3.0))
    assert a.meta["search_space"] == "shift" and a.meta["search_params"] == 10  # one shift per layer
    assert avg_bits_of(p, a.bits) <= 3.0 + 1e-12


def test_sqlite_two_workers_then_resume(tmp_path):
    import optuna

    p = small_profile()
    url = f"sqlite:///{tmp_path}/study.db"
    prob = Problem.average_bits(p, 3.2)
    a = get_solver("optuna", n_trials=6, workers=2, storage=url, study="s", seed=0).solve(prob)
    per = a.meta["trials_per_worker"]
    assert len(per) == 2 and sum(per.values()) == 6 == a.meta["trials_this_run"]
    assert a.meta["trials_total"] == 7 and a.meta["warm_start_trials"] == 1  # the ILP answer, added before the workers
    study = optuna.load_study(study_name="s", storage=url)
    assert sorted(t.user_attrs.get("worker", -1) for t in study.trials) == [-1] + [0] * 3 + [1] * 3
    b = get_solver("optuna", n_trials=4, workers=2, storage=url, study="s", seed=7).solve(prob)
    assert b.meta["trials_total"] == 11 and b.meta["trials_this_run"] == 4 and b.meta["warm_start_trials"] == 0
    assert b.objective <= a.objective
    with pytest.raises(BitallocError, match="another problem"):  # same study name, different budget
        get_solver("optuna", n_trials=2, storage=url, study="s").solve(Problem.average_bits(p, 3.0))


def test_workers_without_storage_share_a_temporary_journal():
    p = small_profile()
    calls = []
    s = get_solver("optuna", n_trials=6, workers=2, seed=0, evaluate=lambda a: calls.append(1) or a.objective * 2)
    a = s.solve(Problem.average_bits(p, 3.2))
    assert sorted(a.meta["trials_per_worker"].values()) == [3, 3]  # the closure ran in both forked workers
    assert a.meta["values"][0] == pytest.approx(2 * a.objective) and a.meta["storage"] == "memory"


def test_evaluate_returning_the_wrong_number_of_values():
    p = small_profile(n_units=3)
    s = get_solver("optuna", n_trials=3, directions=("minimize",), evaluate=lambda a: (1.0, 2.0))
    with pytest.raises(BitallocError, match="1 objective"):
        s.solve(Problem.average_bits(p, 8.0))


def _on_third_trial(action):
    """An evaluate function returning the profile score that calls `action()` in its third call."""
    n = [0]

    def fn(alloc):
        n[0] += 1
        if n[0] == 3:
            action()
        return alloc.objective
    return fn


def test_keyboard_interrupt_leaves_the_study_resumable(tmp_path):
    import optuna

    def interrupt():
        raise KeyboardInterrupt

    p, url, fn = small_profile(n_units=4), f"sqlite:///{tmp_path}/study.db", _on_third_trial(interrupt)

    prob = Problem.average_bits(p, 8.0)  # every trial within budget: every trial calls fn
    with pytest.raises(KeyboardInterrupt, match="run the same command again"):
        get_solver("optuna", n_trials=10, storage=url, study="k", evaluate=fn, seed=0).solve(prob)
    study = optuna.load_study(study_name="k", storage=url)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 2 and states.count("FAIL") == 1 and "RUNNING" not in states
    a = get_solver("optuna", n_trials=4, storage=url, study="k", evaluate=lambda al: al.objective, seed=1).solve(prob)
    assert a.meta["trials_total"] == len(states) + 4 and a.ok


def test_ctrl_c_stops_after_the_current_trial(tmp_path):
    import optuna
    import signal

    # Ctrl-C while a trial runs: that trial still completes
    p, url = small_profile(n_units=4), f"sqlite:///{tmp_path}/study.db"
    fn = _on_third_trial(lambda: os.kill(os.getpid(), signal.SIGINT))

    prob = Problem.average_bits(p, 8.0)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background launch has SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt, match="keeps its 3 trials"):
            get_solver("optuna", n_trials=10, storage=url, study="c", evaluate=fn, seed=0).solve(prob)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    finally:
        signal.signal(signal.SIGINT, before)
    study = optuna.load_study(study_name="c", storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3


@pytest.mark.slow
def test_ctrl_c_on_the_cli_with_two_workers(tmp_path, small_path):
    import signal
    import sys
    import time

    import optuna

    url = f"sqlite:///{tmp_path}/s.db"
    cmd = [sys.executable, "-m", "bitalloc.cli", "solve", "--profile", small_path, "--budget", "3.2", "--solver", "optuna",
           "--trials", "2000", "--workers", "2", "--storage", url, "--study", "c"]
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(bitalloc.__file__)))}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(1)
        try:
            if len(optuna.load_study(study_name="c", storage=url).trials) >= 6:
                break
        except KeyError:
            pass
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "run the same command again" in err.decode()
    states = [t.state.name for t in optuna.load_study(study_name="c", storage=url).trials]
    assert set(states) == {"COMPLETE"} and 6 <= len(states) < 2000


@pytest.mark.parametrize("kw, pattern", [
    ({"sampler": "cmaes"}, "sampler 'cmaes'"),
    ({"workers": 0}, "workers 0"),
    ({"n_trials": 0}, "n_trials 0"),
    ({"storage": "postgresql://nobody@127.0.0.1:1/none"}, "cannot be opened"),
    ({"storage": "sqlite:////no/such/folder/x.db"}, "cannot be opened"),
    ({"storage": "study.db"}, "must be a database URL"),
    ({"objectives": ("latency",)}, "objectives 'latency'"),
])
def test_bad_options(kw, pattern):
    with pytest.raises(BitallocError, match=pattern):
        get_solver("optuna", **kw).solve(Problem.average_bits(small_profile(), 3.0))


def test_unreachable_storage_hides_the_password():
    with pytest.raises(BitallocError) as e:
        get_solver("optuna", storage="postgresql://me:secret@127.0.0.1:1/db")
    assert "secret" not in str(e.value) and "\n" not in str(e.value)


# ---- PostgreSQL: a real server, started here when the machine has one ---------------------------
def _pg_user() -> str | None:
    if os.geteuid() != 0:
        return None  # run as ourselves
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    return None


@pytest.fixture
def postgres_url():
    bindir = os.path.dirname(os.path.realpath(shutil.which("pg_ctl") or "")) if shutil.which("pg_ctl") else None
    if not bindir or not os.path.exists(os.path.join(bindir, "initdb")):
        pytest.skip("PostgreSQL server binaries (pg_ctl, initdb) are not on this machine")
    try:
        import psycopg  # noqa: F401  (SQLAlchemy's default driver for postgresql://)
    except ImportError:
        pytest.skip("no PostgreSQL driver: pip install 'psycopg[binary]' (extra bitalloc[postgres])")
    user = _pg_user()
    if os.geteuid() == 0 and (user is None or not shutil.which("runuser")):
        pytest.skip("running as root without runuser or a non-root user: initdb refuses root")
    as_user = ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []
    root = tempfile.mkdtemp(prefix="bitalloc-pg-", dir="/tmp")
    if os.geteuid() == 0:
        shutil.chown(root, user)
    data, port = os.path.join(root, "data"), 40000 + os.getpid() % 20000

    def sh(*cmd):
        return subprocess.run(as_user + list(cmd), capture_output=True, text=True, timeout=120)

    try:
        r = sh(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "bitalloc", "--no-sync")
        if r.returncode:
            pytest.skip(f"initdb failed: {r.stderr.strip().splitlines()[-1:]}")
        r = sh(f"{bindir}/pg_ctl", "-D", data, "-l", os.path.join(root, "log"), "-w", "-o",
               f"-k {root} -p {port} -c listen_addresses=''", "start")
        if r.returncode:
            pytest.skip(f"pg_ctl start failed: {r.stderr.strip()[-200:]}")
        yield f"postgresql://bitalloc@/postgres?host={root}&port={port}"
    finally:
        sh(f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_postgresql_two_workers_and_resume(postgres_url):
    p = small_profile()
    prob = Problem.average_bits(p, 3.2)
    a = get_solver("optuna", n_trials=6, workers=2, storage=postgres_url, study="pg", seed=0).solve(prob)
    assert sum(a.meta["trials_per_worker"].values()) == 6 and len(a.meta["trials_per_worker"]) == 2
    b = get_solver("optuna", n_trials=3, storage=postgres_url, study="pg", seed=1).solve(prob)
    assert b.meta["trials_total"] == 10
    assert b.objective == pytest.approx(bitalloc.solve(prob).objective, rel=1e-12)


# ---- CLI -----------------------------------------------------------------------------------------
def _cli(capsys, *args):
    from bitalloc.cli.app import main

    code = main(list(args))
    return code, capsys.readouterr()


@pytest.fixture
def small_path(tmp_path):
    path = tmp_path / "p.json"
    small_profile().save(path)
    return str(path)


def test_cli_optuna_two_workers_sqlite(capsys, tmp_path, small_path):
    out = tmp_path / "a.json"
    url = f"sqlite:///{tmp_path}/s.db"
    code, cap = _cli(capsys, "solve", "--profile", small_path, "--budget", "3.2", "--solver", "optuna", "--trials", "6",
                     "--workers", "2", "--storage", url, "--study", "cli", "--out", str(out))
    assert code == 0, cap.err
    a = bitalloc.Allocation.load(out)
    assert sum(a.meta["trials_per_worker"].values()) == 6 and "trials this run" in cap.out
    assert a.objective == pytest.approx(bitalloc.solve(bitalloc.Profile.load(small_path), budget=3.2).objective)


def test_cli_nsga2_prints_the_pareto_set(capsys, small_path):
    code, cap = _cli(capsys, "solve", "--profile", small_path, "--budget", "3.5", "--solver", "optuna", "--trials", "20",
                     "--sampler", "nsga2", "--population", "6", "--seed", "0")
    assert code == 0, cap.err
    assert "Pareto set" in cap.out and "avg_bits" in cap.out


@pytest.mark.parametrize("args, pattern", [
    (["--sampler", "cmaes"], "sampler 'cmaes'"),
    (["--workers", "0"], "--workers 0"),
    (["--storage", "postgresql://u@127.0.0.1:1/x", "--study", "s"], "cannot be opened"),
    (["--storage", "sqlite:////no/such/dir/s.db"], "cannot be opened"),
])
def test_cli_bad_optuna_input(capsys, tmp_path, small_path, args, pattern):
    out = tmp_path / "a.json"
    code, cap = _cli(capsys, "solve", "--profile", small_path, "--budget", "3.2", "--solver", "optuna",
                     "--out", str(out), *args)
    assert code == 2 and pattern in cap.err and len(cap.err.strip().splitlines()) == 1
    assert not out.exists() and cap.out == ""


def test_cli_optuna_flags_need_the_optuna_solver(capsys, small_path):
    code, cap = _cli(capsys, "solve", "--profile", small_path, "--budget", "3.2", "--trials", "5")
    assert code == 2 and "only applies to --solver optuna" in cap.err
