"""Additivity: does the loss increase of an allocation equal the sum of its units' increases?

The ILP minimises Σ_u S[u, k_u], which assumes the units' effects add up. `evaluate` quantizes
a whole allocation at once (each layer fake-quantized with the measured profile's own quantizer
settings), reruns the task's loss over the calibration set, and reports, per allocation, the
predicted sums (measured loss increase and KL summed over units) against the real loss
increase and KL; `summary` gives the Pearson / Spearman correlation and the bias (real/predicted,
median and geometric mean). Allocations: `ilp_allocations` (optimal at several average-bit
budgets), `uniform_allocations`, `random_allocations`.
"""
from __future__ import annotations

import numpy as np

from bitalloc.profile import Profile


def uniform_allocations(profile: Profile) -> list[tuple[str, np.ndarray]]:
    return [(f"uniform {b}", np.full(profile.n_units, k)) for k, b in enumerate(profile.bits)]


def random_allocations(profile: Profile, n: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """n allocations: each unit's candidate drawn at random, from a random subset of 2-3
    neighbouring candidates (so the averages spread from low to high bits)."""
    rng = np.random.default_rng(seed)
    K, out = len(profile.bits), []
    for i in range(n):
        lo = int(rng.integers(0, K - 1))
        hi = min(K, lo + int(rng.integers(2, 4)))
        out.append((f"random {i}", rng.integers(lo, hi, profile.n_units)))
    return out


def ilp_allocations(profile: Profile, budgets) -> list[tuple[str, np.ndarray]]:
    """The ILP optimum under `avg_bits <= budget` for each budget (bits per weight)."""
    from bitalloc.hwcost.memory import MemoryCost
    from bitalloc.hwcost.constraint import Constraint
    from bitalloc.problem import Problem
    from bitalloc.solvers import get_solver

    prob = Problem(profile, [Constraint(MemoryCost(), float(budgets[0]))])
    out = []
    for b, a in zip(budgets, get_solver("ilp").solve_budgets(prob, [float(x) for x in budgets])):
        if a.status in ("optimal", "feasible"):
            out.append((f"ilp <= {b} bits", np.array([profile.bits.index(a.bits[n]) for n in profile.names])))
    return out


def evaluate(task, measured: Profile, allocations, progress=None) -> list[dict]:
    """One row per allocation: avg bits, predicted (Σ measured loss increase, Σ measured KL) and
    real (loss increase, KL) with every unit quantized at once. `measured`: a layer-granularity
    profile from the `measured` estimator (its `extra` holds loss_increase and kl)."""
    import torch

    from bitalloc.errors import bad
    from bitalloc.quant.integer import scorer_for
    from bitalloc.sensitivity.replay import FullRerun

    if measured.meta.get("granularity") != "layer" or "loss_increase" not in measured.extra:
        raise bad("measured profile", measured.meta.get("estimator"), "must be a layer-granularity measured profile")
    L = np.array([[np.nan if x is None else x for x in r] for r in measured.extra["loss_increase"]], dtype=float)
    KL = np.array([[np.nan if x is None else x for x in r] for r in measured.extra.get("kl", [])], dtype=float)
    m = measured.meta
    quants = [scorer_for(f, m["group_size"], m["symmetric"], m["zero"]) for f in measured.formats]
    mods = task.modules()
    runner = FullRerun(task)
    rows = []
    originals = {n: mods[n].weight.detach().clone() for n in measured.names}
    qcache: dict = {}
    try:
        for j, (label, choice) in enumerate(allocations):
            with torch.no_grad():
                for i, n in enumerate(measured.names):
                    k = int(choice[i])
                    if (n, k) not in qcache:
                        W = originals[n].float().cpu().numpy().reshape(originals[n].shape[0], -1)
                        qcache[(n, k)] = torch.from_numpy(quants[k].fake_quant(W)).to(originals[n].device, originals[n].dtype)
                    mods[n].weight.copy_(qcache[(n, k)].reshape(originals[n].shape))
            loss = kl = 0.0
            for bi, batch in enumerate(task.calib):
                l, logits = runner.run(batch)
                loss += l
                if runner.has_kl:
                    from bitalloc.sensitivity.replay import input_ids, lm_stats

                    _, _, s_kl, s_pos = lm_stats(logits, input_ids(batch), runner.ref_logp[bi])
                    kl += s_kl / s_pos
            nb = len(task.calib)
            idx = (np.arange(measured.n_units), np.asarray(choice, dtype=int))
            rows.append({"allocation": label, "kind": label.split()[0],
                         "avg_bits": float((measured.n_params * np.array(measured.bits)[idx[1]]).sum() / measured.n_params.sum()),
                         "predicted_loss": float(L[idx].sum()), "real_loss": loss / nb - runner.base_loss,
                         "predicted_kl": float(KL[idx].sum()) if KL.size else None,
                         "real_kl": kl / nb if runner.has_kl else None})
            if progress is not None:
                progress(j + 1, len(allocations))
    finally:
        with torch.no_grad():
            for n, w in originals.items():
                mods[n].weight.copy_(w)
    return rows


def summary(rows: list[dict], key: str) -> dict:
    """Pearson (of logs) and Spearman of real against predicted `key` (loss / kl), and the bias
    real/predicted (median, geometric mean) over the rows where both are positive."""
    from scipy.stats import pearsonr, spearmanr

    p = np.array([r[f"predicted_{key}"] for r in rows], dtype=float)
    r = np.array([r[f"real_{key}"] for r in rows], dtype=float)
    ok = (p > 0) & (r > 0) & np.isfinite(p) & np.isfinite(r)
    ratio = r[ok] / p[ok]
    return {"n": int(ok.sum()), "pearson_log": float(pearsonr(np.log(p[ok]), np.log(r[ok]))[0]),
            "pearson": float(pearsonr(p[ok], r[ok])[0]), "spearman": float(spearmanr(p[ok], r[ok])[0]),
            "ratio_median": float(np.median(ratio)), "ratio_geomean": float(np.exp(np.log(ratio).mean())),
            "ratio_min": float(ratio.min()), "ratio_max": float(ratio.max())}


def plot(rows: list[dict], title: str, path) -> None:
    """Real against predicted, log-log, loss increase (left) and KL (right), one marker per kind."""
    from bitalloc.report.plots import pyplot, save_png

    plt = pyplot()
    keys = [k for k in ("loss", "kl") if all(r[f"predicted_{k}"] is not None for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.6))
    axes = np.atleast_1d(axes)
    for ax, key in zip(axes, keys):
        s = summary(rows, key)
        for kind, marker in (("ilp", "o"), ("uniform", "s"), ("random", "^")):
            sel = [r for r in rows if r["kind"] == kind and r[f"predicted_{key}"] > 0 and r[f"real_{key}"] > 0]
            ax.scatter([r[f"predicted_{key}"] for r in sel], [r[f"real_{key}"] for r in sel], marker=marker, label=kind)
        lo = min(min(r[f"predicted_{key}"], r[f"real_{key}"]) for r in rows if r[f"real_{key}"] > 0 and r[f"predicted_{key}"] > 0)
        hi = max(max(r[f"predicted_{key}"], r[f"real_{key}"]) for r in rows)
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.7, label="real = predicted")
        ax.set_xscale("log")
        ax.set_yscale("log")
        name = "loss increase" if key == "loss" else "KL"
        ax.set_xlabel(f"predicted {name} (sum over units)")
        ax.set_ylabel(f"real {name} (all units quantized)")
        ax.set_title(f"{title}: {name}\nSpearman {s['spearman']:.3f}, real/predicted median {s['ratio_median']:.2f}", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
