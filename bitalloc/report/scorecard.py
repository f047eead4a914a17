"""How well each estimator predicts the real loss increase (`measured`), as rank correlations.

Two views, both over the units and candidates that the measured profile holds:
- `spearman_units` / `kendall_units`: for each candidate bit-width, the rank correlation across
  units, averaged over candidates. This is what a solver needs (which layers hurt most at b bits)
  and is not inflated by the trivial fact that every score falls with more bits.
- `spearman_cells` / `kendall_cells`: over all (unit, candidate) cells together.
- `spearman_within` (group/channel granularity): the rank correlation across the units of one
  layer at one bit-width, averaged over layers and bit-widths: what an allocator needs inside a
  layer, where the layer's own scale no longer helps.
A correlation that is undefined (constant ranks on one side, fewer than 3 units, a single unit
per layer at layer granularity) is None: null in the JSON, `n/a` in the table, never NaN.
"""
from __future__ import annotations

import numpy as np

from bitalloc.profile import Profile


def rank_agreement(profile: Profile, measured: Profile) -> dict:
    """Spearman and Kendall of `profile` against `measured` on their common units and bits."""
    from scipy.stats import kendalltau, spearmanr

    idx = profile.index()
    rows = [idx[n] for n in measured.names if n in idx]
    mrows = [i for i, n in enumerate(measured.names) if n in idx]
    cols = [(profile.bits.index(b), k) for k, b in enumerate(measured.bits) if b in profile.bits]
    a = profile.sensitivity[np.ix_(rows, [c for c, _ in cols])]
    m = measured.sensitivity[np.ix_(mrows, [k for _, k in cols])]
    ok = np.isfinite(a) & np.isfinite(m)
    per_s, per_k, by_bit = [], [], {}
    for j in range(a.shape[1]):
        sel = ok[:, j]
        if sel.sum() >= 3 and np.ptp(m[sel, j]) > 0 and np.ptp(a[sel, j]) > 0:
            per_s.append(spearmanr(a[sel, j], m[sel, j])[0])
            per_k.append(kendalltau(a[sel, j], m[sel, j])[0])
            by_bit[str(measured.bits[cols[j][1]])] = float(per_s[-1])
    within = []
    layers = np.array(measured.layers)[mrows]
    for layer in dict.fromkeys(layers):
        in_layer = layers == layer
        for j in range(a.shape[1]):
            sel = ok[:, j] & in_layer
            if sel.sum() >= 3 and np.ptp(m[sel, j]) > 0 and np.ptp(a[sel, j]) > 0:
                within.append(spearmanr(a[sel, j], m[sel, j])[0])
    cells = ok.sum() >= 3 and np.ptp(a[ok]) > 0 and np.ptp(m[ok]) > 0
    return {"spearman_units": _mean(per_s), "spearman_within": _mean(within), "kendall_units": _mean(per_k),
            "spearman_cells": _num(spearmanr(a[ok], m[ok])[0]) if cells else None,
            "kendall_cells": _num(kendalltau(a[ok], m[ok])[0]) if cells else None,
            "spearman_per_bit": _plain_bits(by_bit), "units": len(rows), "candidates": len(cols)}


def _num(x) -> float | None:
    """A finite float, or None (an undefined correlation)."""
    x = float(x)
    return x if np.isfinite(x) else None


def _mean(values: list) -> float | None:
    return _num(np.mean(values)) if values else None


def _f(x) -> float:
    """None → nan, for plotting and comparisons."""
    return np.nan if x is None else float(x)


def _cell(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"


def card_rows(profiles: dict[str, Profile], measured: Profile) -> list[dict]:
    """One row per estimator: agreement with `measured` and the estimator's own cost."""
    rows = []
    for name, p in profiles.items():
        rows.append({"estimator": name, **rank_agreement(p, measured),
                     "seconds": p.meta.get("seconds"), "passes": p.meta.get("passes"),
                     "forward_equivalents": p.meta.get("forward_equivalents")})
    rows.append({"estimator": "measured", "spearman_units": 1.0, "kendall_units": 1.0, "spearman_cells": 1.0,
                 "spearman_within": 1.0 if len(set(measured.layers)) < measured.n_units else None,
                 "kendall_cells": 1.0, "units": measured.n_units, "candidates": len(measured.bits),
                 "seconds": measured.meta.get("seconds"), "passes": measured.meta.get("passes"),
                 "forward_equivalents": measured.meta.get("forward_equivalents"),
                 "spearman_per_bit": {str(b): 1.0 for b in measured.bits}})
    return rows


def measured_as(measured: Profile, score: str) -> Profile:
    """`measured` with the sensitivity replaced by its `extra[score]` matrix (`kl` or
    `loss_increase`, recorded by the measured estimator), clipped at 0; non-finite → inf."""
    from bitalloc.errors import bad

    if score not in measured.extra:
        have = [k for k in ("kl", "loss_increase") if k in measured.extra]
        raise bad("measured score", score, f"this measured profile records: {', '.join(have) or 'its sensitivity only'}")
    S = np.array([[np.inf if x is None else x for x in row] for row in measured.extra[score]], dtype=float)
    S = np.where(np.isfinite(S), np.maximum(S, 0.0), np.inf)
    return Profile(measured.units, measured.bits, S, formats=measured.formats,
                   meta={**measured.meta, "score_kind": score})


def merge_measured(profiles: list[Profile]) -> Profile:
    """Measured profiles of disjoint unit subsets (same bits and settings, e.g. shards run in
    parallel) → one profile: rows concatenated in the given order, `extra` matrices too, seconds
    and cells summed in meta."""
    from bitalloc.errors import bad

    first = profiles[0]
    names = [n for p in profiles for n in p.names]
    if len(set(names)) != len(names):
        raise bad("measured profiles", len(profiles), "must hold disjoint units")
    for p in profiles[1:]:
        if p.bits != first.bits or p.formats != first.formats:
            raise bad("measured profiles bits", p.bits, f"must all be {first.bits}")
    extra = {k: [r for p in profiles for r in p.extra[k]] for k in first.extra
             if isinstance(first.extra[k], list) and all(k in p.extra for p in profiles)}
    meta = {**first.meta, "seconds": sum(float(p.meta.get("seconds") or 0) for p in profiles),
            "measured_units": len(names), "merged_from": len(profiles)}
    if all(p.meta.get("forward_equivalents") is not None for p in profiles):
        meta["forward_equivalents"] = round(sum(p.meta["forward_equivalents"] for p in profiles) - (len(profiles) - 1), 2)
    return Profile([u for p in profiles for u in p.units], first.bits, np.vstack([p.sensitivity for p in profiles]),
                   formats=first.formats, meta=meta, extra=extra)


def per_bit_markdown(rows: list[dict], bits) -> str:
    """Spearman across units at each bit-width, one row per estimator, with the cost."""
    head = ("| estimator | " + " | ".join(f"{b} bits" for b in bits) + " | min | forward-equivalents | seconds |\n"
            "|---|" + "---:|" * (len(bits) + 3))
    lines = [head]
    for r in rows:
        v = [r.get("spearman_per_bit", {}).get(str(b), float("nan")) for b in bits]
        fe = r.get("forward_equivalents")
        lines.append(f"| {r['estimator']} | " + " | ".join(f"{x:.3f}" for x in v) + f" | {np.nanmin(v):.3f} | "
                     f"{'' if fe is None else f'{fe:.1f}'} | {r['seconds'] or 0:.1f} |")
    return "\n".join(lines)


def markdown(rows: list[dict], title: str) -> str:
    within = any(np.isfinite(_f(r.get("spearman_within"))) for r in rows)
    head = ("| estimator | Spearman (units, per bit) | Kendall (units, per bit) | Spearman (all cells) "
            "| Kendall (all cells) |" + (" Spearman (within layer) |" if within else "") + " seconds | passes |\n"
            "|---|---:|---:|---:|---:|" + ("---:|" if within else "") + "---:|---|")
    lines = [f"**{title}**", "", head]
    for r in rows:
        w = f" {_cell(r.get('spearman_within'))} |" if within else ""
        lines.append(f"| {r['estimator']} | {_cell(r['spearman_units'])} | {_cell(r['kendall_units'])} | "
                     f"{_cell(r['spearman_cells'])} | {_cell(r['kendall_cells'])} |{w} {r['seconds'] or 0:.1f} | {r['passes']} |")
    return "\n".join(lines)


def plot(rows: list[dict], profiles: dict[str, Profile], measured: Profile, title: str, path=None):
    """Left: rank correlations per estimator; right: the best estimator's scores against the
    measured loss increase (log-log), one colour per bit-width. path None: the PNG bytes."""
    from bitalloc.report.plots import pyplot, save_png

    plt = pyplot()
    est = [r for r in rows if r["estimator"] != "measured"]
    per_bit = any(len(r.get("spearman_per_bit", {})) > 1 for r in est)
    if per_bit:
        fig, (ax1, ax3, ax2) = plt.subplots(1, 3, figsize=(16, 4.4))
        xs = [str(b) for b in measured.bits]
        for r in est:
            ax3.plot(range(len(xs)), [r["spearman_per_bit"].get(b, np.nan) for b in xs], marker="o", label=r["estimator"])
        ax3.set_xticks(range(len(xs)), [f"{b}" for b in xs])
        ax3.set_xlabel("bits")
        ax3.set_ylabel("Spearman across units at that bit-width")
        ax3.axhline(0.7, color="k", lw=0.6, ls="--")
        ax3.legend(fontsize=7)
        ax3.set_title("per bit-width")
    else:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = np.arange(len(est))
    bars = [("spearman_units", "Spearman (across units, per bit)"), ("kendall_units", "Kendall (across units, per bit)")]
    if any(np.isfinite(_f(r.get("spearman_within"))) for r in est):
        bars.append(("spearman_within", "Spearman (within layer, per bit)"))
    w = 0.8 / len(bars)
    for j, (key, label) in enumerate(bars):
        ax1.bar(x + (j - (len(bars) - 1) / 2) * w, [_f(r.get(key)) for r in est], w, label=label)
    ax1.set_xticks(x, [r["estimator"] for r in est], rotation=20)
    low = min([0.0] + [_f(r.get(k)) for r in est for k, _ in bars if np.isfinite(_f(r.get(k)))])
    ax1.set_ylim(low - 0.05, 1.0)
    ax1.axhline(0, color="k", lw=0.5)
    ax1.set_ylabel(f"rank correlation with measured {measured.meta.get('score_kind', 'loss increase')}")
    ax1.legend(fontsize=8, loc="lower right")
    ax1.set_title(title)
    best = max(est, key=lambda r: np.nan_to_num(_f(r["spearman_units"]), nan=-np.inf))
    p = profiles[best["estimator"]]
    idx = p.index()
    for k, b in enumerate(measured.bits):
        if b not in p.bits:
            continue
        m = measured.sensitivity[:, k]
        a = np.array([p.sensitivity[idx[n], p.bits.index(b)] for n in measured.names])
        sel = (m > 0) & (a > 0) & np.isfinite(a) & np.isfinite(m)
        ax2.scatter(a[sel], m[sel], s=12, label=f"{b} bits")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel(f"{best['estimator']} score")
    ax2.set_ylabel(f"measured {measured.meta.get('score_kind', 'loss increase')}")
    ax2.set_title(f"best: {best['estimator']} (Spearman {_cell(best['spearman_units'])})")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def _plain_bits(by_bit):
    """Per-bit rank correlations with undefined ones (constant ranks) as None: valid JSON."""
    if isinstance(by_bit, dict):
        return {k: _num(v) for k, v in by_bit.items()}
    return [_num(v) for v in by_bit]
