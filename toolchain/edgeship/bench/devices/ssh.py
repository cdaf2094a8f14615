"""A Linux board (Raspberry Pi, Jetson, any SBC) over SSH: ``ssh://[user@]host[:port][?python=PATH]``.

SSH uses the system ``ssh`` binary with BatchMode=yes (key-based auth from the user's ssh config, never a
password: a URL with one, ``ssh://user:pw@host``, is refused and no message shows it; ``ssh_config=`` or
EDGESHIP_SSH_CONFIG names another config file). Files travel as a tar stream over one ssh connection (needs ``tar``
on the board, which every Linux image has; works without an sftp subsystem, unlike OpenSSH 9's scp).

Power: a board whose probe shows a Raspberry Pi (vcgencmd, or "Raspberry Pi" in its device-tree model) gets the
Pi 5 PMIC source; any other board has no sensor edgeship reads (``--power-cmd``).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import parse_qs, urlsplit

from edgeship.errors import EdgeshipError

from .base import (_CONNECT_TIMEOUT_S, _SKIP_DIRS, DeviceEntry, DeviceInfo, _decode, _parse_kv, _redact_url,
                   _replace_into, _safe_extract, _staging_dir, _tail, no_sensor_reason)
from .probe import _apply_probe, _parse_probe
from .remote import RemoteShellDevice, _split_remote

if TYPE_CHECKING:
    from ..energy import PowerSource


class SshDevice(RemoteShellDevice):
    """A Linux board (Raspberry Pi, Jetson, any SBC) over SSH: ``ssh://[user@]host[:port][?python=PATH]``."""
    kind = "ssh"
    usage = "ssh://user@host[:port]"

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

    @classmethod
    def from_spec(cls, text: str, *, ssh_config: str | Path | None = None, python: str | None = None,
                  **_options: Any) -> "SshDevice":
        return cls(text, ssh_config=ssh_config, python=python)

    @classmethod
    def discover(cls, *, ssh_config: str | Path | None = None, **_options: Any) -> list[DeviceEntry]:
        """The concrete ``Host`` entries of the ssh config."""
        cfg = Path(ssh_config or os.environ.get("EDGESHIP_SSH_CONFIG") or Path.home() / ".ssh" / "config")
        return [DeviceEntry(f"ssh://{alias}", "ssh", "configured", desc) for alias, desc in ssh_config_hosts(cfg)]

    def power_source(self, info: DeviceInfo | None = None) -> "PowerSource":
        """The Raspberry Pi 5 PMIC when the board is a Pi (or when nothing is known of it yet: the source's own probe
        then says why it is unavailable); otherwise no sensor."""
        from ..energy import PiPmicSource, Unavailable
        if info is None or is_raspberry_pi(info):
            return PiPmicSource(self)
        return Unavailable(no_sensor_reason(self.id, f" (model {info.model or 'unknown'}, no vcgencmd: not a "
                                                     "Raspberry Pi)"))

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


def is_raspberry_pi(info: DeviceInfo) -> bool:
    """Does the probe show a Raspberry Pi: vcgencmd on the PATH, or "Raspberry Pi" in the device-tree model?"""
    return bool(info.extra.get("vcgencmd")) or "raspberry pi" in (info.model or "").lower()


def _tar_filter(ti: tarfile.TarInfo) -> tarfile.TarInfo | None:
    base = ti.name.rsplit("/", 1)[-1]
    if base in _SKIP_DIRS or base.endswith(".pyc"):
        return None
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


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
