"""Importance matrix: Σ x_j² per input column of every linear, as llama.cpp's `llama-imatrix`.

Collected from the calibration pass the estimators use (`collect(task)`: one forward pass, the
same hooks as the salience estimator), it feeds the K-quant encoders' scale search (export
`imatrix=`, and GGML candidates scored by the salience estimator) and is written in llama.cpp's
formats so `llama-quantize --imatrix FILE` can take it:

- GGUF (what llama-imatrix writes by default, and what current llama-quantize reads first;
  tools/imatrix/imatrix.cpp `save_imatrix`, common/imatrix-loader.cpp): `general.type` =
  "imatrix", `imatrix.datasets` (array of strings), `imatrix.chunk_count` and
  `imatrix.chunk_size` (uint32); per weight tensor `<name>.in_sum2` (F32, ne = (cols, 1): the sum
  of squared inputs) and `<name>.counts` (F32, ne = (1, 1): how many input rows were summed).
  llama-quantize uses in_sum2 / counts.
- legacy `.dat` (`--output-format dat`; still read by llama-quantize when the file is not GGUF):
  int32 n_entries; per entry int32 name length, name bytes, int32 ncall, int32 nval, nval float32
  values = (sum / count) · ncall; then int32 chunk count, int32 dataset-name length and bytes.

Names are GGUF tensor names (`blk.3.ffn_down.weight`).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bitalloc.errors import BitallocError

GGUF_MAGIC = b"GGUF"


@dataclass
class Imatrix:
    """sums: tensor name → (cols,) float64 Σ x²; counts: tensor name → rows summed (tokens);
    chunk_size: tokens per chunk (sequence length); chunk_count: chunks seen; datasets: names."""

    sums: dict[str, np.ndarray]
    counts: dict[str, int]
    chunk_size: int = 0
    chunk_count: int = 0
    datasets: list[str] = field(default_factory=list)

    def means(self) -> dict[str, np.ndarray]:
        """tensor name → (cols,) float32 E[x²] (what llama-quantize passes to the encoders)."""
        return {n: (s / max(self.counts[n], 1)).astype(np.float32) for n, s in self.sums.items()}

    def write(self, path, fmt: str | None = None, force: bool = False) -> Path:
        """Write as `gguf` (default; also for a .gguf suffix) or `dat` (default for .dat), atomically."""
        from bitalloc.errors import bad
        from bitalloc.fileio import atomic_write

        fmt = fmt or ("dat" if str(path).endswith(".dat") else "gguf")
        if fmt not in ("gguf", "dat"):
            raise bad("imatrix format", fmt, "allowed: gguf, dat")
        data = self._gguf_bytes() if fmt == "gguf" else self._dat_bytes()
        return Path(atomic_write(path, data, force))

    def _dat_bytes(self) -> bytes:
        names = sorted(self.sums)
        out = [struct.pack("<i", len(names))]
        chunk = max(self.chunk_size, 1)
        for n in names:
            raw = n.encode()
            count = max(self.counts[n], 1)
            ncall = -(-count // chunk)
            vals = (self.sums[n] / count * ncall).astype("<f4")
            out += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, len(vals)), vals.tobytes()]
        dataset = (self.datasets[-1] if self.datasets else "").encode()
        out += [struct.pack("<i", self.chunk_count), struct.pack("<i", len(dataset)), dataset]
        return b"".join(out)

    def _gguf_bytes(self) -> bytes:
        import os
        import tempfile

        from gguf import GGUFWriter

        fd, tmp = tempfile.mkstemp(suffix=".gguf")
        os.close(fd)
        try:
            w = GGUFWriter(tmp, arch="", add_architecture=False) if _takes_add_arch() else GGUFWriter(tmp, "")
            w.add_string("general.type", "imatrix")
            w.add_array("imatrix.datasets", list(self.datasets) or ["bitalloc calibration"])
            w.add_uint32("imatrix.chunk_count", int(self.chunk_count))
            w.add_uint32("imatrix.chunk_size", int(self.chunk_size))
            for n in sorted(self.sums):
                w.add_tensor(f"{n}.in_sum2", self.sums[n].astype(np.float32).reshape(1, -1))
                w.add_tensor(f"{n}.counts", np.array([[float(self.counts[n])]], np.float32))
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
            return Path(tmp).read_bytes()
        finally:
            Path(tmp).unlink(missing_ok=True)


def _takes_add_arch() -> bool:
    import inspect

    from gguf import GGUFWriter

    return "add_architecture" in inspect.signature(GGUFWriter.__init__).parameters


def read_imatrix(path) -> Imatrix:
    """An imatrix file in either format (GGUF detected by its magic)."""
    p = Path(path)
    if not p.is_file():
        raise BitallocError(f"imatrix {str(p)!r}: no such file")
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
        return _read_gguf(p) if magic == GGUF_MAGIC else _read_dat(p)
    except BitallocError:
        raise
    except Exception as e:
        raise BitallocError(f"imatrix {str(p)!r}: cannot be read ({type(e).__name__}: {e})") from None


def _read_gguf(p: Path) -> Imatrix:
    from gguf import GGUFReader

    r = GGUFReader(str(p))
    tensors = {t.name: np.asarray(t.data, np.float64).reshape(-1) for t in r.tensors}
    sums, counts = {}, {}
    for name, v in tensors.items():
        if name.endswith(".in_sum2"):
            base = name[: -len(".in_sum2")]
            sums[base] = v
            counts[base] = int(round(float(tensors[base + ".counts"][0])))
    get = lambda k: int(r.fields[k].contents()) if k in r.fields else 0  # noqa: E731
    ds = r.fields["imatrix.datasets"].contents() if "imatrix.datasets" in r.fields else []
    return Imatrix(sums, counts, get("imatrix.chunk_size"), get("imatrix.chunk_count"), list(ds))


def _read_dat(p: Path) -> Imatrix:
    b = p.read_bytes()
    (n,), pos = struct.unpack_from("<i", b, 0), 4
    sums, counts = {}, {}
    for _ in range(n):
        (ln,) = struct.unpack_from("<i", b, pos)
        name = b[pos + 4: pos + 4 + ln].decode()
        pos += 4 + ln
        ncall, nval = struct.unpack_from("<ii", b, pos)
        pos += 8
        vals = np.frombuffer(b, "<f4", nval, pos).astype(np.float64)
        pos += 4 * nval
        sums[name], counts[name] = vals / max(ncall, 1), 1  # legacy files keep means, not sums
    chunks = struct.unpack_from("<i", b, pos)[0] if pos + 4 <= len(b) else 0
    return Imatrix(sums, counts, 0, chunks, [])
