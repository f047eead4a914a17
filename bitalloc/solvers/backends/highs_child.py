"""HiGHS in a child process that is killed at its deadline: a wall-clock time limit that holds.

HiGHS checks `time_limit` and its interrupt callbacks only between some phases; on a 0/1 program
with ~3·10⁴ free units its root setup (clique table, probing) ran 13–18 s past a 3 s limit. So
`solve_stoppable` runs the model in a fresh Python process (`python -m` this module; never forked:
HiGHS's thread pool does not survive a fork, and multiprocessing's spawn would re-run the caller's
script), which streams every improving solution back over a pipe; at the deadline the
parent kills the child and keeps the best solution received. Spawning costs ~0.3 s.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time

import numpy as np

from bitalloc.solvers.milp import BackendResult, Milp

IN_PROCESS_CELLS = 3000  # models this small run in-process: HiGHS is done long before any limit worth setting


class _Conn:
    """Pickled messages on a binary stream."""

    def __init__(self, f):
        self.f = f

    def send(self, msg):
        pickle.dump(msg, self.f, protocol=pickle.HIGHEST_PROTOCOL)
        self.f.flush()


def _child(conn, m: Milp, time_limit: float, gap: float, hint):
    import highspy

    from bitalloc.solvers.backends.highs import configured_highs

    h = configured_highs(m, time_limit, gap, hint)
    t0 = time.perf_counter()
    T = highspy.cb.HighsCallbackType

    def cb(kind, msg, out, inp, user):
        if kind == T.kCallbackMipImprovingSolution:
            x = np.asarray(out.mip_solution)
            conn.send(("sol", np.flatnonzero(x[:len(m.row)] > 0.5).astype(np.int32), float(out.objective_function_value)))
        elif time.perf_counter() - t0 > time_limit:
            inp.user_interrupt = True

    h.setCallback(cb, None)
    for k in (T.kCallbackMipImprovingSolution, T.kCallbackMipInterrupt, T.kCallbackSimplexInterrupt, T.kCallbackIpmInterrupt):
        h.startCallback(k)
    h.run()
    info = h.getInfo()
    st = h.getModelStatus()
    S = highspy.HighsModelStatus
    x = None
    if info.primal_solution_status == 2:
        x = np.flatnonzero(np.asarray(h.getSolution().col_value)[:len(m.row)] > 0.5).astype(np.int32)
    bound = float(info.mip_dual_bound) if np.isfinite(info.mip_dual_bound) else None
    conn.send(("done", x, st == S.kOptimal, st == S.kInfeasible, bound, h.modelStatusToString(st), int(info.mip_node_count)))


def main():
    """Child side: the job pickled on stdin, messages pickled on stdout."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything HiGHS prints goes to stderr, not into the message stream
    _child(_Conn(out), *pickle.load(sys.stdin.buffer))
    out.close()


def solve_stoppable(m: Milp, time_limit: float, gap: float, hint: np.ndarray | None) -> BackendResult:
    """The 0/1 program `m` with HiGHS, back within `time_limit` seconds of wall clock (+ a few ms);
    hint: (M,) feasible start or None. The result's choice is the best solution found in time."""
    t0 = time.perf_counter()
    deadline = t0 + time_limit
    p = subprocess.Popen([sys.executable, "-m", "bitalloc.solvers.backends.highs_child"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": _root_path()})
    best, done = None, None
    try:
        p.stdin.write(pickle.dumps((m, max(time_limit - 0.5, 0.05), gap, hint), protocol=pickle.HIGHEST_PROTOCOL))
        p.stdin.close()
        for msg in _messages(p.stdout, deadline):
            if msg[0] == "sol":
                best = msg[1]
            else:
                done = msg
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stdout.close()
    wall = time.perf_counter() - t0

    def choice(cols):
        x = np.zeros(len(m.row))
        x[cols] = 1.0
        return m.choice_of(x)

    if done is None:
        return BackendResult(choice(best) if best is not None else None, False, True,
                             info={"status": "killed at the time limit", "wall_s": round(wall, 3)})
    _, x, proven, infeasible, bound, status, nodes = done
    if infeasible:
        return BackendResult(None, False, False, infeasible=True)
    cols = x if x is not None else best
    return BackendResult(choice(cols) if cols is not None else None, proven, not proven,
                         bound=m.true_objective(bound) if bound is not None else None,
                         info={"status": status, "nodes": nodes, "wall_s": round(wall, 3)})


from bitalloc.solvers.backends import Backend, register  # noqa: E402


def _root_path() -> str:
    """PYTHONPATH for the child: this bitalloc's parent directory first, then the caller's."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    return os.pathsep.join([root, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]])


def _messages(stream, deadline: float):
    """Unpickled messages from the child until it ends or the deadline passes."""
    import selectors

    fd = stream.fileno()
    buf = b""
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    try:
        while True:
            left = deadline - time.perf_counter()
            if left <= 0 or not sel.select(left):
                return
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return
            buf += chunk
            while buf:
                try:
                    import io

                    f = io.BytesIO(buf)
                    msg = pickle.load(f)
                except (EOFError, pickle.UnpicklingError, ValueError):
                    break  # an incomplete message: read more
                buf = buf[f.tell():]
                yield msg
                if msg[0] == "done":
                    return
    finally:
        sel.close()


@register("highs-child")
class HighsChildBackend(Backend):
    """HiGHS whose time limit holds on the wall clock (see module doc); without a time limit, or
    for a model of at most IN_PROCESS_CELLS cells (solved in well under a second), the in-process
    `highs` backend."""

    def solve(self, m, time_limit, gap, hint):
        if time_limit is None or len(m.row) <= IN_PROCESS_CELLS:
            from bitalloc.solvers.backends.highs import HighsBackend

            return HighsBackend().solve(m, time_limit, gap, hint)
        return solve_stoppable(m, time_limit, gap, hint)


if __name__ == "__main__":
    main()
