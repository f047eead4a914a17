"""Number formats as candidates: minifloat, per-group FP, OCP MX and NVFP4 against their
definitions; exact storage; estimators scoring mixed candidates; mixed-format profiles solved."""
from __future__ import annotations

import json

import numpy as np
import pytest

import bitalloc
from bitalloc import BitallocError, Profile, Unit
from bitalloc.quant.formats.minifloat import E2M1, E2M3, E3M2, E4M3, E5M2, ELEMENTS
from bitalloc.quant.formats.spec import parse_format
from bitalloc.hwcost.memory import MemoryCost
from bitalloc import Constraint, Problem
from bitalloc.quant.integer import IntQuant, format_family, quantizer_for, scorer_for

from conftest import brute_force

# ---- element formats ----------------------------------------------------------------------
KNOWN = {  # name: (max, smallest subnormal, positive finite values)
    "e2m1": (6.0, 0.5, 8), "e2m3": (7.5, 0.125, 32), "e3m2": (28.0, 0.0625, 32),
    "e4m3": (448.0, 2.0**-9, 127), "e5m2": (57344.0, 2.0**-16, 124)}


def test_e2m1_values_are_exactly_the_fp4_set():
    assert E2M1.positive.tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    v = E2M1.values
    assert v[:8].tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6] and v[8:].tolist() == [-0.0, -0.5, -1, -1.5, -2, -3, -4, -6]


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_element_format_facts(name):
    f = ELEMENTS[name]
    mx, sub, n = KNOWN[name]
    assert f.max == mx and f.positive[1] == sub and len(f.positive) == n
    assert np.all(np.diff(f.positive) > 0)  # codes ordered by magnitude
    assert np.isnan(f.values).sum() == 2 * (2 ** (f.bits - 1) - n)  # inf/NaN codes only


def test_fp6_value_sets_from_the_field_definitions():
    # E2M3: subnormals m/8, then (1 + m/8)·2^(e−1); E3M2: subnormals m/16, then (1 + m/4)·2^(e−3)
    e2m3 = sorted({m / 8 for m in range(8)} | {(1 + m / 8) * 2.0 ** (e - 1) for e in range(1, 4) for m in range(8)})
    e3m2 = sorted({m / 16 for m in range(4)} | {(1 + m / 4) * 2.0 ** (e - 3) for e in range(1, 8) for m in range(4)})
    assert E2M3.positive.tolist() == e2m3 and E3M2.positive.tolist() == e3m2


@pytest.mark.parametrize("f, dtype", [(E4M3, "float8_e4m3fn"), (E5M2, "float8_e5m2")])
def test_fp8_matches_torch_float8(f, dtype):
    torch = pytest.importorskip("torch")
    dt = getattr(torch, dtype)
    table = torch.arange(256, dtype=torch.uint8).view(dt).float().numpy()
    finite = np.isfinite(table)
    np.testing.assert_array_equal(f.values[finite], table[finite])
    assert (np.isfinite(f.values) == finite).all()
    x = np.random.default_rng(0).standard_normal(20000) * np.exp2(np.random.default_rng(1).integers(-18, 10, 20000))
    x = np.clip(x, -f.max, f.max)  # torch's cast overflows to NaN/inf; ours saturates (tested below)
    ref = torch.from_numpy(x).to(dt).double().numpy()
    np.testing.assert_array_equal(f.round(x), ref)


def test_round_to_nearest_even_ties_and_saturation():
    x = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.5, 7.0, 1e9, np.inf, -0.25, -5.0, -1e9])
    assert E2M1.round(x).tolist() == [0, 1, 1, 2, 2, 4, 4, 6, 6, 6, 6, -0.0, -4, -6]
    assert E4M3.round(np.array([1 + 1 / 16, 1 + 3 / 16, 464.0, 500.0, 1e6, -1e6])).tolist() == \
        [1.0, 1.25, 448.0, 448.0, 448.0, -448.0]
    assert E5M2.round(np.array([61440.0, 1e9])).tolist() == [57344.0, 57344.0]  # no inf
    # half the smallest subnormal ties to 0 (even); just above it rounds up
    assert E4M3.round(np.array([2.0**-10, 2.0**-10 * 1.01])).tolist() == [0.0, 2.0**-9]


@pytest.mark.parametrize("f", list(ELEMENTS.values()), ids=list(ELEMENTS))
def test_codes_round_trip(f):
    x = np.random.default_rng(2).standard_normal(5000) * f.max / 3
    code = f.encode(x)
    assert code.dtype == np.int32 and code.min() >= 0 and code.max() < 2**f.bits
    np.testing.assert_array_equal(f.decode(code), f.round(x).astype(np.float32))
    assert not (code == 1 << (f.bits - 1)).any()  # −0 is written as +0: one code per value
    best = np.abs(f.positive[None, :] - np.abs(x)[:, None]).min(1)  # nearest on the grid, brute force
    np.testing.assert_allclose(np.abs(f.round(x) - x), best, rtol=0, atol=0)


# ---- scaled formats -------------------------------------------------------------------------
def weights(rows=8, cols=96, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, cols)) * np.exp(rng.standard_normal((rows, 1)))).astype(np.float32)


def test_group_fp_scale_is_absmax_over_element_max():
    w = weights()
    for fmt in ("fp4_e2m1", "fp6_e2m3", "fp6_e3m2", "fp8_e4m3", "fp8_e5m2"):
        q = quantizer_for(fmt, group_size=32)
        codes, scale, zero = q.encode(w)
        amax = np.abs(w).reshape(8, 3, 32).max(-1)
        np.testing.assert_array_equal(scale, (amax / np.float32(q.element.max)).astype(np.float32))
        assert (zero == 0).all() and scale.shape == (8, 3)
        deq = q.decode(codes, scale, zero)
        s = np.repeat(scale, 32, 1)
        np.testing.assert_array_equal(q.values[codes], q.element.round(w / s).astype(np.float32))
        np.testing.assert_array_equal(deq, q.values[codes] * s)
        np.testing.assert_allclose(np.abs(deq).reshape(8, 3, 32).max(-1), amax, rtol=1e-6)  # group max kept
    assert quantizer_for("fp4_e2m1_g16", group_size=128).block == 16


def test_mx_scale_is_the_spec_power_of_two():
    # block 0: max 5 → floor(log2 5) − emax(E2M1)=2 → X = 1; block 1: max 0.3 → 2^(−2−2);
    # block 2: max 7 → X = 1 and 7 clamps to 6 (the spec's clamp); block 3: all zero → 2^−127
    w = np.zeros((1, 128), np.float32)
    w[0, :32] = np.linspace(-5, 5, 32)
    w[0, 32:64] = np.linspace(-0.3, 0.3, 32)
    w[0, 64] = 7.0
    q = quantizer_for("mxfp4")
    codes, scale, _ = q.encode(w)
    assert scale.tolist() == [[1.0, 2.0**-4, 1.0, 2.0**-127]]
    deq = q.decode(codes, scale)
    assert deq[0, 31] == 4.0 and deq[0, 63] == 0.25 and deq[0, 64] == 6.0  # 5: a tie → 4 (even); 0.3·16 = 4.8 → 4
    assert (codes[0, 96:] == 0).all()


@pytest.mark.parametrize("fmt, emax", [("mxfp4", 2), ("mxfp6_e2m3", 2), ("mxfp6_e3m2", 4),
                                       ("mxfp8_e4m3", 8), ("mxfp8_e5m2", 15), ("mxfp6", 2), ("mxfp8", 8)])
def test_mx_scales_random(fmt, emax):
    w = weights(4, 160, seed=3)
    q = quantizer_for(fmt)
    codes, scale, _ = q.encode(w)
    assert scale.shape == (4, 5) and q.block == 32 and q.scale_bits == 8
    e = np.log2(scale)
    assert (e == np.round(e)).all()  # a power of two
    amax = np.abs(w).reshape(4, 5, 32).max(-1)
    np.testing.assert_array_equal(e, np.floor(np.log2(amax)) - emax)
    vals = q.decode(codes, scale) / np.repeat(scale, 32, 1)
    assert np.isin(np.abs(vals), q.element.positive).all()


def test_nvfp4_two_level_scales():
    w = weights(4, 64, seed=4)
    q = quantizer_for("nvfp4")
    codes, scale, _ = q.encode(w)
    t = np.float32(np.abs(w).max() / np.float32(6 * 448))
    assert q.tensor_scale(w) == t and scale.shape == (4, 4) and q.block == 16
    b = q.block_scales(np.abs(w).reshape(4, 4, 16).max(-1, keepdims=True), t)[..., 0]
    assert np.isin(b, E4M3.positive.astype(np.float32)).all()  # block scales are E4M3 values
    np.testing.assert_array_equal(b, E4M3.round(np.abs(w).reshape(4, 4, 16).max(-1) / (6 * t)).astype(np.float32))
    np.testing.assert_array_equal(scale, (b * t).astype(np.float32))
    assert b.max() == 448.0  # the block holding the tensor max gets the largest E4M3 scale
    deq = q.decode(codes, scale)
    i = np.unravel_index(np.abs(w).argmax(), w.shape)
    assert deq[i] == pytest.approx(w[i], rel=1e-6)
    assert np.isin(np.abs(deq / np.repeat(scale, 16, 1)).round(5), [0, 0.5, 1, 1.5, 2, 3, 4, 6]).all()


def test_zero_tensor_and_ragged_blocks():
    for fmt in ("int4", "fp4_e2m1", "mxfp4", "nvfp4", "fp8_e4m3"):
        q = quantizer_for(fmt, group_size=32)
        z = np.zeros((3, 50), np.float32)
        assert (q.fake_quant(z) == 0).all()
        w = weights(3, 50, seed=5)  # 50 = 32 + 18 (ragged MX/int block), 3·16 + 2 (ragged NVFP4 block)
        codes, scale, zero = q.encode(w)
        assert codes.shape == (3, 50) and scale.shape == (3, 4 if fmt == "nvfp4" else 2)
        np.testing.assert_array_equal(q.fake_quant(w), q.decode(codes, scale, zero))
        assert q.error(w) == pytest.approx(float(((q.fake_quant(w) - w).astype(np.float64) ** 2).sum()))
        assert q.error(w) < 0.05 * float((w.astype(np.float64) ** 2).sum())


def test_int_quant_unchanged_through_the_entry_point():
    w = weights(5, 70, seed=6)
    for sym in (False, True):
        a, b = quantizer_for("int3", 32, sym), IntQuant(3, 32, sym)
        assert a == b
        np.testing.assert_array_equal(a.fake_quant(w), b.fake_quant(w))
    assert quantizer_for("int4_g64") == IntQuant(4, 64)
    assert quantizer_for("fp16") is None and scorer_for("fp16").error(w) < 1e-6 * float((w**2).sum())
    assert scorer_for("bf16").fake_quant(np.array([[1 + 2**-8, 1 + 3 * 2**-8]], np.float32)).tolist() == [[1.0, 1 + 2**-6]]


# ---- names ----------------------------------------------------------------------------------
def test_format_names_and_families():
    want = {"int4": ("int", 4), "int3_g32": ("int", 3), "fp4_e2m1": ("fp", 4), "fp8_e4m3": ("fp", 8),
            "fp6_e3m2": ("fp", 6), "mxfp4": ("mx", 4), "mxfp6": ("mx", 6), "mxfp8_e5m2": ("mx", 8),
            "nvfp4": ("nvfp4", 4), "fp16": ("float", 16), "bf16": ("float", 16), 8: ("int", 8), "16": ("float", 16)}
    for name, (fam, bits) in want.items():
        assert (format_family(name), parse_format(name).bits) == (fam, bits), name
    assert parse_format("mxfp8").element == "e4m3" and parse_format("mxfp6").element == "e2m3"
    for badname in ("fp4_e3m2", "int0", "int17", "mxfp5", "mxfp4_e3m2", "nvfp8", "int4_g0", "float4", ""):
        with pytest.raises(BitallocError, match="format"):
            parse_format(badname)


# ---- storage --------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, want", [
    ("int4", 3000 * 4 + 10 * 3 * 32),                 # asym: fp16 scale + 16-bit zero per group of 128
    ("fp4_e2m1", 3000 * 4 + 10 * 3 * 32),             # fp32 scale per group of 128
    ("fp8_e4m3_g64", 3000 * 8 + 10 * 5 * 32),
    ("mxfp4", 3000 * 4 + 10 * 10 * 8),                # ceil(300/32) = 10 E8M0 scales per row
    ("mxfp6", 3000 * 6 + 10 * 10 * 8),
    ("mxfp8_e5m2", 3000 * 8 + 10 * 10 * 8),
    ("nvfp4", 3000 * 4 + 10 * 19 * 8 + 32),           # ceil(300/16) = 19 E4M3 scales per row, FP32 per tensor
])
def test_storage_bits_exact(fmt, want):
    q = quantizer_for(fmt, group_size=128)
    assert q.storage_bits(10, 300) == want
    w = weights(10, 300, seed=7)
    codes, scale, _ = q.encode(w)  # the encoded arrays hold exactly that many bits
    meta = scale.size * (32 if isinstance(q, IntQuant) else q.scale_bits) + getattr(q, "tensor_bits", 0)
    assert codes.size * q.bits + meta == want
    assert len(np.unique(codes)) <= 2**q.bits


def mixed_profile(meta=None) -> Profile:
    units = [Unit("blk.0.a", n_params=3000, shape=(10, 300)), Unit("blk.0.b", n_params=512, shape=(4, 128)),
             Unit("blk.1.a", n_params=2048, shape=(8, 256)), Unit("blk.1.b", n_params=640, shape=(2, 320))]
    fmts = ["int4", "fp4_e2m1", "mxfp4", "nvfp4", "int3", "fp8_e4m3", "fp16"]
    bits = [parse_format(f).bits for f in fmts]
    S = np.random.default_rng(8).random((4, len(fmts))) * [[4, 5, 6, 4.5, 9, 0.5, 0]]
    return Profile(units, bits, S, formats=fmts, meta={"group_size": 128, **(meta or {})})


def test_memory_cost_charges_each_format():
    p = mixed_profile()
    m = MemoryCost(count_overhead=True)
    want = np.array([[q.storage_bits(r, c) if q else r * c * 16
                      for q in (quantizer_for(f, 128) for f in p.formats)]
                     for r, c in zip(p.rows, p.cols)])
    np.testing.assert_array_equal(m.costs(p), want)
    np.testing.assert_array_equal(MemoryCost().costs(p), p.n_params[:, None] * np.array(p.bits)[None, :])
    assert m.costs(p)[0].tolist() == [12960, 12960, 12800, 13552, 9960, 24960, 48000]
    choice = np.array([2, 3, 0, 6])
    np.testing.assert_array_equal(m.chosen(p, choice), want[np.arange(4), choice])
    sym = MemoryCost(count_overhead=True).costs(mixed_profile({"symmetric": True}))
    assert sym[0, 0] == 12000 + 30 * 16 and sym[0, 1] == 12960  # no zero-point; FP scale unchanged


@pytest.mark.parametrize("overhead", [False, True])
def test_mixed_format_profile_ilp_equals_brute_force(overhead):
    p = mixed_profile()
    m = MemoryCost(count_overhead=overhead)
    C = m.costs(p) / m.scale(p)
    lo, hi = C.min(1).sum(), C.max(1).sum()
    for budget in np.linspace(lo, hi, 7)[1:]:
        a = bitalloc.solve(p, float(budget), count_overhead=overhead)
        ref = brute_force(p, budgets=[budget], costs=[C])
        assert a.objective == pytest.approx(ref.best, rel=1e-9, abs=1e-12)
        choice = a.choice(p)
        assert [p.formats[k] for k in choice] == [a.formats[s] for s in p.names]
        assert a.avg_bits_with_overhead == pytest.approx(MemoryCost(count_overhead=True).total(p, choice))
        assert a.totals[m.resource] <= budget + 1e-12


def test_solve_cli_on_a_mixed_profile_shows_formats(tmp_path, capsys):
    from bitalloc.cli.app import main

    path = tmp_path / "mixed.json"
    mixed_profile().save(path)
    doc = json.loads(path.read_text())
    assert doc["formats"][:4] == ["int4", "fp4_e2m1", "mxfp4", "nvfp4"]
    assert main(["solve", "--profile", str(path), "--budget", "4.3", "--count-overhead"]) == 0
    out = capsys.readouterr().out
    assert "units per format" in out and any(f in out for f in ("mxfp4", "nvfp4", "fp4_e2m1", "fp8_e4m3"))
    assert main(["solve", "--profile", str(path), "--budget", "4", "--json", "--pin", "blk.0.a=nvfp4"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["formats"]["blk.0.a"] == "nvfp4" and d["bits"]["blk.0.a"] == 4


# ---- estimators -----------------------------------------------------------------------------
CANDS = (4, "fp4_e2m1", "mxfp4", "nvfp4", "int8", "fp8_e4m3")


def tiny_task(classify: bool = False):
    torch = pytest.importorskip("torch")
    from bitalloc.models.task import Task

    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).eval()
    xs = [torch.randn(16, 64, generator=g) for _ in range(2)]
    if classify:
        calib = [(x, torch.randint(0, 8, (16,), generator=g)) for x in xs]

        def loss(m, b):
            return torch.nn.functional.cross_entropy(m(b[0]), b[1])
    else:
        calib = [(x, torch.randn(16, 8, generator=g)) for x in xs]

        def loss(m, b):
            return ((m(b[0]) - b[1]) ** 2).sum(-1).mean() / 2
    return Task("tiny", model, calib, calib, ["0", "2"], loss, lambda m: {}, {"0": 2048, "2": 256})


def test_weight_error_scores_each_candidate_with_its_own_quantizer():
    from bitalloc.sensitivity import get_estimator

    task = tiny_task()
    p = get_estimator("weight_error", bits=CANDS, group_size=32).estimate(task)
    assert p.bits == [4, 4, 4, 4, 8, 8] and p.formats == ["int4", "fp4_e2m1", "mxfp4", "nvfp4", "int8", "fp8_e4m3"]
    for i, layer in enumerate(task.layers):
        W = task.modules()[layer].weight.detach().numpy()
        for k, f in enumerate(p.formats):
            assert p.sensitivity[i, k] == pytest.approx(quantizer_for(f, 32).error(W), rel=1e-6)
    assert p.meta["group_size"] == 32 and p.meta["symmetric"] is False


@pytest.mark.parametrize("name, opts", [("fisher", {}), ("hessian", {"max_probes": 4}), ("salience", {}),
                                        ("salience", {"mode": "exact"}), ("measured", {}), ("lrp", {})])
def test_every_estimator_scores_mixed_candidates(name, opts):
    from bitalloc.sensitivity import get_estimator

    task = tiny_task(classify=name == "lrp")
    mixed = get_estimator(name, bits=CANDS, group_size=32, **opts).estimate(task)
    ints = get_estimator(name, bits=(4, 8), group_size=32, **opts).estimate(task)
    assert mixed.formats == ["int4", "fp4_e2m1", "mxfp4", "nvfp4", "int8", "fp8_e4m3"]
    np.testing.assert_allclose(mixed.sensitivity[:, [0, 4]], ints.sensitivity, rtol=1e-6)  # int columns unchanged
    assert np.isfinite(mixed.sensitivity).all()
    if name != "measured":  # error-weighted: 4-bit formats lose more than 8-bit ones, and differ from each other
        assert (mixed.sensitivity[:, 1:4] > mixed.sensitivity[:, [4]]).all()
        assert len(np.unique(mixed.sensitivity[0, :4])) == 4


def test_measured_cell_is_the_loss_with_that_format():
    torch = pytest.importorskip("torch")
    from bitalloc.sensitivity import get_estimator

    task = tiny_task()
    p = get_estimator("measured", bits=("mxfp4", "nvfp4"), group_size=32).estimate(task)
    base = task.mean_loss()
    w = task.model[0].weight
    orig = w.detach().clone()
    with torch.no_grad():
        w.copy_(torch.from_numpy(quantizer_for("nvfp4").fake_quant(orig.numpy())))
    try:
        assert p.sensitivity[0, 1] == pytest.approx(max(task.mean_loss() - base, 0.0), rel=1e-6, abs=1e-9)
    finally:
        with torch.no_grad():
            w.copy_(orig)


def test_profile_cli_candidates(tmp_path, capsys):
    from bitalloc.cli.app import main

    out = tmp_path / "p.json"
    rc = main(["profile", "--model", "digits-cnn", "--estimator", "weight_error", "--candidates", "int4,fp5_e2m2",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "--candidates" in err and "fp5_e2m2" in err and not out.exists()
    rc = main(["profile", "--model", "digits-cnn", "--estimator", "weight_error", "--candidates", "int4,int4",
               "--out", str(out)])
    assert rc == 2 and "appear once" in capsys.readouterr().err
