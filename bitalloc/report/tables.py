"""Readable terminal tables for allocations (rich): a bit map per layer and the totals."""
from __future__ import annotations

import itertools
import re
from collections import OrderedDict
from collections.abc import Mapping

from bitalloc.allocation import Allocation
from bitalloc.columns import UnitMap

_BLOCK = re.compile(r"^(?P<pre>.*?)\.(?P<idx>\d+)\.(?P<rest>.+)$")


def bit_grid(bits: Mapping[str, int], max_rows: int | None = None) -> tuple[list[str], list[str], dict[tuple[str, str], int]] | None:
    """Rows = numbered blocks (`model.layers.7`), columns = module within the block
    (`self_attn.q_proj`), when every unit name has that form (and there are at most `max_rows`
    blocks, when given: the scan stops at the first one more); else None."""
    cells: dict[tuple[str, str], int] = {}
    rows: OrderedDict[str, None] = OrderedDict()
    cols: OrderedDict[str, None] = OrderedDict()
    for name, b in bits.items():
        m = _BLOCK.match(name)
        if not m:
            return None
        r = f"{m['pre']}.{m['idx']}"
        rows[r] = None
        if max_rows is not None and len(rows) > max_rows:
            return None
        cols[m["rest"]] = None
        cells[(r, m["rest"])] = b
    return list(rows), list(cols), cells


def _short(col: str) -> str:
    return col.split(".")[-1].replace("_proj", "")


def render(allocs: list[Allocation], console=None, max_rows: int = 60) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for a in allocs:
        if a.bits:
            grid = bit_grid(_labels(a), max_rows)
            if grid:
                rows, cols, cells = grid
                t = Table(title=f"bits per layer (budget {_budget_text(a)})", show_edge=False, pad_edge=False)
                t.add_column("block")
                for c in cols:
                    t.add_column(_short(c), justify="right")
                for r in rows:
                    t.add_row(r.split(".")[-1], *[_cell(cells.get((r, c))) for c in cols])
            else:
                t = Table(title="bits per unit", show_edge=False)  # budgets: in the summary below
                t.add_column("unit")
                t.add_column("bits", justify="right")
                labels = _labels(a)
                for name, b in itertools.islice(labels.items(), max_rows):
                    t.add_row(name, _cell(b))
                if len(labels) > max_rows:
                    t.add_row(f"... {len(labels) - max_rows} more (use --json or --out)", "")
            console.print(t)
        console.print(summary_table(a))


def summary_table(a: Allocation):
    from rich.table import Table

    t = Table(show_header=True, show_edge=False, title=f"{a.solver}: {a.status}")
    t.add_column("resource")
    t.add_column("total", justify="right")
    t.add_column("budget", justify="right")
    t.add_column("used", justify="right")
    for res, total in a.totals.items():
        b = a.budgets.get(res)
        t.add_row(res, f"{total:.4f}", "" if b is None else f"{b:.4f}", f"{100 * total / b:.1f}%" if b else "")
    for res, m in a.min_budgets.items():
        t.add_row(f"{res} (smallest feasible)", f"{m:.4f}", f"{a.budgets.get(res, float('nan')):.4f}", "")
    if a.objective is not None:
        kind = "worst unit's expected loss increase" if a.meta.get("objective") == "max" else "expected loss increase"
        t.add_row(f"objective ({kind})", f"{a.objective:.6g}", "")
    if a.bound is not None:
        t.add_row("lower bound / gap", f"{a.bound:.6g}", f"{a.gap:.2e}")
    if a.bits:
        counts: dict = {}
        for _, b in _labels(a).items():  # in order, without a name → row index (UnitMap)
            counts[b] = counts.get(b, 0) + 1
        if a.formats:
            t.add_row("units per format", ", ".join(f"{f}:{n}" for f, n in sorted(counts.items(), key=_order)), "")
        else:
            t.add_row("units per bit-width", ", ".join(f"{b}b:{n}" for b, n in sorted(counts.items())), "")
    t.add_row("wall time (s)", f"{a.wall_s:.3f}", "")
    return t


def _labels(a: Allocation) -> Mapping:
    """unit → its bits, or its format name (`int4`, `mxfp4`) when the allocation names formats
    (a solver's columnar formats as they are: no dict of every unit)."""
    if not a.formats:
        return a.bits
    if isinstance(a.formats, UnitMap) and isinstance(a.bits, UnitMap) and a.formats.names is a.bits.names:
        return a.formats
    return {s: a.formats[s] for s in a.bits}


def _order(item):
    label = item[0]
    return (0, label, "") if isinstance(label, int) else (1, 0, label)


def _budget_text(a: Allocation) -> str:
    return ", ".join(f"{k} <= {v:g}" for k, v in a.budgets.items())


_COLORS = {2: "red", 3: "yellow", 4: "green", 5: "cyan", 6: "blue", 8: "magenta"}


def _cell(b) -> str:
    """A bit-width, or a format name (colored by its element bits)."""
    if b is None:
        return "-"
    if isinstance(b, str):
        from bitalloc.errors import BitallocError
        from bitalloc.quant.formats.spec import parse_format

        try:
            return f"[{_COLORS.get(parse_format(b).bits, 'white')}]{b}[/]"
        except BitallocError:
            return b
    return f"[{_COLORS.get(b, 'white')}]{b}[/]"


def per_bits(alloc, profile) -> list[dict]:
    """One row per bit-width: units, weights, share of weights, expected loss increase (the
    profile's scores); the allocation's stored totals are rechecked against the profile."""
    import numpy as np

    from bitalloc.errors import bad
    from bitalloc.hwcost.memory import MemoryCost

    extra = set(alloc.bits) - set(profile.names)
    if extra:
        raise bad("--allocation", sorted(extra)[0], "names a unit that is not in --profile")
    choice = alloc.choice(profile)
    for res, model in (("avg_bits", MemoryCost()), ("avg_bits_with_overhead", MemoryCost(count_overhead=True))):
        stored = alloc.totals.get(res)
        if stored is not None and abs(model.total(profile, choice) - stored) > 1e-9 * max(1.0, abs(stored)):
            raise bad(f"allocation {res}", stored, f"does not match --profile (recomputed {model.total(profile, choice):.6f}); "
                      "wrong profile for this allocation?")
    bits = np.asarray(profile.bits)[choice]
    score = profile.sensitivity[np.arange(profile.n_units), choice]
    w = profile.n_params.astype(np.float64)
    return [{"bits": int(b), "units": int((bits == b).sum()), "weights": int(w[bits == b].sum()),
             "share": float(w[bits == b].sum() / w.sum()), "loss": float(score[bits == b].sum())}
            for b in sorted(set(bits.tolist()))]
