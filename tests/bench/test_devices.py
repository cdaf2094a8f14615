"""Devices through real parts: the host, a real sshd on loopback, the real adb client against a fake adbd."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the `support` fixtures

from edgeship.bench.devices import (AdbDevice, DeviceInfo, LocalDevice, SshDevice, list_devices,  # noqa: E402
                                    parse_device, ssh_config_hosts)
from edgeship.errors import EdgeshipError  # noqa: E402
from support.adb import AdbLab, adb_lab  # noqa: E402,F401  (fixture)
from support.sshd import SshServer, sshd  # noqa: E402,F401  (fixture)
from support.tools import REQUIRE_ENV, need_tool  # noqa: E402

VENV_PY = sys.executable  # has onnxruntime, ai_edge_litert, executorch


# ------------------------------------------------------------------------------------------ helpers

def _running(token: str) -> list[int]:
    """pids of live (not zombie) processes on this host whose command line contains ``token``."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if token in cmd and state != "Z" and "sh -c" not in cmd:
            pids.append(int(d.name))
    return pids


def _wait_gone(token: str, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = _running(token)
        if not left:
            return []
        time.sleep(0.1)
    return _running(token)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): _sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    """A package folder: nested files, a binary blob, an empty file, and __pycache__ that must not travel."""
    pkg = tmp_path / "payload" / "edgeship_probe"
    (pkg / "sub" / "deep").mkdir(parents=True)
    (pkg / "__init__.py").write_text("VALUE = 41\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "deep" / "data.txt").write_text("héllo\nworld\n", encoding="utf-8")
    (pkg / "blob.bin").write_bytes(os.urandom(300_000))
    (pkg / "empty.txt").write_bytes(b"")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "junk.cpython-311.pyc").write_bytes(b"junk")
    return pkg


# Reads the pushed package from cwd + PYTHONPATH, writes out/result.json; stdout and stderr differ.
SCRIPT = """
import hashlib, json, os, sys, edgeship_probe
blob = open(os.path.join('pkg', 'edgeship_probe', 'blob.bin'), 'rb').read()
os.makedirs('out', exist_ok=True)
with open(os.path.join('out', 'result.json'), 'w') as f:
    json.dump({'value': edgeship_probe.VALUE + 1, 'sha': hashlib.sha256(blob).hexdigest(),
               'marker': os.environ['EDGESHIP_MARK'], 'cwd_has_pkg': os.path.isdir('pkg')}, f)
print('to stdout')
print('to stderr', file=sys.stderr)
sys.exit(3)
"""


# ------------------------------------------------------------------------------------------ fixtures' contract

def test_missing_tool_skips_or_fails_under_ci(monkeypatch):
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="install-system-deps"):
        need_tool("edgeship-no-such-tool")
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=REQUIRE_ENV):
        need_tool("edgeship-no-such-tool")
    assert need_tool("sh") == shutil.which("sh")


# ------------------------------------------------------------------------------------------ parsing

def test_parse_device_kinds_and_errors():
    assert isinstance(parse_device("local"), LocalDevice)
    d = parse_device("ssh://pi@raspberrypi.local:2222?python=/opt/venv/bin/python")
    assert isinstance(d, SshDevice)
    assert (d.user, d.host, d.port, d.python, d.id) == ("pi", "raspberrypi.local", 2222, "/opt/venv/bin/python",
                                                         "ssh://pi@raspberrypi.local:2222")
    d = parse_device("ssh://board")
    assert (d.user, d.host, d.port, d.python, d.id) == (None, "board", None, "python3", "ssh://board")
    assert isinstance(parse_device("adb"), AdbDevice) and parse_device("adb").id == "adb"
    a = parse_device("adb:R58M123ABC")
    assert isinstance(a, AdbDevice) and a.id == "adb:R58M123ABC"
    assert parse_device("adb:10.0.0.5:5555").id == "adb:10.0.0.5:5555"
    for bad, needle in [("pi@host", "unknown device"), ("adb:", "serial"), ("ssh://", "not an ssh"),
                        ("ssh://h:notaport", "bad port"), ("ssh://h/some/path", "unexpected path"), ("", "unknown")]:
        with pytest.raises(EdgeshipError, match=needle) as e:
            parse_device(bad)
        assert e.value.hint


@pytest.mark.parametrize("url", ["ssh://u:secret@127.0.0.1", "ssh://u:secret@127.0.0.1:notaport",
                                 "ssh://u:sec/ret@host", "ssh://u:secret@", "ssh://:secret@host", "sshx://u:secret@host"])
def test_device_url_with_a_password_is_refused_without_echoing_it(url: str):
    """A password in a device URL would be ignored (BatchMode=yes): refused, and no message ever shows it."""
    with pytest.raises(EdgeshipError) as e:
        parse_device(url)
    assert "secret" not in str(e.value) and "sec/ret" not in str(e.value) and e.value.hint
    if url.startswith("ssh://"):
        assert "password" in e.value.message and "ssh config" in e.value.hint and "key" in e.value.hint


def test_ssh_config_keyword_equals_value(tmp_path: Path):
    """``Keyword=value`` and ``Keyword = value`` separate at the first ``=`` only; a Host value is a pattern list."""
    cfg = tmp_path / "config"
    cfg.write_text("""
Host=alias
  HostName = alias.lan
Host a=b "quoted name"
\tUser\tpi
Host = x y
""")
    assert ssh_config_hosts(cfg) == [("alias", "ssh config: alias.lan"), ("a=b", "ssh config: pi@a=b"),
                                     ("quoted name", "ssh config: pi@quoted name"), ("x", "ssh config: x"),
                                     ("y", "ssh config: y")]


def test_ssh_config_hosts(tmp_path: Path):
    cfg = tmp_path / "config"
    cfg.write_text("""
Host *
  ServerAliveInterval 30
Host pi5 pi5-alias   # two names
  HostName 192.168.1.50
  User pi
Host jetson
  HostName=jetson.lan
  Port 2222
Host *.lan !bad
  User x
""")
    assert ssh_config_hosts(cfg) == [("pi5", "ssh config: pi@192.168.1.50"), ("pi5-alias", "ssh config: pi@192.168.1.50"),
                                     ("jetson", "ssh config: jetson.lan:2222")]
    assert ssh_config_hosts(tmp_path / "missing") == []


# ------------------------------------------------------------------------------------------ all devices alike

@pytest.fixture(params=["local", pytest.param("ssh", marks=pytest.mark.slow), "adb", "adb-legacy"])
def any_device(request, tmp_path_factory):
    """Each kind of device, all running on this host (ssh through sshd, adb through the real client)."""
    kind = request.param
    if kind == "local":
        return LocalDevice(), (lambda remote: Path(remote))
    if kind == "ssh":
        server: SshServer = request.getfixturevalue("sshd")
        return SshDevice(server.url(), ssh_config=server.config, python=VENV_PY), (lambda remote: Path(remote))
    lab: AdbLab = request.getfixturevalue("adb_lab")
    fake, dev = lab.add_device(shell_v2=(kind == "adb"), python=True)
    return dev, fake.device_path


def test_push_run_pull_round_trip(any_device, payload: Path, tmp_path: Path):
    dev, host_path = any_device
    with dev.tempdir() as d:
        dev.push(payload, f"{d}/pkg/edgeship_probe")          # a whole folder, into a parent that is new
        dev.push(payload / "empty.txt", f"{d}/single/copy.txt")  # a single file under a new name
        cp = dev.run([dev.python or "python3", "-c", SCRIPT], 60, cwd=d,
                     env={"PYTHONPATH": f"{d}/pkg", "EDGESHIP_MARK": "it's $HOME \"quoted\""})
        assert cp.returncode == 3
        if getattr(dev, "kind", "") == "adb" and "shell_v2" not in dev.features:
            assert "to stdout" in cp.stdout and "to stderr" in cp.stdout   # legacy adb merges the streams
        else:
            assert cp.stdout == "to stdout\n" and cp.stderr == "to stderr\n"
        dev.pull(f"{d}/out", tmp_path / "out")
        dev.pull(f"{d}/pkg", tmp_path / "pkg")
        dev.pull(f"{d}/single/copy.txt", tmp_path / "copy.txt")
        assert host_path(d).is_dir()
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result == {"value": 42, "sha": _sha(payload / "blob.bin"), "marker": "it's $HOME \"quoted\"",
                      "cwd_has_pkg": True}
    pulled = _tree(tmp_path / "pkg" / "edgeship_probe")
    expected = {k: v for k, v in _tree(payload).items() if "__pycache__" not in k}
    assert {k: v for k, v in pulled.items() if "__pycache__" not in k} == expected
    assert not any(k.endswith("junk.cpython-311.pyc") for k in pulled)  # skipped on push
    assert (tmp_path / "copy.txt").read_bytes() == b""
    assert not host_path(d).exists()   # the temp folder is gone from the device


def test_exit_status_check_and_pull_refusal(any_device, tmp_path: Path):
    dev, _ = any_device
    assert dev.run(["sh", "-c", "exit 7"], 30).returncode == 7
    assert dev.run(["true"], 30).returncode == 0
    with pytest.raises(EdgeshipError, match="exit status 5"):
        dev.run(["sh", "-c", "echo boom >&2; exit 5"], 30, check=True)
    with pytest.raises(EdgeshipError, match="does not exist"):
        dev.run(["sh", "-c", "pwd"], 30, cwd="/does/not/exist")
    assert dev.run(["no-such-program-here"], 30).returncode == 127
    with dev.tempdir() as d:
        dev.run(["sh", "-c", "echo new > f.txt"], 30, cwd=d, check=True)
        (tmp_path / "f.txt").write_text("mine")
        with pytest.raises(EdgeshipError, match="already exists"):
            dev.pull(f"{d}/f.txt", tmp_path / "f.txt")
        assert (tmp_path / "f.txt").read_text() == "mine"
        dev.pull(f"{d}/f.txt", tmp_path / "f.txt", force=True)
        assert (tmp_path / "f.txt").read_text() == "new\n"
        with pytest.raises(EdgeshipError):
            dev.pull(f"{d}/nothing-here", tmp_path / "nothing")
        assert not (tmp_path / "nothing").exists()


def test_timeout_stops_the_command(any_device):
    dev, host_path = any_device
    token = f"{30 + uuid.uuid4().int % 1000 / 1000:.3f}"   # a unique `sleep 30.xyz` to look for
    t0 = time.monotonic()
    with pytest.raises(EdgeshipError, match="did not finish within 1 s") as e:
        with dev.tempdir() as d:
            dev.run(["sleep", token], 1.0, cwd=d)
    assert time.monotonic() - t0 < 20
    assert e.value.hint
    assert _wait_gone(f"sleep {token}") == [], "the timed-out command still runs on the device"
    assert not host_path(d).exists()
    assert dev.cleanup() is True


# ------------------------------------------------------------------------------------------ info()

def test_local_info_lists_installed_runtimes():
    import onnxruntime
    info = LocalDevice().info()
    assert isinstance(info, DeviceInfo) and info.kind == "local"
    assert info.python == sys.executable and info.python_version == ".".join(map(str, sys.version_info[:3]))
    assert info.runtimes["onnx"] == onnxruntime.__version__
    assert info.runtime_modules["onnx"] == "onnxruntime"
    assert info.runtimes["coreml"] is None and "macOS" in info.missing["coreml"]
    assert json.loads(json.dumps(info.to_dict()))["id"] == "local"


@pytest.mark.slow
def test_ssh_info_with_and_without_runtimes(sshd: SshServer, tmp_path: Path):
    import ai_edge_litert
    import onnxruntime
    full = SshDevice(sshd.url(), ssh_config=sshd.config, python=VENV_PY).info()
    assert full.id == sshd.url() and full.kind == "ssh"
    assert full.os.startswith(os.uname().sysname) and full.arch == os.uname().machine
    assert full.python == VENV_PY
    assert full.runtimes["onnx"] == onnxruntime.__version__
    assert full.runtimes["tflite"] and full.runtime_modules["tflite"] == "ai_edge_litert.interpreter"
    assert full.runtimes["tflite"] == getattr(ai_edge_litert, "__version__", full.runtimes["tflite"])
    assert "vcgencmd" in full.extra and full.extra["cpu_count"] == os.cpu_count()

    # a "board" whose python has no runtime at all: a bare venv
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    info = SshDevice(sshd.url(), ssh_config=sshd.config, python=str(bare / "bin" / "python")).info()
    assert info.python and info.python.startswith(str(bare))
    assert info.runtimes == {"onnx": None, "tflite": None, "executorch": None, "coreml": None, "torchscript": None}
    assert "No module named 'onnxruntime'" in info.missing["onnx"]
    assert "ai_edge_litert" in info.missing["tflite"] and "tflite_runtime" in info.missing["tflite"]

    nopy = SshDevice(sshd.url(), ssh_config=sshd.config, python="/nonexistent/python3").info()
    assert nopy.python is None and nopy.python_version is None
    assert all(v is None for v in nopy.runtimes.values())
    assert "not found" in nopy.missing["onnx"]


def test_adb_info_reads_props_governor_thermal(adb_lab: AdbLab):
    fake, dev = adb_lab.add_device(props={"ro.product.model": "Pixel 8", "ro.soc.manufacturer": "Google",
                                          "ro.soc.model": "Tensor G3", "ro.build.version.release": "15",
                                          "ro.build.version.sdk": "35", "ro.product.cpu.abi": "arm64-v8a",
                                          "ro.product.cpu.abilist": "arm64-v8a,armeabi-v7a"})
    info = dev.info()
    assert info.id == f"adb:{fake.serial}" and info.kind == "adb"
    assert info.os == "Android 15 (SDK 35)"
    assert info.arch == "arm64-v8a" and info.extra["abilist"] == ["arm64-v8a", "armeabi-v7a"]
    assert info.cpu == "Google Tensor G3" and info.model == "Edgeship Pixel 8"
    assert info.extra["governor"] == "schedutil" and info.extra["thermal_status"] == 0
    assert info.extra["battery_status"] == "Discharging" and "shell_v2" in info.extra["adb_features"]
    # like a real phone: no python on the device, so no Python runtime, and the reason says so
    assert info.python is None and all(v is None for v in info.runtimes.values())
    assert "no python" in info.missing["onnx"]


def test_list_devices_sees_adb_and_ssh_config(adb_lab: AdbLab, sshd: SshServer):
    fake, _ = adb_lab.add_device()
    entries = list_devices(ssh_config=sshd.config, adb_server_port=adb_lab.port)
    ids = {e.id: e for e in entries}
    assert ids["local"].state == "ready"
    assert ids[f"adb:{fake.serial}"].state == "device" and "EdgeshipTest" in ids[f"adb:{fake.serial}"].description
    assert ids["ssh://edgeship-test"].kind == "ssh" and ids["ssh://edgeship-flaky"].state == "configured"


def test_adb_without_serial_needs_exactly_one(adb_lab: AdbLab):
    if len(adb_lab.fakes) == 0:
        adb_lab.add_device()
    adb_lab.add_device()  # now at least two are attached
    with pytest.raises(EdgeshipError, match="exactly one"):
        AdbDevice(None, server_port=adb_lab.port).info()


# ------------------------------------------------------------------------------------------ lost connections

@pytest.mark.slow
def test_ssh_dropped_connection(sshd: SshServer):
    """The link dies mid-run: a clear error; the orphaned command and the temp folder go on reconnect."""
    assert sshd.proxy is not None
    dev = SshDevice(sshd.url("edgeship-flaky"), ssh_config=sshd.config)
    token = f"{40 + uuid.uuid4().int % 1000 / 1000:.3f}"
    try:
        with pytest.raises(EdgeshipError, match="ssh connection to ssh://.*edgeship-flaky failed while running sleep") as e:
            with dev.tempdir() as d:
                dev.push(Path(__file__), f"{d}/x.py")
                threading.Timer(2.5, sshd.proxy.block).start()   # ssh takes ~1 s to connect here
                dev.run(["sleep", token], 60)
        assert "BatchMode" in (e.value.hint or "")
        assert Path(d).exists() and _running(f"sleep {token}"), "nothing should have been reachable"
        assert len(dev.pending_cleanups) == 2
    finally:
        sshd.proxy.unblock()
    assert dev.cleanup() is True and dev.pending_cleanups == []
    assert not Path(d).exists()
    assert _wait_gone(f"sleep {token}") == []


def test_ssh_unreachable_host_is_a_clear_error(sshd: SshServer):
    assert sshd.proxy is not None
    sshd.proxy.block()
    try:
        dev = SshDevice(sshd.url("edgeship-flaky"), ssh_config=sshd.config)
        with pytest.raises(EdgeshipError, match="ssh connection") as e:
            dev.info()
        assert "ssh -F" in (e.value.hint or "")
    finally:
        sshd.proxy.unblock()


def test_adb_dropped_connection(adb_lab: AdbLab):
    fake, dev = adb_lab.add_device()
    token = f"{50 + uuid.uuid4().int % 1000 / 1000:.3f}"
    with pytest.raises(EdgeshipError, match=f"adb connection to adb:{fake.serial} failed"):
        with dev.tempdir() as d:
            threading.Timer(1.0, fake.unplug).start()
            dev.run(["sleep", token], 60)
    assert fake.device_path(d).exists() and _running(f"sleep {token}")
    assert len(dev.pending_cleanups) == 2
    fake.replug()
    adb_lab.connect(fake)          # the phone is back (adb connect again)
    assert dev.cleanup() is True
    assert not fake.device_path(d).exists()
    assert not fake.device_path(AdbDevice.BASE).exists()   # nothing left under /data/local/tmp
    assert _wait_gone(f"sleep {token}") == []
