"""Rank agreement of an estimator with `measured`: the three views on hand-made profiles."""
import numpy as np
import pytest

from bitalloc import Profile
from bitalloc.report.scorecard import card_rows, markdown, rank_agreement

pytest.importorskip("scipy")


def _profile(S, layers):
    n = len(S)
    return Profile.from_columns([f"{layers[i]}:{i}" for i in range(n)], np.full(n, 10), [2, 4], np.array(S, float),
                                layers=layers)


def test_within_layer_agreement_separates_from_across_units():
    """Two layers of 4 channels. The estimator orders channels inside each layer exactly, but
    puts the layers at the wrong scale: within-layer Spearman is 1 while across units it is not."""
    layers = ["a"] * 4 + ["b"] * 4
    m_col = np.array([1, 2, 3, 4, 10, 20, 30, 40], float)
    measured = _profile(np.c_[m_col, m_col / 16], layers)
    e_col = np.array([100, 200, 300, 400, 1, 2, 3, 4], float)
    est = _profile(np.c_[e_col, e_col / 16], layers)
    r = rank_agreement(est, measured)
    assert r["spearman_within"] == pytest.approx(1.0)
    assert r["spearman_units"] < 0  # the layer order is reversed
    # reverse the channel order inside one layer: within drops to (1 + (-1)) / 2 = 0
    e2 = e_col.copy()
    e2[:4] = e2[:4][::-1]
    r2 = rank_agreement(_profile(np.c_[e2, e2 / 16], layers), measured)
    assert r2["spearman_within"] == pytest.approx(0.0)


def test_layer_granularity_has_no_within_column():
    measured = _profile(np.c_[np.arange(1, 6), np.arange(1, 6) / 16.0], [f"l{i}" for i in range(5)])
    r = rank_agreement(measured, measured)
    assert r["spearman_within"] is None and r["spearman_units"] == pytest.approx(1.0)  # undefined: null, not NaN
    assert "within layer" not in markdown(card_rows({"m": measured}, measured), "t")


def test_scorecard_plot_writes_a_png(tmp_path):
    from conftest import smollm_profile

    from bitalloc.report.scorecard import card_rows, plot

    measured, profiles = smollm_profile(0), {"a": smollm_profile(1), "b": smollm_profile(2)}
    path = tmp_path / "card.png"
    plot(card_rows(profiles, measured), profiles, measured, "synthetic", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temp file left
