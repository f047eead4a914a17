"""Mixed number formats end to end on digits-cnn: an allocation whose units use integer,
per-group FP, OCP MX and NVFP4 formats applied, packed at each format's real storage (element
codes at the element bits; FP32 / E8M0 / E4M3 + FP32 scales) and verified from the weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bitalloc import Allocation
from bitalloc.apply.quantize import apply
from bitalloc.quant.pack import read
from bitalloc.quant.integer import format_info, quantizer_for
from bitalloc.verify.budgets import check_budgets

G = 32
FORMATS = ["int4", "fp4_e2m1", "mxfp4", "nvfp4", "fp8_e4m3", "fp6_e2m3", "mxfp8_e4m3", "int8"]


def mixed(task, seed=0):
    rng = np.random.default_rng(seed)
    fmts = {u.name: FORMATS[int(rng.integers(len(FORMATS)))] for u in task.units("channel", G)}
    fmts.update({"conv1:c0": "mxfp4", "conv1:c1": "nvfp4", "fc1:c0": "fp4_e2m1", "fc1:c1": "mxfp4", "fc1:c2": "nvfp4"})
    bits = {s: format_info(f).bits for s, f in fmts.items()}
    return Allocation(bits=bits, formats=fmts, status="feasible", solver="manual")


def test_mixed_format_allocation_applied_and_verified_from_the_weights(cnn, tmp_path):
    orig = {n: m.weight.detach().reshape(m.weight.shape[0], -1).numpy().copy() for n, m in cnn.modules().items()}
    alloc = mixed(cnn)
    q = apply(cnn.model, alloc, group_size=G, symmetric=True)
    fake = {k: v.clone() for k, v in cnn.model.state_dict().items()}
    path = q.save(tmp_path / "q.safetensors")
    pk = read(path)
    rep = check_budgets(pk, cnn.model)
    assert rep.ok, rep.failures
    # storage counted from the packed tensors is exactly each format's storage_bits, i.e. MemoryCost
    # with overhead (symmetric integers: an fp16 scale per group, no zero-point)
    n = rep.totals["n_params"]
    want = sum(quantizer_for(alloc.formats[u.name], G, symmetric=True).storage_bits(*u.shape) for u in cnn.units("channel", G))
    assert rep.totals["avg_bits_with_overhead"] * n == pytest.approx(want, rel=1e-12)
    assert rep.totals["memory_cost_avg_bits_with_overhead"] == pytest.approx(rep.totals["avg_bits_with_overhead"], rel=1e-12)
    assert rep.totals["avg_bits"] == pytest.approx(sum(alloc.bits[u.name] * u.n_params for u in cnn.units("channel", G)) / n)
    # each format's scales in their real storage form
    t = pk.tensors
    assert t["conv1:c0.scale"].dtype == np.uint8 and "conv1:c0.zero" not in t        # MX: E8M0
    assert t["fc1:c2.scale"].dtype == np.uint8 and t["fc1:c2.tscale"].dtype == np.float32  # NVFP4: E4M3 + FP32
    assert t["fc1:c0.scale"].dtype == np.float32 and t["fc1:c0.scale"].shape == (1, 512 // G)  # per-group FP32
    assert t["fc1:c1.q"].size == 512 * 4 // 8 and t["fc1:c1.scale"].size == 512 // 32
    assert t["fc1:c2.scale"].size == 512 // 16
    # minifloat units hold exactly their quantizer's fake-quantized weights (scales stored exactly)
    for name, m in cnn.modules().items():
        W = m.weight.detach().reshape(m.weight.shape[0], -1).numpy()
        for c in range(W.shape[0]):
            fmt = alloc.formats[f"{name}:c{c}"]
            if not fmt.startswith("int"):
                assert np.array_equal(W[c:c + 1], quantizer_for(fmt, G).fake_quant(orig[name][c:c + 1])), (name, c, fmt)
    # the file loads back into a fresh model as exactly the fake-quantized weights
    from bitalloc.zoo.demo import trained_digits_cnn

    fresh = trained_digits_cnn(0)
    pk.load_into(fresh)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, fake[k]), k
    assert pk.allocation["formats"] == alloc.formats


def test_mixed_format_verify_catches_extra_levels_and_storage(cnn):
    alloc = mixed(cnn, seed=1)
    q = apply(cnn.model, alloc, group_size=G, symmetric=True)
    pk = q.packed()
    with torch.no_grad():  # every value distinct in one MXFP4 block of 32
        cnn.model.fc1.weight[1, :32] += torch.linspace(0, 1e-3, 32)
    pk.tensors["fc1:c0.scale"] = np.concatenate([pk.tensors["fc1:c0.scale"], np.ones((1, 1), np.float32)], axis=1)
    msgs = " ".join(check_budgets(pk, cnn.model).failures)
    assert "fc1:c1: a block of 32 columns holds 32 distinct values > 2^4" in msgs
    assert "fc1:c0: fp4_e2m1 levels and scales take" in msgs


def test_nvfp4_scales_that_are_not_e4m3_times_a_tensor_scale_are_refused():
    from bitalloc import BitallocError
    from bitalloc.quant.pack import block_scale_tensors

    w = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
    qz = quantizer_for("nvfp4")
    _, scale, _ = qz.encode(w)
    t = qz.tensor_scale(w)
    assert set(block_scale_tensors("u", "nvfp4", scale, t)) == {"u.scale", "u.tscale"}
    with pytest.raises(BitallocError, match="E4M3 block scales"):
        block_scale_tensors("u", "nvfp4", scale * np.float32(1.01), t)
    with pytest.raises(BitallocError, match="E8M0"):
        block_scale_tensors("u", "mxfp4", np.full((1, 2), 0.3, np.float32))


def test_integer_only_quantizer_refuses_minifloat_formats_before_any_change(cnn):
    from bitalloc import BitallocError

    before = {k: v.clone() for k, v in cnn.model.state_dict().items()}
    with pytest.raises(BitallocError, match="dmmv searches integer grids only"):
        apply(cnn.model, mixed(cnn), "dmmv", group_size=G, calib=cnn.calib, forward=cnn.loss)
    for k, v in cnn.model.state_dict().items():
        assert torch.equal(v, before[k]), k
