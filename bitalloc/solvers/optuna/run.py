"""Running an Optuna study: in this process, or in N forked worker processes on one storage.

Each worker opens its own storage from the URL, loads the study with its own sampler (seed
`seed + worker`, or fresh entropy) and runs its share of the trials; every trial records the
worker in its user attributes (`worker`, `host`, `pid`), so trial counts per worker can be read
back from the study.

Ctrl-C: the first SIGINT asks every worker to stop after its current trial (workers ignore
SIGINT themselves; the parent sets a shared flag they check between trials), so no trial is
left half-written and the next run with the same storage and study name continues the study.
A second Ctrl-C aborts at once (workers are terminated; a trial cut short stays RUNNING until
the storage's heartbeat marks it failed).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

FINISHED = ("COMPLETE", "PRUNED", "FAIL")


@dataclass(frozen=True)
class RunSpec:
    """url: storage URL (None only with workers == 1); study: its name; n_trials: trials of this
    run in total, split evenly over `workers`; timeout: seconds per worker or None."""

    url: str | None
    study: str
    n_trials: int
    workers: int
    seed: int | None
    timeout: float | None


def shares(n: int, workers: int) -> list[int]:
    """n trials split over workers, the first ones taking the remainder."""
    return [n // workers + (i < n % workers) for i in range(workers)]


def tag(trial, worker: int) -> None:
    trial.set_user_attr("worker", worker)
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())


def run(spec: RunSpec, study, make_sampler: Callable, objective: Callable,
        progress: Callable | None = None) -> None:
    """Run `spec.n_trials` trials of `objective(worker) -> (trial -> values)` on `study` (already
    created in `spec.url`). progress(done, total) is called as trials finish. Raises
    KeyboardInterrupt after a Ctrl-C, once the workers have stopped."""
    import multiprocessing as mp

    stop = mp.get_context("fork").Event() if spec.workers > 1 else threading.Event()
    with _first_sigint_sets(stop):
        if spec.workers == 1:
            _in_process(spec, study, make_sampler, objective, progress, stop)
        else:
            _forked(spec, study, make_sampler, objective, progress, stop)
    if stop.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def _first_sigint_sets(stop):
    """While inside: the first SIGINT sets `stop`, the next one raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        sys.stderr.write("\nbitalloc: stopping after the current trial(s); Ctrl-C again to abort them\n")

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _stopper(stop):
    def cb(study, _trial):
        if stop.is_set():
            study.stop()
    return cb


def _in_process(spec, study, make_sampler, objective, progress, stop):
    study.sampler = make_sampler(_seed(spec.seed, 0))
    done = [0]

    def tick(_study, _trial):
        done[0] += 1
        progress(done[0], spec.n_trials)

    study.optimize(objective(0), n_trials=spec.n_trials, timeout=spec.timeout,
                   callbacks=[_stopper(stop)] + ([tick] if progress else []))


def _forked(spec, study, make_sampler, objective, progress, stop):
    import multiprocessing as mp

    from optuna.trial import TrialState

    storage = study._storage
    engine = getattr(storage, "engine", None)
    if engine is not None:  # no pooled connection may be shared with the children
        engine.dispose()
    sid = study._study_id
    states = tuple(getattr(TrialState, s) for s in FINISHED)
    n0 = storage.get_n_trials(sid, states)
    ctx = mp.get_context("fork")
    procs, pipes = [], []
    try:
        for w, n in enumerate(shares(spec.n_trials, spec.workers)):
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_worker, args=(spec, w, n, make_sampler, objective, send, stop), daemon=True)
            p.start()
            send.close()
            procs.append(p)
            pipes.append(recv)
        while any(p.is_alive() for p in procs):
            time.sleep(0.25)
            if progress:
                progress(min(storage.get_n_trials(sid, states) - n0, spec.n_trials), spec.n_trials)
    except KeyboardInterrupt:  # the second Ctrl-C: do not wait for the current trials
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()
        raise
    errors = []
    for w, (p, r) in enumerate(zip(procs, pipes)):
        p.join()
        msg = r.recv() if r.poll() else None
        if p.exitcode != 0 or msg:
            errors.append(f"worker {w}: {msg or f'exit code {p.exitcode}'}")
    if errors:
        raise RuntimeError("; ".join(errors))


def _worker(spec, w, n, make_sampler, objective, conn, stop):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; we stop between trials
    import optuna

    from bitalloc.solvers.optuna.storage import open_storage

    code = 0
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=spec.study, storage=open_storage(spec.url),
                                  sampler=make_sampler(_seed(spec.seed, w)))
        if n and not stop.is_set():
            study.optimize(objective(w), n_trials=n, timeout=spec.timeout, callbacks=[_stopper(stop)])
        conn.send(None)
    except BaseException as e:  # reported by the parent, which raises
        conn.send(f"{type(e).__name__}: {e}")
        code = 1
    finally:
        conn.close()
    os._exit(code)  # skip the parent's atexit handlers inherited through fork


def _seed(seed: int | None, worker: int) -> int:
    if seed is None:
        return int.from_bytes(os.urandom(4), "little")
    return seed + worker
