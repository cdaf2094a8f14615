"""What the SSH and adb transports share: a remote POSIX shell.

Remote commands are wrapped in a small POSIX sh script that records the command's pid in a file and prints
a marker with its exit status at the end of stdout. The marker tells "the command exited with N" apart from
"the connection died" (ssh's 255, adb's 1), and the pid file lets us stop the command after a timeout or a
dropped connection. Cleanups that cannot reach the device are queued and run on the next successful
contact (``device.cleanup()`` runs them explicitly).
"""
from __future__ import annotations

import contextlib
import logging
import re
import shlex
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

from edgeship.errors import EdgeshipError

from .base import _HOUSEKEEPING_TIMEOUT_S, DeviceBase, _check_env, _checked, _decode, _tail
from .probe import PROBE_PY, probe_argv

log = logging.getLogger(__name__)

_MARK = "__EDGESHIP_RC__="


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


def _split_remote(remote: str) -> tuple[str, str]:
    path = remote.rstrip("/")
    if not path or path in (".", ".."):
        raise EdgeshipError(f"bad remote path {remote!r}")
    parent, _, name = path.rpartition("/")
    if name in (".", ".."):
        raise EdgeshipError(f"bad remote path {remote!r}")
    return (parent or ("/" if path.startswith("/") else ".")), name

class RemoteShellDevice(DeviceBase):
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


