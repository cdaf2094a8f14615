"""The host itself as a device (``--device local``)."""
from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from edgeship.errors import EdgeshipError

from .base import (DeviceBase, DeviceEntry, DeviceInfo, _check_env, _checked, _decode, _killpg, _replace_into, _skip,
                   _staging_dir, _tail)
from .probe import PROBE_PY, _apply_probe, _parse_probe, probe_argv


class LocalDevice(DeviceBase):
    """The host itself. Commands run in a subprocess of their own, so their memory figures are their own.
    No power sensor (energy needs --power-cmd), no app."""
    kind = "local"
    usage = "local"

    def __init__(self, *, python: str | None = None):
        self.id = "local"
        self.python = python or sys.executable

    @classmethod
    def from_spec(cls, text: str, *, python: str | None = None, **_options: Any) -> "LocalDevice":
        if text != "local":
            raise EdgeshipError(f"unknown device {text!r}", hint="the host is just: local")
        return cls(python=python)

    @classmethod
    def discover(cls, **_options: Any) -> list[DeviceEntry]:
        u = platform.uname()
        return [DeviceEntry("local", "local", "ready",
                            f"{u.node} {u.system} {u.machine}, python {platform.python_version()}")]

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

