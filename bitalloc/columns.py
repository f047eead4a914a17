"""Columnar per-unit data: 10⁶ unit names or values without 10⁶ Python objects.

`Names`: unit names as one UTF-8 blob (newline separated, the profile sidecar's form) plus (N+1,)
offsets; a name is decoded when asked for. `Coded`: a categorical column (table + (N,) codes),
for layers, kinds and formats. `UnitMap`: a read-only mapping unit name → value backed by a
names sequence and an (N,) array; the name → row index is built only on the first lookup by name.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from bitalloc.errors import bad


class Names(Sequence):
    """blob: (bytes,) uint8 UTF-8 names joined by newlines; ends: (N,) end offset of each name
    (name i starts after the separator that ends name i - 1: `starts`, made when asked)."""

    def __init__(self, blob: np.ndarray, ends: np.ndarray | None = None):
        self.blob = np.ascontiguousarray(blob, dtype=np.uint8)
        if ends is None:  # the separators, found 4 MB at a time (no blob-sized temporaries)
            step = 1 << 22
            parts = [a + np.flatnonzero(self.blob[a:a + step] == 10) for a in range(0, len(self.blob), step)]
            ends = np.concatenate(parts + [[len(self.blob)]]) if len(self.blob) else np.zeros(0, np.int64)
        self.ends = ends.astype(np.int64, copy=False)

    @property
    def starts(self) -> np.ndarray:
        """(N,) start offset of each name (a new array)."""
        return np.concatenate([[0], self.ends[:-1] + 1]).astype(np.int64) if len(self.ends) else self.ends

    def _start(self, i: int) -> int:
        return int(self.ends[i - 1]) + 1 if i else 0

    @classmethod
    def from_list(cls, names) -> "Names":
        for s in names:
            if "\n" in s:
                raise bad("unit name", s, "must not contain a newline")
        return cls(np.frombuffer("\n".join(names).encode("utf-8"), dtype=np.uint8))

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.blob[self._start(i):self.ends[i]].tobytes().decode("utf-8")

    def __iter__(self):
        for batch in self.batches():
            yield from batch

    def batches(self, step: int = 1 << 16):
        """The names as lists of `step` strings at a time (one decode per batch)."""
        for a in range(0, len(self), step):
            b = min(a + step, len(self))
            yield self.blob[self._start(a):self.ends[b - 1]].tobytes().decode("utf-8").split("\n")

    def first_empty(self) -> int | None:
        """Row of the first empty name, or None."""
        i = np.flatnonzero(self.ends == self.starts)  # once, at load
        return int(i[0]) if len(i) else None

    def __eq__(self, other):
        if isinstance(other, Names):
            return np.array_equal(self.blob, other.blob)
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and list(self) == list(other)
        return NotImplemented

    __hash__ = None

    def __repr__(self):
        return f"Names({len(self)} names)"

    def hashes(self, step: int = 1 << 12) -> np.ndarray:
        """(N,) uint64 polynomial hash of each name's bytes (vectorized, `step` names at a time:
        the temporaries take ~50 bytes per byte of the chunk, ~8 MB for 2¹² names of 40 bytes)."""
        out = np.zeros(len(self), np.uint64)
        all_starts = self.starts
        width = int((self.ends - all_starts).max()) + 1 if len(self) else 1
        with np.errstate(over="ignore"):
            powers = np.cumprod(np.full(width, np.uint64(1099511628211)), dtype=np.uint64)
            for a in range(0, len(self), step):
                b = min(a + step, len(self))
                lo, hi = int(all_starts[a]), int(self.ends[b - 1])
                seg = self.blob[lo:hi]
                starts = all_starts[a:b] - lo
                pos = np.arange(len(seg), dtype=np.int64) - np.repeat(starts, np.diff(np.append(starts, len(seg))))
                h = seg.astype(np.uint64) * powers[pos] + np.uint64(1)
                h[seg == 10] = 0  # the separators
                out[a:b] = np.add.reduceat(h, starts) if len(seg) else 0
        out[self.ends == all_starts] = 0  # reduceat on an empty name returns the next element
        return out

    def first_duplicate(self) -> str | None:
        """A name that appears twice, or None (hash first, exact comparison of the collisions)."""
        h = self.hashes()
        order = np.argsort(h, kind="stable")
        sorted_h = h[order]
        same = np.flatnonzero(sorted_h[1:] == sorted_h[:-1])
        del sorted_h
        groups: dict[int, set] = {}  # equal hashes are adjacent after the sort
        for j in same.tolist():
            for i in (int(order[j]), int(order[j + 1])):
                if i in groups.setdefault(int(h[i]), set()):
                    continue
                s = self[i]
                if s in (self[k] for k in groups[int(h[i])]):
                    return s
                groups[int(h[i])].add(i)
        return None


class Coded(Sequence):
    """table: distinct values; codes: (N,) index into table."""

    def __init__(self, table, codes: np.ndarray):
        self.table, self.codes = list(table), np.asarray(codes)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.table[c] for c in self.codes[i].tolist()]
        return self.table[int(self.codes[i])]

    def __iter__(self):
        t = self.table
        return (t[c] for c in self.codes.tolist())

    def __eq__(self, other):
        if isinstance(other, (list, tuple, Coded)):
            return len(other) == len(self) and list(self) == list(other)
        return NotImplemented

    __hash__ = None


class Prefixes(Sequence):
    """The part of each name before ':' (the layer of a `layer:g12` group), computed on access."""

    def __init__(self, names: Sequence[str]):
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [s.split(":")[0] for s in self.names[i]]
        return self.names[i].split(":")[0]

    def __iter__(self):
        return (s.split(":")[0] for s in self.names)


class UnitMap(Mapping):
    """unit name → value: names (N,) sequence, values (N,) array (or codes into `table`)."""

    def __init__(self, names: Sequence[str], values: np.ndarray, table: list | None = None):
        if len(names) != len(values):
            raise bad("values", len(values), f"need one per unit name ({len(names)})")
        self.names, self.array, self.table = names, np.asarray(values), table
        self._index: dict[str, int] | None = None

    def _value(self, i: int):
        v = self.array[i]
        return self.table[int(v)] if self.table is not None else v.item()

    def __getitem__(self, name):
        if self._index is None:
            self._index = {s: i for i, s in enumerate(self.names)}
        return self._value(self._index[name])

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return iter(self.names)

    def items(self):
        vals = self.array.tolist()
        if self.table is not None:
            vals = [self.table[v] for v in vals]
        return zip(self.names, vals)

    def values_list(self) -> list:
        return [v for _, v in self.items()]

    def to_dict(self) -> dict:
        return dict(self.items())

    def __repr__(self):
        return f"UnitMap({len(self)} units)"
