"""bitalloc's K-quant encoders against round-to-nearest and gguf's own encoders, in the same run.

    python benchmarks/export_kquants.py [--rows 576] [--cols 1536] [--smollm2]

For each K-quant: relative squared error ||decode(encode(W)) − W||² / ||W||² (decoded by the
`gguf` package), next to round-to-nearest of the same form and sub-block size with float32
scales (the baseline: ratio = K-quant / RTN), the nearest legacy type that `gguf` encodes
itself, and encode speed in millions of weights per second. Weights: Gaussian with 1 % outliers
(×8), and with --smollm2 the 30 ffn_down matrices of SmolLM2 (the only ones whose rows hold a
multiple of 256 weights; their source is Q4_1, so they sit on a 4-bit grid already).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from bitalloc.quant import kquants
from bitalloc.quant.ggml_types import bpw
from bitalloc.quant.integer import IntQuant

FORMS = {"Q2_K": (IntQuant(2, 16, zero="float"), "asym g16", None),
         "Q3_K": (IntQuant(3, 16, symmetric=True), "sym g16", "Q4_0"),
         "Q4_K": (IntQuant(4, 32, zero="float"), "asym g32", "Q4_0"),
         "Q5_K": (IntQuant(5, 32, zero="float"), "asym g32", "Q5_0"),
         "Q6_K": (IntQuant(6, 16, symmetric=True), "sym g16", "Q8_0")}


def rel(r, w):
    return float(np.sum((r.astype(np.float64) - w) ** 2) / np.sum(w.astype(np.float64) ** 2))


def rows(ws, qtype):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    rtn, form, legacy = FORMS[qtype]
    t = time.perf_counter()
    enc = [kquants.encode(w, qtype) for w in ws]
    secs = time.perf_counter() - t
    n = sum(w.size for w in ws)
    k = sum(rel(dequantize(q, GGMLQuantizationType[qtype]).reshape(w.shape), w) for q, w in zip(enc, ws)) / len(ws)
    r = sum(rel(rtn.fake_quant(w), w) for w in ws) / len(ws)
    leg = (sum(rel(dequantize(quantize(w, GGMLQuantizationType[legacy]), GGMLQuantizationType[legacy]).reshape(w.shape), w)
               for w in ws) / len(ws)) if legacy else float("nan")
    ratio = f"{k / r:.2f}" if r > 0 else "RTN exact"
    return f"| {qtype} | {bpw(qtype):.4g} | {k:.3e} | {form}: {r:.3e} | {ratio} | {legacy or '-'}: {leg:.3e} | {n / secs / 1e6:.2f} |"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=576)
    p.add_argument("--cols", type=int, default=1536)
    p.add_argument("--smollm2", action="store_true", help="also the 30 ffn_down matrices of SmolLM2")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((a.rows, a.cols)) * 0.02).astype(np.float32)
    w[rng.random(w.shape) < 0.01] *= 8
    sets = {"gaussian+outliers": [w]}
    if a.smollm2:
        from bitalloc.zoo.demo import gguf_linears, smollm2_gguf

        sets["smollm2 ffn_down"] = [x for name, _, x in gguf_linears(smollm2_gguf()) if name.endswith("down_proj")]
    head = ("| type | bpw | rel. error | RTN same form (baseline) | ratio | gguf legacy type | Mweights/s |\n"
            "|---|---|---|---|---|---|---|")
    for label, ws in sets.items():
        print(f"\n{label}: {len(ws)} matrix(es) of {ws[0].shape[0]}x{ws[0].shape[1]}\n{head}")
        for qtype in kquants.TYPES:
            print(rows(ws, qtype))


if __name__ == "__main__":
    main()
