"""`--executor ray`: the cells of `measured` / `local` / `fisher` sharded over Ray actors.

Each actor loads the model once (`task_factory()`, e.g. `functools.partial(load_task, "smollm2",
samples=8)`), builds the estimator's runner (cached block inputs for measured/local) and then
pulls work from the driver's queue: one unit (all its candidates) for measured/local, one
calibration batch for fisher (each actor keeps its own running sum of squared gradients,
collected at the end). The driver merges the results into the same Profile a single process
computes (measured/local: the very same cells; fisher: the same sums in another order, equal to
float rounding), and shows progress with a total.

A worker lost mid-run (its process died, a node went away, `ray.kill`) has its cells re-queued:
the unit it was measuring, or for fisher every batch it had summed (its sum died with it), and a
replacement actor is started (at most `restarts` in all). Ray is an optional dependency
(`pip install 'bitalloc[ray]'`, or `pip install ray`); it is imported only here.

address: None starts (or reuses) a Ray instance on this machine; `auto` or `ray://host:10001`
joins a running cluster, whose nodes need bitalloc (and the model's package) installed.
"""
from __future__ import annotations

import os
import time
from collections import deque

import numpy as np

from bitalloc.errors import BitallocError, bad

KINDS = {"measured": "units", "local": "units", "fisher": "batches"}


class RayExecutor:
    """workers: actors to start; cpus_per_worker: CPUs (and torch threads) per actor; address:
    see the module docstring; restarts: replacement actors allowed in all (default: workers).
    `actors` holds the live actor handles while `run` is running."""

    def __init__(self, workers: int = 2, cpus_per_worker: int = 1, address: str | None = None,
                 restarts: int | None = None):
        for name, v in (("workers", workers), ("cpus_per_worker", cpus_per_worker)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(name, v, "must be a positive integer")
        if restarts is not None and (isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 0):
            raise bad("restarts", restarts, "must be a non-negative integer")
        self.workers, self.cpus, self.address = workers, cpus_per_worker, address
        self.restarts = workers if restarts is None else restarts
        self.actors: list = []
        self.lost = 0

    def start(self):
        try:
            import ray
        except ImportError:
            raise BitallocError("--executor ray: Ray is not installed (pip install 'ray[default]' or pip install ray)") from None
        if not ray.is_initialized():
            env = {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}} if os.environ.get("PYTHONPATH") and \
                self.address is None else None
            kw = dict(include_dashboard=False, runtime_env=env, log_to_driver=False)
            if self.address is None:
                kw.update(num_cpus=self.workers * self.cpus, _node_ip_address="127.0.0.1")
            ray.init(address=self.address, **kw)
        return ray

    def run(self, estimator, task, task_factory, progress=None):
        """The Profile of `estimator` on `task` (the driver's own copy, used for the unit list and
        the merge), its cells computed by actors that each call `task_factory()`."""
        if estimator.name not in KINDS:
            raise bad("--executor ray estimator", estimator.name, f"allowed: {', '.join(KINDS)}")
        ray = self.start()
        t0 = time.perf_counter()
        Worker = ray.remote(num_cpus=self.cpus, max_restarts=0)(_Worker)
        kind = KINDS[estimator.name]
        if kind == "units":
            units = estimator.select(estimator.units(task))
            items = list(range(len(units)))
            per_item = len(estimator.quants)
        else:
            items = list(range(len(task.calib)))
            per_item = 1
        total = len(items) * per_item
        queue = deque(items)
        done_by: dict = {}       # actor → items whose result lives only in that actor (fisher sums)
        results: dict = {}
        inflight: dict = {}
        restarts_left = self.restarts
        info = None

        def spawn():
            a = Worker.remote(task_factory, estimator, [u.name for u in units] if kind == "units" else None, self.cpus)
            self.actors.append(a)
            done_by[a] = []
            return a

        def dispatch(a):
            if queue:
                item = queue.popleft()
                ref = a.units.remote([item]) if kind == "units" else a.batches.remote([item])
                inflight[ref] = (a, item)

        try:
            for _ in range(self.workers):
                dispatch(spawn())
            done = 0
            while inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1)
                ref = ready[0]
                a, item = inflight.pop(ref)
                try:
                    out = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                        ray.exceptions.NodeDiedError) as e:
                    self._lose(a, item, queue, done_by, inflight, results, kind)
                    done = sum(per_item for _ in results) if kind == "units" else len(results)
                    if restarts_left <= 0 and not self.actors:
                        raise BitallocError(f"--executor ray: every worker was lost ({type(e).__name__})") from None
                    if restarts_left > 0:
                        restarts_left -= 1
                        dispatch(spawn())
                    for other in list(self.actors):  # idle actors pick up the re-queued work
                        if other not in {x for x, _ in inflight.values()}:
                            dispatch(other)
                    continue
                if info is None:
                    info = out["info"]
                results[item] = out
                done_by[a].append(item)
                done += per_item
                if progress is not None:
                    progress(done, total)
                dispatch(a)
            if kind == "units":
                return self._merge_units(estimator, task, units, results, info, t0)
            sums = ray.get([a.fisher_sum.remote() for a in self.actors])
            return self._merge_fisher(estimator, task, sums, t0)
        finally:
            for a in self.actors:
                ray.kill(a)
            self.actors = []

    def _lose(self, a, item, queue, done_by, inflight, results, kind):
        """Actor `a` died: re-queue its running item, and for fisher every batch it had summed."""
        self.lost += 1
        if a in self.actors:
            self.actors.remove(a)
        back = [item]
        for ref, (b, it) in list(inflight.items()):
            if b is a:
                inflight.pop(ref)
                back.append(it)
        if kind == "batches":
            back += done_by.get(a, [])
            for it in done_by.get(a, []):
                results.pop(it, None)
        done_by.pop(a, None)
        queue.extendleft(sorted(back, reverse=True))

    def _merge_units(self, estimator, task, units, results, info, t0):
        K = len(estimator.quants)
        order = sorted(results)
        S = np.concatenate([results[i]["loss"] for i in order]) if order else np.zeros((0, K))
        fe = sum(results[i]["fe"] for i in order)
        meta_extra = {"executor": "ray", "workers": self.workers, "workers_lost": self.lost}
        if estimator.name == "local":
            p = estimator.finish(task, units, S, t0, fe)
        else:
            kl = np.concatenate([results[i]["kl"] for i in order]) if info["has_kl"] else None
            p = estimator.finish(task, units, S, kl, t0, _Info(**info), 1.0 + fe)
        p.meta.update(meta_extra)
        return p

    def _merge_fisher(self, estimator, task, sums, t0):
        sums = [s for s in sums if s["n"]]
        n = sum(s["n"] for s in sums)
        if n == 0:
            raise BitallocError("fisher: the task has no calibration data")
        F = {name: sum(s["F"][name] for s in sums) / n for name in sums[0]["F"]}
        p = estimator.scores(task, F, n, t0)
        p.meta.update({"executor": "ray", "workers": self.workers, "workers_lost": self.lost})
        return p


class _Info:
    """What `MeasuredEstimator.finish` reads from a runner, sent back by a worker."""

    def __init__(self, method, base_loss, has_kl, note=None):
        self.method, self.base_loss, self.has_kl, self.note = method, base_loss, has_kl, note


class _Worker:
    """A Ray actor: one model, one runner; computes units or fisher batches on request."""

    def __init__(self, task_factory, estimator, unit_names, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.task = task_factory()
        self.est = estimator
        self.runner = None
        self.F, self.n = None, 0
        if unit_names is not None:
            by_name = {u.name: u for u in estimator.units(self.task)}
            self.unit_list = [by_name[n] for n in unit_names]
            self.runner = estimator.runner(self.task)

    def units(self, items: list[int]) -> dict:
        loss, kl, fe = self.est.measure(self.task, [self.unit_list[i] for i in items], self.runner)
        r = self.runner
        return {"loss": loss, "kl": kl, "fe": fe,
                "info": {"method": getattr(r, "method", "replay"), "base_loss": r.base_loss,
                         "has_kl": bool(getattr(r, "has_kl", False)), "note": getattr(r, "note", None)}}

    def batches(self, items: list[int]) -> dict:
        from bitalloc.sensitivity.fisher import FisherEstimator

        sub = _SubTask(self.task, [self.task.calib[i] for i in items])
        F, n = FisherEstimator.fisher(self.est, sub)
        if self.F is None:
            self.F = {k: v * n for k, v in F.items()}
        else:
            for k, v in F.items():
                self.F[k] += v * n
        self.n += n
        return {"n": n, "info": None}

    def fisher_sum(self) -> dict:
        return {"F": self.F or {}, "n": self.n}


class _SubTask:
    """A task seen through a subset of its calibration batches."""

    def __init__(self, task, calib):
        self._task, self.calib = task, calib

    def __getattr__(self, name):
        return getattr(self._task, name)
