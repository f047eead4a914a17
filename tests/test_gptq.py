"""GPTQ: equal to a slow reference, lower output error than RTN on real layers, on the grid, mixed bits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bitalloc.quant.integer import IntQuant
from bitalloc.quant.quantizers import get_quantizer
from bitalloc.quant.quantizers.gptq import Cell, hessian


def reference_gptq(W, H, bits, group, percdamp=0.01, order=None, symmetric=False, zero="int"):
    """The paper's OBS loop, unblocked, in float64: quantize column j (group scale/zero from the
    current weights when its group is first reached), move every remaining column by
    −err · H⁻¹[j, :] / H⁻¹[j, j], then remove j from H⁻¹ (H⁻¹ ← H⁻¹ − H⁻¹[:, j] H⁻¹[j, :] / H⁻¹[j, j]).
    bits: (rows, n_groups) bits per row and group."""
    W = np.array(W, dtype=np.float64)
    rows, cols = W.shape
    H = np.array(H, dtype=np.float64) + percdamp * np.mean(np.diag(H)) * np.eye(cols)
    Hinv = np.linalg.inv(H)
    order = np.arange(cols) if order is None else order
    S, Z, T = np.zeros((rows, cols)), np.zeros((rows, cols)), np.zeros((rows, cols))
    fitted = set()
    Q, L = np.zeros_like(W), np.zeros_like(W)
    for j in order:
        g = j // group
        if g not in fitted:
            fitted.add(g)
            cs = slice(g * group, min((g + 1) * group, cols))
            x, b = W[:, cs], bits[:, g][:, None].astype(np.float64)
            if symmetric:
                top = 2 ** (b - 1) - 1
                s = (np.abs(x).max(1, keepdims=True) / top).astype(np.float16).astype(np.float64)
                z = np.zeros_like(s)
            else:
                top = 2 ** b - 1
                lo, hi = x.min(1, keepdims=True), x.max(1, keepdims=True)
                if zero == "int":
                    lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
                s = ((hi - lo) / top).astype(np.float16).astype(np.float64)
                safe = np.where(s > 0, s, 1)
                z = lo.astype(np.float16).astype(np.float64) if zero == "float" else np.clip(np.rint(-lo / safe), 0, top)
            S[:, cs], Z[:, cs], T[:, cs] = s, z, top
        s, z, top = S[:, j], Z[:, j], T[:, j]
        safe = np.where(s > 0, s, 1)
        w = W[:, j]
        if symmetric:
            q = np.clip(np.rint(w / safe), -top - 1, top)
            d = q * s
        elif zero == "float":
            q = np.clip(np.rint((w - z) / safe), 0, top)
            d = q * s + z
        else:
            q = np.clip(np.rint(w / safe) + z, 0, top)
            d = (q - z) * s
        Q[:, j], L[:, j] = d, q
        err = (w - d) / Hinv[j, j]
        W -= np.outer(err, Hinv[j, :])
        Hinv = Hinv - np.outer(Hinv[:, j], Hinv[j, :]) / Hinv[j, j]
    return Q, L


def layer_data(seed=0, rows=24, cols=40, n=200):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(rows, cols))
    X = rng.normal(size=(n, cols)) @ rng.normal(size=(cols, cols)) * 0.3 + rng.normal(size=cols)  # correlated inputs
    return W, X, 2.0 / n * X.T @ X


@pytest.mark.parametrize("form", [dict(), dict(symmetric=True), dict(zero="float")])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("blocksize", [128, 7])
def test_equals_reference(form, act_order, blocksize):
    W, X, H = layer_data()
    group, bits = 16, 3
    q = IntQuant(bits, group, form.get("symmetric", False), form.get("zero", "int"))
    g = get_quantizer("gptq", act_order=act_order, blocksize=blocksize)
    w_hat, codes = g.quantize_layer(torch.from_numpy(W), [Cell(None, None, q)], torch.from_numpy(H))
    order = np.argsort(-np.diag(H), kind="stable") if act_order else None
    ref, ref_levels = reference_gptq(W, H, np.full((24, 3), bits), group, order=order, **form)
    lv, scale, zero = codes[0]
    np.testing.assert_array_equal(lv, ref_levels.astype(np.int32))
    np.testing.assert_allclose(w_hat, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(q.decode(lv, scale, zero), w_hat, rtol=1e-6, atol=1e-6)  # on the stored grid


def test_float32_close_to_reference():
    """float32 accumulators (the device default) pick the same levels almost everywhere."""
    W, X, H = layer_data(1)
    q = IntQuant(4, 16)
    w_hat, codes = get_quantizer("gptq").quantize_layer(W.astype(np.float32), [Cell(None, None, q)], H.astype(np.float32))
    _, ref_levels = reference_gptq(W, H, np.full((24, 3), 4), 16)
    assert (codes[0][0] == ref_levels).mean() > 0.98


def test_mixed_bits_inside_a_layer_match_reference():
    """Column groups at their own bits (group units), rows at their own bits (channel units)."""
    W, X, H = layer_data(2)
    group = 16
    gbits = [2, 4, 3]
    cells = [Cell(None, (a, min(a + group, 40)), IntQuant(b, group)) for a, b in zip(range(0, 40, group), gbits)]
    w_hat, codes = get_quantizer("gptq").quantize_layer(torch.from_numpy(W), cells, torch.from_numpy(H))
    ref, ref_levels = reference_gptq(W, H, np.tile(gbits, (24, 1)), group)
    np.testing.assert_allclose(w_hat, ref, rtol=1e-6, atol=1e-6)
    for c, (lv, _, _), b in zip(cells, codes, gbits):
        assert lv.min() >= 0 and lv.max() <= 2 ** b - 1
        assert lv.max() == 2 ** b - 1  # the level range is the cell's own
    rbits = np.array([2, 3, 4, 5, 8, 3] * 4)
    cells = [Cell((r, r + 1), None, IntQuant(int(b), group)) for r, b in enumerate(rbits)]
    w_hat, codes = get_quantizer("gptq").quantize_layer(torch.from_numpy(W), cells, torch.from_numpy(H))
    ref, _ = reference_gptq(W, H, np.tile(rbits[:, None], (1, 3)), group)
    np.testing.assert_allclose(w_hat, ref, rtol=1e-6, atol=1e-6)
    for (lv, _, _), b in zip(codes, rbits):
        assert lv.max() <= 2 ** b - 1


def test_kept_float_cells_absorb_the_error():
    """A kept-float group is not rounded: it takes the other columns' compensation instead."""
    W, X, H = layer_data(3)
    q = IntQuant(2, 16)
    cells = [Cell(None, (0, 16), q), Cell(None, (16, 40), None)]
    w_hat, codes = get_quantizer("gptq").quantize_layer(W, cells, H)
    assert codes[1] is None
    rtn = np.concatenate([q.fake_quant(W[:, :16]), W[:, 16:]], 1)
    err = lambda V: np.linalg.norm((W - V) @ X.T)  # noqa: E731
    assert err(w_hat) < 0.5 * err(rtn)


def test_gptq_beats_rtn_output_error_on_random_layer():
    W, X, H = layer_data(4, rows=64, cols=96, n=400)
    q = IntQuant(3, 32)
    _, codes = get_quantizer("gptq").quantize_layer(W, [Cell(None, None, q)], H)
    err = lambda V: np.linalg.norm((W - V) @ X.T)  # noqa: E731
    assert err(q.decode(*codes[0])) < 0.8 * err(q.fake_quant(W))


def test_options_validated():
    from bitalloc.errors import BitallocError

    for kw in (dict(blocksize=0), dict(percdamp=1.5), dict(act_order="yes")):
        with pytest.raises(BitallocError, match=next(iter(kw))):
            get_quantizer("gptq", **kw)
    with pytest.raises(BitallocError, match="exactly once"):
        get_quantizer("gptq").quantize_layer(np.zeros((4, 8)), [Cell(None, (0, 4), IntQuant(4, 4))], np.eye(8))
    with pytest.raises(BitallocError, match="integer grids"):
        from bitalloc.quant.integer import quantizer_for
        get_quantizer("gptq").quantize(np.ones((4, 32)), quantizer_for("mxfp4"), np.ones((5, 32)))


def test_hessian_of_inputs():
    X = np.random.default_rng(0).normal(size=(10, 3))
    np.testing.assert_allclose(hessian(X).numpy(), 2 / 10 * X.T @ X, rtol=1e-5)


def test_static_groups_use_the_unquantized_weights():
    """static_groups: every group's scale/zero from the unquantized weights (RTN's scales)."""
    W, X, H = layer_data(5)
    q = IntQuant(3, 16)
    _, codes = get_quantizer("gptq", act_order=True, static_groups=True).quantize_layer(W, [Cell(None, None, q)], H)
    _, scale, zero = q.encode(W)
    np.testing.assert_array_equal(codes[0][1], scale.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(codes[0][2], zero)


def test_dead_inputs_keep_their_weights_rounded():
    """An input that never fires (H_jj = 0) takes no compensation and is rounded to nearest."""
    W, X, H = layer_data(6)
    H[:, 5] = H[5, :] = 0
    q = IntQuant(4, 8)
    w_hat, _ = get_quantizer("gptq").quantize_layer(W, [Cell(None, None, q)], H)
    assert np.isfinite(w_hat).all()
    assert np.abs(w_hat[:, 5] - W[:, 5]).max() <= q.encode(W)[1].max() / 2 + 1e-3
