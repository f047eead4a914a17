"""Reading JSON with clear errors, and atomic writes that never leave a half-written file."""
from __future__ import annotations

import atexit
import contextlib
import errno
import itertools
import json
import os
import re
import shutil
import signal
import threading
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
    except RecursionError:
        raise BitallocError(f"{what} {str(p)!r}: nested too deeply to be read (not a bitalloc file)") from None
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


# ---- publishing outputs: exclusive, atomic, no temp file left behind ------------------------
# A temp file (or folder) is `.NAME.bitalloc-PID-N.tmp` in the target's own folder: written, fsynced,
# then published with os.link (fails if the target exists: two writers never both "succeed") or,
# with force, os.replace. It is removed on every exit path: exceptions, SIGINT/SIGTERM/SIGHUP (the
# handlers below), and after a `kill -9` by the next run that checks an output in that folder (a
# temp whose PID is no longer alive is recognised by its name and removed).
TEMP_RE = re.compile(r"^\.(?P<name>.+)\.bitalloc-(?P<pid>\d+)-(?P<n>\d+)\.tmp$")
_LIVE: dict[str, int] = {}  # temp path -> pid of the process that made it
_COUNTER = itertools.count()
_HANDLED: dict[int, object] = {}  # signal -> the handler before ours
_INSTALLED: list[bool] = []


def check_writable(path: str | os.PathLike, force: bool, flag: str = "--out", folder: bool = False) -> Path:
    """Refuse, as a one-line BitallocError naming `flag`, an output path that cannot be published:
    empty, a folder (or, with `folder`, a file), an existing file or a dangling link without
    `force`, a parent that is missing, not a folder or not writable. Removes stale temp files of
    killed runs from the parent folder. Call it before any heavy work."""
    if path is None or str(path) == "":
        raise BitallocError(f"{flag} '': empty path (name a file to write)")
    text = os.fspath(path)
    if "\0" in text:
        raise BitallocError(f"{flag} {text!r}: contains a NUL character")
    p = Path(text)
    what = "folder" if folder else "file"
    if p.name in ("", ".", ".."):
        raise BitallocError(f"{flag} {text!r}: names a folder, not a {what} to write")
    parent = p.parent
    try:
        if not parent.exists():
            raise BitallocError(f"{flag} {text!r}: folder {str(parent)!r} does not exist")
        if not parent.is_dir():
            raise BitallocError(f"{flag} {text!r}: {str(parent)!r} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise BitallocError(f"{flag} {text!r}: folder {str(parent)!r} is not writable")
        _probe(parent, text, flag)
        if p.is_symlink() and not p.exists():
            if not force:
                raise BitallocError(f"{flag} {text!r}: a dangling symbolic link (pass --force to replace the link)")
        elif p.is_dir() and not folder:
            raise BitallocError(f"{flag} {text!r}: is a folder, not a file")
        elif p.exists() and folder and not p.is_dir():
            raise BitallocError(f"{flag} {text!r}: is a file, not a folder")
        elif p.exists() and not force:
            raise BitallocError(f"{flag} {text!r}: {what} exists (pass --force to overwrite)")
    except OSError as e:  # a name too long, a loop of links, ...
        raise BitallocError(f"{flag} {text!r}: cannot be used ({e.strerror or e})") from None
    clean_stale(parent)
    return p


def _probe(parent: Path, text: str, flag: str) -> None:
    """Create and remove a temp file in `parent`: a read-only mount, a full inode table or a
    folder that refuses files (as root, os.access says yes to everything) fails here, not after
    the work."""
    probe = temp_path(parent / "probe")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as e:
        raise BitallocError(f"{flag} {text!r}: cannot create files in {str(parent)!r} ({e.strerror or e})") from None
    try:
        os.unlink(probe)
    except OSError:
        pass


def clean_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove temp files/folders of bitalloc runs that no longer live (killed with -9); returns them."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = TEMP_RE.match(e.name)
        if not m or _alive(int(m.group("pid"))):
            continue
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
            removed.append(Path(e.path))
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def temp_path(target: Path) -> Path:
    """`.NAME.bitalloc-PID-N.tmp` next to `target` (see TEMP_RE)."""
    return target.parent / f".{target.name}.bitalloc-{os.getpid()}-{next(_COUNTER)}.tmp"


@contextlib.contextmanager
def publishing(path: str | os.PathLike, force: bool = False, flag: str = "--out", folder: bool = False):
    """Yield a temp path next to `path` to write (a file, or with `folder` a created folder); on a
    normal exit it is fsynced and published at `path` exclusively (os.link; a target that appeared
    meanwhile is an error) or, with `force`, replacing it. The temp is removed on every exit path."""
    p = check_writable(path, force, flag, folder)
    installed = _install_handlers()
    tmp = temp_path(p)
    if folder:
        os.mkdir(tmp)
    else:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    _LIVE[str(tmp)] = os.getpid()
    try:
        yield tmp
        if folder:
            _fsync_tree(tmp)
            _publish_dir(tmp, p, force, flag)
        else:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            _publish_file(tmp, p, force, flag)
        _fsync_dir(p.parent)
    finally:
        _LIVE.pop(str(tmp), None)
        _remove(tmp)
        if installed:
            _restore_handlers()


def atomic_write(path: str | os.PathLike, data: bytes | str, force: bool = True, flag: str = "--out") -> Path:
    """Write `data` to `path` through `publishing` (never a half-written or silently replaced file)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with publishing(path, force, flag) as tmp:
        with open(tmp, "wb") as f:
            f.write(raw)
    return Path(path)


def publish_all(outputs: list[tuple[str | os.PathLike, bytes | str, str]], force: bool = False) -> list[Path]:
    """Write several outputs (path, data, flag) as one: every path is checked first, and if one
    cannot be published the ones already published by this call are removed again (nothing of
    a failed command is left)."""
    for path, _, flag in outputs:
        check_writable(path, force, flag)
    done: list[Path] = []
    try:
        for path, data, flag in outputs:
            done.append(atomic_write(path, data, force, flag))
    except BaseException:
        for p in done:
            if not force:  # with force an old file was replaced: removing the new one would lose both
                p.unlink(missing_ok=True)
        raise
    return done


def _publish_file(tmp: Path, p: Path, force: bool, flag: str) -> None:
    if force:
        if p.is_dir() and not p.is_symlink():
            raise BitallocError(f"{flag} {str(p)!r}: is a folder, not a file")
        os.replace(tmp, p)
        return
    try:
        os.link(tmp, p, follow_symlinks=False)
    except FileExistsError:
        raise BitallocError(f"{flag} {str(p)!r}: file exists (written meanwhile by another run; "
                            "pass --force to overwrite)") from None
    except OSError as e:  # a filesystem without hard links: an exclusive placeholder, then rename
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
        try:
            os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            raise BitallocError(f"{flag} {str(p)!r}: file exists (written meanwhile by another run; "
                                "pass --force to overwrite)") from None
        os.replace(tmp, p)


def _publish_dir(tmp: Path, p: Path, force: bool, flag: str) -> None:
    old = None
    if force and (p.exists() or p.is_symlink()):
        old = temp_path(p)
        os.rename(p, old)
        _LIVE[str(old)] = os.getpid()
    try:
        if not _rename_noreplace(tmp, p):
            raise BitallocError(f"{flag} {str(p)!r}: folder exists (written meanwhile by another run; "
                                "pass --force to replace it)")
    except BaseException:
        if old is not None and not p.exists():
            os.rename(old, p)
        raise
    finally:
        if old is not None:
            _LIVE.pop(str(old), None)
            _remove(old)


def _rename_noreplace(src: Path, dst: Path) -> bool:
    """rename(2) that never replaces `dst` (Linux renameat2 RENAME_NOREPLACE; elsewhere a check
    and rename); False if `dst` exists."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        fn = None
    if fn is not None:
        at_fdcwd, noreplace = -100, 1
        if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), noreplace) == 0:
            return True
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            return False
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(dst))
    if os.path.lexists(dst):
        return False
    os.rename(src, dst)
    return True


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def remove_live_temps() -> None:
    """Remove this process's unfinished temp files (signal handlers and exit call it)."""
    pid = os.getpid()
    for path, owner in list(_LIVE.items()):
        if owner == pid:
            _remove(Path(path))
            _LIVE.pop(path, None)


def _install_handlers() -> bool:
    """On the main thread, while a temp exists: SIGTERM/SIGHUP/SIGINT remove the unfinished
    temps, then do what the signal did before (SIGINT: KeyboardInterrupt; SIGTERM/SIGHUP: die by
    the signal). Returns True if this call installed them (then `_restore_handlers` undoes it)."""
    if _HANDLED or threading.current_thread() is not threading.main_thread():
        return False
    if not _INSTALLED:
        _INSTALLED.append(True)
        atexit.register(remove_live_temps)
    for name in ("SIGTERM", "SIGHUP", "SIGINT"):
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        try:
            _HANDLED[sig] = signal.signal(sig, _on_signal)
        except (ValueError, OSError):
            pass
    return True


def _restore_handlers() -> None:
    for sig, prev in list(_HANDLED.items()):
        try:
            if signal.getsignal(sig) is _on_signal:
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        except (ValueError, OSError):
            pass
        _HANDLED.pop(sig, None)


def _on_signal(sig, frame):
    remove_live_temps()
    prev = _HANDLED.get(sig, signal.SIG_DFL)
    _restore_handlers()
    if callable(prev):
        return prev(sig, frame)
    if prev == signal.SIG_IGN:
        return None
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)


def dumps(obj) -> str:
    """JSON text as bitalloc writes it: NaN/inf refused, so files stay standard JSON."""
    return json.dumps(obj, indent=1, allow_nan=False) + "\n"
