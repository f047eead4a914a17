"""Allocation: the chosen candidate of every unit, with totals, budgets and how it was found."""
from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from bitalloc.columns import Names, UnitMap
from bitalloc.errors import BitallocError, bad
from bitalloc.fileio import atomic_write, check_writable, dumps, read_json
from bitalloc.quant.formats.spec import FormatInfo, format_for

SCHEMA = "bitalloc.allocation/1"
STATUSES = ("optimal", "feasible", "infeasible", "time_limit")
SIDECAR_MIN_UNITS = 20_000  # above this, save() writes bits (and formats) as arrays in a .npz sidecar


@dataclass
class Allocation:
    """bits: unit name → nominal bits; formats: unit name → number format (only when the profile
    names formats); avg_bits / avg_bits_with_overhead: bits per weight without / with group
    metadata and outliers; objective: total (or worst) expected loss increase; bound: proven lower
    bound on the optimum (None if the solver has none); gap: (objective − bound) / |objective|;
    status: one of STATUSES; totals / budgets: resource → value in its user unit; min_budgets:
    for an infeasible problem, the smallest budget of each resource that could be met on its
    own; wall_s: solver wall time in seconds.

    Solvers return `bits` and `formats` as `UnitMap`s: read-only mappings over (N,) arrays and the
    profile's names, turned into dicts only when asked (`dict(a.bits)`), so an allocation of 10⁶
    units holds no per-unit Python objects; `save` writes them to a `.npz` sidecar when large.
    `formats` holds the labels (the serialized form); `format_of(name)` is the parsed Format object
    that apply, verify, the codec and the exporters use."""

    bits: Mapping[str, int]
    status: str
    solver: str
    objective: float | None = None
    bound: float | None = None
    gap: float | None = None
    avg_bits: float | None = None
    avg_bits_with_overhead: float | None = None
    totals: dict[str, float] = field(default_factory=dict)
    budgets: dict[str, float] = field(default_factory=dict)
    min_budgets: dict[str, float] = field(default_factory=dict)
    formats: Mapping[str, str] | None = None
    wall_s: float = 0.0
    meta: dict = field(default_factory=dict)
    constraints: list[dict] = field(default_factory=list)
    constraints_sha256: str | None = None

    def set_constraints(self, specs: list[dict]) -> None:
        """Store each budget with its cost model's spec ([{resource, budget, cost}], see
        Constraint.spec) and their digest, so that `verify` rebuilds the models and an edited
        budget or spec is caught."""
        self.constraints = [dict(c) for c in specs]
        self.constraints_sha256 = constraints_digest(self.constraints)

    def format_of(self, name: str) -> FormatInfo:
        """The number format of unit `name` as an object (`quant.formats.spec.format_for`, the
        function the Profile parses its candidates with, cached: one object per distinct label and
        bits): its `formats` label, or for a bits-only allocation the default format of its bits
        (int{b}, fp16, fp32). A label whose element bits disagree with the unit's bits is a
        one-line error naming the unit."""
        if name not in self.bits:
            raise bad("allocation unit", name, "is not a unit of the allocation")
        b = int(self.bits[name])
        try:
            return format_for(self.formats[name] if self.formats else None, b)
        except BitallocError as e:
            raise BitallocError(f"allocation unit {name!r} at {b} bits: {e}") from None

    def __post_init__(self):
        if self.status not in STATUSES:
            raise bad("status", self.status, f"allowed: {', '.join(STATUSES)}")

    @property
    def ok(self) -> bool:
        """True when the allocation holds a solution that meets every budget."""
        return self.status in ("optimal", "feasible", "time_limit") and bool(self.bits)

    def to_json(self) -> dict:
        d = {"schema": SCHEMA}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None and f.name in ("formats", "constraints_sha256") or (f.name == "constraints" and not v):
                continue
            d[f.name] = dict(v.items()) if f.name in ("bits", "formats") else _plain(v)
        return d

    @classmethod
    def from_json(cls, d: dict, where: str = "allocation") -> "Allocation":
        if d.get("schema") != SCHEMA:
            raise bad(f"{where}: schema", d.get("schema"), f"expected {SCHEMA!r}")
        names = set(cls.__dataclass_fields__)
        unknown = set(d) - names - {"schema"}
        if unknown:
            raise bad(f"{where}: field", sorted(unknown)[0], f"allowed fields: {', '.join(sorted(names))}")
        _check_fields(d, where)
        return cls(**{k: v for k, v in d.items() if k != "schema"})

    def save(self, path, force: bool = False, sidecar: bool | None = None) -> Path:
        """Write `path` (JSON). With a sidecar (default above SIDECAR_MIN_UNITS units), the unit
        names, bits (uint8) and format codes go to `path.npz` and the JSON holds the rest."""
        path = Path(path)
        if sidecar is None:
            sidecar = len(self.bits) >= SIDECAR_MIN_UNITS
        if not sidecar:
            return atomic_write(path, dumps(self.to_json()), force)
        check_writable(path, force)
        side = path.with_suffix(".npz")
        names, bits, fmt_codes, fmt_table = _columns(self.bits, self.formats)
        arrays = {"names": names.blob, "bits": bits}
        if fmt_codes is not None:
            arrays["format_codes"] = fmt_codes
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write(side, buf.getvalue(), force)
        d = {k: v for k, v in self.to_json_head().items()}
        d.update(sidecar=side.name, n_units=len(names), format_table=fmt_table)
        return atomic_write(path, dumps(d), force)

    def to_json_head(self) -> dict:
        """to_json without bits and formats."""
        d = {"schema": SCHEMA}
        for f in fields(self):
            if f.name not in ("bits", "formats"):
                d[f.name] = _plain(getattr(self, f.name))
        return d

    @classmethod
    def load(cls, path) -> "Allocation":
        path = Path(path)
        where = f"allocation {str(path)!r}"
        d = read_json(path, "allocation")
        if isinstance(d, dict) and "sidecar" in d:
            d = _from_sidecar(d, path.parent, where)
        return cls.from_json(d, where=where)

    def choice(self, profile) -> np.ndarray:
        """(N,) candidate index of each profile unit."""
        if isinstance(self.bits, UnitMap) and _same_names(self.bits.names, profile.names):
            return self._choice_columnar(profile)
        return self._choice_by_name(profile)

    def _choice_columnar(self, profile) -> np.ndarray:
        """Vectorized: the allocation's units are the profile's, in order."""
        bits = np.asarray(self.bits.array, dtype=np.int64)
        out = np.full(len(bits), -1, dtype=np.int64)
        if self.formats:
            f = self.formats
            fmt = np.asarray(f.array) if isinstance(f, UnitMap) and f.table is not None else None
            table = list(f.table) if fmt is not None else None
            if fmt is None:
                return self._choice_by_name(profile)
            for k, (b, name) in enumerate(zip(profile.bits, profile.formats)):
                if name in table:
                    out[(bits == b) & (fmt == table.index(name)) & (out < 0)] = k
        else:
            for k in reversed(range(len(profile.bits))):
                out[bits == profile.bits[k]] = k
        if (out < 0).any():
            i = int(np.argmax(out < 0))
            raise bad(f"allocation bits of {profile.names[i]!r}", int(bits[i]), "is not a candidate of the profile")
        return out

    def _choice_by_name(self, profile) -> np.ndarray:

        labels = {(b, f): k for k, (b, f) in enumerate(zip(profile.bits, profile.formats))}
        by_bits = {b: k for k, b in reversed(list(enumerate(profile.bits)))}
        out = np.empty(profile.n_units, dtype=np.int64)
        for i, s in enumerate(profile.names):
            if s not in self.bits:
                raise bad("allocation", s, "unit of the profile has no bits in the allocation")
            b = self.bits[s]
            k = labels.get((b, self.formats[s])) if self.formats else by_bits.get(b)
            if k is None:
                raise bad(f"allocation bits of {s!r}", b, "is not a candidate of the profile")
            out[i] = k
        return out


def constraints_digest(specs: list[dict]) -> str:
    """sha256 of the constraints list in canonical JSON (sorted keys)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(specs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _plain(v):
    """A JSON-ready copy of a field value (dicts and lists copied, numpy scalars made floats)."""
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _same_names(a, b) -> bool:
    if a is b:
        return True
    if isinstance(a, Names) and isinstance(b, Names):
        return a == b
    return len(a) == len(b) and all(x == y for x, y in zip(a, b))


def _columns(bits: Mapping, formats: Mapping | None):
    """(Names, (N,) uint8 bits, (N,) int16 format codes or None, format table or None)."""
    if isinstance(bits, UnitMap):
        names = bits.names if isinstance(bits.names, Names) else Names.from_list(list(bits.names))
        b = np.asarray(bits.array)
    else:
        names = Names.from_list(list(bits))
        b = np.fromiter(bits.values(), dtype=np.int64, count=len(bits))
    if (b < 1).any() or (b > 32).any():
        raise bad("bits", int(b[(b < 1) | (b > 32)][0]), "each must be an integer bit-width from 1 to 32")
    codes = table = None
    if formats is not None:
        if isinstance(formats, UnitMap) and formats.table is not None and formats.names is bits.names:
            codes, table = np.asarray(formats.array, dtype=np.int16), list(formats.table)
        else:
            vals = [formats[s] for s in names]
            table = sorted(set(vals))
            pos = {t: i for i, t in enumerate(table)}
            codes = np.array([pos[v] for v in vals], dtype=np.int16)
    return names, b.astype(np.uint8), codes, table


def _from_sidecar(d: dict, base: Path, where: str) -> dict:
    """The JSON form of an allocation saved with a sidecar, its bits and formats as UnitMaps."""
    side = base / str(d["sidecar"])
    try:
        z = np.load(side, allow_pickle=False)
        cols = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise bad(f"{where}: sidecar", str(side), "file not found next to the allocation") from None
    except Exception as e:
        raise bad(f"{where}: sidecar", str(side), f"cannot be read as .npz ({type(e).__name__})") from None
    if "names" not in cols or "bits" not in cols:
        raise bad(f"{where}: sidecar", str(side), "must hold arrays 'names' and 'bits'")
    names = Names(cols["names"])
    bits = cols["bits"]
    if bits.shape != (len(names),) or d.get("n_units", len(names)) != len(names):
        raise bad(f"{where}: sidecar bits", bits.shape, f"must be one per unit name ({len(names)})")
    if len(bits) and (bits.min() < 1 or bits.max() > 32):
        raise bad(f"{where}: bits", int(bits.min()), "must be integer bit-widths from 1 to 32")
    out = {k: v for k, v in d.items() if k not in ("sidecar", "n_units", "format_table")}
    out["bits"] = UnitMap(names, bits.astype(np.int8))
    table = d.get("format_table")
    if "format_codes" in cols:
        codes = cols["format_codes"]
        if not isinstance(table, list) or codes.shape != bits.shape or (len(codes) and (codes.min() < 0 or codes.max() >= len(table))):
            raise bad(f"{where}: formats", str(side), "format_codes must index format_table, one per unit")
        out["formats"] = UnitMap(names, codes, table)
    return out


def _check_fields(d: dict, where: str) -> None:
    bits = d.get("bits")
    if isinstance(bits, UnitMap):  # from a sidecar, checked as arrays
        pass
    elif not isinstance(bits, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                               and 1 <= v <= 32 for k, v in bits.items()):
        raise bad(f"{where}: bits", bits, "must map each unit name to an integer bit-width from 1 to 32")
    from bitalloc.units import check_names

    try:
        check_names(list(bits))
    except BitallocError as e:
        raise BitallocError(f"{where}: {e}") from None
    for k in ("status", "solver"):
        if not isinstance(d.get(k), str):
            raise bad(f"{where}: {k}", d.get(k), "must be a string")
    for k in ("objective", "bound", "gap", "avg_bits", "avg_bits_with_overhead", "wall_s"):
        v = d.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise bad(f"{where}: {k}", v, "must be a number or null")
    for k in ("totals", "budgets", "min_budgets"):
        v = d.get(k, {})
        if not isinstance(v, dict) or not all(isinstance(x, (int, float)) for x in v.values()):
            raise bad(f"{where}: {k}", v, "must map resource names to numbers")
    f = d.get("formats")
    if isinstance(f, UnitMap) and isinstance(bits, UnitMap):
        return
    if f is not None and (not isinstance(f, dict) or set(f) != set(bits)):
        raise bad(f"{where}: formats", f, "must map the same unit names as bits to format names")
    cons = d.get("constraints", [])
    if not isinstance(cons, list) or not all(isinstance(c, dict) and {"resource", "budget", "cost"} <= set(c) for c in cons):
        raise bad(f"{where}: constraints", cons, "must be a list of {resource, budget, cost} objects")
