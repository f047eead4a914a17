"""apply / pack / verify on real models: budgets recomputed from the weights, the packed file
round trip, over-budget and tampered allocations caught, bad input rejected in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bitalloc import Allocation, BitallocError
from bitalloc.apply.quantize import apply
from bitalloc.cli.app import main
from bitalloc.quant.pack import pack_levels, read, unpack_levels
from bitalloc.quant.integer import IntQuant
from bitalloc.quant.quantizers.base import WeightQuantizer
from bitalloc.verify.budgets import check_budgets, max_distinct_per_group, verify

G = 32  # group size used on the CNN (its smallest layer has 9 inputs per row, fc2 64)


# ---- bit packing --------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8, 11, 16])
def test_pack_levels_round_trip_and_size(bits):
    rng = np.random.default_rng(bits)
    for n in (1, 7, 8, 1001):
        q = rng.integers(0, 2**bits, size=n)
        data = pack_levels(q, bits)
        assert data.dtype == np.uint8 and data.size == -(-n * bits // 8)
        assert np.array_equal(unpack_levels(data, bits, n), q)
    with pytest.raises(BitallocError, match="does not fit"):
        pack_levels(np.array([2**bits]), bits)


# ---- digits-cnn ---------------------------------------------------------------------------


def channel_bits(task, seed=0, choices=(2, 3, 4, 8)):
    rng = np.random.default_rng(seed)
    return {u.name: int(rng.choice(choices)) for u in task.units("channel", G)}


def test_apply_quantizes_each_unit_at_its_own_bits(cnn):
    orig = {n: m.weight.detach().reshape(m.weight.shape[0], -1).numpy().copy() for n, m in cnn.modules().items()}
    bits = channel_bits(cnn)
    apply(cnn.model, bits, group_size=G)
    for name, m in cnn.modules().items():
        W = m.weight.detach().reshape(m.weight.shape[0], -1).numpy()
        for c in range(W.shape[0]):
            b = bits[f"{name}:c{c}"]
            row = W[c:c + 1]
            assert max_distinct_per_group(row, G) <= 2**b
            # the same grid the estimators score, up to the float16 rounding of the stored scales
            ref = IntQuant(b, G).fake_quant(orig[name][c:c + 1])
            assert np.abs(row - ref).max() <= 1e-3 * np.abs(orig[name][c]).max()  # float16: 2^-11 relative
        assert not np.array_equal(W, orig[name])


def test_budget_holds_from_the_weights_and_packed_file_round_trips(cnn, tmp_path):
    bits = channel_bits(cnn, seed=1)
    units = {u.name: u.n_params for u in cnn.units("channel", G)}
    expect = sum(b * units[s] for s, b in bits.items()) / sum(units.values())
    alloc = Allocation(bits=bits, status="feasible", solver="manual", budgets={"avg_bits": expect})
    q = apply(cnn.model, alloc, group_size=G)
    fake = {k: v.clone() for k, v in cnn.model.state_dict().items()}
    path = q.save(tmp_path / "q.safetensors")
    rep = check_budgets(read(path), cnn.model)
    assert rep.ok, rep.failures
    assert rep.totals["avg_bits"] == pytest.approx(expect, rel=1e-12)
    assert rep.totals["memory_cost_avg_bits"] == pytest.approx(expect, rel=1e-12)
    # with metadata: float16 scales + packed integer zeros, never more than MemoryCost's 16+16 per group
    groups = {s: -(-n // G) for s, n in units.items()}  # one row per channel unit, ragged last group
    meta_bits = sum(groups[s] * 16 + -(-groups[s] * b // 8) * 8 for s, b in bits.items())
    assert rep.totals["avg_bits_with_overhead"] * sum(units.values()) == pytest.approx(expect * sum(units.values()) + meta_bits)
    assert rep.totals["avg_bits_with_overhead"] <= rep.totals["memory_cost_avg_bits_with_overhead"]
    # the file loads back to exactly the fake-quantized weights, in a fresh model
    from bitalloc.zoo.demo import trained_digits_cnn

    fresh = trained_digits_cnn(0)
    read(path).load_into(fresh)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, fake[k]), k
    assert read(path).allocation["bits"] == bits


def test_over_budget_allocation_is_caught(cnn, tmp_path, capsys):
    bits = channel_bits(cnn, seed=2, choices=(4, 8))
    alloc = Allocation(bits=bits, status="optimal", solver="ilp", avg_bits=3.0, budgets={"avg_bits": 3.0})
    q = apply(cnn.model, alloc, group_size=G)
    rep = check_budgets(q.packed(), cnn.model, alloc)
    assert not rep.ok
    assert any(f.startswith("budget avg_bits:") and "> 3" in f for f in rep.failures), rep.failures
    # the CLI: table printed, report written, exit 1
    a = tmp_path / "a.json"
    alloc.save(a)
    out = tmp_path / "r.json"
    code = main(["verify", "--model", "digits-cnn", "--allocation", str(a), "--group-size", str(G), "--out", str(out)])
    assert code == 1
    assert "EXCEEDED" in capsys.readouterr().out
    assert json.loads(out.read_text())["ok"] is False


def test_tampered_weights_are_caught(cnn):
    bits = channel_bits(cnn, seed=3)
    q = apply(cnn.model, bits, group_size=G)
    with torch.no_grad():
        cnn.model.fc1.weight[5, :G] += torch.linspace(0, 1e-3, G)  # every value distinct in that group
    rep = check_budgets(q.packed(), cnn.model)
    msgs = " ".join(rep.failures)
    assert "fc1:c5" in msgs and f"{G} distinct values > 2^{bits['fc1:c5']}" in msgs
    assert "differ from the packed tensors" in msgs


def test_packed_bits_disagreeing_with_the_allocation_are_caught(cnn):
    bits = channel_bits(cnn, seed=4)
    q = apply(cnn.model, bits, group_size=G)
    other = dict(bits, **{"conv1:c0": 2 if bits["conv1:c0"] != 2 else 3})
    rep = check_budgets(q.packed(), cnn.model, Allocation(bits=other, status="feasible", solver="x"))
    assert any("conv1:c0: packed at" in f for f in rep.failures)


def test_verify_quality_and_baselines(cnn):
    rng = np.random.default_rng(5)
    bits = {u.name: int(rng.choice([3, 4])) for u in cnn.units("layer")}
    rep = verify(cnn, bits, group_size=G, baselines=True, seeds=3)
    names = [r["name"] for r in rep.quality]
    assert names[0] == "unquantized" and names[1].startswith("allocation")
    b = rep.budget_bits
    assert any(n == f"uniform {int(b)} bits" for n in names)
    rnd = rep.quality[-1]
    assert rnd["seeds"] == 3 and len(rnd["runs"]) == 3
    assert all(r["avg_bits"] <= b + 1e-9 for r in rnd["runs"])
    assert rnd["accuracy_min"] <= rnd["accuracy"] <= rnd["accuracy_max"]
    # verify leaves the model unquantized
    assert cnn.quality(cnn.model)["accuracy"] == rep.quality[0]["accuracy"]


class _InputsSeen(WeightQuantizer):
    """RTN that records the calibration inputs it was given."""

    name = "inputs-seen"
    needs_inputs = True

    def __init__(self):
        self.seen = {}

    def quantize(self, w, quant, X=None):
        self.seen[w.shape] = None if X is None else X.shape
        return quant.encode(w)


def test_quantizer_that_needs_inputs_gets_each_layers_inputs(cnn):
    wq = _InputsSeen()
    bits = {u.name: 4 for u in cnn.units("layer")}
    with pytest.raises(BitallocError, match="calib"):
        apply(cnn.model, bits, wq, group_size=G)
    apply(cnn.model, bits, wq, group_size=G, calib=cnn.calib, forward=cnn.loss, max_rows=100)
    assert wq.seen[(16, 9)] == (100, 9)  # conv1: 3x3 patches of 1 channel
    assert wq.seen[(32, 144)] == (100, 144)  # conv2: 3x3 patches of 16 channels
    assert wq.seen[(64, 512)] == (64, 512) and wq.seen[(10, 64)] == (64, 64)  # one row per image (64 images)


# ---- bad input ----------------------------------------------------------------------------
def test_bad_allocations_fail_in_one_line_before_any_change(cnn):
    before = cnn.model.fc1.weight.detach().clone()
    with pytest.raises(BitallocError, match="another model"):
        apply(cnn.model, {"encoder.layer.0.attention.self.query": 4}, group_size=G)
    with pytest.raises(BitallocError, match=r"partial: it covers 1 of the 64 units of layer 'fc1'; missing fc1:c1"):
        apply(cnn.model, {"fc1:c0": 4}, group_size=G)  # fc1 has 64 channels, only one given
    bits = channel_bits(cnn)
    bits["fc1:c3"] = 20
    with pytest.raises(BitallocError, match=r"fc1:c3.*20 bits.*1 to 16"):
        apply(cnn.model, bits, group_size=G)
    assert torch.equal(cnn.model.fc1.weight, before)


def test_cli_apply_verify_and_bad_input(cnn, tmp_path, capsys):
    bits = channel_bits(cnn, seed=6)
    a = tmp_path / "a.json"
    Allocation(bits=bits, status="feasible", solver="manual", budgets={"avg_bits": 8}).save(a)
    q = tmp_path / "q.safetensors"
    assert main(["apply", "--model", "digits-cnn", "--allocation", str(a), "--group-size", str(G), "--out", str(q)]) == 0
    assert main(["apply", "--model", "digits-cnn", "--allocation", str(a), "--out", str(q)]) == 2  # exists, no --force
    assert main(["verify", "--model", "digits-cnn", "--packed", str(q), "--out", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] and report["budgets"][0]["resource"] == "avg_bits"
    capsys.readouterr()
    # a flipped byte in the data, a truncated file, an allocation for another model, impossible bits
    raw = bytearray(q.read_bytes())
    raw[-5] ^= 0xFF
    (tmp_path / "flip.safetensors").write_bytes(bytes(raw))
    (tmp_path / "cut.safetensors").write_bytes(q.read_bytes()[:200])
    Allocation(bits={"model.layers.0.mlp.up_proj": 4}, status="feasible", solver="x").save(tmp_path / "llm.json")
    Allocation(bits=dict(bits, **{"conv2:c1": 20}), status="feasible", solver="x").save(tmp_path / "b20.json")
    cases = [(["verify", "--packed", str(tmp_path / "flip.safetensors")], "damaged"),
             (["verify", "--packed", str(tmp_path / "cut.safetensors")], "not a valid safetensors"),
             (["apply", "--allocation", str(tmp_path / "llm.json"), "--out", str(tmp_path / "o1.safetensors")], "another model"),
             (["apply", "--allocation", str(tmp_path / "b20.json"), "--group-size", str(G), "--out",
               str(tmp_path / "o2.safetensors")], "conv2:c1")]
    for argv, msg in cases:
        out = tmp_path / "r2.json"
        assert main([argv[0], "--model", "digits-cnn", *argv[1:]] + (["--out", str(out)] if argv[0] == "verify" else [])) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) <= 2 and msg in err[-1], err  # "loading ..." then the one-line error
        assert not out.exists()
    assert not (tmp_path / "o1.safetensors").exists() and not (tmp_path / "o2.safetensors").exists()


# ---- MiniLM -------------------------------------------------------------------------------
def test_minilm_group_allocation_budget_and_round_trip(tmp_path):
    from bitalloc.zoo.demo import load_task

    task = load_task("minilm", samples=4, held_out=16)
    units = task.units("group", 128)
    rng = np.random.default_rng(0)
    bits = {u.name: int(rng.choice([3, 4, 6])) for u in units}
    n = {u.name: u.n_params for u in units}
    avg = sum(b * n[s] for s, b in bits.items()) / sum(n.values())
    alloc = Allocation(bits=bits, status="feasible", solver="manual", budgets={"avg_bits": avg})
    rep = verify(task, alloc)
    assert rep.ok, rep.budget.failures
    assert rep.budget.totals["avg_bits"] == pytest.approx(avg, rel=1e-12)
    assert 0.8 < rep.quality[1]["cosine"] < rep.quality[0]["cosine"] == pytest.approx(1.0)
    q = apply(task.model, alloc)
    fake = {k: v.clone() for k, v in task.model.state_dict().items()}
    path = q.save(tmp_path / "m.safetensors")
    for layer in {u.layer for u in units}:  # scramble, then load the file back
        with torch.no_grad():
            task.modules()[layer].weight.zero_()
    read(path).load_into(task.model)
    assert all(torch.equal(v, fake[k]) for k, v in task.model.state_dict().items())
    over = Allocation(bits=bits, status="feasible", solver="manual", budgets={"avg_bits": avg - 0.01})
    assert not check_budgets(q.packed(), task.model, over).ok


# ---- SmolLM2 (slow) -----------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_end_to_end(tmp_path):
    import bitalloc
    from bitalloc.zoo.demo import load_task

    task = load_task("smollm2", samples=1, seq_len=128, held_out=2)
    alloc = bitalloc.solve(bitalloc.load_default_profile(), budget=3.25)
    q = apply(task.model, alloc, inplace=False)  # task.model stays unquantized for verify
    path = q.save(tmp_path / "q.safetensors")
    rep = check_budgets(read(path), q.model, alloc)
    assert rep.ok, rep.failures
    assert rep.totals["avg_bits"] <= 3.25 and rep.totals["avg_bits_with_overhead"] < 3.25 + 0.3
    ppl_alloc = task.quality(q.model)["perplexity"]
    del q
    report = verify(task, alloc, packed=path)
    assert report.ok and report.quality[1]["perplexity"] == pytest.approx(ppl_alloc, rel=1e-6)
    uniform3 = verify(task, {n: 3 for n in alloc.bits}).quality[1]["perplexity"]
    assert report.quality[0]["perplexity"] < ppl_alloc < uniform3


def test_dmmv_quantizer_through_apply_lowers_worst_output_error(cnn):
    """`apply(..., quantizer="dmmv", calib=...)`: the DMMV levels stay on the 3-bit grid and fc1's
    worst output error on the calibration inputs falls below round-to-nearest's."""
    bits = {name: 3 for name in cnn.layers}
    x = torch.cat([b[0] for b in cnn.calib])
    fc1 = cnn.modules()["fc1"]
    captured = {}
    h = fc1.register_forward_hook(lambda m, i, o: captured.__setitem__("x", i[0].detach()))
    cnn.model(x)
    h.remove()
    X, W = captured["x"], fc1.weight.detach().clone()

    def worst(Wq):
        return float(((X @ (Wq - W).T).abs()).max())

    saved = {k: v.clone() for k, v in cnn.model.state_dict().items()}
    apply(cnn.model, bits, group_size=G)
    rtn = worst(fc1.weight.detach())
    cnn.model.load_state_dict(saved)
    q = apply(cnn.model, bits, "dmmv", group_size=G, calib=[x])
    assert worst(fc1.weight.detach()) < rtn  # DMMV lowers the worst case on the inputs it saw
    assert max_distinct_per_group(fc1.weight.detach().numpy(), G) <= 2**3
    assert len(q.codes) == len(bits)


def test_a_solved_allocations_bits_mapping_is_accepted_as_an_allocation():
    """A solver's Allocation.bits is a read-only mapping over arrays (not a dict): apply takes it."""
    import bitalloc
    from bitalloc.apply.quantize import as_allocation
    from bitalloc.columns import UnitMap

    alloc = bitalloc.solve(bitalloc.load_default_profile(), budget=3.5)
    assert isinstance(alloc.bits, UnitMap)
    again = as_allocation(alloc.bits)
    assert dict(again.bits.items()) == dict(alloc.bits.items())
