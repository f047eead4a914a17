"""The `hessian` (Hutchinson) and `fisher` (empirical Fisher) estimators.

Exactness on hand-built tiny tasks (exact Hessian by autograd, Fisher by hand), then the
properties every profile must have on the real small models (digits-cnn, MiniLM).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bitalloc.errors import BitallocError  # noqa: E402
from bitalloc.hwcost.memory import MemoryCost  # noqa: E402
from bitalloc.quant.integer import IntQuant  # noqa: E402
from bitalloc.sensitivity import get_estimator  # noqa: E402
from bitalloc.sensitivity.fisher import split_batch  # noqa: E402
from bitalloc.sensitivity.hessian import rademacher  # noqa: E402
from bitalloc.models.task import Task  # noqa: E402


# ---- tiny hand-built tasks -------------------------------------------------------------------
def tiny_mlp_task(seed: int = 0, n_batches: int = 2, batch: int = 8) -> Task:
    """A 4→5→3 tanh MLP (35 weights) with a squared-error loss, as a Task."""
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    model.eval()
    calib = [(torch.randn(batch, 4, generator=g), torch.randn(batch, 3, generator=g)) for _ in range(n_batches)]

    def loss(m, b):
        return ((m(b[0]) - b[1]) ** 2).sum(-1).mean() / 2

    return Task("tiny", model, calib, calib, ["0", "2"], loss, lambda m: {}, {"0": 20, "2": 15})


def exact_hessian(task: Task) -> np.ndarray:
    """Full Hessian (35×35, float64) of the mean calibration loss w.r.t. the two weights."""
    model = task.model.double()
    try:
        shapes = [model[0].weight.shape, model[2].weight.shape]
        sizes = [s.numel() for s in shapes]
        params = dict(model.named_parameters())

        def f(theta):
            w1, w2 = theta.split(sizes)
            p = {**{k: v.detach() for k, v in params.items()}, "0.weight": w1.view(shapes[0]),
                 "2.weight": w2.view(shapes[1])}
            return sum(task.loss(lambda x: torch.func.functional_call(model, p, (x,)), (x.double(), y.double()))
                       for x, y in task.calib) / len(task.calib)

        theta = torch.cat([model[0].weight.detach().reshape(-1), model[2].weight.detach().reshape(-1)])
        return torch.autograd.functional.hessian(f, theta).numpy()
    finally:
        model.float()


def test_hessian_same_probes_give_exact_quadratic_forms():
    """With the probes reproduced, the estimates are exactly the mean of vᵀH_b v and v ⊙ H_b v."""
    task = tiny_mlp_task()
    est = get_estimator("hessian", tol=0.0, min_probes=5, max_probes=5, seed=3)
    h = est.hutchinson(task, diagonal=True)
    assert h.probes == [5, 5]
    weights = [task.model[0].weight, task.model[2].weight]
    gen = torch.Generator().manual_seed(3)
    tr, dg = np.zeros(2), [np.zeros(tuple(w.shape)) for w in weights]
    for x, y in task.calib:
        task1 = Task("b", task.model, [(x, y)], [], task.layers, task.loss, task.quality, task.macs)
        H = exact_hessian(task1)
        for _ in range(5):
            vs = [rademacher(w, gen) for w in weights]
            v = np.concatenate([t.double().reshape(-1).numpy() for t in vs])
            hv = H @ v
            tr += [v[:20] @ hv[:20], v[20:] @ hv[20:]]
            dg[0] += (v * hv)[:20].reshape(5, 4)
            dg[1] += (v * hv)[20:].reshape(3, 5)
    np.testing.assert_allclose([h.trace["0"], h.trace["2"]], tr / 10, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(h.diag["0"], dg[0] / 10, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h.diag["2"], dg[1] / 10, rtol=1e-4, atol=1e-5)
    # the diagonal of a layer sums to its trace sample (same probes)
    assert h.diag["0"].sum() == pytest.approx(h.trace["0"], rel=1e-4, abs=1e-5)


def test_hessian_trace_and_diagonal_converge_to_exact():
    """Many probes: layer traces and the per-element diagonal within 5 standard errors of the
    exact values (Rademacher: Var vᵀAv = 2Σ_{i≠j}A_ij², Var v_i(Hv)_i = Σ_{j≠i}H_ij²)."""
    task = tiny_mlp_task(seed=1, n_batches=1, batch=16)
    H = exact_hessian(task)
    P = 1500
    h = get_estimator("hessian", tol=0.0, min_probes=P, max_probes=P, seed=0).hutchinson(task, diagonal=True)
    off = H - np.diag(np.diag(H))
    for name, sl in (("0", slice(0, 20)), ("2", slice(20, 35))):
        A = H[sl, sl]
        sd = np.sqrt(2 * (off[sl, sl] ** 2).sum() / P)
        assert abs(h.trace[name] - np.trace(A)) <= 5 * sd + 1e-6, (name, h.trace[name], np.trace(A), sd)
    diag = np.concatenate([h.diag["0"].reshape(-1), h.diag["2"].reshape(-1)])
    sd = np.sqrt((off ** 2).sum(1) / P)
    assert (np.abs(diag - np.diag(H)) <= 5 * sd + 1e-6).all()


def test_hessian_stops_on_tolerance():
    task = tiny_mlp_task(seed=2, n_batches=1)
    h = get_estimator("hessian", tol=0.05, min_probes=4, max_probes=500).hutchinson(task)
    assert 4 <= h.probes[0] < 500 and h.converged == [True] and h.rel_change[0] < 0.05
    h = get_estimator("hessian", tol=0.0, min_probes=2, max_probes=7).hutchinson(task)
    assert h.probes == [7] and h.converged == [False]


def test_hessian_layer_score_is_hawq():
    task = tiny_mlp_task(seed=4)
    est = get_estimator("hessian", bits=(2, 3, 4), group_size=4, max_probes=8)
    p = est.estimate(task)
    for i, layer in enumerate(task.layers):
        W = task.modules()[layer].weight.detach().numpy()
        want = [max(p.meta["trace"][layer], 0) / W.size * IntQuant(b, 4).error(W) for b in (2, 3, 4)]
        np.testing.assert_allclose(p.sensitivity[i], want, rtol=1e-6)
    assert p.meta["estimator"] == "hessian" and p.meta["probes"] and "seconds" in p.meta


def test_hessian_options_are_checked():
    for bad_opts in ({"tol": -1}, {"max_probes": 0}, {"min_probes": 5, "max_probes": 4}, {"seed": 1.5},
                     {"diagonal": "yes"}, {"unit_trace": True, "diagonal": True, "granularity": "group"}):
        with pytest.raises(BitallocError):
            get_estimator("hessian", **bad_opts)


def tiny_linear_task(probe: bool = False) -> tuple[Task, list]:
    """One Linear(6→4) with a squared-error loss; with `probe`, a random-projection probe loss
    whose drawn projections are recorded in the returned list."""
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    calib = [(torch.randn(5, 6, generator=g), torch.randn(5, 4, generator=g)) for _ in range(3)]
    drawn = []

    def loss(m, b):
        return ((m(b[0]) - b[1]) ** 2).sum(-1).mean() / 2

    def probe_loss(m, b, gen):
        v = torch.randint(0, 2, (len(b[0]), 4), generator=gen).float() * 2 - 1
        drawn.append(v.numpy())
        return (m(b[0]) * v).sum() / len(b[0]) ** 0.5

    return Task("lin", model, calib, calib, ["0"], loss, lambda m: {}, {"0": 24},
                probe_loss=probe_loss if probe else None), drawn


def test_fisher_equals_hand_computed_squared_gradients():
    task, _ = tiny_linear_task()
    W = task.model[0].weight.detach().numpy().astype(np.float64)
    b = task.model[0].bias.detach().numpy().astype(np.float64)
    per_sample, per_batch = np.zeros_like(W), np.zeros_like(W)
    n = 0
    for x, y in task.calib:
        x, y = x.numpy().astype(np.float64), y.numpy().astype(np.float64)
        r = x @ W.T + b - y  # ∂(½||Wx + b − y||²)/∂W = r xᵀ
        for s in range(len(x)):
            per_sample += np.outer(r[s], x[s]) ** 2
            n += 1
        per_batch += (r.T @ x / len(x)) ** 2
    per_sample /= n
    per_batch /= len(task.calib)
    for flag, F in ((True, per_sample), (False, per_batch)):
        est = get_estimator("fisher", bits=(2, 3, 4, 8), group_size=3, per_sample=flag)
        got, passes = est.fisher(task)
        np.testing.assert_allclose(got["0"], F, rtol=1e-5)
        assert passes == (15 if flag else 3)
        p = est.estimate(task)
        want = [(F * (IntQuant(bb, 3).fake_quant(W) - W) ** 2).sum() for bb in (2, 3, 4, 8)]
        np.testing.assert_allclose(p.sensitivity[0], want, rtol=1e-5)
        assert p.meta["backward_passes"] == passes and "outlier_fraction" not in p.meta


def test_fisher_uses_probe_loss():
    task, drawn = tiny_linear_task(probe=True)
    F, passes = get_estimator("fisher", group_size=3, seed=7).fisher(task)
    xs = [x[s].numpy() for x, _ in task.calib for s in range(len(x))]
    assert passes == len(drawn) == len(xs) == 15
    want = sum(np.outer(v[0], x) ** 2 for v, x in zip(drawn, xs)) / len(xs)  # ∂(v·(Wx+b))/∂W = v xᵀ
    np.testing.assert_allclose(F["0"], want, rtol=1e-5)


def test_fisher_outliers_are_excluded_and_charged():
    task, _ = tiny_linear_task()
    full = get_estimator("fisher", group_size=3, granularity="channel").estimate(task)
    est = get_estimator("fisher", group_size=3, granularity="channel", outlier_fraction=0.34)
    kept = est.estimate(task)
    assert kept.meta["outlier_fraction"] == 0.34 and kept.meta["outliers_kept"] == 4 * 2  # round(0.34·6) per row
    assert (kept.sensitivity <= full.sensitivity).all() and (kept.sensitivity < full.sensitivity).any()
    F, _ = est.fisher(task)
    W = task.model[0].weight.detach().numpy()
    err = (IntQuant(2, 3).fake_quant(W) - W).astype(np.float64) ** 2
    for c in range(4):  # each channel: its 2 largest-F weights do not count
        keep = np.argsort(F["0"][c])[-2:]
        c_i = F["0"][c].astype(np.float64).copy()
        c_i[keep] = 0
        assert kept.sensitivity[c, 0] == pytest.approx((c_i * err[c]).sum(), rel=1e-6)
    mem = MemoryCost(count_overhead=True)
    assert (mem.costs(kept) > mem.costs(full)).all()


def test_fisher_options_are_checked():
    for bad_opts in ({"outlier_fraction": 1.0}, {"outlier_fraction": -0.1}, {"per_sample": "no"}, {"seed": None}):
        with pytest.raises(BitallocError):
            get_estimator("fisher", **bad_opts)


# ---- real small models ----------------------------------------------------------------------
def state(task):
    return {k: v.detach().clone() for k, v in task.model.state_dict().items()}


def assert_untouched(task, before, grads_before):
    after = task.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in task.model.parameters()] == grads_before
    assert not task.model.training
    assert all(p.grad is None for p in task.model.parameters())


def check_scores(p, layer_level: bool, zero_rows=()):
    """Finite, non-negative; rows strictly decreasing in bits at layer granularity, except the
    units named in `zero_rows`, which must be all zero (a hessian layer whose trace estimate
    came out ≤ 0 is clipped to 0).

    Below a layer, what is true is weaker: a row may be all zero (no gradient or curvature
    reaches it: dead ReLU units; or every weight's estimate was clipped at 0), and a weighted
    squared RTN error of a small block is not always monotone in bits (a 9-weight conv1
    channel whose score is dominated by one or two weights can lose more at 4 bits than at 3).
    So there: most nonzero rows strictly decrease, and every layer's total does."""
    S = p.sensitivity
    assert np.isfinite(S).all() and (S >= 0).all()
    dec = (np.diff(S, axis=1) < 0).all(1)
    if layer_level:
        zero = np.isin(p.names, list(zero_rows))
        assert (S[zero] == 0).all()
        assert dec[~zero].all(), p.names[int(np.argmin(dec | zero))]
        return
    nonzero = (S > 0).any(1)
    assert nonzero.mean() > 0.4
    assert dec[nonzero].mean() >= 0.9
    for layer in dict.fromkeys(p.layers):
        tot = S[np.asarray(p.layers) == layer].sum(0)
        assert (tot == 0).all() or (np.diff(tot) < 0).all(), layer


def layer_totals(p) -> np.ndarray:
    layers = np.asarray(p.layers)
    return np.array([p.sensitivity[layers == name].sum(0) for name in dict.fromkeys(p.layers)])


@pytest.fixture(scope="module")
def minilm():
    from bitalloc.zoo.demo import load_task

    pytest.importorskip("transformers")
    try:
        return load_task("minilm", samples=4, seq_len=16)
    except BitallocError as e:
        pytest.skip(str(e))


# digits-cnn: conv1 has 9 inputs per output, so groups of 6 (symmetric, so that the ragged
# 2- and 3-column groups are not quantized exactly)
DIGITS = dict(group_size=6, symmetric=True)
MINILM = dict(group_size=128)


@pytest.mark.parametrize("name", ["digits", "minilm"])
def test_fisher_on_real_models(name, request):
    task = request.getfixturevalue(name)
    opts = DIGITS if name == "digits" else MINILM
    before, grads = state(task), [p.requires_grad for p in task.model.parameters()]
    grans = ("layer", "group", "channel") if name == "digits" else ("layer", "group")
    F, n = get_estimator("fisher", **opts).fisher(task)  # one set of passes, scored at every granularity
    assert_untouched(task, before, grads)
    assert n == sum(len(split_batch(b)) for b in task.calib)
    prof = {g: get_estimator("fisher", granularity=g, **opts).scores(task, F, n) for g in grans}
    for g, p in prof.items():
        check_scores(p, g == "layer")
        assert p.meta["estimator"] == "fisher" and p.meta["granularity"] == g
    # elementwise: group and channel profiles add up to the layer profile
    for g in grans[1:]:
        np.testing.assert_allclose(layer_totals(prof[g]), prof["layer"].sensitivity, rtol=1e-9)
    out = get_estimator("fisher", granularity=grans[-1], outlier_fraction=0.01, **opts).scores(task, F, n)
    check_scores(out, False)
    assert out.meta["outlier_fraction"] == 0.01
    assert (out.sensitivity <= prof[grans[-1]].sensitivity).all()
    assert out.sensitivity.sum() < prof[grans[-1]].sensitivity.sum()
    if name == "digits":  # estimate() is fisher() + scores(); per-batch is one pass per batch
        direct = get_estimator("fisher", granularity="group", **opts).estimate(task)
        np.testing.assert_allclose(direct.sensitivity, prof["group"].sensitivity, rtol=1e-6)
        per_batch = get_estimator("fisher", per_sample=False, **opts).estimate(task)
        check_scores(per_batch, True)
        assert per_batch.meta["backward_passes"] == len(task.calib)
    assert_untouched(task, before, grads)


@pytest.mark.parametrize("name", ["digits", "minilm"])
def test_hessian_on_real_models(name, request):
    task = request.getfixturevalue(name)
    opts = DIGITS if name == "digits" else MINILM
    before, grads = state(task), [p.requires_grad for p in task.model.parameters()]
    probes = dict(max_probes=8 if name == "digits" else 4, seed=0)
    est = get_estimator("hessian", granularity="layer", **probes, **opts)
    h = est.hutchinson(task, diagonal=True)  # one set of probes, scored at every granularity
    assert_untouched(task, before, grads)
    assert all(np.isfinite(t) for t in h.trace.values()) and sum(h.trace.values()) > 0
    # a small layer's trace estimate can come out <= 0 with few probes (MiniLM's layer-0 key:
    # true trace ~0.1, noise ~1 at 4 probes): its HAWQ score is clipped to 0
    flat = [name for name, t in h.trace.items() if t <= 0]
    assert len(flat) <= len(h.trace) // 10
    grans = ("layer", "group", "channel") if name == "digits" else ("layer", "group")
    prof = {g: get_estimator("hessian", granularity=g, **probes, **opts).scores(task, h) for g in grans}
    diag_layer = get_estimator("hessian", granularity="layer", diagonal=True, **probes, **opts).scores(task, h)
    for g, p in prof.items():
        check_scores(p, g == "layer", zero_rows=flat)
    check_scores(diag_layer, True)
    # What adds up: the per-element (clipped) diagonal scores of groups and channels sum to the
    # layer score computed with the same diagonal; the HAWQ layer score (trace/n · ||ΔW||²)
    # is a different quantity and is not their sum.
    for g in grans[1:]:
        np.testing.assert_allclose(layer_totals(prof[g]), diag_layer.sensitivity, rtol=1e-9)
    # the unclipped diagonal of a layer sums to its trace (same probes)
    scale = sum(map(abs, h.trace.values()))
    for layer, d in h.diag.items():
        assert d.sum(dtype=np.float64) == pytest.approx(h.trace[layer], rel=1e-3, abs=1e-6 * scale)
    # HAWQ per unit (unit_trace): scores are trace_u/n_u · ||ΔW_u||² with the unit traces
    ut = get_estimator("hessian", granularity="group", unit_trace=True, **probes, **opts).scores(task, h)
    check_scores(ut, False)
    if name == "digits":  # estimate() runs the same probes (same seed) as hutchinson()
        direct = get_estimator("hessian", granularity="group", **probes, **opts).estimate(task)
        np.testing.assert_allclose(direct.sensitivity, prof["group"].sensitivity, rtol=1e-5)
        assert direct.meta["probes"] == h.probes and direct.meta["trace"].keys() == h.trace.keys()
    assert_untouched(task, before, grads)


@pytest.mark.slow
def test_smollm2_hessian_and_fisher():
    from bitalloc.zoo.demo import load_task

    try:
        task = load_task("smollm2", samples=2, seq_len=64)
    except BitallocError as e:
        pytest.skip(str(e))
    before, grads = state(task), [p.requires_grad for p in task.model.parameters()]
    f = get_estimator("fisher").estimate(task)
    check_scores(f, True)
    h = get_estimator("hessian", min_probes=2, max_probes=2).estimate(task)
    # an LLM away from a minimum has layers of (estimated) negative curvature: clipped to 0
    check_scores(h, True, zero_rows=[n for n, t in h.meta["trace"].items() if t <= 0])
    assert h.meta["probes"] == [2] and sum(h.meta["trace"].values()) > 0
    assert_untouched(task, before, grads)


def test_fisher_chunked_float32_scores_equal_the_float64_reference(monkeypatch):
    """weighted_error scores a layer in row chunks with float32 errors and float64 sums: forced
    into many chunks (3 rows each), fisher's profile at every granularity equals Σ F (Q(w) − w)²
    summed in float64 from the whole layer, for a row-wise quantizer (int) and one quantized
    whole (NVFP4's per-tensor scale)."""
    import bitalloc.sensitivity.base as base
    from bitalloc.quant.integer import scorer_for

    g = torch.Generator().manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(64, 20)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(20, 64, generator=g) * torch.logspace(-2, 1, 64))
    calib = [(torch.randn(4, 64, generator=g), torch.randn(4, 20, generator=g)) for _ in range(2)]
    task = Task("lin", model, calib, calib, ["0"], lambda m, b: ((m(b[0]) - b[1]) ** 2).sum(-1).mean() / 2,
                lambda m: {}, {"0": 64 * 20})
    monkeypatch.setattr(base, "ROW_CHUNK_ELEMENTS", 3 * 64)
    W = model[0].weight.detach().numpy()
    F = None
    for gran in ("layer", "group", "channel"):
        est = get_estimator("fisher", bits=(2, 4, 8, "nvfp4"), granularity=gran, group_size=16)
        if F is None:
            F = est.fisher(task)[0]["0"].astype(np.float64)
        p = est.estimate(task)
        for k, fmt in enumerate(p.formats):
            err = (scorer_for(fmt, 16).fake_quant(W).astype(np.float64) - W.astype(np.float64)) ** 2
            want = [(u.block(F) * u.block(err)).sum() for u in p.units]
            np.testing.assert_allclose(p.sensitivity[:, k], want, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["int3", "int4_g16", "fp4_e2m1", "mxfp4", "fp16", "bf16", "nvfp4"])
def test_rows_independent_quantizers_quantize_row_slices_as_the_whole(fmt):
    from bitalloc.quant.integer import fake_quant_tensor, scorer_for
    from bitalloc.sensitivity.base import rows_independent

    q = scorer_for(fmt, 16)
    W = torch.randn(12, 64, generator=torch.Generator().manual_seed(5)) * torch.logspace(-3, 1, 12)[:, None]
    whole = fake_quant_tensor(q, W)
    parts = torch.cat([fake_quant_tensor(q, W[r:r + 5]) for r in range(0, 12, 5)])
    assert rows_independent(q) == (fmt != "nvfp4")
    assert torch.equal(parts, whole) == rows_independent(q)


@pytest.mark.parametrize("per_sample", [True, False])
def test_fisher_without_stored_F_equals_scoring_F(digits, monkeypatch, per_sample):
    """outlier_fraction 0: estimate() scores each pass's gradient (c = g²) as it arrives and never
    builds F; the profile equals scoring the stored F (fisher_tensors + scores) at every
    granularity, per sample and per batch, with the same meta."""
    from bitalloc.sensitivity.fisher import FisherEstimator

    stored = {}
    for g in ("layer", "group", "channel"):
        est = get_estimator("fisher", granularity=g, per_sample=per_sample, **DIGITS)
        F, n = est.fisher_tensors(digits)
        stored[g] = est.scores(digits, F, n)
    before, grads = state(digits), [p.requires_grad for p in digits.model.parameters()]

    def no_F(*a, **k):
        raise AssertionError("F was built")

    monkeypatch.setattr(FisherEstimator, "fisher_tensors", no_F)
    for g, want in stored.items():
        got = get_estimator("fisher", granularity=g, per_sample=per_sample, **DIGITS).estimate(digits)
        assert_untouched(digits, before, grads)
        assert got.units == want.units and got.formats == want.formats
        np.testing.assert_allclose(got.sensitivity, want.sensitivity, rtol=1e-5)
        strip = lambda m: {k: v for k, v in m.items() if k != "seconds"}  # noqa: E731
        assert strip(got.meta) == strip(want.meta)
        assert got.meta["passes"].startswith("1 forward + 1 backward per calibration " +
                                             ("sample" if per_sample else "batch"))
    with pytest.raises(AssertionError, match="F was built"):  # outliers need F whole
        get_estimator("fisher", outlier_fraction=0.01, **DIGITS).estimate(digits)


def test_fisher_without_stored_F_on_a_tiny_mlp():
    """Two layers, exact hand check of the no-F path against F from `fisher`."""
    task = tiny_mlp_task()
    for g in ("layer", "channel"):
        est = get_estimator("fisher", bits=(2, 3, 4, 8), granularity=g, group_size=4)
        F, n = est.fisher(task)
        np.testing.assert_allclose(est.estimate(task).sensitivity, est.scores(task, F, n).sensitivity, rtol=1e-5)
