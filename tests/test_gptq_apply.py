"""GPTQ in apply and measured on the real small models: sequential inputs, output error below RTN on
every layer, levels on the grid, budgets from the packed weights, mixed bits, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bitalloc import Allocation
from bitalloc.apply.quantize import apply, capture_inputs
from bitalloc.quant.codec import decode_unit
from bitalloc.apply.sequential import layer_hessians
from bitalloc.cli.app import main
from bitalloc.quant.integer import quantizer_for
from bitalloc.quant.pack import read
from bitalloc.quant.quantizers import get_quantizer
from bitalloc.quant.quantizers.gptq import Cell
from bitalloc.verify.budgets import check_budgets

G = 32


def output_errors(task, bits=3):
    """Per layer ‖(W − Q)X‖ for GPTQ and RTN on the layer's calibration inputs (unquantized model)."""
    X = capture_inputs(task.model, task.layers, task.calib, task.loss)
    out = {}
    for name, mod in task.modules().items():
        W = mod.weight.detach().reshape(mod.weight.shape[0], -1).numpy()
        q = quantizer_for(f"int{bits}", G)
        g = q.decode(*get_quantizer("gptq").quantize(W, q, X[name]))
        err = lambda V: float(np.linalg.norm((W - V) @ X[name].T))  # noqa: E731
        out[name] = (err(g), err(q.fake_quant(W)))
    return out


def test_output_error_below_rtn_every_layer_digits(cnn):
    for name, (g, r) in output_errors(cnn).items():
        assert g < 0.9 * r, name


@pytest.mark.slow
def test_output_error_below_rtn_every_layer_minilm(minilm):
    errs = output_errors(minilm)
    assert len(errs) == 36
    for name, (g, r) in errs.items():
        assert g < 0.9 * r, name


def group_bits(task, seed=0, choices=(2, 3, 4, 8)):
    rng = np.random.default_rng(seed)
    return {u.name: int(rng.choice(choices)) for u in task.units("group", G)}


def test_apply_gptq_sequential_equals_layer_by_layer_reference(cnn):
    """Each layer quantized from the Hessian of its inputs in the already-quantized model."""
    bits = group_bits(cnn)
    saved = {k: v.clone() for k, v in cnn.model.state_dict().items()}
    q = apply(cnn.model, bits, "gptq", group_size=G, calib=cnn.calib, forward=cnn.loss)
    got = {n: cnn.model.get_submodule(n).weight.detach().clone() for n in cnn.layers}
    cnn.model.load_state_dict(saved)
    wq = get_quantizer("gptq")
    for name in cnn.layers:  # forward order
        mod = cnn.model.get_submodule(name)
        H = layer_hessians(cnn.model, [name], cnn.calib, cnn.loss)[name]
        units = [u for u in cnn.units("group", G) if u.layer == name]
        cells = [Cell(None, tuple(u.index), quantizer_for(f"int{bits[u.name]}", G)) for u in units]
        w_hat, _ = wq.quantize_layer(mod.weight.detach().reshape(mod.weight.shape[0], -1), cells, H)
        with torch.no_grad():
            mod.weight.copy_(torch.from_numpy(w_hat).reshape(mod.weight.shape))
        torch.testing.assert_close(got[name], mod.weight.detach(), rtol=0, atol=1e-6)
    assert len(q.codes) == len(bits)


def test_apply_gptq_grid_budgets_mixed_bits_and_packed_round_trip(cnn, tmp_path):
    bits = group_bits(cnn, seed=1)
    alloc = Allocation(bits=bits, status="feasible", solver="manual",
                       budgets={"avg_bits": float(np.mean(list(bits.values()))) + 1})
    before = cnn.quality(cnn.model)["loss"]
    q = apply(cnn.model, alloc, "gptq", group_size=G, calib=cnn.calib, forward=cnn.loss)
    settings = q.settings.to_json()
    mods = dict(cnn.model.named_modules())
    for c in q.codes:  # levels inside each unit's own bits, decoded weights = the model's weights
        r = c.record
        b = bits[r["name"]]
        assert r["bits"] == b and c.q.min() + r["offset"] >= 0 and c.q.max() + r["offset"] <= 2 ** b - 1
        W = mods[r["layer"]].weight.detach().reshape(mods[r["layer"]].weight.shape[0], -1).numpy()
        a, e = r["index"]
        np.testing.assert_array_equal(decode_unit(c, settings), W[:, a:e])
    two = [c for c in q.codes if c.record["bits"] == 2]
    assert two and max(int(c.q.max()) for c in two) == 3
    rep = check_budgets(q.packed(), cnn.model, alloc)
    assert rep.ok, rep.failures
    path = q.save(tmp_path / "q.safetensors")
    saved = {n: mods[n].weight.detach().clone() for n in cnn.layers}
    for n in cnn.layers:
        with torch.no_grad():
            mods[n].weight.zero_()
    read(path).load_into(cnn.model)
    for n in cnn.layers:
        assert torch.equal(saved[n], mods[n].weight.detach())
    assert read(path).settings["name"] == "gptq"
    assert cnn.quality(cnn.model)["loss"] < 3 * before + 0.5  # still a working model


def test_gptq_failure_restores_weights(cnn, monkeypatch):
    from bitalloc.quant.quantizers.gptq import GptqQuantizer

    before = {n: cnn.model.get_submodule(n).weight.detach().clone() for n in cnn.layers}
    calls = []

    def boom(self, w, cells, H):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return orig(self, w, cells, H)

    orig = GptqQuantizer.quantize_layer
    monkeypatch.setattr(GptqQuantizer, "quantize_layer", boom)
    with pytest.raises(RuntimeError):
        apply(cnn.model, {u.name: 3 for u in cnn.units("layer")}, "gptq", group_size=G, calib=cnn.calib, forward=cnn.loss)
    for n, w in before.items():
        assert torch.equal(w, cnn.model.get_submodule(n).weight.detach())


@pytest.mark.slow
def test_block_replay_equals_whole_model_runs(minilm, monkeypatch):
    """The transformer stack replayed block by block gives the same GPTQ as whole-model runs."""
    from bitalloc.apply import sequential

    saved = {k: v.clone() for k, v in minilm.model.state_dict().items()}
    bits = {u.name: 3 for u in minilm.units("layer")}
    a = apply(minilm.model, bits, "gptq", group_size=G, calib=minilm.calib, forward=minilm.loss)
    minilm.model.load_state_dict(saved)
    monkeypatch.setattr(sequential.Plan, "_replay_ok", lambda self, seen: False)
    b = apply(minilm.model, bits, "gptq", group_size=G, calib=minilm.calib, forward=minilm.loss)
    minilm.model.load_state_dict(saved)
    same = np.mean([np.mean(x.q == y.q) for x, y in zip(a.codes, b.codes)])
    assert same > 0.999


def test_measured_quantizer_gptq(cnn):
    from bitalloc.sensitivity import ESTIMATORS

    kw = dict(bits=(2, 4), granularity="channel", group_size=G, units="fc1:c1,fc1:c2,fc1:c3,fc1:c4")
    rtn = ESTIMATORS.create("measured", **kw).estimate(cnn)
    gptq = ESTIMATORS.create("measured", quantizer="gptq", **kw).estimate(cnn)
    assert gptq.meta["unit_quantizer"] == "gptq" and "GPTQ" in gptq.meta["quantizer"]
    assert gptq.names == rtn.names
    # compensation lowers the 2-bit loss increase summed over the units
    assert gptq.sensitivity[:, 0].sum() < rtn.sensitivity[:, 0].sum()


def test_quantize_unit_gptq_candidates_in_one_run_equal_separate_runs(cnn):
    from bitalloc.quant.quantizers.unit import quantize_unit

    mod = cnn.model.fc1
    W = mod.weight.detach().numpy()
    H = layer_hessians(cnn.model, ["fc1"], cnn.calib, cnn.loss)["fc1"]
    u = [x for x in cnn.units("group", G) if x.layer == "fc1"][1]
    quants = [quantizer_for(f"int{b}", G) for b in (2, 4)]
    together = quantize_unit(W, u, quants, "gptq", H)
    for q, t in zip(quants, together):
        alone = quantize_unit(W, u, [q], "gptq", H)[0]
        np.testing.assert_allclose(t, alone, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(t[:, :u.index[0]], W[:, :u.index[0]])  # earlier columns untouched
    rtn = quantize_unit(W, u, quants, "rtn")
    np.testing.assert_array_equal(u.block(rtn[0]), quants[0].fake_quant(u.block(W)))


def test_cli_apply_and_profile_with_gptq(cnn, tmp_path, capsys):
    bits = group_bits(cnn, seed=2)
    a = tmp_path / "a.json"
    Allocation(bits=bits, status="feasible", solver="manual", budgets={"avg_bits": 8}).save(a)
    q = tmp_path / "q.safetensors"
    assert main(["apply", "--model", "digits-cnn", "--allocation", str(a), "--group-size", str(G),
                 "--quantizer", "gptq", "--option", "act_order=true", "--samples", "64", "--out", str(q)]) == 0
    assert "gptq" in capsys.readouterr().out
    assert read(q).settings["options"] == {"act_order": True}
    assert main(["verify", "--model", "digits-cnn", "--packed", str(q), "--out", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["ok"]
    p = tmp_path / "p.json"
    assert main(["profile", "--model", "digits-cnn", "--estimator", "measured", "--quantizer", "gptq", "--bits", "2,4",
                 "--option", "units=fc2", "--out", str(p)]) == 0
    assert json.loads(p.read_text())["meta"]["unit_quantizer"] == "gptq"
    capsys.readouterr()
    assert main(["profile", "--model", "digits-cnn", "--estimator", "hessian", "--quantizer", "gptq", "--out", str(p),
                 "--force"]) == 2
    assert main(["profile", "--model", "digits-cnn", "--estimator", "measured", "--quantizer", "nope", "--out", str(p),
                 "--force"]) == 2
    err = capsys.readouterr().err
    assert "use --estimator measured" in err and "nope" in err
