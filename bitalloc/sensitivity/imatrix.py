"""The importance matrix (llama.cpp's imatrix) from a calibration pass: Σ x² per input column of
every layer that has a GGUF name. The file formats are in bitalloc/export/imatrix.py."""
from __future__ import annotations

import numpy as np

from bitalloc.export.imatrix import Imatrix


def collect(task, progress=None) -> Imatrix:
    """Σ x² per input column of every layer of `task` that has a GGUF name, over the calibration
    batches (one forward pass)."""
    from bitalloc.export.names import gguf_name
    from bitalloc.sensitivity.salience import input_moments

    stats = input_moments(task, full=False, progress=progress)
    sums, counts = {}, {}
    for layer, st in stats.items():
        g = gguf_name(layer)
        if g is None:
            continue
        sums[g] = st.diag.sum(0).cpu().numpy().astype(np.float64)
        counts[g] = int(st.n)
    seq = int(task.meta.get("seq_len", 0) or 0)
    return Imatrix(sums, counts, seq, len(task.calib) if not seq else -(-max(counts.values(), default=0) // seq),
                   [str(task.meta.get("calibration", task.name))])
