"""Shared fixtures: small random profiles, a brute-force reference solver, a SmolLM-like profile."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from bitalloc import Profile, Unit

BIT_CHOICES = (1, 2, 3, 4, 5, 6, 8, 16)

SMOLLM_MODULES = (  # (name inside a block, out_features, in_features) of SmolLM2-135M
    ("self_attn.q_proj", 576, 576),
    ("self_attn.k_proj", 192, 576),
    ("self_attn.v_proj", 192, 576),
    ("self_attn.o_proj", 576, 576),
    ("mlp.gate_proj", 1536, 576),
    ("mlp.up_proj", 1536, 576),
    ("mlp.down_proj", 576, 1536),
)
SMOLLM_BLOCKS = 30
SMOLLM_BITS = (2, 3, 4, 5, 6, 8)


def random_profile(rng: np.random.Generator, n_units: int, n_cands: int, p_null: float = 0.2,
                   convex: bool | None = None) -> Profile:
    """n_units units with random sizes; n_cands distinct random bit-widths (ascending).

    Rows are either monotone (loss falls with bits) or arbitrary (non-convex, non-monotone);
    about `p_null` of the cells are not allowed (inf), but every unit keeps one allowed cell.
    """
    bits = sorted(rng.choice(BIT_CHOICES, size=n_cands, replace=False).tolist())
    n_params = rng.integers(1, 60, size=n_units)
    S = rng.random((n_units, n_cands)) * rng.choice([1e-3, 1.0, 50.0], size=(n_units, 1))
    if convex is None:
        convex = bool(rng.random() < 0.5)
    if convex:
        S = np.sort(S, axis=1)[:, ::-1].copy()
    S[rng.random(S.shape) < p_null] = np.inf
    for i in range(n_units):
        if not np.isfinite(S[i]).any():
            S[i, rng.integers(n_cands)] = rng.random()
    return Profile.from_columns([f"blk{i // 2}.u{i}" for i in range(n_units)], n_params, bits, S)


@dataclass
class Brute:
    """Reference answer by enumeration. best: optimal objective or None (no feasible choice);
    choice: an optimal candidate index per unit; min_avg: smallest reachable average nominal
    bits over structurally valid choices (None if there is none)."""

    best: float | None
    choice: np.ndarray | None
    min_avg: float | None


def brute_force(profile: Profile, budgets=(), costs=(), pins: dict | None = None, ties=(),
                min_bits: int | None = None, max_bits: int | None = None) -> Brute:
    """Enumerate every assignment (vectorized; K^N rows). `budgets` apply to `costs`, a list of
    (N, K) cost matrices in user units (already divided by their scale); with no `costs`, one
    budget on average nominal bits. pins: {glob: bits}; ties: lists of unit names sharing a
    candidate; min_bits / max_bits: limits on nominal bits."""
    import fnmatch

    N, K = profile.sensitivity.shape
    bits = np.asarray(profile.bits)
    S = profile.sensitivity
    avg = profile.n_params[:, None] * bits[None, :] / profile.n_params.sum()
    if not len(costs):
        costs = [avg]
    ch = np.indices((K,) * N).reshape(N, -1).T  # every assignment, one per row
    rows = np.arange(N)
    v = S[rows, ch]
    ok = np.isfinite(v).all(1)
    for pat, b in (pins or {}).items():
        k = profile.bits.index(b)
        for i, s in enumerate(profile.names):
            if fnmatch.fnmatchcase(s, pat):
                ok &= ch[:, i] == k
    index = profile.index()
    for t in ties:
        r = [index[s] for s in t]
        ok &= (ch[:, r] == ch[:, r[:1]]).all(1)
    if min_bits is not None:
        ok &= (bits[ch] >= min_bits).all(1)
    if max_bits is not None:
        ok &= (bits[ch] <= max_bits).all(1)
    if not ok.any():
        return Brute(None, None, None)
    a = avg[rows, ch].sum(1)
    min_avg = float(a[ok].min())
    fit = ok.copy()
    for c, cap in zip(costs, budgets):
        fit &= c[rows, ch].sum(1) <= cap + 1e-12 * max(abs(cap), 1.0)
    if not fit.any():
        return Brute(None, None, min_avg)
    obj = np.where(fit, np.where(ok[:, None], v, 0.0).sum(1), np.inf)
    j = int(np.argmin(obj))
    return Brute(float(obj[j]), ch[j], min_avg)


def avg_bits_of(profile: Profile, bits_by_name: dict) -> float:
    """Average nominal bits per weight recomputed from an allocation's bits."""
    b = np.array([bits_by_name[s] for s in profile.names], dtype=np.float64)
    return float((profile.n_params * b).sum() / profile.n_params.sum())


def smollm_units() -> list[Unit]:
    units = []
    for i in range(SMOLLM_BLOCKS):
        for mod, out_f, in_f in SMOLLM_MODULES:
            name = f"model.layers.{i}.{mod}"
            units.append(Unit(name, name, n_params=out_f * in_f, macs=out_f * in_f, shape=(out_f, in_f)))
    return units


def smollm_profile(seed: int = 0) -> Profile:
    """210 units like SmolLM2-135M's linear layers; sensitivity w · 4^-b with a random weight per unit."""
    rng = np.random.default_rng(seed)
    units = smollm_units()
    w = rng.lognormal(0.0, 1.0, size=len(units)) * np.array([u.n_params for u in units]) * 1e-6
    S = w[:, None] * 4.0 ** -np.asarray(SMOLLM_BITS, dtype=np.float64)[None, :]
    return Profile(units, list(SMOLLM_BITS), S,
                   meta={"estimator": "synthetic", "model": "smollm-like", "granularity": "layer", "group_size": 128})


@pytest.fixture
def make_profile():
    """Factory: make_profile(seed, n_units, n_cands, **kw) -> a small random Profile."""
    def make(seed: int = 0, n_units: int = 4, n_cands: int = 4, **kw) -> Profile:
        return random_profile(np.random.default_rng(seed), n_units, n_cands, **kw)
    return make


@pytest.fixture(scope="session")
def smollm() -> Profile:
    return smollm_profile()


@pytest.fixture
def smollm_path(tmp_path, smollm):
    """The SmolLM-like profile saved as JSON in tmp_path."""
    path = tmp_path / "smollm.profile.json"
    smollm.save(path)
    return path


def profile_doc(n_units: int = 3, bits=(2, 4, 8)) -> dict:
    """A valid small profile document (JSON form) to corrupt in tests."""
    units = [{"name": f"layers.{i}.proj", "n_params": 100 * (i + 1), "macs": 100 * (i + 1), "shape": [10, 10 * (i + 1)]}
             for i in range(n_units)]
    sens = [[round(float(w) * 4.0 ** -b, 12) for b in bits] for w in range(1, n_units + 1)]
    return {"schema": "bitalloc.profile/1", "bits": list(bits), "units": units, "sensitivity": sens,
            "meta": {"estimator": "test"}}


# ---- real models, small (each test module loads its own copy) --------------------------------
@pytest.fixture(scope="module")
def digits():
    """digits-cnn with 64 calibration images."""
    from bitalloc.zoo.demo import load_task

    return load_task("digits-cnn", samples=64)


@pytest.fixture
def cnn(digits):
    """The digits task with its unquantized weights restored after each test."""
    saved = {k: v.clone() for k, v in digits.model.state_dict().items()}
    yield digits
    digits.model.load_state_dict(saved)


@pytest.fixture(scope="module")
def minilm():
    """MiniLM with 4 calibration sentences of up to 32 tokens."""
    from bitalloc.zoo.demo import load_task

    return load_task("minilm", samples=4, seq_len=32)
