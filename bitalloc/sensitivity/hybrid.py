"""`hybrid`: a cheap estimator's scores, calibrated per layer type by a handful of measured cells.

Estimators rank units of one kind well but put kinds on different scales (a q_proj's Fisher
score is not worth a down_proj's). `hybrid` runs the `base` estimator on every unit, measures
(block replay, `measured`) `per_type` units of each layer type (the layer name's last part:
q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, ...) spread evenly over depth at
every candidate, and rescales the base scores by a per-(type, candidate) factor fitted by least
squares in log space with slope 1:
    log c[t, k] = mean over the measured units u of type t of (log M[u, k] − log S[u, k])
(cells with a zero or non-finite score are skipped; a (type, candidate) with none falls back to
the type's mean over candidates, then to the mean over all cells). Then S'[u, k] = c[t(u), k]·S[u, k].
Cost: the base estimator + types × per_type × candidates measured cells (meta `measured_cells`).
"""
from __future__ import annotations

import time

import numpy as np

from bitalloc.errors import bad
from bitalloc.profile import Profile
from bitalloc.sensitivity import ESTIMATORS, register
from bitalloc.sensitivity.base import DEFAULT_BITS, Estimator


def layer_type(layer: str) -> str:
    """`model.layers.3.self_attn.q_proj` → `q_proj`."""
    return layer.rsplit(".", 1)[-1]


def type_scales(S: np.ndarray, M: np.ndarray, types: list[str]) -> dict[str, np.ndarray]:
    """type → (K,) scale factors fitted on rows of S (scores) and M (measured), see the module doc."""
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.log(M) - np.log(S)
    ok = np.isfinite(d) & (S > 0) & (M > 0)
    overall = float(d[ok].mean()) if ok.any() else 0.0
    out = {}
    for t in dict.fromkeys(types):
        rows = np.array([x == t for x in types])
        dt, okt = d[rows], ok[rows]
        mean_t = float(dt[okt].mean()) if okt.any() else overall
        out[t] = np.exp([float(dt[okt[:, k], k].mean()) if okt[:, k].any() else mean_t for k in range(S.shape[1])])
    return out


@register("hybrid")
class HybridEstimator(Estimator):
    """base: the estimator whose scores are calibrated (default local); per_type: measured
    units per layer type; score: kl | loss, what the measured cells record (see `measured`)."""

    passes = "the base estimator + types x per_type x candidates measured cells (block replay)"

    def __init__(self, bits=DEFAULT_BITS, granularity: str = "layer", group_size: int = 128,
                 symmetric: bool = False, zero: str = "int", base: str = "local", per_type: int = 2,
                 score: str = "kl"):
        super().__init__(bits, granularity, group_size, symmetric, zero)
        if base in ("hybrid", "measured", "kv") or not isinstance(base, str):
            raise bad("hybrid base", base, "must be another weight estimator, e.g. local, fisher, hessian")
        ESTIMATORS.get(base)
        if isinstance(per_type, bool) or not isinstance(per_type, int) or per_type < 1:
            raise bad("per_type", per_type, "must be a positive integer")
        if score not in ("kl", "loss"):
            raise bad("hybrid score", score, "allowed: kl, loss")
        self.base, self.per_type, self.score = base, per_type, score

    def estimate(self, task, progress=None, base_profile: Profile | None = None,
                 measured_profile: Profile | None = None) -> Profile:
        """base_profile: the base estimator's profile if already computed (same settings);
        measured_profile: measured cells already computed (same settings and score): the
        calibration units are picked among its units and not measured again."""
        t0 = time.perf_counter()
        common = dict(bits=self.bits if not any(f != f"int{b}" for f, b in zip(self.formats, self.bits)) else self.formats,
                      granularity=self.granularity, group_size=self.group_size, symmetric=self.symmetric, zero=self.zero)
        base = base_profile or ESTIMATORS.create(self.base, **common).estimate(task)
        units = base.units
        types = [layer_type(u.layer) for u in units]
        have = None if measured_profile is None else set(measured_profile.names)
        picked = []
        for t in dict.fromkeys(types):
            rows = [i for i, x in enumerate(types) if x == t and (have is None or units[i].name in have)]
            if not rows:
                continue
            idx = np.unique(np.round(np.linspace(0, len(rows) - 1, min(self.per_type, len(rows)))).astype(int))
            picked += [units[rows[i]].name for i in idx]
        if measured_profile is None:
            measured = ESTIMATORS.create("measured", **common, units=picked, score=self.score).estimate(task, progress)
        else:
            mrows = [measured_profile.index()[n] for n in picked]
            measured = Profile([measured_profile.units[i] for i in mrows], measured_profile.bits,
                               measured_profile.sensitivity[mrows], formats=measured_profile.formats,
                               meta={"forward_equivalents": None, "passes": "reused measured cells"})
        mi = measured.index()
        bi = base.index()
        rows = [bi[n] for n in measured.names]
        scales = type_scales(base.sensitivity[rows], measured.sensitivity[[mi[n] for n in measured.names]],
                             [types[r] for r in rows])
        S = base.sensitivity * np.array([scales[t] for t in types])
        fe = float(base.meta.get("forward_equivalents") or 0) + float(measured.meta.get("forward_equivalents") or 0)
        if measured_profile is not None and measured_profile.meta.get("forward_equivalents"):
            per_unit = (float(measured_profile.meta["forward_equivalents"]) - 1) / max(measured_profile.n_units, 1)
            fe += 1 + per_unit * measured.n_units  # what measuring the picked units alone costs (average unit)
        return self.profile(task, units, S, t0, base=self.base, per_type=self.per_type,
                            measured_cells=measured.n_units * len(self.bits), measured_units=measured.names,
                            scales={t: [float(x) for x in v] for t, v in scales.items()},
                            base_seconds=base.meta.get("seconds"), forward_equivalents=round(fe, 2),
                            passes=f"{self.base} ({base.meta.get('passes')}) + {measured.n_units * len(self.bits)} "
                                   f"measured cells ({measured.meta.get('passes')})",
                            score=f"{self.base} score x per-(layer type, candidate) scale fitted in log space on "
                                  f"measured {self.score}")
