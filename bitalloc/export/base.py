"""Exporter: Allocation → one file a downstream tool reads. Subclasses implement `render`."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from bitalloc.allocation import Allocation
from bitalloc.errors import BitallocError, bad
from bitalloc.quant.formats.spec import FormatInfo


@dataclass(frozen=True)
class ExportResult:
    """path: the file written; format: its name; units: how many units it covers; notes: what the
    format could not express exactly and what was done instead (fallbacks, merges), one line each;
    summary: format-specific figures (e.g. GGUF tensor types and bits per weight)."""

    path: Path
    format: str
    units: int
    notes: tuple[str, ...] = ()
    summary: dict = field(default_factory=dict)


class Exporter(ABC):
    """Base class: `write(allocation, out, force)` → ExportResult, never leaving a partial file."""

    name = "exporter"

    @abstractmethod
    def write(self, allocation, out, force: bool = False) -> ExportResult:
        """Validate `allocation` (see layer_bits), then write `out` atomically."""


class TextExporter(Exporter):
    """A format small enough to build in memory: subclasses implement `render`. any_units: the
    format takes group/channel units (`layer:gN`, `layer:cN`) too, not only whole layers."""

    any_units = False

    def write(self, allocation, out, force: bool = False) -> ExportResult:
        from bitalloc.fileio import atomic_write, check_writable

        check_writable(out, force)
        bits = layer_bits(allocation, what=f"{self.name} export", units=self.any_units)
        data, notes, summary = self.render(bits)
        path = atomic_write(out, data, force)
        return ExportResult(Path(path), self.name, len(bits), tuple(notes), summary)

    @abstractmethod
    def render(self, bits: dict[str, int]) -> tuple[str | bytes, list[str], dict]:
        """(file contents, notes, summary) for unit name → bits."""


def layer_bits(allocation, accept: tuple[str, ...] = (), what: str = "export formats", units: bool = False) -> dict[str, int]:
    """unit name → bits from an Allocation, a path to one, or a dict; refuses group/channel units
    (these formats take one bit-width per module), an empty allocation, and number formats other
    than integers, fp16 and `accept` (what the target can express; `what` names the target)."""
    if isinstance(allocation, (str, Path)):
        allocation = Allocation.load(allocation)
    if isinstance(allocation, Allocation):
        if not allocation.ok:
            raise bad("allocation status", allocation.status, "has no solution to export")
        odd = {n: f.name for n, f in allocation_formats(allocation).items()
               if not (f.family == "int" or f.name == "fp16" or f.name in accept)}
        if odd:
            name = next(iter(odd))
            extra = "".join(f", {a}" for a in accept)
            raise bad(f"allocation format of {name!r}", odd[name], f"{what} takes integer bit-widths (int2..int8, fp16{extra}); "
                      f"{len(odd)} unit(s) use other number formats")
        bits = dict(allocation.bits)
    elif isinstance(allocation, dict):
        bits = dict(allocation)
    else:
        raise bad("allocation", type(allocation).__name__, "must be an Allocation, a path to one, or a name → bits dict")
    if not bits:
        raise BitallocError("allocation: no units to export")
    for name, b in bits.items():
        if ":" in name and not units:
            raise bad("allocation unit", name, "is a group/channel unit; export formats take one bit-width per module "
                      "(solve a layer-granularity profile)")
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 32:
            raise bad(f"allocation bits of {name!r}", b, "must be an integer from 1 to 32")
    return bits


def allocation_formats(allocation) -> dict[str, FormatInfo]:
    """unit name → number format (a Format object, `Allocation.format_of`) of an Allocation or a
    path to one; {} for a plain bits dict or an allocation without formats (every unit is then an
    integer width, mapped by the exporter's bits table)."""
    if isinstance(allocation, (str, Path)):
        allocation = Allocation.load(allocation)
    if not isinstance(allocation, Allocation) or not allocation.formats:
        return {}
    return {n: allocation.format_of(n) for n in allocation.bits}


def fit_bits(bits: dict[str, int], allowed: tuple[int, ...], what: str, round_up: bool) -> tuple[dict[str, int], list[str]]:
    """Map each unit's bits onto a format's `allowed` widths (16 = kept unquantized is always
    allowed). Without `round_up` any other width is refused; with it, it goes to the next
    allowed width up and a note says so."""
    out, moved = {}, {}
    for name, b in bits.items():
        if b in allowed or b >= 16:
            out[name] = b
            continue
        up = [a for a in allowed if a > b]
        if not round_up or not up:
            raise bad(f"bits of {name!r}", b, f"{what} takes {', '.join(map(str, allowed))} (or 16 = keep)"
                      + ("; pass --round-up to move other widths to the next one up" if up and not round_up else ""))
        out[name] = up[0]
        moved.setdefault((b, up[0]), []).append(name)
    notes = [f"{len(v)} unit(s) at {b} bits written as {a} bits ({what} has no {b}-bit form)" for (b, a), v in moved.items()]
    return out, notes
