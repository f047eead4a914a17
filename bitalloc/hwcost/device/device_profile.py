"""Device profiles: what a device measured, per layer and candidate, read back with strict checks.

Format (DESIGN.md "Device profiles"): CSV with `#key=value` header lines (device, core,
clock_hz, runtime, timer, warmup, repeats; others kept), then one row per measurement with the
columns of COLUMNS; or the same as JSON `{"schema": SCHEMA, "header": {...}, "rows": [{...}]}`.
`status` is `ok` (value holds the measurement), `unsupported` (the device has no kernel: the
candidate is infeasible), `oom` or `error` (reported, and the analytic figure stands in).

Any defect (a truncated file, a missing or unknown column, a duplicate or contradicting row, a
negative or NaN value, a unit that does not fit the metric, an unknown device) is one
BitallocError naming the file, the row and the field.

`apply_measured` turns the rows into per-layer costs: measured where a row is present, the
analytic figure times a factor fitted on the measured rows elsewhere (the fit is reported).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bitalloc.errors import BitallocError
from bitalloc.fileio import atomic_write, dumps, read_json, read_text

SCHEMA = "bitalloc.device_profile/1"
COLUMNS = ("layer", "op", "macs", "w_bits", "a_bits", "group", "kernel", "metric", "value", "unit", "stat", "n", "status")
STATUSES = ("ok", "unsupported", "oom", "error")
METRIC_UNITS = {"latency": {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}, "cycles": {"cycles": 1.0}}
STATS = ("median", "mean", "min", "max", "p90")


@dataclass(frozen=True)
class Row:
    """One measurement; `line` is its 1-based line in the file (or row index in JSON)."""

    line: int
    layer: str
    op: str
    macs: int
    w_bits: int
    a_bits: int
    group: int | None
    kernel: str
    metric: str
    value: float | None
    unit: str
    stat: str
    n: int | None
    status: str

    def seconds(self, clock_hz: float | None) -> float:
        if self.metric == "cycles":
            return self.value / clock_hz
        return self.value * METRIC_UNITS["latency"][self.unit]

    def as_dict(self) -> dict:
        return {c: getattr(self, c) for c in COLUMNS}


@dataclass
class DeviceProfile:
    """path; header: the #key=value lines; rows: the measurements; spec: the target's Device
    from a spec file (`target_spec=`), for a device bitalloc has no built-in spec of."""

    path: str
    header: dict
    rows: list[Row]
    spec: object = None

    @property
    def device(self):
        """The target: the given spec, else the built-in spec of `#device`, else a MeasuredDevice
        (every cell must then be measured; see `complete_measured`)."""
        from bitalloc.hwcost.device.devices import MeasuredDevice, device_names, load_device

        name = self.header["device"]
        if self.spec is not None:
            return self.spec
        if name in device_names():
            return load_device(name)
        w_kernels: dict[int, tuple[str, int]] = {}
        for r in self.rows:
            w_kernels.setdefault(r.w_bits, (r.kernel, r.a_bits))
        return MeasuredDevice(name, self.header.get("class", "measured"), self.header.get("core", ""),
                              clock_hz=float(self.header["clock_hz"]) if self.header.get("clock_hz") else None,
                              w_kernels=tuple(sorted(w_kernels.items())))

    def with_spec(self, target_spec) -> "DeviceProfile":
        """This profile with the target spec file `target_spec` (its name must be #device)."""
        from bitalloc.hwcost.device.devices import load_spec

        spec = load_spec(target_spec)
        if spec.name != self.header["device"]:
            raise self.error(None, "#device", self.header["device"], f"the target spec {str(target_spec)!r} is for {spec.name!r}")
        return DeviceProfile(self.path, self.header, self.rows, spec)

    def digest(self) -> str:
        """sha256 of the header and rows (the same for the CSV and JSON forms of one profile)."""
        import hashlib

        doc = dumps({"header": self.header, "rows": [r.as_dict() for r in self.rows]})
        return hashlib.sha256(doc.encode()).hexdigest()

    @property
    def clock_hz(self) -> float | None:
        return float(self.header["clock_hz"]) if self.header.get("clock_hz") else self.device.clock_hz

    def error(self, row: Row | int | None, field: str, value, allowed: str) -> BitallocError:
        where = f"device profile {self.path!r}"
        if row is not None:
            where += f" row {row.line if isinstance(row, Row) else row}"
        shown = repr(value) if isinstance(value, str) else str(value)
        return BitallocError(f"{where} field {field} {shown}: {allowed}")

    # ---- reading ----------------------------------------------------------------------
    @classmethod
    def load(cls, path, target_spec=None) -> "DeviceProfile":
        """Read and check the profile at `path`; `target_spec`: a spec file for its device."""
        self = cls._load(path)
        return self.with_spec(target_spec) if target_spec is not None else self

    @classmethod
    def _load(cls, path) -> "DeviceProfile":
        p = Path(path)
        if p.suffix == ".json":
            d = read_json(p, "device profile")
            if d.get("schema") != SCHEMA:
                raise BitallocError(f"device profile {str(p)!r} field schema {d.get('schema')!r}: expected {SCHEMA!r}")
            if not isinstance(d.get("header"), dict) or not isinstance(d.get("rows"), list):
                raise BitallocError(f"device profile {str(p)!r}: needs a 'header' object and a 'rows' list")
            raw = [(i + 1, r) for i, r in enumerate(d["rows"])]
            self = cls(str(p), {k: str(v) for k, v in d["header"].items()}, [])
            for line, r in raw:
                if not isinstance(r, dict):
                    raise self.error(line, "row", r, "must be an object with the columns " + ",".join(COLUMNS))
                self._check_columns(list(r), line)
            self.rows = [self._row(line, {k: "" if r[k] is None else str(r[k]) for k in COLUMNS}) for line, r in raw]
        else:
            self = cls._read_csv(p)
        self._check()
        return self

    @classmethod
    def _read_csv(cls, p: Path) -> "DeviceProfile":
        text = read_text(p, "device profile")
        self = cls(str(p), {}, [])
        lines = text.splitlines(keepends=True)
        if not text or not text.endswith("\n"):
            raise self.error(len(lines), "end of file", "no final newline", "the file is truncated (a complete file ends with a newline)")
        body_start = 0
        for i, line in enumerate(lines):
            if not line.startswith("#"):
                body_start = i
                break
            key, sep, value = line[1:].strip().partition("=")
            if not sep or not key.strip():
                raise self.error(i + 1, "header", line.strip(), "header lines are #key=value")
            if key.strip() in self.header:
                raise self.error(i + 1, "header", key.strip(), "appears twice")
            self.header[key.strip()] = value.strip()
        else:
            raise self.error(len(lines), "columns", "none", "no column line after the header")
        reader = csv.reader(io.StringIO("".join(lines[body_start:])))
        cols = next(reader, None)
        self._check_columns(cols or [], body_start + 1)
        for j, fields in enumerate(reader):
            line = body_start + 2 + j
            if not fields:
                continue
            if len(fields) != len(cols):
                raise self.error(line, "fields", len(fields), f"expected {len(cols)} comma-separated fields (truncated or malformed row)")
            self.rows.append(self._row(line, dict(zip(cols, fields))))
        return self

    def _check_columns(self, cols: list, line: int) -> None:
        missing = [c for c in COLUMNS if c not in cols]
        unknown = [c for c in cols if c not in COLUMNS]
        if missing:
            raise self.error(line, "columns", ",".join(missing), f"missing; the columns are {','.join(COLUMNS)}")
        if unknown:
            raise self.error(line, "columns", unknown[0], f"unknown; the columns are {','.join(COLUMNS)}")
        if len(set(cols)) != len(cols):
            raise self.error(line, "columns", ",".join(cols), "a column appears twice")

    def _row(self, line: int, r: dict) -> Row:
        def integer(f, lo, hi=None, optional=False):
            v = r[f].strip()
            if optional and v == "":
                return None
            try:
                x = int(v)
            except ValueError:
                raise self.error(line, f, v, f"must be an integer >= {lo}") from None
            if x < lo or (hi is not None and x > hi):
                raise self.error(line, f, x, f"must be an integer from {lo}" + (f" to {hi}" if hi else " up"))
            return x

        status = r["status"].strip()
        if status not in STATUSES:
            raise self.error(line, "status", status, f"allowed: {', '.join(STATUSES)}")
        metric = r["metric"].strip()
        if metric not in METRIC_UNITS:
            raise self.error(line, "metric", metric, f"allowed: {', '.join(METRIC_UNITS)}")
        unit = r["unit"].strip()
        if unit not in METRIC_UNITS[metric]:
            raise self.error(line, "unit", unit, f"does not fit metric {metric}; allowed: {', '.join(METRIC_UNITS[metric])}")
        stat = r["stat"].strip()
        if stat not in STATS:
            raise self.error(line, "stat", stat, f"allowed: {', '.join(STATS)}")
        layer = r["layer"].strip()
        if not layer:
            raise self.error(line, "layer", layer, "must name a layer of the profile")
        value = None
        text = r["value"].strip()
        if status == "ok" or text:
            try:
                value = float(text)
            except ValueError:
                raise self.error(line, "value", text, "must be a number (a measurement >= 0)") from None
            if not math.isfinite(value) or value < 0:
                raise self.error(line, "value", text, "must be a finite number >= 0")
        return Row(line, layer, r["op"].strip(), integer("macs", 0), integer("w_bits", 1, 32), integer("a_bits", 1, 32),
                   integer("group", 1, optional=True), r["kernel"].strip(), metric, value, unit, stat,
                   integer("n", 1, optional=status != "ok"), status)

    def _check(self) -> None:
        dev = self.header.get("device")
        if not dev or not isinstance(dev, str):
            raise self.error(None, "#device", dev, "must name the device the rows were measured on")
        for k in ("clock_hz", "warmup", "repeats"):
            v = self.header.get(k)
            if v not in (None, ""):
                try:
                    x = float(v)
                except ValueError:
                    x = float("nan")
                if not math.isfinite(x) or x < 0 or (k == "clock_hz" and x == 0):
                    raise self.error(None, f"#{k}", v, "must be a positive number" if k == "clock_hz" else "must be a number >= 0")
        if any(r.metric == "cycles" for r in self.rows) and not self._clock_known():
            raise self.error(None, "#clock_hz", self.header.get("clock_hz"), "cycles rows need the clock (header or device spec)")
        seen: dict[tuple, Row] = {}
        for r in self.rows:
            key = (r.layer, r.w_bits, r.a_bits, r.group, r.kernel, r.metric, r.stat)
            if key in seen:
                o = seen[key]
                what = "duplicates" if (o.value, o.status) == (r.value, r.status) else "contradicts"
                raise self.error(r, "layer", r.layer, f"{what} row {o.line} (same layer, w_bits, a_bits, group, kernel, metric, stat)")
            seen[key] = r

    def _clock_known(self) -> bool:
        from bitalloc.hwcost.device.devices import device_names

        return bool(self.header.get("clock_hz")) or (self.header["device"] in device_names() and bool(self.clock_hz))

    # ---- writing ----------------------------------------------------------------------
    @staticmethod
    def write(path, header: dict, rows: list[dict], force: bool = False) -> Path:
        buf = io.StringIO()
        for k, v in header.items():
            buf.write(f"#{k}={v}\n")
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: "" if r.get(c) is None else r[c] for c in COLUMNS})
        if str(path).endswith(".json"):
            return atomic_write(path, dumps({"schema": SCHEMA, "header": header, "rows": rows}), force)
        return atomic_write(path, buf.getvalue(), force)


@dataclass
class Fit:
    """factor: analytic figures times this match the measured rows best (least squares on the
    relative error); n_rows: measured cells the fit used; rel_residual: RMS relative error of
    the scaled analytic figures on them; measured / filled: layer-candidate cells from rows /
    from the scaled analytic model; infeasible: cells made infeasible by `unsupported` rows;
    unmatched: rows whose (w_bits, a_bits) is no candidate of the profile on this device;
    problems: `oom`/`error` rows, as text."""

    factor: float = 1.0
    n_rows: int = 0
    rel_residual: float | None = None
    measured: int = 0
    filled: int = 0
    infeasible: int = 0
    unmatched: int = 0
    problems: list[str] = field(default_factory=list)

    def text(self) -> str:
        res = "n/a" if self.rel_residual is None else f"{self.rel_residual:.3f}"
        s = (f"measured {self.measured} layer-candidate cells, {self.filled} from the analytic model x {self.factor:.4g} "
             f"(fit on {self.n_rows} rows, relative residual {res}), {self.infeasible} unsupported")
        if self.unmatched:
            s += f"; {self.unmatched} rows match no candidate (w_bits, a_bits) of the profile on this device"
        if self.problems:
            s += f"; {len(self.problems)} rows not measured: " + "; ".join(self.problems[:5])
            if len(self.problems) > 5:
                s += f"; ... {len(self.problems) - 5} more"
        return s


def unsupported_cells(dp: DeviceProfile, profile, a_bits: list[int | None]) -> np.ndarray:
    """(L, K) bool: layer-candidate cells an `unsupported` row of `dp` names."""
    from bitalloc.hwcost.layers import layer_view

    lv = layer_view(profile)
    where = lv.index()
    out = np.zeros((len(lv.names), len(profile.bits)), dtype=bool)
    for r in dp.rows:
        if r.status == "unsupported" and r.layer in where:
            for k, (b, a) in enumerate(zip(profile.bits, a_bits)):
                if (b, a) == (r.w_bits, r.a_bits):
                    out[where[r.layer], k] = True
    return out


def apply_measured(dp: DeviceProfile, profile, a_bits: list[int | None], analytic: np.ndarray):
    """(T, infeasible, fit): T (L, K) seconds per layer and candidate, measured where a row of
    (layer, w_bits, a_bits) is ok (the fastest kernel if several), else `analytic` (L, K)
    seconds times the fitted factor; infeasible (L, K) where the rows say `unsupported`.
    a_bits: (K,) activation bits of each candidate on the target (None: no kernel)."""
    from bitalloc.hwcost.layers import layer_view

    lv = layer_view(profile)
    where = lv.index()
    clock = dp.clock_hz
    best: dict[tuple[int, int], float] = {}
    bad_cells: set[tuple[int, int]] = set()
    fit = Fit()
    cand = {}
    for k, (b, a) in enumerate(zip(profile.bits, a_bits)):
        cand.setdefault((b, a), []).append(k)
    for r in dp.rows:
        if r.layer not in where:
            raise dp.error(r, "layer", r.layer, "names no layer of the profile's units")
        j = where[r.layer]
        if r.macs != int(round(lv.macs[j])):
            raise dp.error(r, "macs", r.macs, f"the profile's layer {r.layer!r} has {int(round(lv.macs[j]))} MACs (a different model or input size?)")
        fit.unmatched += (r.w_bits, r.a_bits) not in cand
        for k in cand.get((r.w_bits, r.a_bits), []):
            if r.status == "unsupported":
                bad_cells.add((j, k))
            elif r.status == "ok":
                t = r.seconds(clock)
                best[(j, k)] = min(t, best.get((j, k), math.inf))
        if r.status in ("oom", "error"):
            fit.problems.append(f"{r.layer} w{r.w_bits}a{r.a_bits} {r.kernel}: {r.status} (row {r.line})")
    cells = [(j, k) for (j, k) in best if analytic[j, k] > 0 and best[(j, k)] > 0]
    if cells:
        ratio = np.array([analytic[c] / best[c] for c in cells])
        fit.factor = float(ratio.sum() / (ratio ** 2).sum())
        fit.n_rows = len(cells)
        fit.rel_residual = float(np.sqrt(np.mean((fit.factor * ratio - 1) ** 2)))
    T = analytic * fit.factor
    for c, t in best.items():
        T[c] = t
    infeasible = np.zeros(analytic.shape, dtype=bool)
    for c in bad_cells:
        infeasible[c] = True
    fit.measured = len(best)
    fit.infeasible = int(infeasible.sum())
    has_kernel = np.array([a is not None for a in a_bits])[None, :] & np.ones(analytic.shape, dtype=bool)
    for c in best:
        has_kernel[c] = False
    fit.filled = int((has_kernel & ~infeasible).sum())
    return T, infeasible, fit


def complete_measured(dp: DeviceProfile, profile, a_bits: list[int | None]) -> np.ndarray:
    """(L, K) seconds of every layer-candidate cell from the rows alone (a device with no spec):
    a cell without an ok or unsupported row is an error naming the missing cells, in one line."""
    from bitalloc.errors import bad
    from bitalloc.hwcost.layers import layer_view

    shape = (len(layer_view(profile).names), len(profile.bits))
    T, infeasible, dp_fit = apply_measured(dp, profile, a_bits, np.full(shape, np.nan))
    missing = np.argwhere(np.isnan(T) & ~infeasible)
    if len(missing):
        names, labels = layer_view(profile).names, profile.formats
        cells = [f"{names[j]}@{labels[k]}" for j, k in missing[:8]]
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        raise bad(f"device profile {dp.path!r}", f"#device={dp.header['device']}",
                  f"has no built-in spec and {len(missing)} layer-candidate cells are not measured "
                  f"({', '.join(cells)}{more}); measure them (or mark them unsupported), or give "
                  "--target-spec SPEC.json (the schema of bitalloc/data/devices/*.json)")
    return np.where(infeasible, 0.0, T)
