"""Measuring a plan with a runner, row by row, so that nothing measured is lost.

Rows are appended to `<out>.partial.csv` (a device-profile CSV: `#key=value` header, then one
row per (plan entry, layer)) as each plan entry is measured, each flushed and fsynced. A run
that stops (board unplugged, Ctrl-C, a crash) leaves that file; running the same command again
resumes after the last completed entry, provided the plan (its SHA-256) and the runner's
header (device, core, clock, firmware, timer, warmup, repeats) are the same. At the end the
whole profile is written to `out` atomically (CSV, or JSON for a .json name) and the partial
file is removed. A partial file is itself a valid device profile (`bitalloc solve` reads it:
missing rows fall back to the analytic model).
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from bitalloc.errors import BitallocError
from bitalloc.hwcost.device.device_profile import COLUMNS, DeviceProfile

# header fields that must agree for a partial run to be resumed
INT_COLUMNS = ("macs", "w_bits", "a_bits", "group", "n")
RESUME_KEYS = ("device", "core", "clock_hz", "runtime", "timer", "warmup", "repeats", "board", "seed", "plan_sha256")


def partial_path(out) -> Path:
    return Path(str(out) + ".partial.csv")


def plan_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class MeasureResult:
    out: Path
    rows: list[dict]
    statuses: dict = field(default_factory=dict)
    resumed: int = 0          # plan entries taken from an earlier partial run
    measured: int = 0         # plan entries measured in this run


def rows_for(entry, t, metric: str = "latency") -> list[dict]:
    """The device-profile rows of one measured plan entry (one per layer that runs it), in
    `metric` (the runner's: latency in ms, or cycles)."""
    if metric == "cycles":
        unit, value = "cycles", None if t.cycles is None else int(round(t.cycles))
    else:
        unit, value = "ms", None if t.seconds is None else float(f"{t.seconds * 1e3:.6g}")
    return [{"layer": layer, "op": entry.op, "macs": entry.macs, "w_bits": entry.w_bits, "a_bits": entry.a_bits,
             "group": entry.group, "kernel": entry.kernel, "metric": metric, "value": value, "unit": unit,
             "stat": t.stat, "n": t.n, "status": t.status} for layer in entry.layers]


def _key(r: dict) -> tuple:
    g = r.get("group")
    return (str(r["layer"]), int(r["w_bits"]), int(r["a_bits"]), None if g in (None, "") else int(g), str(r["kernel"]))


def read_partial(path: Path) -> tuple[dict, list[dict]]:
    """Header and complete rows of a partial file (a line cut off by a crash is dropped)."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]
    header, i = {}, 0
    while i < len(lines) and lines[i].startswith("#"):
        k, _, v = lines[i][1:].strip().partition("=")
        header[k] = v
        i += 1
    rows = []
    reader = csv.DictReader(io.StringIO("".join(lines[i:])))
    if reader.fieldnames is not None and tuple(reader.fieldnames) != COLUMNS:
        raise BitallocError(f"partial measurement {str(path)!r}: columns {reader.fieldnames} are not a device profile's")
    for r in reader:
        if None in r.values() or None in r:
            continue  # truncated row
        row = {c: (None if r[c] == "" else r[c]) for c in COLUMNS}
        for c in INT_COLUMNS:
            row[c] = None if row[c] is None else int(row[c])
        row["value"] = None if row["value"] is None else float(row["value"])
        if row["metric"] == "cycles" and row["value"] is not None and row["value"].is_integer():
            row["value"] = int(row["value"])
        rows.append(row)
    return header, rows


def _append(f, rows: list[dict]) -> None:
    w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
    for r in rows:
        w.writerow({c: "" if r.get(c) is None else r[c] for c in COLUMNS})
    f.flush()
    os.fsync(f.fileno())


def measure_plan(runner, entries, out, *, force: bool = False, plan_id: str = "", update=None, log=None,
                 device: str | None = None) -> MeasureResult:
    """Measure every plan entry not already in `<out>.partial.csv`, appending as it goes;
    write `out` at the end. `update(done, total)` reports progress; `log(text)` one-line notes.
    The runner is closed in every case."""
    out = Path(out)
    part = partial_path(out)
    done: dict[str, list[dict]] = {}
    result = MeasureResult(out, [])
    try:
        header = {**runner.header(), "plan_sha256": plan_id}
        if device is not None:  # a name of the user's (any device; no built-in spec needed)
            header["device"] = device
        if part.exists():
            old_header, old_rows = read_partial(part)
            diff = [k for k in RESUME_KEYS if str(old_header.get(k, "")) != str(header.get(k, ""))]
            if diff and not force:
                raise BitallocError(f"partial measurement {str(part)!r} was made with other settings ("
                                    + ", ".join(f"{k} {old_header.get(k)!r} vs {str(header.get(k, ''))!r}" for k in diff)
                                    + "): rerun with the same plan and options to resume, or pass --force to start over")
            if diff:
                part.unlink()
            else:
                have = {_key(r): r for r in old_rows}
                for e in entries:
                    rs = [have.get(_key({"layer": lay, "w_bits": e.w_bits, "a_bits": e.a_bits, "group": e.group,
                                         "kernel": e.kernel})) for lay in e.layers]
                    if all(r is not None for r in rs):
                        done[e.id] = rs
                result.resumed = len(done)
                if log:
                    log(f"resuming from {part}: {len(done)} of {len(entries)} kernels already measured")
        if not part.exists():
            with open(part, "w", encoding="utf-8") as f:
                f.write("".join(f"#{k}={v}\n" for k, v in header.items()))
                f.write(",".join(COLUMNS) + "\n")
                f.flush()
                os.fsync(f.fileno())
        with open(part, "a", encoding="utf-8") as f:
            for i, e in enumerate(entries):
                if e.id not in done:
                    t = runner.time(e)
                    done[e.id] = rows_for(e, t, getattr(runner, "metric", "latency"))
                    _append(f, done[e.id])
                    result.measured += 1
                st = done[e.id][0]["status"]
                result.statuses[st] = result.statuses.get(st, 0) + 1
                if update:
                    update(i + 1, len(entries))
        header.update(runner.summary())
    except BaseException:
        if part.exists() and log:
            log(f"stopped: {len(done)} of {len(entries)} kernels kept in {part}; rerun the same command to resume")
        raise
    finally:
        runner.close()
    result.rows = [r for e in entries for r in done[e.id]]
    DeviceProfile.write(out, header, result.rows, force=True)
    part.unlink()
    return result
