"""GGML tensor types (llama.cpp's runtime formats) as candidates: `q2_k` … `q8_0`.

Each candidate is the real encoder of that type, so a profile scores exactly what the GGUF file
will hold: the K-quants (Q2_K … Q6_K, 256 weights of one row per super-block) through
bitalloc.quant.kquants, the legacy types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, 32 weights per block)
through gguf-py's reference encoders (byte-identical to ggml's without an importance matrix),
decoded by gguf-py. Storage is exact: bytes per block × blocks (scales and minimums included).

| name | GGML type | element bits | weights per block | bytes per block | bits per weight |
|---|---|---|---|---|---|
| q2_k | Q2_K | 2 | 256 | 84  | 2.625  |
| q3_k | Q3_K | 3 | 256 | 110 | 3.4375 |
| q4_0 | Q4_0 | 4 | 32  | 18  | 4.5    |
| q4_1 | Q4_1 | 4 | 32  | 20  | 5.0    |
| q4_k | Q4_K | 4 | 256 | 144 | 4.5    |
| q5_0 | Q5_0 | 5 | 32  | 22  | 5.5    |
| q5_1 | Q5_1 | 5 | 32  | 24  | 6.0    |
| q5_k | Q5_K | 5 | 256 | 176 | 5.5    |
| q6_k | Q6_K | 6 | 256 | 210 | 6.5625 |
| q8_0 | Q8_0 | 8 | 32  | 34  | 8.5    |

Feasibility: a row (the input dimension, GGUF ne0) must hold a whole number of blocks; a unit
whose rows do not is scored `inf` (not allowed) for that type — never replaced by another type.
F16/F32 are the kept-float candidates `fp16`/`fp32` (alias `f16`/`f32`). The IQ types are not
offered: no encoder of them is available without llama.cpp's C library.

Importance (llama.cpp's imatrix, E[x_j²] per input column): `fake_quant(w, importance)` and
`encode_bytes(w, importance)` pass it to the K-quant encoders' scale search; the legacy types
ignore it (reference encoders).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitalloc.errors import bad

# name → (GGML type, element bits); blocks and bytes in bitalloc.quant.ggml_types.BLOCK
GGML_FORMATS = {"q2_k": ("Q2_K", 2), "q3_k": ("Q3_K", 3), "q4_0": ("Q4_0", 4), "q4_1": ("Q4_1", 4),
                "q4_k": ("Q4_K", 4), "q5_0": ("Q5_0", 5), "q5_1": ("Q5_1", 5), "q5_k": ("Q5_K", 5),
                "q6_k": ("Q6_K", 6), "q8_0": ("Q8_0", 8)}
KQUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


def format_of_type(qtype: str) -> str:
    """Candidate name of a GGML type: Q4_K → q4_k, F16 → fp16, F32 → fp32."""
    if qtype in ("F16", "F32"):
        return "fp" + qtype[1:]
    name = qtype.lower()
    if name not in GGML_FORMATS:
        raise bad("GGML type", qtype, f"allowed: {', '.join(t for t, _ in GGML_FORMATS.values())}, F16, F32")
    return name


def type_of_format(fmt: str) -> str | None:
    """GGML type a candidate format is stored as in a GGUF (q4_k → Q4_K, fp16 → F16, fp32 → F32),
    None for formats GGUF has no type for."""
    if fmt in GGML_FORMATS:
        return GGML_FORMATS[fmt][0]
    return {"fp16": "F16", "fp32": "F32", "bf16": "BF16"}.get(fmt)


@dataclass(frozen=True)
class GgmlType:
    """qtype: the GGML type name (Q4_K, Q5_0, ...)."""

    qtype: str
    rows_independent = True  # blocks along a row; the imatrix weight is per column, the same for every row

    def __post_init__(self):
        if self.qtype not in {t for t, _ in GGML_FORMATS.values()}:
            raise bad("GGML type", self.qtype, f"allowed: {', '.join(t for t, _ in GGML_FORMATS.values())}")

    @property
    def name(self) -> str:
        return self.qtype.lower()

    @property
    def bits(self) -> int:
        """Element bits (the candidate's nominal bit-width)."""
        return GGML_FORMATS[self.name][1]

    @property
    def block(self) -> int:
        from bitalloc.quant.ggml_types import BLOCK

        return BLOCK[self.qtype][0]

    @property
    def block_bytes(self) -> int:
        from bitalloc.quant.ggml_types import BLOCK

        return BLOCK[self.qtype][1]

    @property
    def bpw(self) -> float:
        """Bits per weight, block scales and minimums included."""
        return 8 * self.block_bytes / self.block

    def feasible(self, cols: int) -> bool:
        """Rows of `cols` weights hold a whole number of this type's blocks."""
        return int(cols) % self.block == 0

    def _check(self, w) -> np.ndarray:
        w = np.asarray(w, dtype=np.float32)
        if w.ndim != 2:
            raise bad("weight shape", w.shape, "must be 2-D (out_features, in_features)")
        if not self.feasible(w.shape[1]):
            raise bad(f"{self.qtype} row length", w.shape[1], f"must be a multiple of {self.block} weights")
        return w

    def encode_bytes(self, w, importance=None) -> np.ndarray:
        """`w: (rows, cols)` → uint8 (rows, cols / block · block bytes), the GGUF tensor data.
        importance: (cols,) E[x_j²] per input column (K-quants only; legacy types ignore it)."""
        w = self._check(w)
        if self.qtype in KQUANTS:
            from bitalloc.quant import kquants

            return kquants.encode(w, self.qtype, importance=importance)
        from gguf import GGMLQuantizationType
        from gguf.quants import quantize

        return quantize(w, GGMLQuantizationType[self.qtype])

    def decode_bytes(self, data: np.ndarray, cols: int) -> np.ndarray:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        return np.asarray(dequantize(data, GGMLQuantizationType[self.qtype]), dtype=np.float32).reshape(-1, cols)

    def fake_quant(self, w, importance=None) -> np.ndarray:
        """Encode and decode `w: (rows, cols)` with the real encoder; float32 of the same shape."""
        w = self._check(w)
        return self.decode_bytes(self.encode_bytes(w, importance), w.shape[1])

    def error(self, w, importance=None) -> float:
        d = self.fake_quant(w, importance) - np.asarray(w, dtype=np.float32)
        return float(np.einsum("ij,ij->", d, d, dtype=np.float64))

    def storage_bits(self, rows, cols):
        """Exact bits of a (rows, cols) tensor: rows · ceil(cols / block) blocks (numpy arrays
        allowed; float64). Infeasible shapes are priced as if padded; they are never allowed."""
        rows, cols = np.asarray(rows, dtype=np.float64), np.asarray(cols)
        return rows * -(-cols // self.block) * (8.0 * self.block_bytes)
