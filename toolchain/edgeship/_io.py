"""Small file and process helpers: atomic writes, sha256 of files and folders, silencing converters' chatter."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)


def relative_parts(rel: str, message: str, hint: str | None = None) -> tuple[str, ...]:
    """The parts of ``rel``, a POSIX path from a manifest or record, when it is relative and cannot climb (no ``..``,
    no absolute path, no backslash or NUL); else an EdgeshipError with ``message``."""
    from .errors import EdgeshipError
    p = PurePosixPath(str(rel))
    if not isinstance(rel, str) or not p.parts or p.is_absolute() or ".." in p.parts or "\\" in rel or "\0" in rel:
        raise EdgeshipError(message, hint=hint or "the folder was edited by hand or tampered with: export it again")
    return p.parts


def inside(root: Path, rel: str, what: str, *, hint: str | None = None) -> Path:
    """``root / rel`` where ``rel`` (a POSIX path from a manifest or record) stays inside ``root`` once symlinks are
    followed; else an EdgeshipError. Containment is checked on resolved real paths, not lexically, so neither
    ``..``, an absolute path nor a symlink (in ``rel``'s folders or at its end) can lead out of ``root``."""
    from .errors import EdgeshipError
    path = Path(root).joinpath(*relative_parts(rel, f"{what} {str(rel)[:200]!r} is not a relative path inside {root}", hint))
    real_root = Path(root).resolve()
    real = path.resolve()
    if real != real_root and real_root not in real.parents:
        raise EdgeshipError(f"{what} {rel!r} leads outside {root} (to {real}) through a symbolic link",
                            hint=hint or "replace the link with the real file, or export again")
    return path


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_dir_like_mkdir(path: Path) -> None:
    """Give a mkdtemp folder (0700) the permissions a plain mkdir would have."""
    os.chmod(path, 0o777 & ~_umask())


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def sha256_path(path: Path) -> str:
    """sha256 of a file; for a directory (.mlpackage), of its files' relative paths and contents in sorted order."""
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
            _update(h, f)
    else:
        _update(h, path)
    return h.hexdigest()


def size_path(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _update(h, f: Path) -> None:
    with open(f, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


@contextlib.contextmanager
def captured_output():
    """Send what converters print (Python and C++ alike) to a temp file; yields a function that returns it.

    Converters (litert-torch, coremltools, XNNPACK) write progress and warnings straight to fd 1/2; library
    code must not print, so it goes to the debug log instead.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)

        def text() -> str:
            sys.stdout.flush()
            sys.stderr.flush()
            tmp.seek(0)
            return tmp.read().decode(errors="replace")
        try:
            yield text
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            out = text()
            if out.strip():
                log.debug("converter output:\n%s", out[-20000:])


class ChildDied(Exception):
    """A forked child ended without a result: ``code`` is its exit code (negative: the signal that ended it)."""

    def __init__(self, code: int):
        super().__init__(f"exit code {code}" if code >= 0 else f"killed by signal {-code}")
        self.code = code


def run_forked(fn):
    """``fn()`` in a forked child; its return value, or the exception it raised, comes back through a pipe.

    For converters that can end the process on their own (litert's converter calls exit(1) when the disk fills, with
    stderr already redirected): the parent survives to clean up and say why. A child that dies without a result
    raises ChildDied. Where there is no fork (Windows) ``fn`` runs here. The child never returns into the caller's
    frames: it leaves with os._exit, so locks and staging folders stay the parent's to release."""
    import pickle
    if not hasattr(os, "fork"):
        return fn()
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child
        try:
            os.close(r)
            try:
                payload = ("ok", fn())
            except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
                payload = ("err", e)
            try:
                data = pickle.dumps(payload)
            except Exception:  # noqa: BLE001 - an unpicklable result or exception
                data = pickle.dumps(("err", RuntimeError(f"{type(payload[1]).__name__}: {payload[1]}")))
            with os.fdopen(w, "wb") as f:
                f.write(data)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(0)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            data = f.read()
        _, status = os.waitpid(pid, 0)
    except BaseException:   # interrupted while the child works: it goes too
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        raise
    if not data:
        raise ChildDied(os.waitstatus_to_exitcode(status))
    kind, value = pickle.loads(data)
    if kind == "err":
        raise value
    return value
