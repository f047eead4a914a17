"""The exact loss-vs-budget front of an additive problem (one ILP per budget, each warm-started
by the previous one) and uniform allocations for comparison; rows for CSV, tables and plots."""
from __future__ import annotations

import csv
import io
import math

import numpy as np

from bitalloc.errors import bad
from bitalloc.fileio import atomic_write
from bitalloc.problem import Problem
from bitalloc.solvers.compiled import fits
from bitalloc.quant.formats.spec import default_format

MAX_BUDGETS = 10_000


def budget_range(text: str) -> list[float]:
    """`START:STOP:STEP` (STOP included when it falls on the grid) or a comma list, e.g. `3,3.25,4`."""
    allowed = "must be START:STOP:STEP with START <= STOP and STEP > 0 (e.g. 2.5:6:0.25), or a comma list"
    try:
        parts = [float(x) for x in text.split(":")] if ":" in text else None
        out = [float(x) for x in text.split(",") if x.strip()] if parts is None else []
    except ValueError:
        raise bad("--budgets", text, allowed) from None
    if parts is not None:
        if len(parts) != 3:
            raise bad("--budgets", text, allowed)
        start, stop, step = parts
        if not all(map(math.isfinite, parts)) or step <= 0 or start > stop:
            raise bad("--budgets", text, f"is empty or inverted: {allowed}")
        n = int(math.floor((stop - start) / step + 1e-9)) + 1
        if n > MAX_BUDGETS:
            raise bad("--budgets", text, f"gives {n} budgets; at most {MAX_BUDGETS}")
        return [round(start + i * step, 10) for i in range(n)]
    if not out or not all(map(math.isfinite, out)):
        raise bad("--budgets", text, f"is empty: {allowed}")
    if len(out) > MAX_BUDGETS:
        raise bad("--budgets", f"{len(out)} budgets", f"at most {MAX_BUDGETS}")
    return out


def _share(profile, choice: np.ndarray) -> dict[int, float]:
    bits = np.asarray(profile.bits)[choice]
    w = profile.n_params.astype(np.float64)
    return {int(b): float(w[bits == b].sum() / w.sum()) for b in sorted(set(bits.tolist()))}


def _row(kind: str, problem: Problem, choice: np.ndarray | None, **extra) -> dict:
    from bitalloc.hwcost.memory import MemoryCost

    p = problem.profile
    row = {"kind": kind, **extra}
    if choice is not None:
        row["avg_bits"] = MemoryCost().total(p, choice)
        row["avg_bits_with_overhead"] = MemoryCost(count_overhead=True).total(p, choice)
        for c in problem.constraints:
            row[c.cost.resource] = c.cost.total(p, choice)
        row["share"] = _share(p, choice)
    return row


def exact_front(problem: Problem, budgets: list[float], **solver_options) -> list[dict]:
    """One row per budget of the first constraint: status, objective, bound, gap, totals, share."""
    from bitalloc import solve_budgets

    rows = []
    for b, a in zip(budgets, solve_budgets(problem, budgets, "ilp", **solver_options)):
        choice = a.choice(problem.profile) if a.bits else None
        rows.append(_row("front", problem, choice, budget=b, status=a.status, objective=a.objective,
                         bound=a.bound, gap=a.gap, wall_s=a.wall_s))
    return rows


def uniform_points(problem: Problem, lo: float, hi: float) -> list[dict]:
    """Every unit at the same bit-width b, for each candidate bit-width b in [lo, hi] (pinned
    units keep their pin); skipped where some unit does not allow b. `within_budgets` tells
    whether the constraints other than the swept first one hold."""
    p = problem.profile
    mask = problem.mask()
    pinned = problem.pinned()
    S = np.where(mask, p.sensitivity, np.inf)
    rows = []
    for b in sorted(set(p.bits)):
        if not lo - 1e-9 <= b <= hi + 1e-9:
            continue
        ks = [k for k, x in enumerate(p.bits) if x == b]
        k = next((k for k in ks if p.formats[k] == default_format(b)), ks[0])
        choice = np.full(p.n_units, k, dtype=np.int64)
        for i, kp in pinned.items():
            choice[i] = kp
        v = S[np.arange(p.n_units), choice]
        if not np.isfinite(v).all():
            continue
        obj = float(v.max() if problem.objective == "max" else v.sum())
        row = _row("uniform", problem, choice, bits=b, budget=float(b), status="uniform", objective=obj)
        row["within_budgets"] = all(fits(c.cost.total(p, choice), c.budget) for c in problem.constraints[1:])
        rows.append(row)
    return rows


def csv_text(rows: list[dict], bits: list[int]) -> str:
    """kind, budget, status, objective, bound, gap, totals..., share_<b>bit (fraction of weights), wall_s."""
    base = ["kind", "budget", "bits", "status", "objective", "bound", "gap", "avg_bits", "avg_bits_with_overhead"]
    extra = [k for r in rows for k in r if k not in base and k not in ("share", "wall_s", "within_budgets")]
    cols = base + list(dict.fromkeys(extra)) + ["within_budgets"] + [f"share_{b}bit" for b in sorted(set(bits))] + ["wall_s"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        share = r.get("share", {})
        w.writerow([_fmt(r.get(c)) if not c.startswith("share_") else _fmt(share.get(int(c[6:-3])) if share else None)
                    for c in cols])
    return buf.getvalue()


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def write_csv(rows: list[dict], bits: list[int], path, force: bool) -> None:
    atomic_write(path, csv_text(rows, bits), force)
