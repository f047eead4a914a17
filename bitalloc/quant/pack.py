"""The packed file: a quantized model's integer levels, scales and zeros in one safetensors file.

Per quantized unit `U` (a layer, `layer:gN` or `layer:cN`):
- `U.q`: uint8, the unit's levels (row-major over its 2-D block) packed at `bits` bits each,
  little-endian bit order, the last byte zero-padded; signed levels are stored offset by
  2^(bits−1) (the unit's `offset` in the metadata);
- `U.scale`: float16 (rows, n_groups), one scale per group of `group_size` input columns;
- `U.zero`: an integer zero-point packed like the levels at `bits` bits (uint8), or a float
  minimum as float16 (rows, n_groups); absent for symmetric quantizers;
- `U.weight`: float16 (rows, cols) instead of the three above for a unit kept in floating point.
Minifloat formats (bitalloc/formats) store their element codes in `U.q` the same way (at the
element bits) and their scales in the format's own storage form, with no `U.zero`: per-group FP
`U.scale` float32; OCP MX `U.scale` uint8 E8M0 (the power-of-two exponent + 127); NVFP4 `U.scale`
uint8 E4M3 codes of the block scales and `U.tscale` the (1,) float32 tensor scale. So the bytes
of a unit's tensors are exactly its format's `storage_bits` (see `block_scale_tensors`).

Metadata (all strings): `format` = `bitalloc.packed/1`, `allocation` (the allocation JSON),
`quantizer` (name, options, group_size, symmetric, zero), `units` (one record per unit: name,
layer, n_params, macs, shape, index, axis, bits, format, offset), and `sha256` over every tensor's
bytes in name order, so a flipped byte is caught on load; and, when the allocation has KV-cache
units, `kv`: their formats, the cache geometry from the model's config and the KV quantization
settings (bitalloc/apply/kv.py), from which `verify` recomputes the KV bytes per token. Only the quantized layers are stored:
the file loads back into the same architecture (`PackedModel.load_into(model)`).
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitalloc.errors import BitallocError
from bitalloc.quant.codec import UnitCode, record_format, write_weights

FORMAT = "bitalloc.packed/1"
SCALE_DTYPE = np.float16  # 16 scale bits per group, MemoryCost's default


def pack_levels(q: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned integer levels `q` (any shape, each in [0, 2^bits)) → (ceil(n·bits/8),) uint8."""
    flat = np.asarray(q).reshape(-1).astype(np.uint32)
    if flat.size and int(flat.max()) >> bits:
        raise BitallocError(f"level {int(flat.max())} does not fit in {bits} bits")
    if bits == 8:
        return flat.astype(np.uint8)
    planes = ((flat[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_levels(data: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of `pack_levels`: (n,) int32 levels."""
    if data.dtype != np.uint8 or data.ndim != 1 or data.size != -(-n * bits // 8):
        raise BitallocError(f"packed levels: {data.size} bytes of {data.dtype}, expected "
                            f"{-(-n * bits // 8)} uint8 bytes for {n} levels of {bits} bits")
    if bits == 8:
        return data.astype(np.int32)
    planes = np.unpackbits(data, bitorder="little", count=n * bits).reshape(n, bits).astype(np.int32)
    return planes @ (1 << np.arange(bits, dtype=np.int32))


def tensors_of(codes: list[UnitCode], settings: dict) -> dict[str, np.ndarray]:
    """The file's tensors for `codes` (see the module docstring)."""
    out: dict[str, np.ndarray] = {}
    for c in codes:
        n = c.name
        if c.weight is not None:
            out[f"{n}.weight"] = np.ascontiguousarray(c.weight, dtype=np.float16)
            continue
        out[f"{n}.q"] = pack_levels(c.q + int(c.record.get("offset", 0)), c.bits)
        if is_block_float(c.format):
            out.update(block_scale_tensors(n, c.format, c.scale, c.tensor_scale))
            continue
        out[f"{n}.scale"] = np.ascontiguousarray(c.scale, dtype=SCALE_DTYPE)
        if c.zero is not None:
            if settings.get("zero") == "int":
                out[f"{n}.zero"] = pack_levels(np.rint(c.zero).astype(np.int64), c.bits)
            else:
                out[f"{n}.zero"] = np.ascontiguousarray(c.zero, dtype=SCALE_DTYPE)
    return out


def digest(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(np.ascontiguousarray(tensors[k]).tobytes())
    return h.hexdigest()


def to_bytes(codes: list[UnitCode], settings: dict, allocation: dict, kv: dict | None = None) -> bytes:
    """The packed safetensors file as bytes. kv: the allocation's kv-cache units and settings
    (apply/kv.py), stored as metadata `kv` when there are any."""
    from safetensors.numpy import save

    tensors = tensors_of(codes, settings)
    meta = {"format": FORMAT, "allocation": json.dumps(allocation), "quantizer": json.dumps(settings),
            "units": json.dumps([c.record for c in codes]), "sha256": digest(tensors)}
    if kv:
        meta["kv"] = json.dumps(kv)
    return save(tensors, metadata=meta)


@dataclass
class PackedModel:
    """A packed file read back. codes: one UnitCode per unit (levels unpacked, scales float32);
    tensors: the raw tensors as stored (their byte sizes are what `verify` counts);
    settings: the quantizer settings; allocation: the allocation JSON; path: where it came from;
    kv: the kv-cache units with their geometry and the KV quantization settings (apply/kv.py), or
    None when the allocation has no kv units."""

    codes: list[UnitCode]
    tensors: dict[str, np.ndarray]
    settings: dict
    allocation: dict
    path: str = ""
    kv: dict | None = None

    def load_into(self, model) -> None:
        """Write each unit's decoded (fake-quantized) weights into `model`'s layers, in place."""
        write_weights(model, self.codes, self.settings)


def read(path) -> PackedModel:
    """Read and check a packed file; any damage is a one-line BitallocError."""
    p = Path(path)
    where = f"packed file {str(p)!r}"
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise BitallocError(f"{where}: no such file") from None
    except OSError as e:
        raise BitallocError(f"{where}: cannot be read ({e.strerror})") from None
    meta = _header_metadata(raw, where)
    from safetensors.numpy import load

    try:
        tensors = load(raw)
    except Exception as e:  # safetensors raises its own error types on a damaged file
        raise BitallocError(f"{where}: not a valid safetensors file ({type(e).__name__}: {str(e)[:80]})") from None
    if meta.get("format") != FORMAT:
        raise BitallocError(f"{where}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if digest(tensors) != meta.get("sha256"):
        raise BitallocError(f"{where}: the tensors do not match the file's sha256 (the file is damaged)")
    try:
        settings = json.loads(meta["quantizer"])
        allocation = json.loads(meta["allocation"])
        records = json.loads(meta["units"])
        codes = [_decode_unit(r, tensors, settings) for r in records]
        kv = _kv_metadata(meta["kv"]) if "kv" in meta else None
    except BitallocError as e:
        raise BitallocError(f"{where}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise BitallocError(f"{where}: malformed metadata ({type(e).__name__}: {str(e)[:80]})") from None
    return PackedModel(codes, tensors, settings, allocation, str(p), kv)


KV_RECORD_KEYS = ("name", "layer", "cache", "bits", "format", "elements", "n_kv_heads", "head_dim", "macs")


def _kv_metadata(text: str) -> dict:
    """The `kv` metadata, checked: {"config": {...}, "units": [records with KV_RECORD_KEYS]}."""
    kv = json.loads(text)
    if not isinstance(kv, dict) or not isinstance(kv.get("config"), dict) or not isinstance(kv.get("units"), list):
        raise BitallocError("kv metadata: must be {config, units}")
    for r in kv["units"]:
        if not isinstance(r, dict) or not set(KV_RECORD_KEYS) <= set(r):
            raise BitallocError(f"kv metadata: unit record {str(r)[:60]} must have {', '.join(KV_RECORD_KEYS)}")
    return kv


def _header_metadata(raw: bytes, where: str) -> dict:
    if len(raw) < 8:
        raise BitallocError(f"{where}: not a valid safetensors file (too short)")
    (n,) = struct.unpack("<Q", raw[:8])
    try:
        header = json.loads(raw[8:8 + n])
        meta = header.get("__metadata__", {})
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise BitallocError(f"{where}: not a valid safetensors file (unreadable header)") from None
    if not isinstance(meta, dict):
        raise BitallocError(f"{where}: not a valid safetensors file (metadata is not an object)")
    return meta


def _decode_unit(r: dict, tensors: dict, settings: dict) -> UnitCode:
    name, bits = r["name"], int(r["bits"])
    rows, cols = (int(x) for x in r["shape"])
    if f"{name}.weight" in tensors:
        w = tensors[f"{name}.weight"]
        if w.shape != (rows, cols):
            raise BitallocError(f"unit {name!r}: weight of shape {w.shape}, expected {(rows, cols)}")
        return UnitCode(r, weight=w)
    for part in ("q", "scale"):
        if f"{name}.{part}" not in tensors:
            raise BitallocError(f"unit {name!r}: tensor {name}.{part} is missing")
    q = unpack_levels(tensors[f"{name}.q"], bits, rows * cols).reshape(rows, cols) - int(r.get("offset", 0))
    fmt = record_format(r)
    if is_block_float(fmt):
        scale, t = read_block_scales(name, fmt, tensors)
        if scale.ndim != 2 or scale.shape[0] != rows:
            raise BitallocError(f"unit {name!r}: scale of shape {scale.shape} does not fit {rows} rows")
        return UnitCode(r, q=q, scale=scale, tensor_scale=t)
    scale = tensors[f"{name}.scale"].astype(np.float32)
    if scale.ndim != 2 or scale.shape[0] != rows:
        raise BitallocError(f"unit {name!r}: scale of shape {scale.shape} does not fit {rows} rows")
    zero = None
    if not settings.get("symmetric"):
        z = tensors.get(f"{name}.zero")
        if z is None:
            raise BitallocError(f"unit {name!r}: tensor {name}.zero is missing")
        if settings.get("zero") == "int":
            zero = unpack_levels(z, bits, scale.size).reshape(scale.shape).astype(np.float32)
        else:
            zero = z.astype(np.float32)
        if zero.shape != scale.shape:
            raise BitallocError(f"unit {name!r}: zero of shape {zero.shape}, expected {scale.shape}")
    return UnitCode(r, q=q, scale=scale, zero=zero)


def is_block_float(fmt) -> bool:
    """True for the minifloat formats (per-group FP, OCP MX, NVFP4), whose scales are stored in
    their own form (see the module docstring); False for integers and kept floats. fmt: a Format
    object (`UnitCode.format`, `Allocation.format_of`) or a label; a format bitalloc does not know
    (an unknown label, an `external` object) is a one-line error."""
    from bitalloc.quant.formats.spec import parse_format, require

    return require(parse_format(fmt), "its storage").family in ("fp", "mx", "nvfp4")


def block_scale_tensors(name: str, fmt, scale: np.ndarray, tensor_scale=None) -> dict[str, np.ndarray]:
    """The stored scale tensors of a minifloat unit: `scale` (rows, n_blocks) float32 as the
    quantizer made it; tensor_scale: NVFP4's FP32 per-tensor scale. Raises if a scale is not
    exactly representable in the format's storage form (the file must decode to the same weights)."""
    from bitalloc.quant.formats.minifloat import E4M3
    from bitalloc.quant.formats.mx import E8M0_MAX, E8M0_MIN
    from bitalloc.quant.integer import format_family

    scale = np.asarray(scale, dtype=np.float32)
    fam = format_family(fmt)
    if fam == "fp":
        return {f"{name}.scale": np.ascontiguousarray(scale)}
    if fam == "mx":
        m, e = np.frexp(scale)  # 2^k = 0.5 · 2^(k+1)
        k = e.astype(np.int64) - 1
        if not (np.all(m == 0.5) and k.min(initial=0) >= E8M0_MIN and k.max(initial=0) <= E8M0_MAX):
            raise BitallocError(f"unit {name!r}: an MX block scale is not a power of two in [2^-127, 2^127] (E8M0)")
        return {f"{name}.scale": (k - E8M0_MIN).astype(np.uint8)}
    t = np.float32(0 if tensor_scale is None else tensor_scale)
    b = scale / t if t > 0 else np.zeros_like(scale)
    codes = E4M3.encode(b).astype(np.uint8)
    if tensor_scale is None or not np.array_equal(E4M3.values[codes] * t, scale):
        raise BitallocError(f"unit {name!r}: the NVFP4 scales are not E4M3 block scales times one FP32 tensor scale")
    return {f"{name}.scale": codes, f"{name}.tscale": np.array([t], dtype=np.float32)}


def read_block_scales(name: str, fmt, tensors: dict) -> tuple[np.ndarray, float | None]:
    """Inverse of `block_scale_tensors`: (scale (rows, n_blocks) float32, NVFP4 tensor scale or None)."""
    from bitalloc.quant.formats.minifloat import E4M3
    from bitalloc.quant.formats.mx import E8M0_MIN
    from bitalloc.quant.integer import format_family

    fam = format_family(fmt)
    want = {"fp": np.float32, "mx": np.uint8, "nvfp4": np.uint8}[fam]
    s = tensors[f"{name}.scale"]
    if s.dtype != want:
        raise BitallocError(f"unit {name!r}: {fam} scales stored as {s.dtype}, expected {np.dtype(want)}")
    if fam == "fp":
        return s.astype(np.float32), None
    if fam == "mx":
        return np.ldexp(np.float32(1), s.astype(np.int32) + E8M0_MIN).astype(np.float32), None
    t = tensors.get(f"{name}.tscale")
    if t is None or t.dtype != np.float32 or t.shape != (1,):
        raise BitallocError(f"unit {name!r}: the NVFP4 tensor scale {name}.tscale is missing or not one float32")
    return (E4M3.values[s] * t[0]).astype(np.float32), float(t[0])
