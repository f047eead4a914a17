"""Reading JSON with clear errors, and atomic writes that never leave a half-written file."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from bitalloc.errors import BitallocError


def read_text(path: str | os.PathLike, what: str) -> str:
    """A UTF-8 text file; a missing or unreadable one is a one-line BitallocError naming `what`."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BitallocError(f"{what} {str(p)!r}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BitallocError(f"{what} {str(p)!r}: cannot be read ({getattr(e, 'strerror', None) or e})") from None


def read_json(path: str | os.PathLike, what: str) -> dict:
    """Load a JSON object; a missing, unreadable or malformed file is a one-line BitallocError."""
    p = Path(path)
    text = read_text(p, what)
    seen: list[str] = []
    try:
        data = json.loads(text, parse_constant=lambda name: seen.append(name) or _Constant(name))
    except json.JSONDecodeError as e:
        raise BitallocError(f"{what} {str(p)!r}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise BitallocError(f"{what} {str(p)!r}: top level is {type(data).__name__}, expected a JSON object")
    if seen:  # NaN / Infinity are not JSON: name the field that holds one
        field, name = _find_constant(data)
        raise BitallocError(f"{what} {str(p)!r}: {field} {name}: not allowed (write a number, "
                            "or null for a candidate that is not allowed)")
    return data


class _Constant:
    """Placeholder for a NaN/Infinity/-Infinity literal, so its place can be named."""

    def __init__(self, name: str):
        self.name = name


def _find_constant(data) -> tuple[str, str]:
    """(path such as `sensitivity[3][1]` or `meta.x`, literal) of the first NaN/Infinity."""
    stack = [("", data)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, _Constant):
            return where or "value", v.name
        if isinstance(v, dict):
            stack.extend((f"{where}.{k}" if where else str(k), x) for k, x in reversed(list(v.items())))
        elif isinstance(v, list):
            stack.extend((f"{where}[{i}]", x) for i, x in reversed(list(enumerate(v))))
    return "value", "NaN"


def check_writable(path: str | os.PathLike, force: bool) -> Path:
    """Refuse to overwrite an existing file unless `force`; refuse a missing parent folder."""
    p = Path(path)
    if p.exists() and not force:
        raise BitallocError(f"--out {str(p)!r}: file exists (pass --force to overwrite)")
    if not p.parent.exists():
        raise BitallocError(f"--out {str(p)!r}: folder {str(p.parent)!r} does not exist")
    return p


def atomic_write(path: str | os.PathLike, data: bytes | str, force: bool = True) -> Path:
    """Write to a temp file in the same folder, fsync, then rename over `path`."""
    p = check_writable(path, force)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def dumps(obj) -> str:
    """JSON text as bitalloc writes it: NaN/inf refused, so files stay standard JSON."""
    return json.dumps(obj, indent=1, allow_nan=False) + "\n"
