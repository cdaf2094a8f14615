"""The fleet bench from real parts: two real sshd "boards" on loopback (different ports, each with its own ssh
config) benched at once through the real CLI, one of them cut mid-run through a TCP proxy while the other's
results stay intact; the real adb client against two fake adbd phones at once; `edgeship devices --fleet`; and
fleet.yaml errors that name the line."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgeship import api
from edgeship.bench.fleet import compare, parse_fleet
from edgeship.errors import EdgeshipError
from support.adb import AdbLab, adb_lab  # noqa: F401  (fixture)
from support.sshd import SSHD, SshServer
from support.tools import free_port, need_tool

pytestmark = [pytest.mark.xdist_group("bench-fleet")]
EDGESHIP = [sys.executable, "-m", "edgeship.cli"]
FAST = ["--runs", "20", "--warmup", "2", "--energy", "off"]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    from edgeship.examples import EXAMPLES
    from edgeship.pipeline import ExportOptions, run_export
    out = tmp_path_factory.mktemp("fleet") / "tiny"
    report = run_export(EXAMPLES["tiny_cnn"](), out, ExportOptions(["onnx"], ("fp32",), verify_samples=1))
    assert report["artifacts"][0]["status"] == "ok"
    return out


@pytest.fixture
def folder(export, tmp_path) -> Path:
    return Path(shutil.copytree(export, tmp_path / "tiny"))


@pytest.fixture(scope="module")
def boards(tmp_path_factory):
    """Two loopback boards: two sshd processes on two ports, each with its own keys and client config."""
    need_tool("sshd", path=SSHD, package="openssh-server")
    need_tool("ssh", package="openssh-client")
    servers = [SshServer(tmp_path_factory.mktemp(f"board{i}")).start() for i in range(2)]
    try:
        assert servers[0].port != servers[1].port
        yield servers
    finally:
        for s in servers:
            s.stop()


def fleet_yaml(tmp_path: Path, boards, alias_b: str = "edgeship-test", extra: str = "") -> Path:
    a, b = boards
    f = tmp_path / "fleet.yaml"
    f.write_text(f"""\
reference: board-a
devices:
  board-a:
    device: {a.url()}
    ssh_config: {a.config}
    python: {sys.executable}
    threads: 1
  board-b:
    device: {b.url(alias_b)}
    ssh_config: {b.config}
    python: {sys.executable}
    threads: 1
{extra}""")
    return f


def run(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGESHIP, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_two_boards_benched_at_once(folder, boards, tmp_path):
    r = run("bench", folder, "--fleet", fleet_yaml(tmp_path, boards), *FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "board-a" in r.stdout and "board-b" in r.stdout and "reference" in r.stdout
    report = json.loads((folder / "report.json").read_text())
    entries = report["bench"]
    assert sorted((e["device_name"], e["artifact"], e["status"]) for e in entries) == [
        ("board-a", "onnx:fp32", "ok"), ("board-b", "onnx:fp32", "ok")]
    assert {e["device"] for e in entries} == {boards[0].url(), boards[1].url()}
    assert all(e["threads"] == 1 and e["latency_ms"]["p50"] > 0 for e in entries)
    fleet = report["fleet"]
    assert fleet["reference"] == "board-a" and [d["status"] for d in fleet["devices"]] == ["ok", "ok"]
    # at once, not one after the other: the fleet took less than the two devices' times added up
    assert fleet["wall_s"] < sum(d["wall_s"] for d in fleet["devices"]) * 0.9, fleet
    (row,) = fleet["comparison"]
    assert row["artifact"] == "onnx:fp32" and set(row["p50_ms"]) == {"board-a", "board-b"}
    assert row["ratio"]["board-a"] == 1.0
    assert row["ratio"]["board-b"] == pytest.approx(row["p50_ms"]["board-b"] / row["p50_ms"]["board-a"], rel=1e-3)
    html = (folder / "report.html").read_text()
    assert "Fleet bench" in html and "Fleet: p50 per device" in html


@pytest.mark.slow
def test_a_board_cut_mid_run_is_recorded_and_the_other_finishes(folder, boards, tmp_path):
    """board-b goes through a TCP proxy (the flaky alias); its link is cut while its runner runs."""
    flaky = boards[1]
    cut = threading.Event()

    def on_event(key, stage, info):
        if key.startswith("board-b ") and stage == "run" and not cut.is_set():
            cut.set()
            threading.Timer(0.5, flaky.proxy.block).start()     # drop every connection, refuse new ones
    try:
        entries = api.bench(folder, fleet=fleet_yaml(tmp_path, boards, "edgeship-flaky"), runs=3000, warmup=2,
                            energy="off", on_event=on_event)
    finally:
        time.sleep(0.6)
        flaky.proxy.unblock()
    assert cut.is_set()
    by = {e.extra["device_name"]: e for e in entries}
    assert by["board-a"].status == "ok" and by["board-a"].latency_ms["p50"] > 0     # intact
    assert by["board-b"].status == "failed" and "ssh" in by["board-b"].reason.lower()
    report = json.loads((folder / "report.json").read_text())
    devices = {d["name"]: d for d in report["fleet"]["devices"]}
    assert devices["board-a"]["status"] == "ok" and devices["board-b"]["status"] == "failed"
    (row,) = report["fleet"]["comparison"]
    assert row["p50_ms"]["board-b"] is None and row["ratio"]["board-b"] is None and row["ratio"]["board-a"] == 1.0


@pytest.mark.slow
def test_two_adb_phones_at_once(folder, adb_lab: AdbLab):
    """The real adb client, one adb server, two fake adbd phones (with python): benched in parallel."""
    (fa, da), (fb, db) = adb_lab.add_device(python=True), adb_lab.add_device(python=True)
    for d in (da, db):
        d.python = sys.executable
    entries = api.bench(folder, [da, db], runs=20, warmup=2, energy="off", reference=db.id)
    assert sorted((e.device, e.status) for e in entries) == sorted([(da.id, "ok"), (db.id, "ok")])
    fleet = json.loads((folder / "report.json").read_text())["fleet"]
    assert fleet["reference"] == db.id and fleet["comparison"][0]["ratio"][db.id] == 1.0


@pytest.mark.slow
def test_devices_fleet_checks_every_device_at_once(boards, tmp_path):
    dead = f"ssh://nobody@127.0.0.1:{free_port()}"
    f = fleet_yaml(tmp_path, boards, extra=f"  gone: {{device: '{dead}'}}\n")
    r = run("devices", "--fleet", f, "--json")
    assert r.returncode == 1, r.stdout + r.stderr          # one device cannot be reached
    rows = {x["name"]: x for x in json.loads(r.stdout)}
    assert rows["board-a"]["state"] == rows["board-b"]["state"] == "ok"
    assert rows["board-a"]["runtimes"]["onnx"]
    assert rows["gone"]["state"] == "failed" and rows["gone"]["error"]


# ------------------------------------------------------------------------------------------ fleet.yaml errors

@pytest.mark.parametrize("text,fragment", [
    ("devices:\n  a: {device: local}\n  b:\n    device: local\n    threds: 2\n", "line 5: unknown key 'devices.b.threds'"),
    ("devices:\n  a:\n    device: local\n    threads: many\n", "line 4: 'devices.a.threads' must be"),
    ("devices:\n  a:\n    device: local\n    threads: 0\n", "line 4: 'devices.a.threads' must be a count >= 1"),
    ("devices:\n  a:\n    device: local\n    energy: max\n", "line 4: 'devices.a.energy' must be auto or off"),
    ("devices:\n  a:\n    threads: 2\n", "line 3: 'devices.a' has no device:"),
    ("devices:\n  a: {device: local}\n  b:\n    device: floppy:0\n", "line 4: 'devices.b.device': unknown device 'floppy:0'"),
    ("devices:\n  a: {device: local}\n  a: {device: local}\n", "line 3: device 'a' is named twice"),
    ("reference: c\ndevices:\n  a: {device: local}\n", "line 1: reference 'c' is not one of the devices"),
    ("devices:\n  a: {device: local}\nboards: 2\n", "line 3: unknown key 'boards'"),
    ("devices: [local]\n", "line 1: 'devices' must be a mapping"),
    ("devices:\n  a: {device: local\n", "is not valid YAML"),
])
def test_fleet_yaml_errors_name_the_line(text, fragment):
    with pytest.raises(EdgeshipError) as e:
        parse_fleet(text, "fleet.yaml")
    assert fragment in e.value.message, e.value.message


def test_fleet_yaml_short_form_and_options():
    f = parse_fleet("devices:\n  host: local\n  pi: {device: 'ssh://pi@pi5', threads: [1, 4], affinity: 4-7}\n")
    assert f.reference is None and list(f.entries) == ["host", "pi"]
    assert f.entries["pi"].threads == [1, 4] and f.entries["pi"].affinity == "4-7"


def test_the_cli_refuses_a_bad_fleet_file_with_its_line(tmp_path, export):
    bad = tmp_path / "fleet.yaml"
    bad.write_text("devices:\n  a:\n    device: local\n    affinty: 0-3\n")
    for args in (["bench", export, "--fleet", bad], ["devices", "--fleet", bad]):
        r = run(*args)
        assert r.returncode == 2 and "line 4: unknown key 'devices.a.affinty'" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_compare_ratios_and_mixed_threads():
    e = lambda n, p50, thr, status="ok": {"artifact": "onnx:fp32", "device": n, "device_name": n, "status": status,  # noqa: E731
                                          "threads": thr, "latency_ms": {"p50": p50}}
    rows = compare([e("a", 2.0, 1), e("b", 5.0, 1), e("b", 3.0, 2), e("c", 1.0, 1, "failed")], ["a", "b", "c"], "a",
                   uniform=False)
    assert rows == [{"artifact": "onnx:fp32", "threads": None, "size": None, "p50_ms": {"a": 2.0, "b": 3.0, "c": None},
                     "ratio": {"a": 1.0, "b": 1.5, "c": None}}]
