"""GgufSizeCost: the exact size of the GGUF file `bitalloc export --format gguf` writes, in MiB.

Each unit at a candidate costs the bytes its tensor takes in the file: whole blocks of its GGML
type (`q4_k` …, scales and minimums included; `fp16`/`fp32` as F16/F32) padded to the file's
alignment (32). Everything else in the file — header, metadata (the allocation is recorded in
fixed-size fields), and the tensors outside the allocation (embeddings, norms), copied from the
source — is `fixed_bytes`, spread evenly over the units so that the total over any choice is
exactly Σ tensor bytes + fixed_bytes (each unit takes exactly one candidate). With `source` (a
GGUF) the fixed part is measured from it for the profile's units; the total then equals the
exported file's size to the byte.

Candidates that are not GGML types or kept floats (int4, mxfp4 …) have no fixed GGUF size: a
profile with them is refused by name. Feasibility (whole blocks per row) is the profile's: the
estimators score infeasible GGML types `inf`.
"""
from __future__ import annotations

import numpy as np

from bitalloc.errors import bad
from bitalloc.hwcost import register
from bitalloc.hwcost.base import CostModel

MIB = 2 ** 20


@register("gguf_size")
class GgufSizeCost(CostModel):
    """source: the GGUF the export starts from (None: fixed_bytes as given); fixed_bytes: bytes
    outside the allocated tensors; alignment: tensor data alignment of the file."""

    resource = "file_mib"
    unit = "MiB"

    def __init__(self, source=None, fixed_bytes: int | None = None, alignment: int = 32):
        if fixed_bytes is not None and (isinstance(fixed_bytes, bool) or not isinstance(fixed_bytes, int) or fixed_bytes < 0):
            raise bad("fixed_bytes", fixed_bytes, "must be a non-negative integer")
        if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment < 1:
            raise bad("alignment", alignment, "must be a positive integer")
        self.source, self.fixed_bytes, self.alignment = source, fixed_bytes, alignment
        self._fixed_for: dict[tuple, int] = {}

    def fixed(self, profile) -> int:
        """Bytes of the file outside the profile's units."""
        if self.source is None:
            return int(self.fixed_bytes or 0)
        key = tuple(profile.names)
        if key not in self._fixed_for:
            from bitalloc.export.gguf import fixed_bytes
            from bitalloc.export.names import gguf_names

            tensors = list(gguf_names(dict.fromkeys(profile.names, 0), "gguf_size").values())
            fixed, self.alignment = fixed_bytes(self.source, tensors)
            self._fixed_for[key] = fixed + int(self.fixed_bytes or 0)
        return self._fixed_for[key]

    def types(self, profile) -> list[str]:
        from bitalloc.quant.formats.ggml import type_of_format

        out = []
        for f in profile.format_objects:
            t = type_of_format(f.name)
            if t is None:
                raise bad("candidate format", f.name, "has no GGML type, so no file size: use GGML candidates "
                          "(q2_k, q3_k, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0, fp16, fp32)")
            out.append(t)
        return out

    def costs(self, profile) -> np.ndarray:
        from bitalloc.quant.ggml_types import BLOCK

        types = self.types(profile)
        fixed = self.fixed(profile)
        r, c = profile.rows.astype(np.int64), profile.cols.astype(np.int64)
        a = self.alignment
        C = np.empty((profile.n_units, len(types)))
        for k, t in enumerate(types):
            n, size = BLOCK[t]
            raw = r * -(-c // n) * size
            C[:, k] = -(-raw // a) * a
        return C + fixed / profile.n_units

    def scale(self, profile) -> float:
        return float(MIB)
