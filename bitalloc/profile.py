"""Profile: units × candidates → expected loss increase, with unit metadata.

A Profile is stored column-wise (one numpy array per field) so a 10⁶-unit per-group profile
is cheap to build, validate, save and load; `Unit` objects are made only on request.
File form (DESIGN.md): JSON `bitalloc.profile/1`; a large profile keeps its matrices and unit
columns in a `.npz` sidecar next to a small JSON header.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from bitalloc.columns import Coded, Names, Prefixes
from bitalloc.errors import BitallocError, bad
from bitalloc.fileio import atomic_write, check_writable, dumps, read_json
from bitalloc.units import Unit, check_names

from bitalloc.quant.formats.spec import default_format, format_for

SCHEMA = "bitalloc.profile/1"
SIDECAR_MIN_UNITS = 20_000  # above this, save() writes the .npz sidecar by default
_UNIT_KEYS = {"name", "layer", "kind", "n_params", "macs", "shape", "index", "axis"}


class Profile:
    """Sensitivity of every unit at every candidate.

    bits: (K,) nominal bit-width of each candidate; formats: (K,) number format of each;
    sensitivity: (N, K) float64 expected loss increase, `inf` where a candidate is not allowed;
    names, layers, kinds: (N,) str; n_params, macs: (N,) int64; rows, cols: (N,) int64, the 2-D
    block each unit covers (rows·cols = n_params); meta: estimator, model, settings, provenance.
    """

    def __init__(self, units: Sequence[Unit], bits: Sequence[int], sensitivity,
                 formats: Sequence[str] | None = None, meta: dict | None = None, extra: dict | None = None):
        units = list(units)
        for i, u in enumerate(units):
            if not isinstance(u, Unit):
                raise bad(f"units[{i}]", type(u).__name__, "must be a bitalloc.Unit")
            if u.n_params >= 2**53 or u.macs >= 2**62:
                raise bad(f"units[{i}].n_params/macs", max(u.n_params, u.macs), "must be below 2**53")
        rc = [_rows_cols(u) for u in units]
        self._init(names=[u.name for u in units], layers=[u.layer for u in units],
                   kinds=[u.kind for u in units],
                   n_params=np.array([u.n_params for u in units], dtype=np.int64),
                   macs=np.array([u.macs for u in units], dtype=np.int64),
                   rows=np.array([r for r, _ in rc], dtype=np.int64),
                   cols=np.array([c for _, c in rc], dtype=np.int64),
                   bits=bits, formats=formats, sensitivity=sensitivity, meta=meta, extra=extra)
        self._units = units

    @classmethod
    def from_columns(cls, names, n_params, bits, sensitivity, layers=None, kinds=None, macs=None,
                     rows=None, cols=None, formats=None, meta=None, extra=None) -> "Profile":
        """Build from arrays (fast path for large profiles); see the class docstring for shapes."""
        self = cls.__new__(cls)
        names = names if isinstance(names, Names) else list(names)  # Names: columnar, for 10⁶ units
        n_params = np.asarray(n_params)
        n = len(names)
        if layers is None:
            layers = Prefixes(names) if isinstance(names, Names) else [s.split(":")[0] for s in names]
        self._init(names=names, layers=layers if isinstance(layers, (Coded, Prefixes)) else list(layers),
                   kinds=Coded(["weight"], np.zeros(n, np.int8)) if kinds is None else
                   kinds if isinstance(kinds, Coded) else list(kinds), n_params=n_params,
                   macs=np.zeros(n, np.int64) if macs is None else np.asarray(macs),
                   rows=np.ones(n, np.int64) if rows is None else np.asarray(rows),
                   cols=n_params.astype(np.int64) if cols is None else np.asarray(cols),
                   bits=bits, formats=formats, sensitivity=sensitivity, meta=meta, extra=extra)
        self._units = None
        return self

    def _init(self, names, layers, kinds, n_params, macs, rows, cols, bits, formats, sensitivity, meta, extra):
        self.bits = _check_bits(bits)
        self.formats = _check_formats(formats, self.bits)
        # one Format object per candidate, parsed once: what estimators, cost models, apply and export use
        self.format_objects = [format_for(f, b) for f, b in zip(self.formats, self.bits)]
        self.names, self.layers, self.kinds = names, layers, kinds
        n = len(names)
        if isinstance(names, Names):  # columnar: every name is a string; the empty ones from the offsets
            i = names.first_empty()
            if i is not None:
                raise bad(f"units[{i}].name", names[i], "must be a non-empty string")
        elif not all(isinstance(s, str) and s for s in names):
            i = next(i for i, s in enumerate(names) if not (isinstance(s, str) and s))
            raise bad(f"units[{i}].name", names[i], "must be a non-empty string")
        check_names(names)
        for field, arr in (("n_params", n_params), ("macs", macs), ("rows", rows), ("cols", cols)):
            if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
                raise bad(field, f"array of shape {arr.shape} and dtype {arr.dtype}", f"must be {n} integers")
        if n == 0:
            raise bad("units", "[]", "a profile needs at least one unit")
        if (n_params <= 0).any():
            i = int(np.argmax(n_params <= 0))
            raise bad(f"units[{i}].n_params", int(n_params[i]), "must be a positive integer")
        if (macs < 0).any():
            i = int(np.argmax(macs < 0))
            raise bad(f"units[{i}].macs", int(macs[i]), "must be a non-negative integer")
        if isinstance(names, Names):
            dup = names.first_duplicate()
            if dup is not None:
                raise bad("units name", dup, "unit names must be unique (duplicate)")
        elif len(set(names)) != n:
            seen: set[str] = set()
            dup = next(s for s in names if s in seen or seen.add(s))
            raise bad("units name", dup, "unit names must be unique (duplicate)")
        self.n_params = n_params.astype(np.int64, copy=False)
        self.macs = macs.astype(np.int64, copy=False)
        self.rows = rows.astype(np.int64, copy=False)
        self.cols = cols.astype(np.int64, copy=False)
        self.sensitivity = _check_sensitivity(sensitivity, n, len(self.bits), names)
        self.meta = dict(meta or {})
        self.extra = dict(extra or {})

    # ---- views -------------------------------------------------------------------------
    @property
    def n_units(self) -> int:
        return len(self.names)

    @property
    def units(self) -> list[Unit]:
        if self._units is None:
            self._units = [Unit(s, self.layers[i], self.kinds[i], int(self.n_params[i]), int(self.macs[i]),
                                (int(self.rows[i]), int(self.cols[i])))
                           for i, s in enumerate(self.names)]
        return self._units

    @property
    def allowed(self) -> np.ndarray:
        """(N, K) bool: candidate k is allowed for unit n."""
        return np.isfinite(self.sensitivity)

    @property
    def has_formats(self) -> bool:
        """True when some candidate's format is not the default for its bit-width."""
        return any(f != default_format(b) for b, f in zip(self.bits, self.formats))

    def candidate_labels(self) -> list[str]:
        """`4` for a default-format candidate, `fp4_e2m1` (its format) otherwise."""
        return [str(b) if f == default_format(b) else f for b, f in zip(self.bits, self.formats)]

    def index(self) -> dict[str, int]:
        """unit name → row."""
        return {s: i for i, s in enumerate(self.names)}

    # ---- (de)serialization -------------------------------------------------------------
    def to_json(self) -> dict:
        d = {"schema": SCHEMA, "bits": list(self.bits)}
        if self.has_formats:
            d["formats"] = list(self.formats)
        d["units"] = [u.to_json() for u in self.units]
        d["sensitivity"] = [[None if not math.isfinite(v) else v for v in row] for row in self.sensitivity.tolist()]
        d["meta"] = self.meta
        d.update(self.extra)
        return d

    def save(self, path, sidecar: bool | None = None, force: bool = True) -> Path:
        """Write `path` (JSON). With a sidecar, the matrices and unit columns go to `path.npz`."""
        path = Path(path)
        if sidecar is None:
            sidecar = self.n_units >= SIDECAR_MIN_UNITS
        if not sidecar:
            return atomic_write(path, dumps(self.to_json()), force)
        side = path.with_suffix(".npz")
        check_writable(path, force)
        buf = io.BytesIO()
        np.savez(buf, **self._columns())
        atomic_write(side, buf.getvalue(), force)
        head = {"schema": SCHEMA, "bits": list(self.bits), "formats": list(self.formats),
                "sidecar": side.name, "n_units": self.n_units, "meta": self.meta, **self.extra}
        return atomic_write(path, dumps(head), force)

    def _columns(self) -> dict[str, np.ndarray]:
        layer_names, layer_idx = _factorize(self.layers)
        kind_names, kind_idx = _factorize(self.kinds)
        names = self.names.blob if isinstance(self.names, Names) else _blob(self.names)
        return {"sensitivity": self.sensitivity, "n_params": self.n_params, "macs": self.macs,
                "rows": self.rows, "cols": self.cols, "names": names,
                "layer_table": _blob(list(layer_names)), "layer_idx": layer_idx,
                "kind_table": _blob(list(kind_names)), "kind_idx": kind_idx}

    @classmethod
    def from_json(cls, d: dict, where: str = "profile", base: Path | None = None) -> "Profile":
        try:
            return cls._from_json(d, base)
        except BitallocError as e:
            raise BitallocError(f"{where}: {e}") from None

    @classmethod
    def _from_json(cls, d: dict, base: Path | None) -> "Profile":
        if d.get("schema") != SCHEMA:
            raise bad("schema", d.get("schema"), f"expected {SCHEMA!r}")
        known = {"schema", "bits", "formats", "units", "sensitivity", "meta", "sidecar", "n_units"}
        extra = {k: v for k, v in d.items() if k not in known}
        meta = d.get("meta", {})
        if not isinstance(meta, dict):
            raise bad("meta", meta, "must be a JSON object")
        _check_meta(meta)
        if "sidecar" in d:
            return cls._from_sidecar(d, base or Path("."), meta, extra)
        units_raw = d.get("units")
        if not isinstance(units_raw, list):
            raise bad("units", type(units_raw).__name__, "must be a list of unit objects")
        units = [_unit_from_json(u, i) for i, u in enumerate(units_raw)]
        _check_bits(d.get("bits"))  # before the rows, whose length it sets
        sens = d.get("sensitivity")
        if not isinstance(sens, list):
            raise bad("sensitivity", type(sens).__name__, "must be a list of rows, one per unit")
        return cls(units, d.get("bits"), _rows_to_array(sens, len(units), d.get("bits")),
                   formats=d.get("formats"), meta=meta, extra=extra)

    @classmethod
    def _from_sidecar(cls, d, base: Path, meta, extra) -> "Profile":
        side = base / str(d["sidecar"])
        try:
            with np.load(side, allow_pickle=False) as z:
                cols = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise bad("sidecar", str(side), "file not found next to the profile") from None
        except Exception as e:  # zipfile/format errors of a truncated file
            raise bad("sidecar", str(side), f"cannot be read as .npz ({type(e).__name__})") from None
        need = {"sensitivity", "n_params", "macs", "rows", "cols", "names", "layer_table", "layer_idx",
                "kind_table", "kind_idx"}
        if need - set(cols):
            raise bad("sidecar", str(side), f"missing arrays {sorted(need - set(cols))}")
        names = Names(cols["names"])  # columnar: no Python object per unit
        if d.get("n_units") is not None and d["n_units"] != len(names):
            raise bad("n_units", d["n_units"], f"sidecar holds {len(names)} units")
        layer_table, kind_table = _unblob(cols["layer_table"]), _unblob(cols["kind_table"])
        for key, table in (("layer_idx", layer_table), ("kind_idx", kind_table)):
            idx = cols[key]
            if idx.shape != (len(names),) or (len(idx) and (idx.min() < 0 or idx.max() >= len(table))):
                raise bad("sidecar", str(side), f"{key} must hold {len(names)} indices into its table")
        return cls.from_columns(names, cols["n_params"], d.get("bits"), cols["sensitivity"],
                                layers=Coded(layer_table, _narrow(cols.pop("layer_idx"), len(layer_table))),
                                kinds=Coded(kind_table, _narrow(cols.pop("kind_idx"), len(kind_table))),
                                macs=cols["macs"], rows=cols["rows"], cols=cols["cols"],
                                formats=d.get("formats"), meta=meta, extra=extra)

    @classmethod
    def load(cls, path) -> "Profile":
        p = Path(path)
        return cls.from_json(read_json(p, "profile"), where=f"profile {str(p)!r}", base=p.parent)


# ---- validation helpers ----------------------------------------------------------------
def _check_meta(meta: dict) -> None:
    """The meta keys cost models read (group_size, symmetric, outlier_fraction), when present."""
    g = meta.get("group_size", 1)
    if isinstance(g, bool) or not isinstance(g, int) or not 1 <= g <= 2**31:
        raise bad("meta.group_size", g, "must be a positive integer (input columns per scale)")
    if not isinstance(meta.get("symmetric", False), bool):
        raise bad("meta.symmetric", meta["symmetric"], "must be true or false")
    f = meta.get("outlier_fraction", 0.0)
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < 1:
        raise bad("meta.outlier_fraction", f, "must be a number in [0, 1)")


def _check_bits(bits) -> list[int]:
    if not isinstance(bits, (list, tuple)) or not bits:
        raise bad("bits", bits, "must be a non-empty list of bit-widths")
    for b in bits:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= 32:
            raise bad("bits", b, "each candidate's bit-width must be an integer from 1 to 32")
    return [int(b) for b in bits]


def _check_formats(formats, bits) -> list[str]:
    if formats is None:
        formats = [default_format(b) for b in bits]
    if not isinstance(formats, (list, tuple)) or len(formats) != len(bits):
        raise bad("formats", formats, f"must be a list of {len(bits)} format names, one per candidate")
    for f in formats:
        if not isinstance(f, str) or not f:
            raise bad("formats", f, "each format must be a non-empty string such as 'int4' or 'fp4_e2m1'")
    pairs = list(zip(bits, formats))
    if len(set(pairs)) != len(pairs):
        dup = next(p for i, p in enumerate(pairs) if p in pairs[:i])
        raise bad("candidates", f"{dup[0]} bits {dup[1]}", "each (bits, format) candidate must appear once")
    return list(formats)


def _check_sensitivity(s, n: int, k: int, names) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    if s.shape != (n, k):
        raise bad("sensitivity", f"shape {s.shape}", f"must be ({n} units, {k} candidates)")
    if np.isnan(s).any():
        i, j = map(int, np.argwhere(np.isnan(s))[0])
        raise bad(f"sensitivity[{i}][{j}] (unit {names[i]!r})", "NaN", "must be a number >= 0, or null if not allowed")
    if (s < 0).any():
        i, j = map(int, np.argwhere(s < 0)[0])
        raise bad(f"sensitivity[{i}][{j}] (unit {names[i]!r})", float(s[i, j]),
                  "must be >= 0 (expected loss increase), or null if not allowed")
    dead = ~np.isfinite(s).any(axis=1)
    if dead.any():
        i = int(np.argmax(dead))
        raise bad(f"sensitivity[{i}] (unit {names[i]!r})", "all null", "a unit needs at least one allowed candidate")
    return np.ascontiguousarray(s)


def _rows_to_array(rows: list, n: int, bits) -> np.ndarray:
    k = len(bits) if isinstance(bits, (list, tuple)) else 0
    if len(rows) != n:
        raise bad("sensitivity", f"{len(rows)} rows", f"must have one row per unit ({n})")
    out = np.empty((n, k), dtype=np.float64)
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != k:
            raise bad(f"sensitivity[{i}]", row, f"must be a list of {k} numbers (or null), one per candidate")
        for j, v in enumerate(row):
            if v is None:
                out[i, j] = np.inf
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(f"sensitivity[{i}][{j}]", v, "must be a number >= 0, or null if not allowed")
            else:
                out[i, j] = v
    return out


def _unit_from_json(u, i: int) -> Unit:
    if not isinstance(u, dict):
        raise bad(f"units[{i}]", u, "must be an object with name and n_params")
    if "name" not in u or "n_params" not in u:
        raise bad(f"units[{i}]", u, "must have 'name' and 'n_params'")
    shape = u.get("shape", ())
    index = u.get("index")
    if not isinstance(shape, list | tuple) or not all(_is_int(x) and x > 0 for x in shape):
        raise bad(f"units[{i}].shape", shape, "must be a list of positive integers, e.g. [576, 1536]")
    if index is not None and (not isinstance(index, list | tuple) or len(index) != 2
                              or not all(_is_int(x) and x >= 0 for x in index)):
        raise bad(f"units[{i}].index", index, "must be [start, stop], two non-negative integers")
    axis = u.get("axis")
    if axis not in (None, 0, 1) or isinstance(axis, bool):
        raise bad(f"units[{i}].axis", axis, "must be 0 (channel rows), 1 (group columns) or null")
    try:
        return Unit(u["name"], u.get("layer", ""), u.get("kind", "weight"), u["n_params"], u.get("macs", 0),
                    tuple(shape), tuple(index) if index is not None else None, axis,
                    {k: v for k, v in u.items() if k not in _UNIT_KEYS})
    except BitallocError as e:
        raise BitallocError(f"units[{i}]: {e}") from None


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _rows_cols(u: Unit) -> tuple[int, int]:
    if len(u.shape) >= 2 and math.prod(u.shape) == u.n_params:
        return int(u.shape[0]), int(math.prod(u.shape[1:]))
    return 1, u.n_params


def _factorize(values: list[str]) -> tuple[list[str], np.ndarray]:
    """(distinct values in first-seen order, index of each value in that table)."""
    if isinstance(values, Coded):
        return values.table, values.codes.astype(np.int64)
    table: dict[str, int] = {}
    idx = np.fromiter((table.setdefault(v, len(table)) for v in values), dtype=np.int64, count=len(values))
    return list(table), idx


def _narrow(codes: np.ndarray, n: int) -> np.ndarray:
    """Codes into a table of n values in the smallest signed integer type that holds them (the
    sidecar stores int64: 8 bytes per unit for a table of a few names)."""
    for t in (np.int8, np.int16, np.int32):
        if n <= np.iinfo(t).max + 1:
            return codes.astype(t)
    return codes


def _blob(strings: list[str]) -> np.ndarray:
    for s in strings:
        if "\n" in s:
            raise bad("unit name", s, "must not contain a newline")
    return np.frombuffer("\n".join(strings).encode("utf-8"), dtype=np.uint8)


def _unblob(a: np.ndarray) -> list[str]:
    text = a.tobytes().decode("utf-8")
    return text.split("\n") if text else []
