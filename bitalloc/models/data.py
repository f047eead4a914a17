"""Calibration and held-out text: read from the user's files or the built-in pydoc text, split
into disjoint calibration / held-out parts, cut into token windows or paragraphs.

`--calib PATH`: a .txt file, a .jsonl file with a `text` field per line, or a folder of .txt /
.md files (searched recursively, sorted by path). Documents (a file, a JSONL record, or — for a
single text — its blank-line separated paragraphs) are shuffled with a seed and the first 75 %
of the characters go to calibration, the rest to held-out evaluation, so the two never share a
document. Default: Python's own documentation topics (`pydoc_data.topics`), which ships with
every Python.

Image classifiers read `--calib FOLDER` of images (.png, .jpg, .jpeg, .bmp, .webp, searched
recursively, sorted by path; other files are ignored): the paths are shuffled with the seed, the
first `samples` go to calibration and the next ones (`held_out`, default all the rest up to 64) to
held-out evaluation, so the two never share an image. Each image is read with Pillow as RGB.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from bitalloc.errors import BitallocError, bad

HELD_OUT_FRACTION = 0.25
TEXT_SUFFIXES = (".txt", ".md")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
IMAGES_HELD_OUT = 64


def pydoc_split(seed: int = 0) -> tuple[str, str]:
    """(calibration text, held-out text): topics shuffled with `seed`, the first 75 % for calibration."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    random.Random(seed).shuffle(keys)
    cut = int(len(keys) * (1 - HELD_OUT_FRACTION))
    join = lambda ks: "\n\n".join(topics[k] for k in sorted(ks))  # noqa: E731
    return join(keys[:cut]), join(keys[cut:])


def read_documents(path) -> list[str]:
    """The documents of a --calib path (see the module docstring); one-line errors."""
    p = Path(path)
    where = f"--calib {str(p)!r}"
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise BitallocError(f"{where}: the folder holds no .txt or .md file")
        docs = [_read(f, where) for f in files]
    elif p.is_file():
        if p.suffix.lower() == ".jsonl":
            docs = []
            for i, line in enumerate(_read(p, where).splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise BitallocError(f"{where} line {i}: not JSON ({e.msg})") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                    raise BitallocError(f"{where} line {i}: needs a string field 'text'")
                docs.append(rec["text"])
        elif p.suffix.lower() in TEXT_SUFFIXES:
            docs = [_read(p, where)]
        else:
            raise bad("--calib", str(p), "must be a .txt or .jsonl file, or a folder of .txt/.md files")
    else:
        raise BitallocError(f"{where}: no such file or folder")
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise BitallocError(f"{where}: holds no text")
    return docs


def _read(f: Path, where: str) -> str:
    try:
        return f.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as e:
        raise BitallocError(f"{where}: {f.name} cannot be read as UTF-8 text ({type(e).__name__})") from None


def split_documents(docs: list[str], seed: int = 0, held_fraction: float = HELD_OUT_FRACTION) -> tuple[str, str]:
    """(calibration text, held-out text) from whole documents (a single document is split into its
    paragraphs first). Both parts get at least one document when there are two or more."""
    if len(docs) == 1:
        docs = [p for p in docs[0].split("\n\n") if p.strip()] or docs
    if len(docs) == 1:  # one paragraph: cut it at a line or word near the fraction
        text = docs[0]
        cut = int(len(text) * (1 - held_fraction))
        cut = max(text.rfind("\n", 0, cut), text.rfind(" ", 0, cut), 1)
        return text[:cut], text[cut:]
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    total = sum(len(d) for d in docs)
    cal, held, seen = [], [], 0
    for i in order:
        (cal if seen < total * (1 - held_fraction) or not cal else held).append(i)
        seen += len(docs[i])
    if not held:
        held.append(cal.pop())
    join = lambda idx: "\n\n".join(docs[i] for i in sorted(idx))  # noqa: E731
    return join(cal), join(held)


def calibration_text(calib=None, seed: int = 0) -> tuple[str, str]:
    """(calibration, held-out) text from a --calib path, or the pydoc default."""
    if calib is None:
        return pydoc_split(seed)
    return split_documents(read_documents(calib), seed)


def image_files(path) -> list[Path]:
    """The image files of a --calib folder (recursive, sorted by path); one-line errors."""
    p = Path(path)
    where = f"--calib {str(p)!r}"
    if not p.is_dir():
        raise BitallocError(f"{where}: an image classifier needs --calib FOLDER of images "
                            f"({', '.join(IMAGE_SUFFIXES)}), not a file")
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BitallocError(f"{where}: the folder holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return files


def split_images(files: list[Path], samples: int, held_out: int | None, seed: int = 0,
                 where: str = "--calib") -> tuple[list[Path], list[Path]]:
    """(calibration files, held-out files): disjoint, drawn with `seed` (see the module docstring);
    too few files for `samples` + `held_out` (at least 1) is one line naming how many are needed."""
    if samples < 1:
        raise bad("samples", samples, "must be at least 1")
    need = samples + (held_out or 1)
    if len(files) < need:
        raise BitallocError(f"{where}: {len(files)} image{'s' * (len(files) != 1)}, needs at least {need} "
                            f"(--samples {samples} for calibration + {held_out or 1} held-out)")
    order = list(range(len(files)))
    random.Random(seed).shuffle(order)
    held = order[samples:samples + (held_out or IMAGES_HELD_OUT)]
    return [files[i] for i in sorted(order[:samples])], [files[i] for i in sorted(held)]


def read_image(f: Path, where: str = "--calib"):
    """An image file as an RGB Pillow image; a file Pillow cannot decode is one line."""
    from PIL import Image

    try:
        with Image.open(f) as im:
            return im.convert("RGB")
    except Exception as e:  # UnidentifiedImageError, truncated data, decompression bomb: one line
        raise BitallocError(f"{where}: {f.name} is not a readable image ({type(e).__name__})") from None


def token_windows(ids: np.ndarray, n: int, seq_len: int, seed: int, what: str = "the text") -> np.ndarray:
    """(n, seq_len) int64 windows of a token stream at distinct random offsets (seeded)."""
    if n < 1:
        raise bad("samples", n, "must be at least 1")
    if seq_len < 2:
        raise bad("seq_len", seq_len, "must be at least 2")
    starts = np.arange(0, len(ids) - seq_len, seq_len)
    if len(starts) < n:
        raise bad("samples", n, f"{what} holds only {len(starts)} windows of {seq_len} tokens ({len(ids)} tokens)")
    pick = np.sort(np.random.default_rng(seed).choice(starts, size=n, replace=False))
    return np.stack([ids[s:s + seq_len] for s in pick]).astype(np.int64)


def sentences(text: str, n: int, seed: int, min_chars: int = 40, max_chars: int = 400, what: str = "the text") -> list[str]:
    """`n` distinct paragraphs of `text` (blank-line separated, whitespace folded), seeded; a text
    without enough paragraphs is cut into lines, then into pieces of `max_chars`."""
    if n < 1:
        raise bad("samples", n, "must be at least 1")
    paras = _pieces(text.split("\n\n"), min_chars, max_chars)
    if len(paras) < n:
        paras = _pieces(text.splitlines(), min_chars, max_chars)
    if len(paras) < n:
        flat = " ".join(text.split())
        paras = _pieces([flat[i:i + max_chars] for i in range(0, len(flat), max_chars)], min_chars, max_chars)
    if len(paras) < n:
        raise bad("samples", n, f"{what} holds only {len(paras)} passages of at least {min_chars} characters")
    idx = np.random.default_rng(seed).choice(len(paras), size=n, replace=False)
    return [paras[i] for i in sorted(idx)]


def _pieces(parts, min_chars, max_chars) -> list[str]:
    paras = sorted({" ".join(p.split()) for p in parts})
    return [p[:max_chars] for p in paras if len(p) >= min_chars]


def batches(items, size: int) -> list:
    """`items` cut into consecutive batches of `size` (the last may be smaller)."""
    return [items[i:i + size] for i in range(0, len(items), size)]
