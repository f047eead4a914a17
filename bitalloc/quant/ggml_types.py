"""Which GGML tensor type holds a unit of a given bit-width, and what it costs.

| bits | rows of 256·k weights | rows of 32·k weights (fallback) | otherwise |
|---|---|---|---|
| 2  | Q2_K (2.625 bpw)  | Q4_0 (4.5)  | F16 |
| 3  | Q3_K (3.4375 bpw) | Q4_0 (4.5)  | F16 |
| 4  | Q4_K (4.5 bpw)    | Q4_0 (4.5)  | F16 |
| 5  | Q5_K (5.5 bpw)    | Q5_0 (5.5)  | F16 |
| 6  | Q6_K (6.5625 bpw) | Q8_0 (8.5)  | F16 |
| 8  | Q8_0 (8.5 bpw)    | Q8_0        | F16 |
| 16 | F16               | F16         | F16 |
| 32 | F32               | F32         | F32 |

K-quants pack 256 weights of one row per block, the legacy types 32, so a row length (the input
dimension, GGUF ne0) that is not a multiple of 256 cannot take a K-quant: GGML has no 2- or
3-bit type with 32-weight blocks, so such units fall back to Q4_0 — as llama-quantize does
(its own fallback also sends Q4_K to Q5_0 and Q5_K to Q5_1; the table above keeps the nearest
size instead). bpw counts the block scales and minimums. Units in the `mxfp4` number format
take GGML's MXFP4 (32-weight blocks, an E8M0 byte each: 4.25 bpw; F16 when the row does not fit).
"""
from __future__ import annotations

from bitalloc.errors import bad

TYPE_FOR_BITS: dict[int, tuple[str, ...]] = {
    2: ("Q2_K", "Q4_0"), 3: ("Q3_K", "Q4_0"), 4: ("Q4_K", "Q4_0"), 5: ("Q5_K", "Q5_0"),
    6: ("Q6_K", "Q8_0"), 8: ("Q8_0",), 16: ("F16",), 32: ("F32",),
}
# (weights per block, bytes per block), as gguf.constants.GGML_QUANT_SIZES (kept here so the
# text formats need not import gguf).
BLOCK = {"Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
         "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
         "MXFP4": (32, 17), "F16": (1, 2), "F32": (1, 4), "BF16": (1, 2)}


def bpw(qtype: str) -> float:
    """Bits per weight of a GGML type, block metadata included."""
    n, size = BLOCK[qtype]
    return 8 * size / n


def llama_name(qtype: str) -> str:
    """The type as ggml spells it (ggml_type_name): q4_K, q8_0, f16."""
    return qtype.lower().replace("_k", "_K")


def type_table(overrides: dict[int, str] | None = None) -> dict[int, tuple[str, ...]]:
    """TYPE_FOR_BITS with `overrides` (bits → type) put first, e.g. {4: "Q4_1"}."""
    table = dict(TYPE_FOR_BITS)
    for b, t in (overrides or {}).items():
        if t not in BLOCK:
            raise bad(f"type for {b} bits", t, f"allowed: {', '.join(BLOCK)}")
        table[b] = (t,) + tuple(x for x in table.get(b, ()) if x != t)
    return table


def choose(bits: int, row: int | None, table: dict[int, tuple[str, ...]]) -> tuple[str, bool]:
    """(type, fell_back) for a unit of `bits` whose rows hold `row` weights (None: unknown, take
    the first choice). Falls back along the table, then to F16."""
    if bits not in table:
        raise bad("bits", bits, f"GGUF export takes {', '.join(map(str, sorted(table)))}")
    choices = table[bits]
    if row is None:
        return choices[0], False
    for i, t in enumerate(choices):
        if row % BLOCK[t][0] == 0:
            return t, i > 0
    return "F16", True


def parse_type_map(text: str | None) -> dict[int, str]:
    """`4=Q4_1,2=Q2_K` → {4: 'Q4_1', 2: 'Q2_K'}."""
    out = {}
    for item in filter(None, (text or "").split(",")):
        b, sep, t = item.partition("=")
        if not sep or not b.strip().isdigit():
            raise bad("--type-map", item, "must be BITS=TYPE pairs, e.g. 4=Q4_1,6=Q6_K")
        out[int(b)] = t.strip().upper()
    return out
