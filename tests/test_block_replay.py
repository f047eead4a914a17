"""Block replay for `measured` on a tiny random Llama: the same loss increase and KL as full
reruns of the task's loss, both scores in the profile, fallbacks and option checks."""

import numpy as np
import pytest

from bitalloc import BitallocError

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

VOCAB = 80


def tiny_llama_task(seed: int = 0, layers: int = 3, batches: int = 2, seq: int = 24):
    """A 3-block random Llama as a causal-LM Task (loss = the model's own next-token loss, with a
    DynamicCache as the default config makes), two calibration batches of 2 sequences."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from bitalloc.models.task import Task

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                      initializer_range=0.2)
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    calib = [torch.randint(0, VOCAB, (2, seq), generator=g) for _ in range(batches)]
    names = [f"model.layers.{i}.{m}" for i in range(layers) for m in
             ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    mods = dict(model.named_modules())

    def loss(m, b):
        return m(input_ids=b, labels=b).loss

    return Task("tiny-llama", model, calib, calib, names, loss, lambda m: {}, {n: mods[n].weight.numel() for n in names},
                meta={"model": "tiny-llama", "samples": 2 * batches})


@pytest.fixture(scope="module")
def task():
    return tiny_llama_task()


def _est(method, **kw):
    from bitalloc.sensitivity import get_estimator

    return get_estimator("measured", bits=(2, 3, 4, 8), group_size=16, method=method, **kw)


def test_block_replay_equals_full_rerun(task):
    units = ["model.layers.0.*", "model.layers.1.self_attn.v_proj", "model.layers.2.mlp.*"]  # first, middle, last block
    full = _est("full", units=units).estimate(task)
    rep = _est("replay", units=units, max_rows=100).estimate(task)  # 100 rows: 2 of the 4 candidates per stacked run
    assert rep.meta["method"] == "replay" and full.meta["method"] == "full"
    for key in ("loss_increase", "kl"):
        a, b = np.array(rep.extra[key]), np.array(full.extra[key])
        assert a.shape == (11, 4) and np.isfinite(a).all()
        assert np.abs(a).max() > 1e-3  # real, non-trivial effects
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(rep.sensitivity, full.sensitivity, rtol=1e-4, atol=2e-6)
    assert rep.meta["forward_equivalents"] < full.meta["forward_equivalents"]
    # the weights are restored exactly
    again = _est("replay", units=units).estimate(task)
    np.testing.assert_array_equal(again.sensitivity, rep.sensitivity)


def test_score_kl_is_the_sensitivity_and_loss_is_kept(task):
    p = _est("auto", score="kl", units=["model.layers.1.*"]).estimate(task)
    assert p.meta["method"] == "replay" and p.meta["score_kind"] == "kl" and p.n_units == 7
    np.testing.assert_allclose(p.sensitivity, np.maximum(np.array(p.extra["kl"]), 0))
    # more bits, less KL (the quantization error shrinks by ~2x per bit)
    assert (p.sensitivity[:, 0] > p.sensitivity[:, -1]).all()
    again = _est("auto", score="loss", units=["model.layers.1.*"]).estimate(task)
    np.testing.assert_allclose(np.array(again.extra["kl"]), np.array(p.extra["kl"]), rtol=1e-6, atol=1e-9)


def test_replay_falls_back_to_full_on_models_without_blocks(cnn):
    from bitalloc.sensitivity import get_estimator

    p = get_estimator("measured", bits=(2, 8), group_size=16, units=2).estimate(cnn)
    assert p.meta["method"] == "full" and "replay_unsupported" in p.meta and "kl" not in p.extra
    with pytest.raises(BitallocError, match="replay"):
        get_estimator("measured", bits=(2, 8), group_size=16, units=2, method="replay").estimate(cnn)
    with pytest.raises(BitallocError, match="score"):
        get_estimator("measured", bits=(2, 8), group_size=16, units=2, score="kl").estimate(cnn)


@pytest.mark.parametrize("opt", [{"method": "fast"}, {"score": "ppl"}, {"max_rows": 0}])
def test_bad_options_name_the_field(opt):
    from bitalloc.sensitivity import get_estimator

    with pytest.raises(BitallocError, match=next(iter(opt)).split("_")[0]):
        get_estimator("measured", **opt)


def test_local_scores_block_output_error(task):
    from bitalloc.sensitivity import get_estimator

    p = get_estimator("local", bits=(2, 4, 8), group_size=16).estimate(task)
    assert p.n_units == 21 and np.isfinite(p.sensitivity).all()
    assert (p.sensitivity[:, 0] > p.sensitivity[:, 1]).all() and (p.sensitivity[:, 1] > p.sensitivity[:, 2]).all()
    assert p.meta["forward_equivalents"] < 1 + 21 * 3 / 3  # one block of three per cell, plus the head share
    # by hand for one unit: quantize the weight and run the block
    from bitalloc.quant.integer import scorer_for
    mods = dict(task.model.named_modules())
    name = "model.layers.1.mlp.down_proj"
    w = mods[name].weight
    orig = w.detach().clone()
    caps = {}
    h = mods["model.layers.1"].register_forward_hook(lambda m, a, o: caps.setdefault("out", []).append(o.detach()))
    num = den = 0.0
    with torch.no_grad():
        for b in task.calib:
            task.model(input_ids=b)
        ref = caps.pop("out")
        w.copy_(torch.from_numpy(scorer_for("int2", 16, False, "int").fake_quant(orig.numpy())))
        for b in task.calib:
            task.model(input_ids=b)
        w.copy_(orig)
    h.remove()
    # the blocks before are unchanged, so the block's quantized output on the same input is caps["out"]
    for r, q in zip(ref, caps["out"]):
        num += float(((q - r) ** 2).sum())
        den += float((r ** 2).sum())
    assert p.sensitivity[p.index()[name], 0] == pytest.approx(num / den, rel=1e-4)


def test_hybrid_rescales_per_type():
    from bitalloc.sensitivity.hybrid import type_scales

    S = np.array([[1.0, 0.1], [2.0, 0.2], [1.0, 0.5]])
    M = np.array([[10.0, 1.0], [40.0, 4.0], [3.0, 0.0]])
    sc = type_scales(S, M, ["a", "a", "b"])
    np.testing.assert_allclose(sc["a"], [np.sqrt(10 * 20), np.sqrt(10 * 20)])
    np.testing.assert_allclose(sc["b"], [3.0, 3.0])  # the zero cell is skipped: falls back to the type mean


def test_hybrid_estimator_runs_and_keeps_base_ranking_within_type(task):
    from bitalloc.sensitivity import get_estimator
    from bitalloc.sensitivity.hybrid import layer_type

    base = get_estimator("weight_error", bits=(2, 4), group_size=16).estimate(task)
    p = get_estimator("hybrid", bits=(2, 4), group_size=16, base="weight_error", per_type=1).estimate(task, base_profile=base)
    assert p.meta["measured_cells"] == 7 * 2 and set(p.meta["scales"]) == {"q_proj", "k_proj", "v_proj", "o_proj",
                                                                             "gate_proj", "up_proj", "down_proj"}
    for t in p.meta["scales"]:
        rows = [i for i, n in enumerate(p.layers) if layer_type(n) == t]
        np.testing.assert_allclose(p.sensitivity[rows] / base.sensitivity[rows], np.tile(p.meta["scales"][t], (len(rows), 1)))
    with pytest.raises(BitallocError, match="base"):
        get_estimator("hybrid", base="measured")


def test_additivity_single_unit_allocation_is_exact(task):
    from bitalloc.report.additivity import evaluate, ilp_allocations, summary, uniform_allocations

    from bitalloc.sensitivity import get_estimator

    m = get_estimator("measured", bits=(2, 16), group_size=16, score="kl").estimate(task)
    one = np.ones(m.n_units, dtype=int)  # everything at fp16 (≈ lossless) ...
    one[4] = 0                           # ... except one unit at 2 bits
    rows = evaluate(task, m, [("one", one)] + uniform_allocations(m) + ilp_allocations(m, [8.0]))
    r = rows[0]
    assert r["real_kl"] == pytest.approx(r["predicted_kl"], rel=1e-3)
    assert r["real_loss"] == pytest.approx(r["predicted_loss"], rel=1e-3, abs=1e-6)
    assert rows[1]["avg_bits"] == 2 and rows[1]["real_kl"] > 10 * rows[2]["real_kl"]
    assert rows[3]["kind"] == "ilp" and rows[3]["avg_bits"] <= 8
    s = summary(rows, "kl")
    assert s["n"] == 4 and s["spearman"] > 0.5
    # the model is left unquantized
    np.testing.assert_allclose(task.mean_loss(), m.meta["base_loss"], rtol=1e-6)


def test_merged_shards_equal_one_run(task):
    from bitalloc.report.scorecard import measured_as, merge_measured

    one = _est("replay", score="kl", units=["model.layers.0.*", "model.layers.2.*"]).estimate(task)
    a = _est("replay", score="kl", units=["model.layers.0.*"]).estimate(task)
    b = _est("replay", score="kl", units=["model.layers.2.*"]).estimate(task)
    m = merge_measured([a, b])
    assert m.names == one.names
    np.testing.assert_allclose(m.sensitivity, one.sensitivity, rtol=1e-9)
    np.testing.assert_allclose(measured_as(m, "loss_increase").sensitivity,
                               np.maximum(np.array(one.extra["loss_increase"]), 0), rtol=1e-9, atol=1e-12)
    with pytest.raises(BitallocError, match="disjoint"):
        merge_measured([a, a])


def test_hybrid_reuses_given_measured_cells(task, monkeypatch):
    from bitalloc.sensitivity import get_estimator
    from bitalloc.sensitivity.hybrid import layer_type, type_scales
    from bitalloc.sensitivity.measured import MeasuredEstimator

    base = get_estimator("weight_error", bits=(2, 4), group_size=16).estimate(task)
    m = get_estimator("measured", bits=(2, 4), group_size=16, score="kl",
                      units=["model.layers.0.*", "model.layers.2.*"]).estimate(task)
    monkeypatch.setattr(MeasuredEstimator, "estimate", lambda *a, **k: pytest.fail("measured again"))
    p = get_estimator("hybrid", bits=(2, 4), group_size=16, base="weight_error", per_type=1).estimate(
        task, base_profile=base, measured_profile=m)
    picked = p.meta["measured_units"]
    assert len(picked) == 7 and all(n.startswith("model.layers.0.") for n in picked)
    rows = [base.index()[n] for n in picked]
    want = type_scales(base.sensitivity[rows], m.sensitivity[[m.index()[n] for n in picked]],
                       [layer_type(n) for n in picked])
    for t, v in want.items():
        np.testing.assert_allclose(p.meta["scales"][t], v)
