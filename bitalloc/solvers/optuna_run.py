"""Running an Optuna study: in this process, or in N forked worker processes on one storage.

Each worker opens its own storage from the URL, loads the study with its own sampler (seed
`seed + worker`, or fresh entropy) and runs its share of the trials; every trial records the
worker in its user attributes (`worker`, `host`, `pid`), so trial counts per worker can be read
back from the study. Ctrl-C (SIGINT to the process group, or to this process only) stops the
workers; a trial cut short is marked FAIL by Optuna, so the study stays consistent and the
next run on the same storage and study name continues it.
"""
from __future__ import annotations

import os
import signal
import socket
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
    created in `spec.url`). progress(done, total) is called as trials finish."""
    if spec.workers == 1:
        _in_process(spec, study, make_sampler, objective, progress)
    else:
        _forked(spec, study, make_sampler, objective, progress)


def _in_process(spec, study, make_sampler, objective, progress):
    study.sampler = make_sampler(_seed(spec.seed, 0))
    done = [0]

    def tick(_study, _trial):
        done[0] += 1
        progress(done[0], spec.n_trials)

    study.optimize(objective(0), n_trials=spec.n_trials, timeout=spec.timeout,
                          callbacks=[tick] if progress else None)


def _forked(spec, study, make_sampler, objective, progress):
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
    for w, n in enumerate(shares(spec.n_trials, spec.workers)):
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=(spec, w, n, make_sampler, objective, send), daemon=True)
        p.start()
        send.close()
        procs.append(p)
        pipes.append(recv)
    try:
        while any(p.is_alive() for p in procs):
            time.sleep(0.25)
            if progress:
                progress(min(storage.get_n_trials(sid, states) - n0, spec.n_trials), spec.n_trials)
    except KeyboardInterrupt:
        _stop(procs)
        raise
    errors = []
    for w, (p, r) in enumerate(zip(procs, pipes)):
        p.join()
        msg = r.recv() if r.poll() else None
        if p.exitcode == 130:
            raise KeyboardInterrupt
        if p.exitcode != 0 or msg:
            errors.append(f"worker {w}: {msg or f'exit code {p.exitcode}'}")
    if errors:
        raise RuntimeError("; ".join(errors))


def _worker(spec, w, n, make_sampler, objective, conn):
    import optuna

    from .optuna_storage import open_storage

    code = 0
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=spec.study, storage=open_storage(spec.url),
                                  sampler=make_sampler(_seed(spec.seed, w)))
        if n:
            study.optimize(objective(w), n_trials=n, timeout=spec.timeout)
        conn.send(None)
    except KeyboardInterrupt:
        code = 130
    except BaseException as e:  # reported by the parent, which raises
        conn.send(f"{type(e).__name__}: {e}")
        code = 1
    finally:
        conn.close()
    os._exit(code)  # skip the parent's atexit handlers inherited through fork


def _stop(procs) -> None:
    """SIGINT every live worker (Optuna fails the running trial and returns), then wait."""
    for p in procs:
        if p.is_alive():
            try:
                os.kill(p.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 20
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.terminate()
            p.join()


def _seed(seed: int | None, worker: int) -> int:
    if seed is None:
        return int.from_bytes(os.urandom(4), "little")
    return seed + worker
