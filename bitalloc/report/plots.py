"""Figures (matplotlib, Agg backend, written atomically as PNG): the Pareto front of loss against
bits per weight, and the bit map of an allocation (heat map by block × module, or bars)."""
from __future__ import annotations

import io
import re

import numpy as np

from bitalloc.fileio import atomic_write

_BLOCK = re.compile(r"^(?P<pre>.*?)\.(?P<idx>\d+)\.(?P<rest>.+)$")


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path, force: bool = True, dpi: int = 120, flag: str = "--plot") -> bytes:
    """Render `fig` as PNG; written atomically to `path` unless it is None. Returns the bytes."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    if path is not None:
        atomic_write(path, buf.getvalue(), force, flag)
    return buf.getvalue()


def _bit_colors(bits: list[int]):
    """One distinct colour per bit-width, from few bits (warm) to many (cool)."""
    plt = pyplot()
    cmap = plt.get_cmap("viridis")
    return {b: cmap(i / max(len(bits) - 1, 1)) for i, b in enumerate(sorted(bits))}


# ---- Pareto front -------------------------------------------------------------------------------
def front_plot(front: list[dict], uniform: list[dict], bits: list[int], title: str, path, force: bool = True,
               ylabel: str = "expected loss increase (sum of unit scores)") -> bytes:
    """Left: expected loss increase (log) against average bits per weight, the exact front as a
    line and uniform allocations as squares. Right: share of the weights at each bit-width along
    the front. front rows: avg_bits, objective, share {bits: fraction of weights}; uniform rows:
    bits, avg_bits, objective."""
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.25, 1]})
    pts = [r for r in front if r.get("objective") is not None]
    x = [r["avg_bits"] for r in pts]
    y = [max(r["objective"], 1e-300) for r in pts]
    ax.plot(x, y, "-o", ms=4, lw=1.6, color="tab:blue", label="exact front (ILP per budget)")
    if uniform:
        ux = [r["avg_bits"] for r in uniform]
        uy = [max(r["objective"], 1e-300) for r in uniform]
        ax.plot(ux, uy, "s", ms=8, color="tab:red", label="uniform bit-width")
        at = {round(r["avg_bits"], 9): r["objective"] for r in pts}
        for r in uniform:
            f = at.get(round(r["avg_bits"], 9))
            ratio = f" ({r['objective'] / f:.1f}× the front)" if f else ""
            right = r["avg_bits"] >= max(x + ux) - 1e-9  # at the right edge: label to the left, inside the axes
            ax.annotate(f"{r['bits']}-bit{ratio}", (r["avg_bits"], max(r["objective"], 1e-300)), textcoords="offset points",
                        xytext=(-8, 6) if right else (6, 4), ha="right" if right else "left", fontsize=8, color="tab:red")
    ax.set_yscale("log")
    ax.set_xlabel("average bits per weight")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    colors = _bit_colors(bits)
    shares = np.array([[r["share"].get(b, 0.0) for b in bits] for r in pts]) if pts else np.zeros((0, len(bits)))
    if len(pts):
        ax2.stackplot(x, shares.T * 100, labels=[f"{b} bits" for b in bits], colors=[colors[b] for b in bits], alpha=0.9)
    ax2.set_xlabel("average bits per weight (budget)")
    ax2.set_ylabel("share of weights (%)")
    ax2.set_ylim(0, 100)
    ax2.set_xlim(min(x, default=0), max(x, default=1))
    ax2.set_title("bit-widths along the front", fontsize=10)
    ax2.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return save_png(fig, path, force)


# ---- bit map of one allocation ------------------------------------------------------------------
def layer_bits(bits: dict[str, int], weights: dict[str, float] | None) -> dict[str, float]:
    """Bits per layer: units `layer:g3` / `layer:c5` of one layer averaged (weighted by params
    when `weights` are known); layer-level units pass through."""
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    for name, b in bits.items():
        layer = name.split(":")[0]
        w = weights.get(name, 1.0) if weights else 1.0
        num[layer] = num.get(layer, 0.0) + w * b
        den[layer] = den.get(layer, 0.0) + w
    return {k: num[k] / den[k] for k in num}


def grid(values: dict[str, float]):
    """(blocks, modules, (n_modules, n_blocks) array, nan where absent) when every name is
    `<prefix>.<N>.<module>`, else None."""
    blocks: dict[str, int] = {}
    mods: dict[str, None] = {}
    cells = {}
    for name, v in values.items():
        m = _BLOCK.match(name)
        if not m:
            return None
        blk = f"{m['pre']}.{m['idx']}"
        blocks.setdefault(blk, int(m["idx"]))
        mods[m["rest"]] = None
        cells[(blk, m["rest"])] = v
    bl = sorted(blocks, key=lambda s: (s.rsplit(".", 1)[0], blocks[s]))
    md = list(mods)
    a = np.full((len(md), len(bl)), np.nan)
    for (blk, mod), v in cells.items():
        a[md.index(mod), bl.index(blk)] = v
    return bl, md, a


def bits_plot(bits: dict[str, int], title: str, path, weights: dict[str, float] | None = None,
              force: bool = True) -> bytes:
    """Heat map (module type × block) when names have numbered blocks, else bars per layer; with
    `weights` (params per unit) a second panel shows the average bits per weight of each block."""
    plt = pyplot()
    from matplotlib.colors import BoundaryNorm, ListedColormap

    per_layer = layer_bits(bits, weights)
    g = grid(per_layer)
    cands = sorted(set(bits.values()))
    colors = _bit_colors(cands)
    integral = all(float(v).is_integer() for v in per_layer.values())
    if integral:  # one colour per bit-width, a colorbar tick at each
        cmap = ListedColormap([colors[b] for b in cands])
        edges = [cands[0] - 0.5] + [(a + b) / 2 for a, b in zip(cands, cands[1:])] + [cands[-1] + 0.5]
        norm = BoundaryNorm(edges, cmap.N)
    else:
        cmap, norm = plt.get_cmap("viridis"), None
    if g is None:
        return _bars(plt, per_layer, colors, cmap, norm, title, path, force)
    blocks, mods, a = g
    short = [m.replace("self_attn.", "attn.").replace("_proj", "") for m in mods]
    with_avg = weights is not None
    fig_w = min(max(6.0, 0.36 * len(blocks) + 3.0), 24.0)
    fig = plt.figure(figsize=(fig_w, 0.42 * len(mods) + (3.6 if with_avg else 1.8)))
    gs = fig.add_gridspec(2 if with_avg else 1, 2, width_ratios=[1, 0.012], wspace=0.02, hspace=0.55,
                          height_ratios=[max(len(mods), 2), 3] if with_avg else [1])
    ax = fig.add_subplot(gs[0, 0])  # the colorbar gets its own column, so both panels share x
    lo, hi = min(cands), max(cands)  # averages coloured on the candidates' scale, not stretched
    im = ax.imshow(np.ma.masked_invalid(a), aspect="auto", cmap=cmap, norm=norm,
                   vmin=None if norm else lo, vmax=None if norm else hi)
    ax.set_yticks(range(len(mods)), short, fontsize=8)
    ax.set_xticks(range(len(blocks)), [b.rsplit(".", 1)[1] for b in blocks], fontsize=7)
    ax.set_xlabel(f"block ({blocks[0].rsplit('.', 1)[0]}.N)")
    ax.set_title(title, fontsize=10)
    if a.size <= 600:
        for (i, j), v in np.ndenumerate(a):
            if np.isfinite(v):
                rgb = cmap(norm(v)) if norm else cmap((v - lo) / max(hi - lo, 1e-9))
                light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 0.55
                ax.text(j, i, f"{v:.0f}" if integral else f"{v:.1f}", ha="center", va="center", fontsize=7,
                        color="black" if light else "white")
    cb = fig.colorbar(im, cax=fig.add_subplot(gs[0, 1]))
    cb.set_label("bits" if integral else "average bits", fontsize=8)
    if integral:
        cb.set_ticks(cands)
    if with_avg:
        ax2 = fig.add_subplot(gs[1, 0])
        w = np.zeros(len(blocks))
        wb = np.zeros(len(blocks))
        for name, b in bits.items():
            m = _BLOCK.match(name.split(":")[0])
            j = blocks.index(f"{m['pre']}.{m['idx']}")
            w[j] += weights.get(name, 0.0)
            wb[j] += weights.get(name, 0.0) * b
        avg = wb / np.maximum(w, 1e-300)
        ax2.bar(range(len(blocks)), avg, color="tab:blue", width=0.75)
        total = wb.sum() / max(w.sum(), 1e-300)
        ax2.axhline(total, color="tab:red", lw=1.2, ls="--", label=f"whole model {total:.3f}")
        ax2.set_xlim(-0.5, len(blocks) - 0.5)
        ax2.set_ylim(min(cands) - 0.5 if min(cands) > 1 else 0, max(cands) + 0.5)
        ax2.set_xticks(range(len(blocks)), [b.rsplit(".", 1)[1] for b in blocks], fontsize=7)
        ax2.set_ylabel("bits per weight", fontsize=9)
        ax2.set_xlabel("block (weighted by parameters)")
        ax2.legend(fontsize=8, loc="upper left")
        ax2.grid(True, axis="y", alpha=0.3)
    return save_png(fig, path, force)


def _bars(plt, per_layer: dict[str, float], colors, cmap, norm, title, path, force) -> bytes:
    names = list(per_layer)
    v = np.array([per_layer[n] for n in names])
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.22 * len(names) + 2), 24.0), 4.0))
    col = [cmap(norm(x)) if norm else cmap((x - v.min()) / max(v.max() - v.min(), 1e-9)) for x in v]
    ax.bar(range(len(v)), v, color=col, width=0.85)
    if len(names) <= 80:
        ax.set_xticks(range(len(v)), names, rotation=90, fontsize=7)
    else:
        ax.set_xlabel(f"{len(names)} layers, in profile order")
    ax.set_ylabel("bits" if norm else "average bits per weight")
    ax.set_ylim(0, v.max() + 0.5)
    ax.set_title(title, fontsize=10)
    if norm:
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=c, label=f"{b} bits") for b, c in colors.items()], fontsize=8,
                  loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path, force)
