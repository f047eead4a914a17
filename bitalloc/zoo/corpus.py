"""Real calibration and evaluation data that ships with installed packages (nothing downloaded).

- Text: Python's own documentation topics (`pydoc_data.topics`), split by topic into disjoint
  calibration and held-out pools with a fixed seed.
- Images: scikit-learn's 8×8 handwritten digits, split into train and test with a fixed seed.
"""
from __future__ import annotations

import random

import numpy as np

from bitalloc.errors import bad

HELD_OUT_FRACTION = 0.25


def pydoc_split(seed: int = 0) -> tuple[str, str]:
    """(calibration text, held-out text): topics shuffled with `seed`, the first 75 % for calibration."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    random.Random(seed).shuffle(keys)
    cut = int(len(keys) * (1 - HELD_OUT_FRACTION))
    join = lambda ks: "\n\n".join(topics[k] for k in sorted(ks))  # noqa: E731
    return join(keys[:cut]), join(keys[cut:])


def token_windows(ids: np.ndarray, n: int, seq_len: int, seed: int) -> np.ndarray:
    """(n, seq_len) int64 windows of a token stream at distinct random offsets (seeded)."""
    if n < 1:
        raise bad("samples", n, "must be at least 1")
    if seq_len < 2:
        raise bad("seq_len", seq_len, "must be at least 2")
    starts = np.arange(0, len(ids) - seq_len, seq_len)
    if len(starts) < n:
        raise bad("samples", n, f"the text holds only {len(starts)} windows of {seq_len} tokens")
    pick = np.sort(np.random.default_rng(seed).choice(starts, size=n, replace=False))
    return np.stack([ids[s:s + seq_len] for s in pick]).astype(np.int64)


def sentences(text: str, n: int, seed: int, min_chars: int = 40, max_chars: int = 400) -> list[str]:
    """`n` distinct paragraphs of `text` (blank-line separated, whitespace folded), seeded."""
    if n < 1:
        raise bad("samples", n, "must be at least 1")
    paras = sorted({" ".join(p.split()) for p in text.split("\n\n")})
    paras = [p[:max_chars] for p in paras if len(p) >= min_chars]
    if len(paras) < n:
        raise bad("samples", n, f"the text holds only {len(paras)} paragraphs")
    idx = np.random.default_rng(seed).choice(len(paras), size=n, replace=False)
    return [paras[i] for i in sorted(idx)]


def digits_split(seed: int = 0, test_fraction: float = 0.3):
    """(x_train, y_train, x_test, y_test): float32 images (n, 1, 8, 8) scaled to [0, 1], int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(len(y) * (1 - test_fraction))
    tr, te = order[:cut], order[cut:]
    return x[tr], y[tr], x[te], y[te]
