"""The `salience` and `measured` estimators: hand computations on toy layers, real models
(digits-cnn, MiniLM; SmolLM2 marked slow), the model left untouched, and rank agreement with the
measured ground truth on digits-cnn (run with `-s` to see the Spearman figures)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from bitalloc.errors import BitallocError
from bitalloc.quant.integer import IntQuant
from bitalloc.sensitivity import get_estimator
from bitalloc.sensitivity.measured import MeasuredEstimator
from bitalloc.sensitivity.salience import SalienceEstimator, layer_columns
from bitalloc.models.task import Task

BITS = (2, 3, 4, 5, 6, 8)


# ---- helpers ---------------------------------------------------------------------------------
def toy_task(seed: int = 0, fail_after: int | None = None) -> Task:
    """Linear(16→8) → ReLU → Linear(8→4) on (batch, tokens, features) inputs, MSE loss.
    fail_after: the loss raises on that call (to test that weights are restored on errors)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).eval()
    # correlated inputs with unequal scales, so diag, obs and exact differ
    mix = torch.randn(16, 16, generator=g) * torch.linspace(0.2, 2.0, 16)
    calib = []
    for _ in range(3):
        x = torch.randn(2, 5, 16, generator=g) @ mix
        calib.append((x, torch.randn(2, 5, 4, generator=g)))
    calls = []

    def loss(m, batch):
        calls.append(m.training)
        if fail_after is not None and len(calls) >= fail_after:
            raise RuntimeError("boom")
        return torch.nn.functional.mse_loss(m(batch[0]), batch[1])

    task = Task("toy", model, calib, calib[:1], ["0", "2"], loss, lambda m: {}, {"0": 128, "2": 32},
                meta={"model": "toy", "samples": 6})
    task.calls = calls
    return task


def toy_inputs(task) -> dict[str, np.ndarray]:
    """Each layer's input rows (positions, in), float64, computed by hand."""
    l0 = task.model[0]
    with torch.no_grad():
        x0 = torch.cat([b[0].reshape(-1, 16) for b in task.calib])
        x2 = torch.relu(l0(x0))
    return {"0": x0.double().numpy(), "2": x2.double().numpy()}


def snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before: dict):
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k  # bit-exact
        assert v.dtype == after[k].dtype


def n_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def block(units, S, names) -> np.ndarray:
    idx = {u.name: i for i, u in enumerate(units)}
    return S[[idx[n] for n in names]]


@pytest.fixture(scope="module")
def digits():
    from bitalloc.zoo.demo import load_task

    return load_task("digits-cnn", samples=256)


# ---- salience: hand computations ---------------------------------------------------------------
@pytest.mark.parametrize("granularity", ["layer", "group", "channel"])
def test_salience_diag_matches_hand_computation(granularity):
    task = toy_task()
    X = toy_inputs(task)
    p = get_estimator("salience", bits=(2, 3, 4), granularity=granularity, group_size=8).estimate(task)
    for layer, mod in (("0", task.model[0]), ("2", task.model[2])):
        W = mod.weight.detach().numpy()
        ex2 = (X[layer] ** 2).mean(0)  # E[x_j^2] over all token positions
        for k, b in enumerate((2, 3, 4)):
            err = (IntQuant(b, 8).fake_quant(W).astype(np.float64) - W) ** 2 * ex2
            rows = [i for i, s in enumerate(p.layers) if s == layer]
            if granularity == "layer":
                want = [err.sum()]
            elif granularity == "group":
                want = [err[:, a:a + 8].sum() for a in range(0, W.shape[1], 8)]
            else:
                want = list(err.sum(1))
            np.testing.assert_allclose(p.sensitivity[rows, k], want, rtol=1e-6)
    assert p.meta["mode"] == "diag" and p.meta["passes"] == "1 forward"
    assert p.meta["positions"] == {"0": 30, "2": 30}


@pytest.mark.parametrize("granularity", ["layer", "group"])
def test_salience_obs_matches_dampened_inverse(granularity):
    task = toy_task()
    X = toy_inputs(task)
    p = get_estimator("salience", bits=(2, 4), granularity=granularity, group_size=8, mode="obs").estimate(task)
    assert p.meta["damp"] == 0.01
    for layer, mod in (("0", task.model[0]), ("2", task.model[2])):
        W = mod.weight.detach().numpy()
        H = X[layer].T @ X[layer] / len(X[layer])
        Hd = H + 0.01 * np.mean(np.diag(H)) * np.eye(len(H))
        c = 1.0 / np.diag(np.linalg.inv(Hd))
        assert (c <= np.diag(Hd) * (1 + 1e-9)).all()  # a Schur complement: never above E[x_j^2] + damp
        rows = [i for i, s in enumerate(p.layers) if s == layer]
        for k, b in enumerate((2, 4)):
            err = (IntQuant(b, 8).fake_quant(W).astype(np.float64) - W) ** 2 * c
            want = [err.sum()] if granularity == "layer" else [err[:, a:a + 8].sum() for a in range(0, W.shape[1], 8)]
            np.testing.assert_allclose(p.sensitivity[rows, k], want, rtol=1e-4)


@pytest.mark.parametrize("granularity", ["layer", "group", "channel"])
def test_salience_exact_is_expected_output_error(granularity):
    """exact: E||ΔW x||² with ΔW = Q(W) − W on the unit's block only."""
    task = toy_task()
    X = toy_inputs(task)
    p = get_estimator("salience", bits=(2, 3), granularity=granularity, group_size=8, mode="exact").estimate(task)
    units = task.units(granularity, 8)
    for i, u in enumerate(units):
        W = task.modules()[u.layer].weight.detach().numpy()
        for k, b in enumerate((2, 3)):
            D = np.zeros_like(W, dtype=np.float64)
            u.block(D)[...] = u.block(IntQuant(b, 8).fake_quant(W).astype(np.float64) - W)
            want = float(np.mean(((X[u.layer] @ D.T) ** 2).sum(1)))  # mean over positions of ||Δ x||²
            np.testing.assert_allclose(p.sensitivity[i, k], want, rtol=1e-4)


@pytest.mark.parametrize("conv", [
    dict(cls=torch.nn.Conv2d, args=(4, 6, 3), kw=dict(padding=1)),
    dict(cls=torch.nn.Conv2d, args=(4, 6, (3, 2)), kw=dict(stride=2, dilation=(1, 2), groups=2)),
    dict(cls=torch.nn.Conv2d, args=(4, 4, 3), kw=dict(padding="same", padding_mode="reflect", groups=4)),
    dict(cls=torch.nn.Conv1d, args=(4, 6, 3), kw=dict(padding=2, stride=2)),
    dict(cls=torch.nn.Linear, args=(5, 3), kw={}),
])
def test_layer_columns_reproduce_the_layer(conv):
    """The unfolded input times the 2-D weight (out, in·kh·kw) is the layer's output (minus bias)."""
    torch.manual_seed(0)
    mod = conv["cls"](*conv["args"], **conv["kw"])
    shape = {torch.nn.Conv2d: (2, 4, 7, 6), torch.nn.Conv1d: (2, 4, 9), torch.nn.Linear: (2, 3, 5)}[conv["cls"]]
    x = torch.randn(*shape)
    with torch.no_grad():
        bias = mod.bias if conv["cls"] is torch.nn.Linear else mod.bias.reshape(-1, *([1] * (x.dim() - 2)))
        y = mod(x) - bias
        cols = layer_columns(mod, x)  # (groups, positions, cols)
        W = mod.weight.reshape(mod.weight.shape[0], -1)
        G = cols.shape[0]
        per = W.shape[0] // G
        got = torch.cat([cols[g] @ W[g * per:(g + 1) * per].T for g in range(G)], dim=1)  # (positions, out)
    if conv["cls"] is torch.nn.Linear:
        want = y.reshape(-1, y.shape[-1])
    else:
        want = y.reshape(y.shape[0], y.shape[1], -1).permute(0, 2, 1).reshape(-1, y.shape[1])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_salience_leaves_model_unchanged_and_runs_in_eval_mode():
    task = toy_task()
    task.model.train()
    task.model[2].eval()  # a mixed state must come back as it was
    before, hooks = snapshot(task.model), n_hooks(task.model)
    flags = [m.training for m in task.model.modules()]
    calls = []
    p = SalienceEstimator(bits=(2, 8), mode="obs").estimate(task, progress=lambda d, t: calls.append((d, t)))
    assert_unchanged(task.model, before)
    assert n_hooks(task.model) == hooks
    assert [m.training for m in task.model.modules()] == flags
    assert task.calls == [False] * 3  # one forward pass over the 3 batches, in eval mode
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert p.meta["estimator"] == "salience" and p.meta["samples"] == 6 and p.meta["seconds"] >= 0


def test_salience_options_are_checked():
    with pytest.raises(BitallocError, match="mode"):
        get_estimator("salience", mode="full")
    with pytest.raises(BitallocError, match="damp"):
        get_estimator("salience", damp=0)
    with pytest.raises(BitallocError, match="allowed"):
        get_estimator("salience", probes=3)


def test_salience_unused_layer_is_an_error():
    task = toy_task()
    task.model[1].add_module("unused", torch.nn.Linear(4, 4))  # a child the ReLU never calls
    task.layers = ["0", "2", "1.unused"]
    task.macs["1.unused"] = 16
    before = snapshot(task.model)
    with pytest.raises(BitallocError, match="unused"):
        SalienceEstimator(bits=(4,), group_size=4).estimate(task)
    assert n_hooks(task.model) == 0
    assert_unchanged(task.model, before)


# ---- salience on real models -------------------------------------------------------------------
def _check_scores(S: np.ndarray, falls: str = "strict"):
    """Finite, non-negative, and falling with bits. falls="strict" (layers): every row strictly
    falls. "mostly" (groups, channels): rows of zeros are allowed (inputs that are always zero,
    e.g. dead ReLU features, or a one-column group that quantizes exactly), and a few rows may
    rise: the integer zero-point quantizer mis-handles groups whose weights all share one sign (see
    the report), so their error does not fall with bits. "no": no order (exact mode per channel:
    with correlated inputs one row's output error E(Δx)² is not monotone in bits; the measured
    loss of one channel is not either)."""
    assert np.isfinite(S).all() and (S >= 0).all()
    dec = (np.diff(S, axis=1) < 0).all(1)
    if falls == "strict":
        assert dec.all()
    elif falls == "mostly":
        live = S.max(1) > 0
        assert live.mean() > 0.8 and dec[live].mean() > 0.97


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models: one intra-op thread is as fast, and steadier on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("model", ["digits-cnn", "minilm"])
@pytest.mark.parametrize("mode", ["diag", "obs", "exact"])
def test_salience_on_real_models(model, mode, request):
    task = request.getfixturevalue(model.replace("-cnn", ""))
    if model == "digits-cnn":  # tiny: every granularity; group size 8 since conv1 has 9 inputs
        bits, gs, grans = BITS, 8, ("layer", "group", "channel")
    else:  # MiniLM (20736 channels): each granularity once; exact costs out·in² per layer and candidate
        gs = 128
        bits, grans = {"diag": ((2, 4, 8), ("layer", "group", "channel")), "obs": ((2, 4, 8), ("layer", "group")),
                       "exact": ((2, 8), ("layer", "group"))}[mode]
    before = snapshot(task.model)
    prof = {}
    for gran in grans:
        prof[gran] = get_estimator("salience", bits=bits, granularity=gran, group_size=gs, mode=mode).estimate(task)
        falls = "strict" if gran == "layer" else "no" if (mode, gran) == ("exact", "channel") else "mostly"
        _check_scores(prof[gran].sensitivity, falls)
    assert_unchanged(task.model, before)
    layer = prof["layer"]
    for gran in grans[1:]:
        p = prof[gran]
        sums = np.zeros_like(layer.sensitivity)
        np.add.at(sums, [layer.names.index(s) for s in p.layers], p.sensitivity)
        if mode == "exact" and gran == "group":  # groups drop the cross terms between them
            assert (sums > 0).all()
        else:  # elementwise weights (diag, obs) and independent output rows (exact) add up exactly
            np.testing.assert_allclose(sums, layer.sensitivity, rtol=1e-9)


# ---- measured ----------------------------------------------------------------------------------
def test_measured_matches_manual_quantize_evaluate_restore(digits):
    """Group fc1:g5 at 2 bits: quantize fc1 with the candidate's quantizer, copy only that group."""
    before = snapshot(digits.model)
    p = get_estimator("measured", bits=(2, 3), granularity="group", group_size=8, units=["fc1:g5"]).estimate(digits)
    assert p.names == ["fc1:g5"]
    assert_unchanged(digits.model, before)
    fc1 = digits.model.fc1
    base = digits.mean_loss()
    want = []
    for b in (2, 3):
        W = fc1.weight.detach().numpy().copy()
        Wq = IntQuant(b, 8).fake_quant(W)
        patched = W.copy()
        patched[:, 40:48] = Wq[:, 40:48]
        with torch.no_grad():
            fc1.weight.copy_(torch.from_numpy(patched))
        want.append(max(digits.mean_loss() - base, 0.0))
        with torch.no_grad():
            fc1.weight.copy_(torch.from_numpy(W))
    assert_unchanged(digits.model, before)
    np.testing.assert_allclose(p.sensitivity[0], want, rtol=1e-12, atol=0)
    assert want[0] > 0
    assert p.meta["forward_passes"] == 3 and p.meta["passes"].startswith("3 forward")
    assert p.meta["base_loss"] == pytest.approx(base, rel=1e-12)


def test_measured_restores_weights_and_reports_progress(digits):
    digits.model.train()
    before, hooks = snapshot(digits.model), n_hooks(digits.model)
    calls = []
    try:
        p = get_estimator("measured", bits=(2, 4, 8)).estimate(digits, progress=lambda d, t: calls.append((d, t)))
    finally:
        flags = [m.training for m in digits.model.modules()]
        digits.model.eval()
    assert all(flags)  # training flags restored
    assert_unchanged(digits.model, before)
    assert n_hooks(digits.model) == hooks
    assert calls == [(i, 12) for i in range(3, 13, 3)]  # after each unit's 3 candidates
    S = p.sensitivity
    assert p.names == digits.layers and np.isfinite(S).all() and (S >= 0).all()
    assert (S[:, 0] > S[:, 2]).all()  # 2 bits hurts more than 8
    assert p.meta["forward_passes"] == 13 and p.meta["clipped"] == int(p.meta["clipped"])
    assert p.meta["raw_min"] <= S.min() + 1e-18
    assert p.meta["estimator"] == "measured" and p.meta["measured_units"] == 4


def test_measured_runs_in_eval_mode_and_restores_after_an_error():
    task = toy_task(fail_after=4)  # base loss: 3 calls; the first quantized evaluation fails
    task.model.train()
    before = snapshot(task.model)
    with pytest.raises(RuntimeError, match="boom"):
        MeasuredEstimator(bits=(2,), group_size=8).estimate(task)
    assert_unchanged(task.model, before)
    assert all(m.training for m in task.model.modules())
    assert task.calls == [False] * 4


def test_measured_clips_negative_increases():
    """Targets made by the 2-bit model: quantizing layer 0 at 2 bits lowers the loss to 0, which
    is clipped to 0 and reported in meta."""
    task = toy_task()
    W0 = task.model[0].weight.detach().clone()
    with torch.no_grad():
        task.model[0].weight.copy_(torch.from_numpy(IntQuant(2, 8).fake_quant(W0.numpy())))
        task.calib = [(x, task.model(x)) for x, _ in task.calib]
        task.model[0].weight.copy_(W0)
    base = task.mean_loss()
    p = MeasuredEstimator(bits=(2, 8), group_size=8).estimate(task)
    assert p.sensitivity[0, 0] == 0.0 and (p.sensitivity[:, 1] > 0).all()
    assert p.meta["clipped"] == 1 + int((p.sensitivity[1] == 0).sum())
    assert p.meta["raw_min"] == pytest.approx(-base, rel=1e-5)
    assert p.meta["non_finite"] == 0


def test_measured_non_finite_loss():
    """A candidate that makes the loss overflow is not allowed (inf); a broken unit or model is an error."""
    task = toy_task()
    W0 = task.model[0].weight.detach().clone()
    mse = task.loss

    def loss(m, batch):  # NaN once layer 0 is quantized at 2 bits (its error is the largest)
        d = float((m[0].weight - W0).abs().max())
        return torch.tensor(float("nan")) if d > 0.05 else mse(m, batch)

    task.loss = loss
    p = MeasuredEstimator(bits=(2, 8), group_size=8).estimate(task)
    assert p.names == ["0", "2"]
    assert p.sensitivity[0, 0] == np.inf and np.isfinite(p.sensitivity[0, 1]) and np.isfinite(p.sensitivity[1]).all()
    assert p.meta["non_finite"] == 1
    task.loss = lambda m, b: torch.tensor(float("nan")) if (m[0].weight != W0).any() else mse(m, b)
    with pytest.raises(BitallocError, match="not finite with unit '0'"):
        MeasuredEstimator(bits=(2, 8), group_size=8).estimate(task)
    task.loss = lambda m, b: torch.tensor(float("inf"))
    with pytest.raises(BitallocError, match="unquantized model is inf"):
        MeasuredEstimator(bits=(2,), group_size=8).estimate(task)
    assert torch.equal(task.model[0].weight, W0)


@pytest.mark.parametrize("subset, want", [
    (["fc1", "conv2"], ["conv2", "fc1"]),           # model order, not request order
    (["fc*"], ["fc1", "fc2"]),
    ("conv1, fc2", ["conv1", "fc2"]),                # the CLI form: --option units=conv1,fc2
    (2, ["conv1", "fc2"]),                           # n units spread evenly
    (3, ["conv1", "fc1", "fc2"]),                   # indices round(linspace(0, 3, 3)) = 0, 2, 3
    (10, ["conv1", "conv2", "fc1", "fc2"]),          # more than there are: all
])
def test_measured_unit_subsets(digits, subset, want):
    p = get_estimator("measured", bits=(2,), units=subset).estimate(digits)
    assert p.names == want
    assert p.meta["forward_passes"] == 1 + len(want)


def test_measured_unit_subsets_at_channel_granularity(digits):
    p = get_estimator("measured", bits=(2,), granularity="channel", units=["fc2:c[0-2]", "conv1:c15"]).estimate(digits)
    assert p.names == ["conv1:c15", "fc2:c0", "fc2:c1", "fc2:c2"]
    p = get_estimator("measured", bits=(2,), granularity="channel", units=5).estimate(digits)
    assert p.n_units == 5 and p.names[0] == "conv1:c0" and p.names[-1] == "fc2:c9"


@pytest.mark.parametrize("units", [0, -1, True, [], [""], [3], 2.5])
def test_measured_bad_units_option(units):
    with pytest.raises(BitallocError, match="measured units"):
        get_estimator("measured", units=units)


def test_measured_unknown_unit_pattern(digits):
    with pytest.raises(BitallocError, match="matches no unit"):
        get_estimator("measured", bits=(2,), units=["fc3*"]).estimate(digits)


# ---- the key property: rank agreement with the measured ground truth ----------------------------
def _spearman(a, b) -> float:
    return float(spearmanr(np.ravel(a), np.ravel(b))[0])


def test_rank_agreement_with_measured_on_digits(digits):
    """Spearman of each estimator against `measured` on digits-cnn (256 calibration images).

    Layer granularity, all 4 layers × 6 candidates (24 cells): the issue's figure. Note that a
    bits-only predictor (4^-b, blind to the unit) already scores high on it, since the candidates
    dominate the pooled ranking; it is printed as a baseline. The harder, meaningful check is at
    channel granularity: ranking the output channels of each layer at a fixed bit-width (what an
    allocator within a layer needs), averaged over the 4 layers, at 2 and 3 bits where the
    measured increases stand clear of their noise."""
    estimators = {"weight_error": {}, "salience/diag": dict(mode="diag"), "salience/obs": dict(mode="obs"),
                  "salience/exact": dict(mode="exact")}

    def scores(gran, bits):
        out = {}
        for key, kw in estimators.items():
            out[key] = get_estimator(key.split("/")[0], bits=bits, granularity=gran, **kw).estimate(digits)
        return out

    # layer granularity, every cell
    M = get_estimator("measured", bits=BITS).estimate(digits)
    layer = {k: _spearman(p.sensitivity, M.sensitivity) for k, p in scores("layer", BITS).items()}
    bits_only = _spearman(np.broadcast_to(4.0 ** -np.array(BITS), M.sensitivity.shape), M.sensitivity)
    print("\nSpearman vs measured, digits-cnn, layer granularity (24 cells):",
          {k: round(v, 3) for k, v in layer.items()}, f"bits-only baseline {bits_only:.3f}")
    assert max(layer.values()) >= 0.6
    assert all(v > 0.4 for v in layer.values())

    # channel granularity, 122 channels × 2 candidates
    bits = (2, 3)
    Mc = get_estimator("measured", bits=bits, granularity="channel").estimate(digits)
    layers = np.array(Mc.layers)
    within, pooled = {}, {}
    for key, p in scores("channel", bits).items():
        assert p.names == Mc.names
        pooled[key] = _spearman(p.sensitivity, Mc.sensitivity)
        within[key] = [float(np.mean([_spearman(p.sensitivity[layers == L, k], Mc.sensitivity[layers == L, k])
                                      for L in digits.layers])) for k in range(len(bits))]
    print("Spearman vs measured, digits-cnn, channel granularity, pooled over 244 cells:",
          {k: round(v, 3) for k, v in pooled.items()})
    print("  within each layer at 2 / 3 bits (mean over layers):",
          {k: [round(x, 3) for x in v] for k, v in within.items()},
          f"clipped {Mc.meta['clipped']}/{Mc.sensitivity.size}")
    assert within["salience/exact"][0] >= 0.6
    assert within["salience/exact"][0] >= within["weight_error"][0] + 0.05
    assert all(v[0] > 0.3 for v in within.values())  # every estimator ranks channels better than chance


# ---- SmolLM2 (slow) ----------------------------------------------------------------------------
@pytest.mark.slow
def test_measured_and_salience_on_smollm2():
    from bitalloc.zoo.demo import load_task

    task = load_task("smollm2", samples=2, seq_len=64)
    before = {n: m.weight.detach().clone() for n, m in task.modules().items()}
    p = get_estimator("measured", bits=(2, 8), units=3).estimate(task)
    S = p.sensitivity
    assert p.n_units == 3 and S.shape == (3, 2)
    assert np.isfinite(S).all() and (S >= 0).all()
    assert (S[:, 0] >= S[:, 1]).all()
    assert p.meta["forward_passes"] == 7
    s = get_estimator("salience", bits=(2, 8)).estimate(task)
    _check_scores(s.sensitivity)
    for n, m in task.modules().items():
        assert torch.equal(m.weight, before[n]), n
    print(f"\nsmollm2 measured {p.meta['seconds']} s ({p.names}), salience diag {s.meta['seconds']} s")
