"""What every device is: the transport verbs (:class:`Transport`), the capabilities beside them
(:class:`Capabilities`), the :class:`Device` contract the harness, the profiler and energy use, and the helpers the
transports share."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Iterator, Protocol, Sequence, runtime_checkable

from edgeship.errors import EdgeshipError

if TYPE_CHECKING:
    from ..energy import PowerSource
    from .apps import AppBench

_SKIP_DIRS = frozenset({"__pycache__"})
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONNECT_TIMEOUT_S = 10.0
_HOUSEKEEPING_TIMEOUT_S = 30.0


@dataclass
class DeviceInfo:
    """What a device is and what it can run. ``runtimes`` maps format -> runtime version, None if absent."""
    id: str
    kind: str                       # local | ssh | adb | a registered scheme's kind
    os: str                         # "Linux 6.6.31+rpt-rpi-2712 (Debian GNU/Linux 12 (bookworm))", "Android 14 (SDK 34)"
    arch: str                       # uname -m, or the Android ABI ("arm64-v8a")
    cpu: str | None = None          # CPU model or SoC ("Cortex-A76", "SM8550")
    model: str | None = None        # board / phone model ("Raspberry Pi 5 Model B Rev 1.0", "Pixel 8")
    python: str | None = None       # interpreter path on the device
    python_version: str | None = None
    runtimes: dict[str, str | None] = field(default_factory=dict)
    runtime_modules: dict[str, str] = field(default_factory=dict)   # format -> module that imported
    missing: dict[str, str] = field(default_factory=dict)          # format -> why it is not usable
    extra: dict[str, Any] = field(default_factory=dict)             # governor, thermal, vcgencmd, soc, ...

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DeviceEntry:
    """One line of ``edgeship devices``."""
    id: str
    kind: str
    state: str          # ready | device | offline | unauthorized | configured
    description: str


@runtime_checkable
class Transport(Protocol):
    """How files and commands reach a device. ``push(local, remote)`` puts a file or a folder (recursively,
    ``__pycache__`` skipped) at exactly ``remote``; ``pull`` brings ``remote`` to exactly ``local`` (refusing to
    replace it unless ``force``); ``run`` returns the command's exit status, stdout and stderr (a timeout or a lost
    connection raises EdgeshipError and stops the command); ``tempdir()`` is a fresh folder removed afterwards;
    ``stream`` starts a long-running command whose stdout is read line by line (text); ``cleanup`` runs queued
    cleanups, True when none are left."""

    id: str
    kind: str                       # the scheme's kind: DeviceInfo.kind and report.json's device_kind
    python: str | None              # the interpreter the python runner uses (None: the device has none)

    def push(self, local: Path, remote: str) -> None: ...
    def pull(self, remote: str, local: Path, *, force: bool = False) -> None: ...
    def run(self, argv: Sequence[str], timeout_s: float, *, cwd: str | None = None,
            env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess: ...
    def tempdir(self) -> ContextManager[str]: ...
    def stream(self, argv: Sequence[str]) -> subprocess.Popen: ...
    def cleanup(self) -> bool: ...


@runtime_checkable
class Capabilities(Protocol):
    """What a device offers beyond the transport, decided by what the device is."""

    def info(self, *, deep: bool = False) -> DeviceInfo: ...
    def power_source(self, info: DeviceInfo | None = None) -> "PowerSource": ...
    @property
    def app(self) -> "AppBench | None": ...


@runtime_checkable
class Device(Transport, Capabilities, Protocol):
    """The contract of ``--device``: a transport and its capabilities (see :mod:`edgeship.bench.devices`)."""


class DeviceBase:
    """Defaults for a device class: no power sensor, no app, nothing to discover, ``from_spec`` from the text alone.

    A class registered with :func:`edgeship.bench.devices.register_device` is built by ``from_spec(text, **options)``
    (options: ssh_config, python, adb, adb_server_port; take the ones that apply) and listed by
    ``discover(**options)``; ``usage`` is how ``--device`` names it in messages (None: not shown)."""

    kind = "device"
    usage: str | None = None

    @classmethod
    def from_spec(cls, text: str, **options: Any) -> "DeviceBase":
        return cls(text)  # type: ignore[call-arg]

    @classmethod
    def discover(cls, **options: Any) -> list[DeviceEntry]:
        return []

    def power_source(self, info: DeviceInfo | None = None) -> "PowerSource":
        from ..energy import Unavailable
        return Unavailable(no_sensor_reason(getattr(self, "id", self.kind)))

    @property
    def app(self) -> "AppBench | None":
        return None


def no_sensor_reason(device_id: str, why: str = "") -> str:
    return (f"{device_id}{why} has no power sensor edgeship can read; "
            "measure with an external meter: --power-cmd \"CMD\" (prints watts)")


# ------------------------------------------------------------------------------------------------ helpers

def _redact_url(text: str) -> str:
    """``text`` with the password of a ``scheme://user:password@host`` URL replaced by ``***``, for messages.

    The user info is everything between ``://`` and the *last* ``@`` (as urlsplit reads it, so a password may hold
    ``@``, ``/`` or ``?``); when it holds a ``:``, what follows the first ``:`` is the password."""
    scheme, sep, rest = str(text).partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return str(text)
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hostpart}"


def _tail(text: str | bytes | None, n: int = 600) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = (text or "").strip()
    return text if len(text) <= n else "…" + text[-n:]


def _decode(b: bytes | None) -> str:
    return (b or b"").decode("utf-8", "replace")


def _check_env(env: dict[str, str] | None) -> dict[str, str]:
    env = dict(env or {})
    for k in env:
        if not _ENV_KEY.match(k):
            raise EdgeshipError(f"invalid environment variable name {k!r}")
    return {k: str(v) for k, v in env.items()}


def _checked(cp: subprocess.CompletedProcess, device_id: str, check: bool) -> subprocess.CompletedProcess:
    if check and cp.returncode != 0:
        raise EdgeshipError(f"{Path(str(cp.args[0])).name} failed on {device_id} (exit status {cp.returncode}): "
                            f"{_tail(cp.stderr or cp.stdout)}")
    return cp


def _killpg(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError, AttributeError):
        proc.kill()


def _skip(names: Sequence[str]) -> set[str]:
    return {n for n in names if n in _SKIP_DIRS or n.endswith(".pyc")}


def _has_skipped(path: Path) -> bool:
    if not path.is_dir():
        return False
    return any(_skip(dirs + files) for _root, dirs, files in os.walk(path))


def _replace_into(src: Path, dest: Path, force: bool) -> None:
    """Move src to dest (same file system); replace an existing dest only with force."""
    if dest.exists() or dest.is_symlink():
        if not force:
            raise EdgeshipError(f"{dest} already exists", hint="pull to a new path, or pass force=True")
        if dest.is_dir() and not dest.is_symlink():
            old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(dest, old)
            os.replace(src, dest)
            shutil.rmtree(old, ignore_errors=True)
            return
    os.replace(src, dest)


@contextlib.contextmanager
def _staging_dir(near: Path) -> Iterator[Path]:
    near.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=near, prefix=".edgeship-pull-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _safe_extract(tf: tarfile.TarFile, dest: Path) -> None:
    if hasattr(tarfile, "data_filter"):
        tf.extractall(dest, filter="data")
        return
    root = dest.resolve()
    for m in tf.getmembers():  # older Pythons: refuse absolute paths and ../ escapes ourselves
        target = (dest / m.name).resolve()
        if not (target == root or root in target.parents) or m.issym() or m.islnk() or m.isdev():
            raise EdgeshipError(f"refusing to extract suspicious archive member {m.name!r}")
    tf.extractall(dest)


def _parse_kv(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep and k and " " not in k:
            out[k.strip()] = v.strip()
    return out
