"""Real calibration and evaluation data that ships with installed packages (nothing downloaded).

- Text: Python's own documentation topics (`pydoc_data.topics`), split by topic into disjoint
  calibration and held-out pools with a fixed seed.
- Images: scikit-learn's 8×8 handwritten digits, split into train and test with a fixed seed.
"""
from __future__ import annotations

import numpy as np


from bitalloc.models.data import HELD_OUT_FRACTION, pydoc_split, sentences, token_windows  # noqa: F401  (moved)


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
