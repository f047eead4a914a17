"""KV-cache bit allocation: kv units, fake-quant of the cached (post-RoPE) tensors, bytes per token,
the `kv` estimator on a tiny random Llama built here, profile → solve, and SmolLM2 under -m slow."""

import numpy as np
import pytest

from bitalloc import BitallocError, Constraint, Problem, Profile, solve
from bitalloc.cli.app import main
from bitalloc.hwcost.kv_memory import KVMemoryCost
from bitalloc.hwcost.memory import MemoryCost
from bitalloc.quant.kvcache import (KVQuantConfig, bits_per_token, cache_rows, encode_cache, fake_quant_cache, kv_quantized,
                              kv_units, plan_of, uniform_plan, unit_bits_per_token, verify_kv)
from bitalloc.quant.integer import IntQuant

from conftest import brute_force

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HEADS, KV_HEADS, HEAD_DIM, LAYERS, VOCAB = 4, 2, 16, 2, 96
E = KV_HEADS * HEAD_DIM  # cached elements per token per cache


def tiny_llama(seed: int = 0):
    """A 2-layer Llama (GQA: 4 query heads, 2 kv heads) with weights large enough for peaked attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
                      max_position_embeddings=256, initializer_range=0.15)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def task():
    from bitalloc.models.task import Task

    model = tiny_llama()
    g = torch.Generator().manual_seed(1)

    def batch():  # tokens and the unquantized model's next-token distribution on them
        ids = torch.randint(0, VOCAB, (2, 48), generator=g)
        with torch.no_grad():
            return ids, torch.log_softmax(model(input_ids=ids).logits, -1)

    calib, held = [batch(), batch()], [batch()]

    def loss(m, b):  # KL(unquantized || m): zero at the unquantized model, so every increase is real
        logp = torch.log_softmax(m(input_ids=b[0]).logits, -1)
        return torch.nn.functional.kl_div(logp, b[1], log_target=True, reduction="batchmean")

    def quality(m):
        with torch.no_grad():
            return {"kl": float(np.mean([float(loss(m, b)) for b in held]))}

    return Task("tiny-llama", model, calib, held, [], loss, quality, {}, meta={"model": "tiny-llama", "samples": 4})


@pytest.fixture(scope="module")
def kv_profile(task):
    from bitalloc.sensitivity import get_estimator

    return get_estimator("kv", bits=(2, 4, 8)).estimate(task)


def test_kv_units_one_per_cache_with_elements_per_token(task):
    units = kv_units(task.model)
    assert [u.name for u in units] == [f"model.layers.{i}.self_attn.{c}" for i in range(LAYERS) for c in ("k_cache", "v_cache")]
    assert all(u.kind == "kv" and u.n_params == E and u.shape == (1, E) and u.macs == HEADS * HEAD_DIM for u in units)
    assert [u.extra["grouping"] for u in units[:2]] == ["channel", "token"]  # KIVI default


def _reference(x: np.ndarray, bits: int, axis: str, g: int) -> np.ndarray:
    """IntQuant applied vector by vector: one channel's token series, or one token's channels (head-major)."""
    q = IntQuant(bits, g, symmetric=False, zero="float")
    out = np.empty_like(x)
    B, H, T, D = x.shape
    for b in range(B):
        if axis == "channel":
            for h in range(H):
                for d in range(D):
                    out[b, h, :, d] = q.fake_quant(x[b, h, :, d][None])[0]
        else:
            for t in range(T):
                out[b, :, t, :] = q.fake_quant(x[b, :, t, :].reshape(1, -1))[0].reshape(H, D)
    return out


def test_fake_quant_is_intquant_on_the_cached_post_rope_tensors(task, monkeypatch):
    import bitalloc.quant.kvcache as kvc

    model = task.model
    x = task.calib[0][0]
    with torch.no_grad():
        cache = model(input_ids=x, use_cache=True).past_key_values
    seen = []
    real = kvc.fake_quant_cache

    def record(t, fmt, axis, config):
        out = real(t, fmt, axis, config)
        seen.append((t.detach().clone(), fmt, axis, out.detach().clone()))
        return out

    monkeypatch.setattr(kvc, "fake_quant_cache", record)
    plan = {"model.layers.1.self_attn.k_cache": 2, "model.layers.1.self_attn.v_cache": 4}
    with torch.no_grad(), kv_quantized(model, plan):
        model(input_ids=x)
    assert [(f, a) for _, f, a, _ in seen] == [("int2", "channel"), ("int4", "token")]
    keys, values = cache.layers[1].keys, cache.layers[1].values
    for (inp, fmt, axis, out), cached, bits in zip(seen, (keys, values), (2, 4)):
        assert torch.equal(inp, cached)  # exactly what the cache holds: keys after RoPE
        ref = _reference(cached.numpy(), bits, axis, 32)
        np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-6)
        assert len(np.unique(ref[0, 0, :32, 0] if axis == "channel" else ref[0, 0, 0, :])) <= 2 ** bits


def test_more_bits_change_the_output_less_and_the_model_is_restored(task):
    model, x = task.model, task.calib[0][0]
    with torch.no_grad():
        base = model(input_ids=x).logits
        for cache in ("k_cache", "v_cache"):
            errs = []
            for b in (2, 4, 8, 16):
                with kv_quantized(model, {f"model.layers.0.self_attn.{cache}": b}):
                    errs.append(float((model(input_ids=x).logits - base).pow(2).mean()))
            assert errs[0] > errs[1] > errs[2] > errs[3] >= 0, (cache, errs)
            assert errs[2] < 1e-3 * errs[0]
        with pytest.raises(RuntimeError, match="boom"), kv_quantized(model, uniform_plan(kv_units(model), 2)):
            raise RuntimeError("boom")
        assert model.config._attn_implementation == "sdpa"
        assert torch.equal(model(input_ids=x).logits, base)


def test_bad_plans_fail_before_any_forward(task):
    with pytest.raises(BitallocError, match="k_cache or .v_cache"), kv_quantized(task.model, {"model.layers.0.self_attn": 4}):
        pass
    with pytest.raises(BitallocError, match="names no attention layer"), kv_quantized(task.model, {"model.layers.9.self_attn.k_cache": 4}):
        pass
    with pytest.raises(BitallocError, match="format"), kv_quantized(task.model, {"model.layers.0.self_attn.k_cache": "fp4_e9"}):
        pass
    with pytest.raises(BitallocError, match="key_axis"):
        KVQuantConfig(key_axis="head")


@pytest.mark.parametrize("tokens", [64, 100, 7])
@pytest.mark.parametrize("axis", ["token", "channel"])
@pytest.mark.parametrize("group,symmetric", [(32, False), (24, False), (16, True)])
def test_bits_per_token_counts_the_encoded_cache_exactly(tokens, axis, group, symmetric):
    cfg = KVQuantConfig(group_size=group, key_axis=axis, value_axis=axis, symmetric=symmetric,
                        zero="int" if symmetric else "float")
    x = torch.randn(1, KV_HEADS, tokens, HEAD_DIM)
    for bits in (2, 4, 8):
        q, scale, zero = encode_cache(x, f"int{bits}", axis, cfg)
        assert q.size == tokens * E and q.min() >= (-(2 ** (bits - 1)) if symmetric else 0)
        stored = q.size * bits + scale.size * cfg.scale_bits + (0 if symmetric else zero.size * cfg.zero_bits)
        exact = unit_bits_per_token(E, bits, True, axis, cfg, context=tokens) * tokens
        assert exact == pytest.approx(stored, abs=1e-9)
        assert np.array_equal(IntQuant(bits, group, symmetric, cfg.zero).decode(q, scale, zero),
                              cache_rows(fake_quant_cache(x, f"int{bits}", axis, cfg), axis))
        if tokens % group == 0:  # amortized = exact when the context is whole groups
            assert unit_bits_per_token(E, bits, True, axis, cfg) == pytest.approx(stored / tokens)
    assert unit_bits_per_token(E, 16, False, axis, cfg, context=tokens) == 16 * E


def test_kv_memory_cost_is_bytes_per_token_and_matches_memory_overhead(kv_profile):
    p = kv_profile
    C = KVMemoryCost().costs(p)
    cfg = KVQuantConfig.from_meta(p.meta)
    assert cfg == KVQuantConfig()  # the estimator recorded its grouping
    per_unit = np.array([E * b + (E // 32) * 32 for b in p.bits]) / 8  # 32 = fp16 scale + fp16 min
    assert np.allclose(C, per_unit[None, :])
    choice = np.array([0, 1, 2, 1])
    plan = {s: p.bits[k] for s, k in zip(p.names, choice)}
    assert KVMemoryCost().total(p, choice) == pytest.approx(bits_per_token(p.units, plan) / 8)
    # with group | elements per token, MemoryCost's overhead (what `solve --count-overhead` uses) agrees
    assert np.allclose(MemoryCost(count_overhead=True).costs(p) / 8, C)
    assert np.allclose(KVMemoryCost(count_overhead=False).costs(p), MemoryCost().costs(p) / 8)
    with pytest.raises(BitallocError, match="kind kv"):
        KVMemoryCost().costs(Profile.from_columns(["fc"], np.array([10]), [2, 4], np.ones((1, 2))))


def test_kv_estimator_scores_loss_and_attention_error(task, kv_profile):
    from bitalloc.sensitivity import get_estimator

    p = kv_profile
    assert p.names == [u.name for u in kv_units(task.model)] and p.kinds == ["kv"] * 4 and p.bits == [2, 4, 8]
    assert p.meta["estimator"] == "kv" and p.meta["forward_passes"] == 1 + 4 * 3
    A = np.array(p.extra["attention_error"])
    assert (np.diff(A, axis=1) < 0).all() and (A[:, 2] < 1e-3).all() and (A[:, 0] > 1e-3).all()
    assert (np.diff(p.sensitivity, axis=1) < 0).all() and p.meta["clipped"] == 0
    # the loss increase recomputed directly for one cell; the tiny task's loss is itself the KL to the
    # unquantized model summed over positions / batch, so it is the kl score times 48 positions per row
    L, D = np.array(p.extra["loss_increase"]), np.array(p.extra["kl"])
    assert np.array_equal(p.sensitivity, D) and p.meta["output_module"] == "lm_head"
    with kv_quantized(task.model, {p.names[2]: 2}):
        assert task.mean_loss() - p.meta["base_loss"] == pytest.approx(L[2, 0], rel=1e-6, abs=1e-9)
    assert np.allclose(L, 48 * D, rtol=1e-3, atol=1e-6)  # float32 sums in the task's kl_div
    # replaying the blocks before the cache's layer is exact
    full = get_estimator("kv", bits=(2, 4, 8), reuse_prefix=False).estimate(task)
    assert np.allclose(full.sensitivity, p.sensitivity, rtol=1e-5, atol=1e-12)
    assert np.allclose(full.extra["attention_error"], A, rtol=1e-6)
    # score=attention stops each pass after the layer and gives the same attention errors
    pa = get_estimator("kv", bits=(2, 4, 8), score="attention", units="*.1.*").estimate(task)
    assert pa.names == p.names[2:] and np.allclose(pa.sensitivity, A[2:], rtol=1e-9)
    # an fp16 cache is a candidate too (no scales: 16 bits per element)
    pf = get_estimator("kv", bits=(2, 16), units="*.0.self_attn.k_cache").estimate(task)
    assert pf.formats == ["int2", "fp16"] and pf.sensitivity[0, 1] < 1e-3 * pf.sensitivity[0, 0]
    assert KVMemoryCost().costs(pf)[0].tolist() == [(2 * E + E) / 8, 16 * E / 8]
    with pytest.raises(BitallocError, match="granularity"):
        get_estimator("kv", granularity="group")


def test_profile_round_trip_solve_and_verify(task, kv_profile, tmp_path):
    path = tmp_path / "kv.json"
    kv_profile.save(path)
    p = Profile.load(path)
    assert p.kinds == ["kv"] * 4 and p.extra["attention_error"] == kv_profile.extra["attention_error"]
    for budget in (3.0, 4.0, 5.5):
        a = solve(p, budget=budget)
        ref = brute_force(p, budgets=[budget])
        assert a.objective == pytest.approx(ref.best, abs=1e-12)
        assert a.avg_bits == pytest.approx(np.mean([a.bits[s] for s in p.names])) and a.avg_bits <= budget + 1e-9
    # bytes per token of cache (with scales) as the budget
    cost = KVMemoryCost()
    cap = float(cost.costs(p)[:, 1].sum())  # what uniform 4 bits costs
    a = solve(Problem(p, [Constraint(cost, cap)]))
    ref = brute_force(p, budgets=[cap], costs=[cost.costs(p)])
    assert a.objective == pytest.approx(ref.best, abs=1e-12) and a.totals["kv_bytes_per_token"] <= cap + 1e-9
    rows = verify_kv(task, plan_of(a))
    assert [r["plan"] for r in rows] == ["allocation", "uniform 2", "uniform 4", "uniform 8", "unquantized"]
    by = {r["plan"]: r for r in rows}
    kl = [by[k]["kl"] for k in ("uniform 2", "uniform 4", "uniform 8", "unquantized")]
    assert kl[0] > kl[1] > kl[2] > kl[3] == 0
    assert kl[2] < by["allocation"]["kl"] < kl[0]
    assert by["allocation"]["bytes_per_token"] == pytest.approx(a.totals["kv_bytes_per_token"])
    assert by["uniform 4"]["bits_per_element"] == 4 and by["unquantized"]["bits_per_element"] == 16


def test_kv_bytes_budget_reverified_from_the_packed_kv_records(task, kv_profile, tmp_path):
    """Solve under a kv_bytes_per_token budget and average bits, apply, verify: the KV bytes are
    recomputed by the rebuilt KVMemoryCost from the packed kv records (geometry from the model's
    config) and equal the solver's total; a lowered budget, a kv unit changed after the solve and
    a geometry the allocation was not solved for are each caught in one line."""
    import json

    import bitalloc
    from bitalloc.allocation import Allocation, constraints_digest
    from bitalloc.fileio import dumps
    from bitalloc.quant.pack import read
    from bitalloc.verify.budgets import check_budgets

    p = kv_profile
    cost = KVMemoryCost()
    cap = float(cost.costs(p)[:, 1].sum()) * 0.8  # below uniform 4 bits: a mix
    a = solve(Problem(p, [Constraint(cost, cap), Constraint(MemoryCost(), 4.0)]))
    assert a.ok and a.meta["kv_elements"] == dict.fromkeys(p.names, E) and a.meta["kv"] == KVQuantConfig().to_meta()
    a = Allocation.from_json(json.loads(dumps(a.to_json())))  # the stored form
    q = bitalloc.apply(task.model, a, inplace=False)
    assert q.codes == [] and len(q.kv["units"]) == 4
    pk = read(q.save(tmp_path / "kv.safetensors"))
    assert [(r["elements"], r["n_kv_heads"], r["head_dim"]) for r in pk.kv["units"]] == [(E, KV_HEADS, HEAD_DIM)] * 4
    assert [r["bits"] for r in pk.kv["units"]] == [a.bits[s] for s in p.names] and pk.kv["config"]["group_size"] == 32
    rep = check_budgets(pk, None, a)
    assert rep.ok, rep.failures
    got = {b["resource"]: b for b in rep.budgets}
    kvb = got["kv_bytes_per_token"]
    assert kvb["total"] == pytest.approx(a.totals["kv_bytes_per_token"], rel=1e-12) and kvb["total"] <= cap * (1 + 1e-12)
    assert kvb["source"] == "cost model kv_memory on the packed kv records (geometry from the model's config)"
    assert got["avg_bits"]["total"] == pytest.approx(a.avg_bits, rel=1e-12) and got["avg_bits"]["source"] == "packed tensors"
    report = bitalloc.verify(task, a)  # the whole path: apply, recheck, quality with the cache quantized
    assert report.ok, report.budget.failures
    assert report.quality[1]["name"].startswith("allocation") and report.quality[1]["kl"] > 0  # the cache quantized

    def failures(edit, rehash=True, packed=pk):
        d = json.loads(dumps(a.to_json()))
        edit(d)
        if rehash:
            d["constraints_sha256"] = constraints_digest(d["constraints"])
        return check_budgets(packed, None, Allocation.from_json(d)).failures

    def lower(d):  # the kv budget lowered in both copies (and re-hashed)
        d["budgets"]["kv_bytes_per_token"] = d["constraints"][0]["budget"] = a.totals["kv_bytes_per_token"] * 0.9
    f = failures(lower)
    assert len(f) == 1 and f[0].startswith("budget kv_bytes_per_token:") and " > " in f[0], f
    f = failures(lower, rehash=False)
    assert any("edited after the solve" in x for x in f) and any(x.startswith("budget kv_bytes_per_token:") for x in f), f

    low = next(s for s in p.names if a.bits[s] < 8)  # a kv unit raised to 8 bits after the solve, then applied
    d = json.loads(dumps(a.to_json()))
    d["bits"][low] = 8
    changed = Allocation.from_json(d)
    pk8 = bitalloc.apply(task.model, changed, inplace=False).packed()
    f = check_budgets(pk8, None, changed).failures
    assert any(x.startswith("budget kv_bytes_per_token: recomputed") and "the solver reported" in x for x in f), f
    f = check_budgets(pk8, None, a).failures  # the file against the allocation as solved
    assert f"kv unit {low}: recorded as int8 (8 bits), the allocation says int{a.bits[low]} ({a.bits[low]} bits)" in f, f

    def other_geometry(d):  # solved for caches of 64 elements per token, the model caches 32
        d["meta"]["kv_elements"][p.names[0]] = 64
    f = failures(other_geometry)
    assert f == [f"kv unit {p.names[0]}: the model caches {E} elements per token ({KV_HEADS} kv heads x {HEAD_DIM} "
                 "head_dim), the allocation was solved for 64"], f


def test_profile_cli_checks_kind_and_estimator(capsys, tmp_path):
    out = str(tmp_path / "p.json")
    assert main(["profile", "--model", "smollm2", "--out", out]) == 2
    assert "--estimator" in capsys.readouterr().err
    assert main(["profile", "--model", "smollm2", "--kind", "kv", "--estimator", "fisher", "--out", out]) == 2
    assert "kv estimator" in capsys.readouterr().err
    assert main(["profile", "--model", "smollm2", "--kind", "kv", "--bits", "2,4,4", "--out", out]) == 2


@pytest.mark.slow
def test_smollm2_kv_profile_solve_and_verify(tmp_path):
    """SmolLM2: profile 3 layers' caches through the CLI, solve at 3.25 bits, verify perplexity."""
    from bitalloc.zoo.demo import load_task

    out = tmp_path / "kv.json"
    assert main(["profile", "--model", "smollm2", "--kind", "kv", "--samples", "2", "--seq-len", "64",
                 "--option", "units=model.layers.0.*,model.layers.15.*,model.layers.29.*", "--out", str(out)]) == 0
    p = Profile.load(out)
    assert p.n_units == 6 and set(p.kinds) == {"kv"} and p.bits == [2, 4, 8]
    assert (p.n_params == 192).all() and p.meta["kv"]["key_axis"] == "channel"
    A = np.array(p.extra["attention_error"])
    assert (np.diff(A, axis=1) < 0).all()
    assert (p.sensitivity[:, 0] > p.sensitivity[:, 2]).all() and p.sensitivity[:, 0].min() > 1e-3  # kl
    assert main(["solve", "--profile", str(out), "--budget", "3.25", "--out", str(tmp_path / "a.json")]) == 0
    from bitalloc import Allocation

    a = Allocation.load(tmp_path / "a.json")
    assert a.avg_bits <= 3.25 and set(a.bits.values()) <= {2, 4, 8}
    task = load_task("smollm2", samples=1, seq_len=64, held_out=2)
    units = kv_units(task.model)
    assert len(units) == 60 and {u.n_params for u in units} == {192}
    plan = {**uniform_plan(units, 4), **plan_of(a)}
    rows = {r["plan"]: r for r in verify_kv(task, plan)}
    assert rows["uniform 2"]["perplexity"] > rows["uniform 4"]["perplexity"] > rows["uniform 8"]["perplexity"] * 0.999
    assert rows["uniform 8"]["perplexity"] == pytest.approx(rows["unquantized"]["perplexity"], rel=0.02)
