"""An Android device through the real ``adb`` client: ``adb`` (the only one attached) or ``adb:SERIAL``.

adb uses the real ``adb`` client (``adb=`` or EDGESHIP_ADB, server port from ``server_port=`` or
ANDROID_ADB_SERVER_PORT) and keeps its files under /data/local/tmp/edgeship. Capabilities: the battery fuel gauge
for energy, and the android-demo app's benchmark mode (``--via app``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from edgeship.errors import EdgeshipError

from .apps import AndroidDemoApp
from .base import (_CONNECT_TIMEOUT_S, DeviceEntry, DeviceInfo, _decode, _has_skipped, _parse_kv, _replace_into,
                   _skip, _staging_dir, _tail)
from .probe import _apply_probe, _parse_probe
from .remote import RemoteShellDevice, _split_remote

if TYPE_CHECKING:
    from ..energy import PowerSource

log = logging.getLogger(__name__)

_ADB_LOST = re.compile(r"^(?:adb: )?error: .*(?:device|offline|closed|unauthorized|connect|protocol fault)",
                       re.MULTILINE | re.IGNORECASE)


class AdbDevice(RemoteShellDevice):
    """An Android device through the real ``adb`` client: ``adb`` (the only one attached) or ``adb:SERIAL``.

    Files live under /data/local/tmp/edgeship (the one place the shell user may write). Android has no
    python of its own; ``python=`` names one on the device (e.g. pushed with a runtime), otherwise
    ``info().python`` is None and the bench must use native binaries.
    """
    kind = "adb"
    usage = "adb or adb:SERIAL"
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

    @classmethod
    def from_spec(cls, text: str, *, python: str | None = None, adb: str | None = None,
                  adb_server_port: int | None = None, **_options: Any) -> "AdbDevice":
        serial = text[4:] or None
        if text.startswith("adb:") and not serial:
            raise EdgeshipError("adb: needs a serial after the colon", hint="adb:SERIAL (see `adb devices`), or just adb")
        return cls(serial, adb=adb, server_port=adb_server_port, python=python)

    @classmethod
    def discover(cls, *, adb: str | None = None, adb_server_port: int | None = None,
                 **_options: Any) -> list[DeviceEntry]:
        """Every device `adb devices` lists, when adb is installed."""
        adb_bin = adb or os.environ.get("EDGESHIP_ADB") or shutil.which("adb")
        if not adb_bin:
            return []
        return _adb_devices([adb_bin] + (["-P", str(adb_server_port)] if adb_server_port else []) + ["devices", "-l"])

    def power_source(self, info: DeviceInfo | None = None) -> "PowerSource":
        from ..energy import AndroidBatterySource
        return AndroidBatterySource(self)

    @property
    def app(self) -> AndroidDemoApp:
        return AndroidDemoApp()

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


