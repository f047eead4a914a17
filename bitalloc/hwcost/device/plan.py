"""Measurement plans: the deduplicated kernels a device must time so that a profile's layers get
measured costs (`bitalloc mcu plan`), read back by `bitalloc measure`.

CSV with `#key=value` header lines (schema, device, profile, model) and the columns of COLUMNS:
`id` (k001, ...), `op` (linear | conv2d), `shape` (`pos=1,in=576,out=1536` for a linear: pos
rows of `in` inputs times an (out, in) weight; `n=1,c=16,h=8,w=8,k=32,kh=3,kw=3,stride=1,pad=1,
groups=1` for a conv), `macs` (per inference, as in the profile), `w_bits`, `a_bits`, `group`
(quantization group size, empty = per channel), `kernel` (the device's kernel for the
candidate's format), `format`, `layers` (the profile layers that run this kernel, `;`-separated).
Layers with the same op, shape and candidate share one entry. Candidates without a kernel on
the device are not planned (they are infeasible already).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from bitalloc.errors import BitallocError
from bitalloc.fileio import atomic_write, read_text

SCHEMA = "bitalloc.plan/1"
COLUMNS = ("id", "op", "shape", "macs", "w_bits", "a_bits", "group", "kernel", "format", "layers")
OPS = ("linear", "conv2d")


@dataclass(frozen=True)
class PlanEntry:
    id: str
    op: str
    shape: dict
    macs: int
    w_bits: int
    a_bits: int
    group: int | None
    kernel: str
    format: str
    layers: tuple[str, ...]

    def shape_text(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.shape.items())


def make_plan(profile, device) -> list[PlanEntry]:
    """One entry per distinct (op, shape, candidate kernel) over the profile's layers."""
    from bitalloc.hwcost.graph import GRAPH_KEY
    from bitalloc.hwcost.layers import layer_view

    lv = layer_view(profile)
    shapes = {}
    for n in (profile.extra.get(GRAPH_KEY) or {}).get("nodes", []):
        s = n.get("shape")
        if n.get("layer") and s and "stride" in s:
            (bn, c, h, w), (k, _, kh, kw) = s["in"], s["w"]
            if math.prod(s["w"]) * math.prod(s["out"][2:]) == lv.macs[lv.index()[n["layer"]]]:
                shapes[n["layer"]] = ("conv2d", {"n": 1, "c": c, "h": h, "w": w, "k": k, "kh": kh, "kw": kw,
                                                 "stride": s["stride"][0], "pad": s["padding"][0], "groups": s["groups"]})
    group = profile.meta.get("group_size") if profile.meta.get("granularity") == "group" else None
    entries: dict[tuple, dict] = {}
    for j, name in enumerate(lv.names):
        op, shape = shapes.get(name) or ("linear", {"pos": max(1, int(round(lv.positions[j]))),
                                                    "in": int(lv.cols[j]), "out": int(lv.rows[j])})
        for b, f in zip(profile.bits, profile.formats):
            ker = device.kernel_for(f)
            if ker is None:
                continue
            key = (op, tuple(shape.items()), b, ker.a_bits, ker.name, f)
            e = entries.setdefault(key, {"op": op, "shape": shape, "macs": int(round(lv.macs[j])), "w_bits": b,
                                         "a_bits": ker.a_bits, "group": group, "kernel": ker.name, "format": f, "layers": []})
            e["layers"].append(name)
    return [PlanEntry(f"k{i + 1:03d}", **{**e, "layers": tuple(e["layers"])}) for i, e in enumerate(entries.values())]


def write_plan(path, header: dict, entries: list[PlanEntry], force: bool = False) -> Path:
    buf = io.StringIO()
    for k, v in {"schema": SCHEMA, **header}.items():
        buf.write(f"#{k}={v}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for e in entries:
        w.writerow([e.id, e.op, e.shape_text(), e.macs, e.w_bits, e.a_bits, "" if e.group is None else e.group,
                    e.kernel, e.format, ";".join(e.layers)])
    return atomic_write(path, buf.getvalue(), force)


def read_plan(path) -> tuple[dict, list[PlanEntry]]:
    """(header, entries); any defect is one BitallocError naming the file, the row and the field."""
    p = Path(path)
    where = f"plan {str(p)!r}"
    text = read_text(p, "plan")
    if not text.endswith("\n"):
        raise BitallocError(f"{where}: the file is truncated (a complete file ends with a newline)")
    lines = text.splitlines(keepends=True)
    header, i = {}, 0
    while i < len(lines) and lines[i].startswith("#"):
        k, sep, v = lines[i][1:].strip().partition("=")
        if not sep:
            raise BitallocError(f"{where} row {i + 1} field header {lines[i].strip()!r}: header lines are #key=value")
        header[k.strip()] = v.strip()
        i += 1
    if header.get("schema") != SCHEMA:
        raise BitallocError(f"{where} field #schema {header.get('schema')!r}: expected {SCHEMA!r}")
    if not header.get("device"):
        raise BitallocError(f"{where} field #device: missing (the device the plan is for)")
    rows = list(csv.reader(io.StringIO("".join(lines[i:]))))
    if not rows or tuple(rows[0]) != COLUMNS:
        raise BitallocError(f"{where} row {i + 1} field columns {','.join(rows[0]) if rows else ''!r}: expected {','.join(COLUMNS)}")
    out, ids = [], set()
    for j, r in enumerate(rows[1:]):
        line = i + 2 + j
        if len(r) != len(COLUMNS):
            raise BitallocError(f"{where} row {line} field fields {len(r)}: expected {len(COLUMNS)} (truncated or malformed row)")
        d = dict(zip(COLUMNS, r))

        def num(f, optional=False):
            if optional and d[f] == "":
                return None
            try:
                v = int(d[f])
            except ValueError:
                v = -1
            if v < (1 if f != "macs" else 0):
                raise BitallocError(f"{where} row {line} field {f} {d[f]!r}: must be a positive integer")
            return v

        if d["op"] not in OPS:
            raise BitallocError(f"{where} row {line} field op {d['op']!r}: allowed: {', '.join(OPS)}")
        try:
            shape = {k: int(v) for k, v in (kv.split("=") for kv in d["shape"].split(","))}
        except ValueError:
            raise BitallocError(f"{where} row {line} field shape {d['shape']!r}: must be key=integer pairs") from None
        need = ("pos", "in", "out") if d["op"] == "linear" else ("n", "c", "h", "w", "k", "kh", "kw", "stride", "pad", "groups")
        if set(shape) != set(need) or min(shape.values()) < 0:
            raise BitallocError(f"{where} row {line} field shape {d['shape']!r}: {d['op']} needs {','.join(need)}")
        if d["id"] in ids or not d["id"]:
            raise BitallocError(f"{where} row {line} field id {d['id']!r}: ids must be unique and non-empty")
        ids.add(d["id"])
        layers = tuple(s for s in d["layers"].split(";") if s)
        if not layers:
            raise BitallocError(f"{where} row {line} field layers {d['layers']!r}: name at least one layer")
        out.append(PlanEntry(d["id"], d["op"], shape, num("macs"), num("w_bits"), num("a_bits"), num("group", True),
                             d["kernel"], d["format"], layers))
    return header, out
