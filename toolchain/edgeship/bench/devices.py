"""Devices a benchmark runs on: the host, a Linux board over SSH, an Android phone over adb.

    dev = parse_device("ssh://pi@raspberrypi.local")     # or "local", "adb", "adb:R58M123ABC"
    dev.info()                                           # DeviceInfo: os, arch, cpu, python, runtimes
    with dev.tempdir() as d:                             # removed afterwards, also after errors
        dev.push(Path("runtimes/edgeship_runtime"), f"{d}/edgeship_runtime")   # files or whole folders
        cp = dev.run([dev.python, "-m", "edgeship_runtime.bench", "model.onnx"], timeout_s=300,
                     cwd=d, env={"PYTHONPATH": d})
        dev.pull(f"{d}/out.json", Path("out.json"))

Every device has the same verbs. ``push(local, remote)`` puts ``local`` (a file or a folder, recursively;
``__pycache__`` folders are skipped) at exactly the path ``remote``, creating parent folders and merging
into an existing folder. ``pull(remote, local)`` brings ``remote`` to exactly ``local`` through a temporary
name and a rename, and refuses to replace an existing ``local`` unless ``force=True``.
``run(argv, timeout_s, cwd=, env=)`` returns a CompletedProcess with the command's exit status, stdout and
stderr; a timeout or a lost connection raises EdgeshipError and stops the command on the device.

SSH uses the system ``ssh`` binary with BatchMode=yes (key-based auth from the user's ssh config, never a
password: a URL with one, ``ssh://user:pw@host``, is refused and no message shows it; ``ssh_config=`` or EDGESHIP_SSH_CONFIG names another config file). Files travel as a tar stream
over one ssh connection (needs ``tar`` on the board, which every Linux image has; works without an sftp
subsystem, unlike OpenSSH 9's scp). adb uses the real ``adb`` client (``adb=`` or EDGESHIP_ADB, server port
from ``server_port=`` or ANDROID_ADB_SERVER_PORT) and keeps its files under /data/local/tmp/edgeship.

Remote commands are wrapped in a small POSIX sh script that records the command's pid in a file and prints
a marker with its exit status at the end of stdout. The marker tells "the command exited with N" apart from
"the connection died" (ssh's 255, adb's 1), and the pid file lets us stop the command after a timeout or a
dropped connection. Cleanups that cannot reach the device are queued and run on the next successful
contact (``device.cleanup()`` runs them explicitly).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable
from urllib.parse import parse_qs, urlsplit

from edgeship.errors import EdgeshipError
from edgeship_runtime.formats import FORMATS

log = logging.getLogger(__name__)

__all__ = ["Device", "DeviceInfo", "DeviceEntry", "LocalDevice", "SshDevice", "AdbDevice", "parse_device",
           "list_devices"]

_MARK = "__EDGESHIP_RC__="
_SKIP_DIRS = frozenset({"__pycache__"})
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ADB_LOST = re.compile(r"^(?:adb: )?error: .*(?:device|offline|closed|unauthorized|connect|protocol fault)",
                       re.MULTILINE | re.IGNORECASE)
_CONNECT_TIMEOUT_S = 10.0
_HOUSEKEEPING_TIMEOUT_S = 30.0

# Run on the device's python: which runtimes import, and their versions. argv[1] is a JSON list of records, one
# per format of the registry (edgeship_runtime.formats.FORMATS; see probe_records): {"format", "platforms",
# "probes": [[module, dist, how, deep], ...]}; argv[2] == "deep" imports what is otherwise only located. Each check
# runs in its own interpreter (a broken wheel may crash), all at once; a format's first probe that succeeds wins.
# A format whose ``platforms`` exclude this sys.platform is not probed. Python >= 3.7, no edgeship needed.
PROBE_PY = r"""
import json, platform, subprocess, sys
C = ("import importlib,importlib.util as u,sys\nn,d,h=sys.argv[1:4]\n"
     "if h=='import': importlib.import_module(n)\n"
     "elif not all(u.find_spec(x) for x in n.split('+')): raise ImportError('No module named ' + n)\n"
     "v=None\ntry:\n import importlib.metadata as m\n v=m.version(d)\nexcept Exception:\n"
     " v=getattr(sys.modules.get(n.split('.')[0]),'__version__',None)\nprint(v or '')")
SPECS = json.loads(sys.argv[1])
deep = sys.argv[2:3] == ["deep"]
OS = {"darwin": "macOS", "linux": "Linux", "win32": "Windows"}
rt, mods, why, R = {}, {}, {}, []
for s in SPECS:
    f, plats = s["format"], s.get("platforms")
    if plats is not None and sys.platform not in plats:
        rt[f] = None; why[f] = f + " runs only on " + " or ".join(OS.get(x, x) for x in plats); continue
    if not s.get("probes"):
        rt[f] = None; why[f] = "no runtime probe is registered for " + f; continue
    for n, d, h, dp in s["probes"]:
        if deep and dp:
            n, h = dp, "import"
        R.append((f, n, d or "", h))
P = [(f, n, subprocess.Popen([sys.executable, "-c", C, n, d, h], stdout=subprocess.PIPE, stderr=subprocess.PIPE))
     for f, n, d, h in R]
for f, n, p in P:
    try:
        o, e = p.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        p.kill(); o, e = b"", b"import timed out"
    if f in mods:
        continue
    if p.returncode == 0:
        rt[f] = o.decode().strip() or "unknown"; mods[f] = n.split("+")[0]; why.pop(f, None)
    else:
        last = (e.decode(errors="replace").strip().splitlines() or ["exit status %s" % p.returncode])[-1]
        why[f] = (why[f] + "; " if f in why else "") + n + ": " + last
        rt[f] = None
rt = {s["format"]: rt.get(s["format"]) for s in SPECS}
print("PYPROBE=" + json.dumps({"python": sys.executable, "python_version": platform.python_version(),
      "system": platform.system(), "release": platform.release(), "machine": platform.machine(),
      "runtimes": rt, "modules": mods, "missing": why}))
"""


def probe_records() -> list[dict[str, Any]]:
    """The device probe's argument: what to import for each format of the registry, as JSON-able records."""
    return [{"format": f.key, "platforms": list(f.platforms) if f.platforms is not None else None,
             "probes": [[p.module, p.dist, p.how, p.deep] for p in f.probes]} for f in FORMATS.values()]


def probe_argv(deep: bool = False) -> list[str]:
    """The arguments after ``python -c PROBE_PY``."""
    return [json.dumps(probe_records(), separators=(",", ":"))] + (["deep"] if deep else [])


@dataclass
class DeviceInfo:
    """What a device is and what it can run. ``runtimes`` maps format -> runtime version, None if absent."""
    id: str
    kind: str                       # local | ssh | adb
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
class Device(Protocol):
    id: str

    def info(self) -> DeviceInfo: ...
    def push(self, local: Path, remote: str) -> None: ...
    def run(self, argv: Sequence[str], timeout_s: float) -> subprocess.CompletedProcess: ...
    def pull(self, remote: str, local: Path) -> None: ...


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


def _split_marker(stdout: str) -> tuple[int | str | None, str]:
    """(exit status, stdout without the marker): status None when the wrapper never got to print it,
    "nocwd" when the working folder does not exist."""
    i = stdout.rfind("\n" + _MARK)
    if i < 0:
        return None, stdout
    m = re.match(r"(\d+|nocwd)", stdout[i + 1 + len(_MARK):])
    if not m:
        return None, stdout
    return (int(m.group(1)) if m.group(1).isdigit() else m.group(1)), stdout[:i]


def _wrap_command(argv: Sequence[str], cwd: str | None, env: dict[str, str], pidfile: str) -> str:
    """A POSIX sh script: run argv (in cwd, with env) as a background job whose pid goes to ``pidfile``,
    wait for it, then print the marker with its exit status."""
    if not argv:
        raise EdgeshipError("run() needs a command")
    cmd = " ".join(shlex.quote(str(a)) for a in argv)
    assigns = "".join(f"{k}={shlex.quote(v)} " for k, v in env.items())
    cd = f"cd {shlex.quote(cwd)} 2>/dev/null" if cwd else "true"
    pf = shlex.quote(pidfile)
    return (f"__es_rc=nocwd; if {cd}; then {assigns}{cmd} </dev/null & __es_pid=$!; echo $__es_pid > {pf}; "
            f"wait $__es_pid; __es_rc=$?; rm -f {pf}; fi; printf '\\n{_MARK}%s\\n' \"$__es_rc\"")


def _stop_script(pidfile: str) -> str:
    pf = shlex.quote(pidfile)
    return (f"p=$(cat {pf} 2>/dev/null); if [ -n \"$p\" ]; then kill -TERM \"$p\" 2>/dev/null; i=0; "
            f"while kill -0 \"$p\" 2>/dev/null && [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done; "
            f"kill -KILL \"$p\" 2>/dev/null; fi; rm -f {pf}")


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


def _parse_probe(stdout: str) -> dict[str, Any] | None:
    for line in stdout.splitlines():
        if line.startswith("PYPROBE="):
            try:
                return json.loads(line[len("PYPROBE="):])
            except ValueError:
                return None
    return None


def _apply_probe(info: DeviceInfo, probe: dict[str, Any] | None, python: str | None, why_not: str) -> None:
    if probe is None:
        info.runtimes = {f: None for f in FORMATS}
        info.missing = {f: why_not for f in info.runtimes}
        return
    info.python = probe.get("python") or python
    info.python_version = probe.get("python_version")
    info.runtimes = dict(probe.get("runtimes", {}))
    info.runtime_modules = dict(probe.get("modules", {}))
    info.missing = dict(probe.get("missing", {}))


# ------------------------------------------------------------------------------------------------ local

class LocalDevice:
    """The host itself. Commands run in a subprocess of their own, so their memory figures are their own."""
    kind = "local"

    def __init__(self, *, python: str | None = None):
        self.id = "local"
        self.python = python or sys.executable

    def __repr__(self) -> str:
        return "LocalDevice()"

    def info(self, *, deep: bool = False) -> DeviceInfo:
        uname = platform.uname()
        info = DeviceInfo(id=self.id, kind=self.kind, os=f"{uname.system} {uname.release}", arch=uname.machine,
                          cpu=local_cpu_model(), model=None)
        pretty = _os_release_pretty(Path("/etc/os-release"))
        if pretty:
            info.os += f" ({pretty})"
        try:
            cp = subprocess.run([self.python, "-c", PROBE_PY, *probe_argv(deep)], capture_output=True,
                                timeout=300)
            probe, why = _parse_probe(_decode(cp.stdout)), f"python probe failed: {_tail(cp.stderr, 200)}"
        except (OSError, subprocess.TimeoutExpired) as e:
            probe, why = None, f"python {self.python} does not run: {e}"
        _apply_probe(info, probe, self.python, why)
        info.extra["cpu_count"] = os.cpu_count()
        return info

    def run(self, argv: Sequence[str], timeout_s: float, *, cwd: str | None = None,
            env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess:
        argv = [str(a) for a in argv]
        full_env = {**os.environ, **_check_env(env)}
        if cwd is not None and not Path(cwd).is_dir():
            raise EdgeshipError(f"working folder {cwd} does not exist on {self.id}")
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:  # as a shell would say it, so every device answers alike
            return _checked(subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: {e.strerror or e}\n"),
                            self.id, check)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _killpg(proc)
            proc.communicate()
            raise EdgeshipError(f"{Path(argv[0]).name} did not finish within {timeout_s:g} s on local; it was stopped",
                                hint="raise the timeout or do less work per run") from None
        cp = subprocess.CompletedProcess(argv, proc.returncode, _decode(out), _decode(err))
        return _checked(cp, self.id, check)

    def push(self, local: Path, remote: str) -> None:
        local, dest = Path(local), Path(remote)
        if not local.exists():
            raise EdgeshipError(f"{local} does not exist")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if local.is_dir():
            shutil.copytree(local, dest, dirs_exist_ok=True, ignore=lambda _d, names: _skip(names))
        else:
            shutil.copy2(local, dest)

    def pull(self, remote: str, local: Path, *, force: bool = False) -> None:
        src, local = Path(remote), Path(local)
        if not src.exists():
            raise EdgeshipError(f"{remote} does not exist on {self.id}")
        with _staging_dir(local.parent) as tmp:
            staged = tmp / local.name
            if src.is_dir():
                shutil.copytree(src, staged)
            else:
                shutil.copy2(src, staged)
            _replace_into(staged, local, force)

    @contextlib.contextmanager
    def tempdir(self) -> Iterator[str]:
        d = tempfile.mkdtemp(prefix="edgeship-")
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def stream(self, argv: Sequence[str]) -> subprocess.Popen:
        """Start a long-running command whose stdout is read line by line (text); used by energy sampling."""
        return subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, bufsize=1, start_new_session=True)

    def cleanup(self) -> bool:
        return True


def _killpg(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError, AttributeError):
        proc.kill()


def _checked(cp: subprocess.CompletedProcess, device_id: str, check: bool) -> subprocess.CompletedProcess:
    if check and cp.returncode != 0:
        raise EdgeshipError(f"{Path(str(cp.args[0])).name} failed on {device_id} (exit status {cp.returncode}): "
                            f"{_tail(cp.stderr or cp.stdout)}")
    return cp


def local_cpu_model() -> str | None:
    """This machine's CPU model name (/proc/cpuinfo's "model name" or "Hardware", macOS' brand string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip() or None
    return platform.processor() or None


def _os_release_pretty(path: Path) -> str | None:
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return None


# ------------------------------------------------------------------------------------------------ remote

class _RemoteShellDevice:
    """What SSH and adb share: wrapped commands, temp folders, queued cleanups."""
    kind = "remote"
    id: str
    python: str | None
    _tmp_root: str   # temp folders go here
    _pid_root: str   # an existing folder for the pid files of running commands

    def __init__(self) -> None:
        self._pending: list[str] = []

    # transport, provided by the subclass ------------------------------------------------------------
    def _shell(self, script: str, timeout_s: float, stdin: Any = None) -> subprocess.CompletedProcess:
        """Run a POSIX sh script on the device; CompletedProcess with bytes. May raise TimeoutExpired."""
        raise NotImplementedError

    def _lost(self, cp: subprocess.CompletedProcess) -> bool:
        """Did the transport (not the command) fail?"""
        raise NotImplementedError

    def _conn_error(self, what: str, detail: str) -> EdgeshipError:
        raise NotImplementedError

    # housekeeping --------------------------------------------------------------------------------------
    def _housekeeping(self, script: str, what: str) -> subprocess.CompletedProcess:
        """Run a short script; raise EdgeshipError when the device is unreachable."""
        self._flush_pending()
        try:
            cp = self._shell(script, _HOUSEKEEPING_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise self._conn_error(what, f"no answer within {_HOUSEKEEPING_TIMEOUT_S:g} s") from None
        if self._lost(cp):
            raise self._conn_error(what, _tail(cp.stderr))
        return cp

    def _flush_pending(self) -> bool:
        if not self._pending:
            return True
        script = "; ".join(self._pending)
        try:
            cp = self._shell(script, _HOUSEKEEPING_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return False
        if self._lost(cp):
            return False
        log.info("ran %d queued cleanup(s) on %s", len(self._pending), self.id)
        self._pending.clear()
        return True

    def _best_effort(self, script: str, what: str) -> None:
        """Run a cleanup now; if the device cannot be reached, queue it for the next contact."""
        try:
            cp = self._shell(script, _HOUSEKEEPING_TIMEOUT_S)
            ok = not self._lost(cp)
        except subprocess.TimeoutExpired:
            ok = False
        if not ok:
            log.warning("could not %s on %s now; will retry on the next connection", what, self.id)
            self._pending.append(script)

    def cleanup(self) -> bool:
        """Run queued cleanups (stop orphaned commands, remove temp folders). True when none are left."""
        return self._flush_pending()

    @property
    def pending_cleanups(self) -> list[str]:
        return list(self._pending)

    # the Device verbs ----------------------------------------------------------------------------------
    def run(self, argv: Sequence[str], timeout_s: float, *, cwd: str | None = None,
            env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess:
        argv = [str(a) for a in argv]
        self._flush_pending()
        pidfile = f"{self._pid_root}/edgeship-run-{uuid.uuid4().hex[:12]}.pid"
        script = _wrap_command(argv, cwd, _check_env(env), pidfile)
        name = Path(argv[0]).name
        try:
            cp = self._shell(script, timeout_s)
        except subprocess.TimeoutExpired:
            self._best_effort(_stop_script(pidfile), f"stop {name}")
            raise EdgeshipError(f"{name} did not finish within {timeout_s:g} s on {self.id}; it was stopped",
                                hint="raise the timeout or do less work per run") from None
        out, err = _decode(cp.stdout), _decode(cp.stderr)
        rc, out = _split_marker(self._clean_output(out))
        if rc is None:
            self._best_effort(_stop_script(pidfile), f"stop {name}")
            raise self._conn_error(f"running {name}", _tail(err) or f"exit status {cp.returncode}")
        if rc == "nocwd":
            raise EdgeshipError(f"working folder {cwd} does not exist on {self.id}")
        assert isinstance(rc, int)
        return _checked(subprocess.CompletedProcess(argv, rc, out, err), self.id, check)

    def _clean_output(self, out: str) -> str:
        return out

    @contextlib.contextmanager
    def tempdir(self) -> Iterator[str]:
        """A fresh folder on the device, removed afterwards (queued for the next contact if unreachable)."""
        path = f"{self._tmp_root}/edgeship-{uuid.uuid4().hex[:12]}"
        self.mkdir(path)
        try:
            yield path
        finally:
            self._best_effort(f"rm -rf {shlex.quote(path)}{self._after_tempdir()}", f"remove {path}")

    def _after_tempdir(self) -> str:
        return ""

    def mkdir(self, remote: str) -> None:
        """``mkdir -p`` on the device."""
        cp = self.run(["mkdir", "-p", remote], _HOUSEKEEPING_TIMEOUT_S)
        if cp.returncode != 0:
            raise EdgeshipError(f"cannot create {remote} on {self.id}: {_tail(cp.stderr or cp.stdout)}")

    def exists(self, remote: str) -> bool:
        cp = self._housekeeping(f"if [ -e {shlex.quote(remote)} ]; then echo yes; else echo no; fi", "check a path")
        return _decode(cp.stdout).strip().endswith("yes")

    def _remote_python(self) -> str:
        return self.python or "python3"

    def _probe_script(self, extra: str, deep: bool) -> str:
        py = shlex.quote(self._remote_python())
        return (f"{extra}; if command -v {py} >/dev/null 2>&1; then echo python_path=$(command -v {py}); "
                f"{py} -c {shlex.quote(PROBE_PY)} {' '.join(map(shlex.quote, probe_argv(deep)))} 2>&1; "
                f"else echo python_path=; fi")


# ------------------------------------------------------------------------------------------------ ssh

class SshDevice(_RemoteShellDevice):
    """A Linux board (Raspberry Pi, Jetson, any SBC) over SSH: ``ssh://[user@]host[:port][?python=PATH]``."""
    kind = "ssh"

    def __init__(self, url: str, *, ssh_config: str | Path | None = None, python: str | None = None,
                 ssh: str | None = None):
        super().__init__()
        shown = _redact_url(url)      # every message names the URL without its password
        if shown != url:
            plain = shown.replace(":***@", "@", 1)
            raise EdgeshipError(
                f"the device URL {shown} carries a password: edgeship never sends passwords (ssh runs with "
                "BatchMode=yes, so it would be ignored)",
                hint=f"use {plain} with key-based auth (ssh-keygen, then ssh-copy-id to the board) or a Host entry "
                     "with IdentityFile in your ssh config (--ssh-config FILE)")
        try:
            parts = urlsplit(url)
            hostname = parts.hostname
        except ValueError as e:
            raise EdgeshipError(f"not an ssh device URL: {shown!r} ({e})", hint="use ssh://user@host[:port]") from None
        if parts.scheme != "ssh" or not hostname:
            raise EdgeshipError(f"not an ssh device URL: {shown!r}", hint="use ssh://user@host[:port]")
        if parts.path not in ("", "/"):
            raise EdgeshipError(f"unexpected path {parts.path!r} in {shown!r}", hint="use ssh://user@host[:port]")
        try:
            self.port = parts.port
        except ValueError:
            raise EdgeshipError(f"bad port in {shown!r}", hint="use ssh://user@host:2222") from None
        self.user, self.host = parts.username, parts.hostname
        query = parse_qs(parts.query)
        self.python = python or (query.get("python") or [None])[0] or "python3"
        cfg = ssh_config or os.environ.get("EDGESHIP_SSH_CONFIG")
        self.ssh_config = str(cfg) if cfg else None
        self._ssh = ssh
        self.id = f"ssh://{self.user + '@' if self.user else ''}{self.host}{':' + str(self.port) if self.port else ''}"
        self._tmp_root = self._pid_root = "/tmp"

    def __repr__(self) -> str:
        return f"SshDevice({self.id!r})"

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def ssh_argv(self, remote_command: str | None = None) -> list[str]:
        ssh = self._ssh or shutil.which("ssh")
        if not ssh:
            raise EdgeshipError("the ssh client is not installed",
                                hint="apt-get install openssh-client (or scripts/install-system-deps.sh)")
        argv = [ssh]
        if self.ssh_config:
            argv += ["-F", self.ssh_config]
        argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(_CONNECT_TIMEOUT_S)}",
                 "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-T"]
        if self.port:
            argv += ["-p", str(self.port)]
        argv += ["--", self.target]
        if remote_command is not None:
            argv.append(remote_command)
        return argv

    def _shell(self, script: str, timeout_s: float, stdin: Any = None) -> subprocess.CompletedProcess:
        argv = self.ssh_argv(f"sh -c {shlex.quote(script)}")
        return subprocess.run(argv, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                              capture_output=True, timeout=timeout_s)

    def _lost(self, cp: subprocess.CompletedProcess) -> bool:
        return cp.returncode == 255

    def _conn_error(self, what: str, detail: str) -> EdgeshipError:
        cfg = f"-F {self.ssh_config} " if self.ssh_config else ""
        port = f"-p {self.port} " if self.port else ""
        return EdgeshipError(
            f"ssh connection to {self.id} failed while {what}: {detail}",
            hint=f"check that `ssh {cfg}{port}{self.target} true` works without a password prompt "
                 f"(key-based auth, e.g. ssh-copy-id {self.target}); edgeship runs ssh with BatchMode=yes")

    def info(self, *, deep: bool = False) -> DeviceInfo:
        """Probe the board in one ssh round trip (``deep`` imports executorch too: slow)."""
        extra = ("echo uname_s=$(uname -s); echo uname_r=$(uname -r); echo uname_m=$(uname -m); "
                 "echo os_pretty=$(. /etc/os-release 2>/dev/null; echo \"$PRETTY_NAME\"); "
                 "echo dt_model=$(tr -d '\\000' < /proc/device-tree/model 2>/dev/null); "
                 "echo cpu_model=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1); "
                 "echo cpuinfo_model=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo 2>/dev/null"
                 " | head -n 1); echo ncpu=$(getconf _NPROCESSORS_ONLN 2>/dev/null); "
                 "echo vcgencmd=$(command -v vcgencmd 2>/dev/null); "
                 "echo governor=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null)")
        cp = self._housekeeping(self._probe_script(extra, deep), "probing the device")
        out = _decode(cp.stdout)
        kv = _parse_kv(out)
        os_name = f"{kv.get('uname_s', '?')} {kv.get('uname_r', '')}".strip()
        if kv.get("os_pretty"):
            os_name += f" ({kv['os_pretty']})"
        info = DeviceInfo(id=self.id, kind=self.kind, os=os_name, arch=kv.get("uname_m", "?"),
                          cpu=kv.get("cpu_model") or kv.get("cpuinfo_model") or None,
                          model=kv.get("dt_model") or None)
        py = kv.get("python_path") or None
        why = (f"python '{self._remote_python()}' not found on the device" if not py
               else f"python probe failed: {_tail(out, 200)}")
        _apply_probe(info, _parse_probe(out) if py else None, py, why)
        info.extra.update({"vcgencmd": kv.get("vcgencmd") or None, "governor": kv.get("governor") or None,
                           "cpu_count": int(kv["ncpu"]) if kv.get("ncpu", "").isdigit() else None})
        return info

    def push(self, local: Path, remote: str) -> None:
        local = Path(local)
        if not local.exists():
            raise EdgeshipError(f"{local} does not exist")
        parent, name = _split_remote(remote)
        with tempfile.TemporaryFile() as tarball:
            with tarfile.open(fileobj=tarball, mode="w", format=tarfile.GNU_FORMAT) as tf:
                tf.add(local, arcname=name, filter=_tar_filter)
            tarball.seek(0)
            self._flush_pending()
            script = f"mkdir -p {shlex.quote(parent)} && tar -xf - -C {shlex.quote(parent)}"
            cp = self._transfer(script, tarball, f"pushing {local.name}")
        if cp.returncode != 0:
            raise EdgeshipError(f"push of {local} to {self.id}:{remote} failed: {_tail(cp.stderr)}")

    def pull(self, remote: str, local: Path, *, force: bool = False) -> None:
        local = Path(local)
        parent, name = _split_remote(remote)
        self._flush_pending()
        with _staging_dir(local.parent) as tmp:
            with open(tmp / ".pull.tar", "w+b") as tarball:
                script = f"cd {shlex.quote(parent)} && tar -cf - {shlex.quote(name)}"
                cp = self._transfer(script, None, f"pulling {remote}", stdout=tarball)
                if cp.returncode != 0:
                    raise EdgeshipError(f"pull of {self.id}:{remote} failed: {_tail(cp.stderr)}")
                tarball.seek(0)
                with tarfile.open(fileobj=tarball, mode="r") as tf:
                    _safe_extract(tf, tmp / "x")
            _replace_into(tmp / "x" / name, local, force)

    def _transfer(self, script: str, stdin: Any, what: str, stdout: Any = None) -> subprocess.CompletedProcess:
        argv = self.ssh_argv(f"sh -c {shlex.quote(script)}")
        try:
            cp = subprocess.run(argv, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                stdout=stdout if stdout is not None else subprocess.PIPE,
                                stderr=subprocess.PIPE, timeout=3600)
        except subprocess.TimeoutExpired:
            raise self._conn_error(what, "no progress within an hour") from None
        if self._lost(cp):
            raise self._conn_error(what, _tail(cp.stderr))
        return cp

    def stream(self, argv: Sequence[str]) -> subprocess.Popen:
        """Start a long-running command on the board; read its stdout line by line (text)."""
        cmd = " ".join(shlex.quote(str(a)) for a in argv)
        return subprocess.Popen(self.ssh_argv(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, bufsize=1, start_new_session=True)


def _split_remote(remote: str) -> tuple[str, str]:
    path = remote.rstrip("/")
    if not path or path in (".", ".."):
        raise EdgeshipError(f"bad remote path {remote!r}")
    parent, _, name = path.rpartition("/")
    if name in (".", ".."):
        raise EdgeshipError(f"bad remote path {remote!r}")
    return (parent or ("/" if path.startswith("/") else ".")), name


def _tar_filter(ti: tarfile.TarInfo) -> tarfile.TarInfo | None:
    base = ti.name.rsplit("/", 1)[-1]
    if base in _SKIP_DIRS or base.endswith(".pyc"):
        return None
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


# ------------------------------------------------------------------------------------------------ adb

class AdbDevice(_RemoteShellDevice):
    """An Android device through the real ``adb`` client: ``adb`` (the only one attached) or ``adb:SERIAL``.

    Files live under /data/local/tmp/edgeship (the one place the shell user may write). Android has no
    python of its own; ``python=`` names one on the device (e.g. pushed with a runtime), otherwise
    ``info().python`` is None and the bench must use native binaries.
    """
    kind = "adb"
    BASE = "/data/local/tmp/edgeship"

    def __init__(self, serial: str | None = None, *, adb: str | None = None, server_port: int | None = None,
                 python: str | None = None):
        super().__init__()
        self._adb = adb or os.environ.get("EDGESHIP_ADB")
        self.server_port = server_port
        self._serial = serial or None
        self.python = python
        self._features: frozenset[str] | None = None
        self._tmp_root, self._pid_root = self.BASE, "/data/local/tmp"

    def __repr__(self) -> str:
        return f"AdbDevice({self._serial!r})"

    @property
    def id(self) -> str:  # type: ignore[override]
        return f"adb:{self._serial}" if self._serial else "adb"

    def adb_argv(self, *args: str, serial: bool = True) -> list[str]:
        adb = self._adb or shutil.which("adb")
        if not adb:
            raise EdgeshipError("the adb client is not installed",
                                hint="install Android platform-tools (apt-get install adb, or the SDK's "
                                     "platform-tools) or set EDGESHIP_ADB=/path/to/adb")
        argv = [adb]
        if self.server_port:
            argv += ["-P", str(self.server_port)]
        if serial:
            argv += ["-s", self.serial]
        return argv + list(args)

    @property
    def serial(self) -> str:
        if self._serial is None:
            ready = [e for e in _adb_devices(self.adb_argv("devices", "-l", serial=False)) if e.state == "device"]
            if len(ready) != 1:
                found = ", ".join(e.id for e in ready) or "none"
                raise EdgeshipError(f"'adb' needs exactly one attached device; found {found}",
                                    hint="name one with adb:SERIAL (see `adb devices`)")
            self._serial = ready[0].id.split(":", 1)[1]
        return self._serial

    @property
    def features(self) -> frozenset[str]:
        if self._features is None:
            try:
                cp = subprocess.run(self.adb_argv("features"), capture_output=True, timeout=_CONNECT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise self._conn_error("reading its features", "adb did not answer") from None
            if cp.returncode != 0:
                raise self._conn_error("reading its features", _tail(cp.stderr or cp.stdout))
            self._features = frozenset(_decode(cp.stdout).split())
        return self._features

    def _shell(self, script: str, timeout_s: float, stdin: Any = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.adb_argv("shell", script), stdin=stdin if stdin is not None else subprocess.DEVNULL,
                              capture_output=True, timeout=timeout_s)

    def _lost(self, cp: subprocess.CompletedProcess) -> bool:
        # adb's own complaints ("error: device offline", "adb: error: failed to get feature set: device
        # offline", "error: device 'X' not found", "error: closed"), not the remote command's stderr.
        if cp.returncode == 0:
            return False
        text = _decode(cp.stderr) + "\n" + _decode(cp.stdout)
        return bool(_ADB_LOST.search(text))

    def _conn_error(self, what: str, detail: str) -> EdgeshipError:
        return EdgeshipError(f"adb connection to {self.id} failed while {what}: {detail}",
                             hint="check that `adb devices` lists it as 'device' (authorized); over Wi-Fi: "
                                  "adb connect HOST:PORT")

    def _clean_output(self, out: str) -> str:
        # Devices without shell_v2 run commands on a pty: \r\n line ends, stderr merged into stdout.
        return out if "shell_v2" in self.features else out.replace("\r\n", "\n")

    def _remote_python(self) -> str:
        return self.python or "python3"

    def info(self, *, deep: bool = False) -> DeviceInfo:
        props = ("ro.product.model", "ro.product.manufacturer", "ro.soc.manufacturer", "ro.soc.model",
                 "ro.board.platform", "ro.hardware", "ro.build.version.release", "ro.build.version.sdk",
                 "ro.product.cpu.abi", "ro.product.cpu.abilist")
        extra = ("for p in " + " ".join(props) + "; do echo \"$p=$(getprop $p)\"; done; "
                 "echo uname_m=$(uname -m); echo uname_r=$(uname -r); "
                 "echo governor=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null); "
                 "echo thermal=$(dumpsys thermalservice 2>/dev/null | grep 'Thermal Status' | head -n 1); "
                 "echo battery_status=$(cat /sys/class/power_supply/battery/status 2>/dev/null)")
        cp = self._housekeeping(self._probe_script(extra, deep), "probing the device")
        out = self._clean_output(_decode(cp.stdout))
        kv = _parse_kv(out)
        soc = " ".join(v for v in (kv.get("ro.soc.manufacturer"), kv.get("ro.soc.model")) if v) or None
        model = " ".join(v for v in (kv.get("ro.product.manufacturer"), kv.get("ro.product.model")) if v) or None
        info = DeviceInfo(id=self.id, kind=self.kind,
                          os=f"Android {kv.get('ro.build.version.release', '?')} (SDK {kv.get('ro.build.version.sdk', '?')})",
                          arch=kv.get("ro.product.cpu.abi") or kv.get("uname_m", "?"),
                          cpu=soc or kv.get("ro.board.platform") or kv.get("ro.hardware") or None, model=model)
        py = kv.get("python_path") or None
        why = ("no python on the device (Android has none; pass python= to use one)" if not py
               else f"python probe failed: {_tail(out, 200)}")
        _apply_probe(info, _parse_probe(out) if py else None, py, why)
        thermal = kv.get("thermal", "")
        m = re.search(r"(\d+)", thermal)
        info.extra.update({
            "board_platform": kv.get("ro.board.platform") or None, "hardware": kv.get("ro.hardware") or None,
            "abilist": (kv.get("ro.product.cpu.abilist") or "").split(",") if kv.get("ro.product.cpu.abilist") else [],
            "kernel": kv.get("uname_r") or None, "governor": kv.get("governor") or None,
            "thermal_status": int(m.group(1)) if m else None, "battery_status": kv.get("battery_status") or None,
            "adb_features": sorted(self.features),
        })
        return info

    def push(self, local: Path, remote: str) -> None:
        local = Path(local)
        if not local.exists():
            raise EdgeshipError(f"{local} does not exist")
        remote = remote.rstrip("/") or "/"
        with contextlib.ExitStack() as stack:
            src = local
            if _has_skipped(local):  # stage a copy without __pycache__ / .pyc
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeship-push-")))
                src = tmp / local.name
                shutil.copytree(local, src, ignore=lambda _d, names: _skip(names))
            if src.is_dir():
                self.mkdir(remote)
                children = sorted(str(c) for c in src.iterdir())
                if not children:
                    return
                self._adb_transfer("push", *children, remote + "/", what=f"pushing {local}")
            else:
                parent, _name = _split_remote(remote)
                self.mkdir(parent)
                self._adb_transfer("push", str(src), remote, what=f"pushing {local}")

    def pull(self, remote: str, local: Path, *, force: bool = False) -> None:
        local = Path(local)
        self._flush_pending()
        with _staging_dir(local.parent) as tmp:
            staged = tmp / local.name
            self._adb_transfer("pull", remote, str(staged), what=f"pulling {remote}")
            _replace_into(staged, local, force)

    def _adb_transfer(self, verb: str, *args: str, what: str) -> None:
        try:
            cp = subprocess.run(self.adb_argv(verb, *args), stdin=subprocess.DEVNULL, capture_output=True,
                                timeout=3600)
        except subprocess.TimeoutExpired:
            raise self._conn_error(what, "no progress within an hour") from None
        if cp.returncode != 0:
            if self._lost(cp):
                raise self._conn_error(what, _tail(cp.stderr or cp.stdout))
            raise EdgeshipError(f"adb {verb} failed on {self.id} while {what}: {_tail(cp.stderr or cp.stdout)}")

    def _after_tempdir(self) -> str:
        # leave no empty /data/local/tmp/edgeship behind (rmdir fails harmlessly while another run uses it)
        return f"; rmdir {shlex.quote(self.BASE)} 2>/dev/null; true"

    def stream(self, argv: Sequence[str]) -> subprocess.Popen:
        cmd = " ".join(shlex.quote(str(a)) for a in argv)
        return subprocess.Popen(self.adb_argv("shell", cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, bufsize=1, start_new_session=True)


def _adb_devices(argv: list[str]) -> list[DeviceEntry]:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=_CONNECT_TIMEOUT_S * 3)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("adb devices failed: %s", e)
        return []
    entries = []
    for line in cp.stdout.splitlines():
        if not line.strip() or line.startswith(("List of devices", "*")):
            continue
        fields = line.split()
        if len(fields) < 2:
            continue
        serial, state, rest = fields[0], fields[1], fields[2:]
        attrs = dict(f.split(":", 1) for f in rest if ":" in f)
        desc = " ".join(x for x in (attrs.get("model", "").replace("_", " "), attrs.get("device", "")) if x)
        entries.append(DeviceEntry(id=f"adb:{serial}", kind="adb", state=state, description=desc or "Android device"))
    return entries


# ------------------------------------------------------------------------------------------------ entry points

def parse_device(text: str, *, ssh_config: str | Path | None = None, python: str | None = None,
                 adb: str | None = None, adb_server_port: int | None = None) -> Device:
    """``local`` | ``ssh://[user@]host[:port]`` | ``adb`` | ``adb:SERIAL`` -> a Device."""
    t = (text or "").strip()
    if t == "local":
        return LocalDevice(python=python)
    if t.startswith("ssh://"):
        return SshDevice(t, ssh_config=ssh_config, python=python)
    if t == "adb" or t.startswith("adb:"):
        serial = t[4:] or None
        if t.startswith("adb:") and not serial:
            raise EdgeshipError("adb: needs a serial after the colon", hint="adb:SERIAL (see `adb devices`), or just adb")
        return AdbDevice(serial, adb=adb, server_port=adb_server_port, python=python)
    raise EdgeshipError(f"unknown device {_redact_url(text)!r}",
                        hint="use local, ssh://user@host[:port], adb or adb:SERIAL (see `edgeship devices`)")


def list_devices(*, ssh_config: str | Path | None = None, adb: str | None = None,
                 adb_server_port: int | None = None) -> list[DeviceEntry]:
    """The host, every device `adb devices` lists (when adb is installed), and Host entries of the ssh config."""
    u = platform.uname()
    out = [DeviceEntry("local", "local", "ready", f"{u.node} {u.system} {u.machine}, python {platform.python_version()}")]
    adb_bin = adb or os.environ.get("EDGESHIP_ADB") or shutil.which("adb")
    if adb_bin:
        argv = [adb_bin] + (["-P", str(adb_server_port)] if adb_server_port else []) + ["devices", "-l"]
        out += _adb_devices(argv)
    cfg = Path(ssh_config or os.environ.get("EDGESHIP_SSH_CONFIG") or Path.home() / ".ssh" / "config")
    for alias, desc in ssh_config_hosts(cfg):
        out.append(DeviceEntry(f"ssh://{alias}", "ssh", "configured", desc))
    return out


_CONFIG_LINE = re.compile(r"^(?P<key>[^\s=]+)(?:\s*=\s*|\s+)(?P<value>.*)$")


def _config_line(line: str) -> tuple[str, str]:
    """(keyword in lower case, value) of one ssh_config line: ``Keyword value``, ``Keyword=value`` or
    ``Keyword = value``. Only the first ``=`` (the one right after the keyword) separates; the value is kept as is,
    so ``Host a=b`` names the pattern ``a=b``."""
    m = _CONFIG_LINE.match(line)
    if not m:
        return line.lower(), ""
    return m.group("key").lower(), m.group("value").strip()


def ssh_config_hosts(path: Path) -> list[tuple[str, str]]:
    """(alias, "user@hostname:port") for each concrete ``Host`` in an ssh config (patterns are skipped;
    ``Include`` is not followed). A ``Host`` value is a whitespace-separated pattern list (double quotes group)."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    hosts: list[tuple[list[str], dict[str, str]]] = []
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, value = _config_line(line)
        if key == "host":
            hosts.append((_patterns(value), {}))
        elif key == "match":
            hosts.append(([], {}))
        elif hosts and key in ("hostname", "user", "port"):
            hosts[-1][1].setdefault(key, value)
    out = []
    for names, opts in hosts:
        for name in names:
            if any(c in name for c in "*?!"):
                continue
            target = f"{opts['user']}@" if "user" in opts else ""
            target += opts.get("hostname", name) + (f":{opts['port']}" if "port" in opts else "")
            out.append((name, f"ssh config: {target}"))
    return out


def _patterns(value: str) -> list[str]:
    """The patterns of a ``Host`` line: split on whitespace, double quotes grouping (as ssh reads them)."""
    try:
        lex = shlex.shlex(value, posix=True)
        lex.whitespace_split, lex.quotes, lex.escape, lex.commenters = True, '"', "", ""
        return [w for w in lex if w]
    except ValueError:      # an unbalanced quote: ssh itself refuses the file; list nothing for this line
        return []
