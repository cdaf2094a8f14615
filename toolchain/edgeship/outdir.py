"""The output folder a command writes (export, compress, sweep): claimed, built beside it, swapped in at the end.

What it promises (tests/reliability/test_outdir.py):
- A run claims ``OUT`` with a lock beside it (``.OUT.lock``, an flock that the kernel drops when the process dies,
  holding the pid): a second run on the same ``OUT`` is refused at once, naming the first one's pid.
- Everything is built in a staging folder beside ``OUT`` and swapped in by one rename at the end (an atomic exchange
  where Linux offers one). At the moment of the swap the run re-checks what it checked at the start, so a file that
  appeared in ``OUT`` meanwhile is never deleted: without ``--force`` the new result is discarded and said.
- ``--force`` replaces only a folder edgeship made, holding only what edgeship writes there.
- Staging folders of runs that died (SIGKILL, power loss) are swept by the next run that holds the lock, and said;
  a swap interrupted between its two renames (no atomic exchange) is undone there too.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path

from edgeship_runtime.formats import FORMATS

from ._io import make_dir_like_mkdir
from .errors import EdgeshipError

log = logging.getLogger(__name__)

# what edgeship writes at the top of an output folder besides one sub-folder per format (the format registry's keys):
# --force replaces a folder holding nothing else
WRITTEN = frozenset({"manifest.json", "report.json", "report.html", "reference.npz", "labels.txt", "sweep.png"})
MARKERS = ("manifest.json", "report.json")
_held: dict[str, int] = {}   # OUT -> nesting depth of claim() in this process (the CLI claims, run_export again)


def check_out(out: Path, force: bool) -> None:
    """Refuse a non-empty ``out`` unless ``force``, and even then only a folder edgeship made (never a user's)."""
    out = Path(out)
    if out.is_symlink():
        raise EdgeshipError(f"--out {out} is a symbolic link; nothing was changed",
                            hint="give the real folder's path, or a new folder")
    if out.exists() and not out.is_dir():
        raise EdgeshipError(f"--out {out} is a file; nothing was changed", hint="give a folder path for --out")
    if not out.is_dir():
        return
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not force:
        raise EdgeshipError(f"output folder {out} exists and is not empty; nothing was changed",
                            hint="add --force to replace it, or choose another --out")
    if not any((out / m).is_file() for m in MARKERS):
        raise EdgeshipError(f"{out} is not an edgeship output folder (no manifest.json); --force replaces only those",
                            hint="choose an empty or new --out folder")
    foreign = [n for n in entries if n not in WRITTEN and n not in FORMATS]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise EdgeshipError(f"{out} holds files edgeship did not write ({shown}); --force would delete them, so nothing "
                            "was changed", hint="move them out of the folder, or choose another --out")


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def claim(out: Path, force: bool):
    """Hold ``out`` for this run: checked, locked against other runs, debris of dead runs swept. Re-entrant."""
    out = Path(out).absolute()
    check_out(out, force)
    key = str(out)
    if key in _held:
        _held[key] += 1
        try:
            yield out
        finally:
            _held[key] -= 1
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = _lock(out)
    _held[key] = 1
    try:
        swept = sweep_debris(out)
        if swept:
            log.warning("removed %d folder(s) left beside %s by an interrupted earlier run: %s", len(swept), out,
                        ", ".join(p.name for p in swept))
        yield out
    finally:
        _held.pop(key, None)
        _unlock(out, fd)


def _lock(out: Path) -> int | None:
    try:
        import fcntl
    except ImportError:   # Windows: no flock; one run at a time is the user's to keep
        return None
    lock = lock_path(out)
    for _ in range(5):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 64).decode(errors="replace").split()[:1]
            os.close(fd)
            who = f"pid {pid[0]}" if pid else "another process"
            raise EdgeshipError(f"another edgeship run ({who}) is writing {out}; nothing was changed",
                                hint="wait for it to finish, or choose another --out") from None
        # the file may have been unlinked by the run that held it just before we opened it: lock the live one
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
    raise EdgeshipError(f"could not lock {out}: {lock} keeps changing", hint="is another program writing there?")


def _unlock(out: Path, fd: int | None) -> None:
    if fd is None:
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock_path(out))
    os.close(fd)


def _debris(out: Path, kind: str) -> list[Path]:
    prefix = f".{out.name}.{kind}-"
    return sorted(p for p in out.parent.iterdir() if p.name.startswith(prefix) and p.is_dir() and not p.is_symlink())


def sweep_debris(out: Path) -> list[Path]:
    """With the lock held, every staging folder of ``out`` is a dead run's: remove them. A swap cut between its two
    renames left ``out`` missing and the previous folder in ``.OUT.old-*``: put it back. Returns what was removed."""
    for old in _debris(out, "old"):
        inner = old / out.name
        if not os.path.lexists(out) and inner.is_dir():
            os.rename(inner, out)
            log.warning("restored %s from %s (an earlier run was interrupted while swapping it in)", out, old)
    removed = _debris(out, "staging") + _debris(out, "old")
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


@contextlib.contextmanager
def staged_folder(out: Path, force: bool = False):
    """Build ``out`` in a staging folder beside it; swapped in when the block succeeds, removed when it fails, so an
    interrupted run leaves nothing half-written."""
    with claim(out, force) as out:
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
        make_dir_like_mkdir(staging)
        try:
            yield staging
            swap_in(staging, out, force)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def swap_in(staging: Path, out: Path, force: bool) -> None:
    """Put ``staging`` at ``out``, re-checking ``out`` now: what appeared there while the run worked is kept."""
    try:
        check_out(out, force)
    except EdgeshipError as e:
        raise EdgeshipError(f"{out} changed while this run worked: {e.message.split('; nothing was changed')[0]}; "
                            "its contents were kept and the new result was discarded", hint=e.hint) from None
    if not os.path.lexists(out):
        try:
            os.rename(staging, out)   # replaces at most an empty folder made meanwhile; never a non-empty one
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise EdgeshipError(f"{out} gained files while this run worked; they were kept and the new result "
                                    "was discarded", hint="choose another --out, or move them and run again") from None
            raise
        return
    if _exchange(staging, out):    # staging now holds the previous folder
        shutil.rmtree(staging)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    os.rename(out, old / out.name)
    os.rename(staging, out)        # cut between the two? the next run's sweep_debris puts the old folder back
    shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where that is not offered."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):   # the file system cannot: two renames instead
        return False
    raise OSError(err, os.strerror(err), str(b))
