"""The bench harness end to end, from real parts: one real export (tiny_cnn, ONNX + TFLite, fp32) benched on the
host, over a real sshd on loopback, and through the real adb client against the fake adbd (with its battery
sysfs for energy); native tools and the android-demo app through their plumbing; and the CLI.

Where a part does not exist on this machine the test says so in its docstring: the native benchmark binaries
and the Android app are stand-in shell scripts; the push / chmod / run / poll / parse / report path around them
is the real one.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeship.bench import native
from edgeship.bench.devices import AdbDevice, LocalDevice, SshDevice
from edgeship.bench.harness import RUNNER_DIR, BenchOptions, bench_folder, remote_path
from edgeship.errors import EdgeshipError
from support.adb import AdbLab, adb_lab  # noqa: F401  (fixture)
from support.sshd import SshServer, sshd  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bench-harness")]

VENV_PY = sys.executable               # has onnxruntime and ai_edge_litert: the runtimes import on the "device"
DATA = Path(__file__).parent / "data"
RUNTIME = {"onnx": "onnxruntime", "tflite": "litert"}
OPTS = dict(runs=20, warmup=3)


# ------------------------------------------------------------------------------------------ the export, once

@pytest.fixture(scope="session")
def export_folder(tmp_path_factory) -> Path:
    """tiny_cnn exported once per test run (ONNX + TFLite, fp32), shared by xdist workers through a file lock."""
    from filelock import FileLock

    from edgeship.examples import EXAMPLES
    from edgeship.pipeline import ExportOptions, run_export

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    root = tmp_path_factory.getbasetemp().parent if worker else tmp_path_factory.getbasetemp()
    out = root / "bench-harness-export" / "tiny_cnn"
    with FileLock(str(root / "bench-harness-export.lock")):
        if not (out / "manifest.json").exists():
            report = run_export(EXAMPLES["tiny_cnn"](), out, ExportOptions(["onnx", "tflite"], ("fp32",), verify_samples=1))
            assert [(a["key"], a["status"]) for a in report["artifacts"]] == [("onnx:fp32", "ok"), ("tflite:fp32", "ok")]
    return out


@pytest.fixture
def folder(export_folder: Path, tmp_path: Path) -> Path:
    """A private copy of the export (bench appends to its report.json)."""
    return Path(shutil.copytree(export_folder, tmp_path / "tiny_cnn"))


def _bench_entries(folder: Path) -> list[dict]:
    return json.loads((folder / "report.json").read_text())["bench"]


def _spy_tempdirs(dev) -> list[str]:
    """Record the temp folders the harness makes on ``dev``."""
    made: list[str] = []
    original = dev.tempdir

    @contextlib.contextmanager
    def spy():
        with original() as d:
            made.append(d)
            yield d
    dev.tempdir = spy
    return made


def _check_ok_entries(entries: list[dict], *, device_id: str, kind: str, threads: tuple, rounds: int,
                      energy_available: bool = False) -> None:
    """Every artifact × thread count is there, with every field, consistent figures and the energy verdict."""
    assert sorted((e["format"], e["threads"]) for e in entries) == sorted((f, t) for f in RUNTIME for t in threads)
    for e in entries:
        assert e["status"] == "ok", e
        assert e["device"] == device_id and e["device_kind"] == kind and e["via"] == "python"
        assert e["runtime"] == RUNTIME[e["format"]] and e["runtime_version"]
        assert (e["runs"], e["warmup"]) == (OPTS["runs"], OPTS["warmup"])
        lat = e["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert lat["min"] <= lat["mean"] <= lat["max"] and lat["std"] >= 0
        assert e["cv"] == pytest.approx(lat["std"] / lat["mean"]) and e["cv_flag"] == (e["cv"] > 0.10)
        assert e["load_ms"] > 0 and e["first_run_ms"] > 0
        assert e["peak_rss_mb"] > 10                       # a python process with numpy and a runtime loaded
        assert len(e["rounds_p50_ms"]) == rounds and all(p > 0 for p in e["rounds_p50_ms"])
        assert lat["p50"] in e["rounds_p50_ms"]
        assert [(i["shape"], i["dtype"]) for i in e["inputs"]] == [([1, 3, 32, 32], "float32")]
        assert e["size_bytes"] > 1000 and e["device_info"]["os"]
        en = e["energy"]
        assert en["available"] is energy_available, en
        if not energy_available:
            assert en.get("mj_per_inference") is None and en["reason"], en


# ------------------------------------------------------------------------------------------ local


def test_a_device_scheme_registered_from_the_test_benches(folder: Path):
    """A new device kind is one class and one register_device call: ``toy://NAME``, the host under another name."""
    from edgeship.bench.devices import list_devices, parse_device, register_device, unregister_device

    class ToyDevice(LocalDevice):
        kind, usage = "toy", "toy://NAME"

        @classmethod
        def from_spec(cls, text, *, python=None, **_options):
            dev = cls(python=python)
            dev.id = text
            return dev

        @classmethod
        def discover(cls, **_options):
            return []

    register_device("toy", ToyDevice)
    try:
        dev = parse_device("toy://x")
        assert isinstance(dev, ToyDevice) and dev.id == "toy://x"
        with pytest.raises(EdgeshipError) as e:
            parse_device("nosuch://x")
        assert "toy://NAME" in e.value.hint
        assert [d.id for d in list_devices(ssh_config="/nonexistent", adb="/nonexistent/adb")].count("local") == 1
        entries = bench_folder(folder, dev, BenchOptions(**OPTS))
        _check_ok_entries(entries, device_id="toy://x", kind="toy", threads=(None,), rounds=1)
        assert all("no power sensor" in e["energy"]["reason"] for e in entries)
    finally:
        unregister_device("toy")
    with pytest.raises(EdgeshipError, match="unknown device"):
        parse_device("toy://x")


def test_local(folder: Path):
    """On the host: entries for every artifact × thread count, appended to report.json (twice), plotted in report.html."""
    dev = LocalDevice()
    made = _spy_tempdirs(dev)
    entries = bench_folder(folder, dev, BenchOptions(threads=(1, 2), rounds=2, **OPTS))
    _check_ok_entries(entries, device_id="local", kind="local", threads=(1, 2), rounds=2)
    assert all("no power sensor" in e["energy"]["reason"] and "--power-cmd" in e["energy"]["reason"] for e in entries)
    assert _bench_entries(folder) == entries
    html = (folder / "report.html").read_text()
    assert "Latency per artifact and device" in html and "data:image/png;base64," in html
    assert html.count("<td>local</td>") == 4
    assert len(made) == 1 and not Path(made[0]).exists()

    again = bench_folder(folder, dev, BenchOptions(runs=5, warmup=1, formats=["onnx"], energy="off"))
    assert [e["artifact"] for e in again] == ["onnx:fp32"] and again[0]["threads"] is None
    assert again[0]["runs"] == 5 and "off" in again[0]["energy"]["reason"]
    assert _bench_entries(folder) == entries + again         # appended, not replaced


def test_compare_gives_int8_speedup_over_fp32_in_the_same_run(tmp_path: Path):
    """--compare fp32 with --precision int8 benches both (alternating rounds) and gives int8 its speed-up over fp32."""
    from edgeship.examples import EXAMPLES
    from edgeship.pipeline import ExportOptions, run_export

    out = tmp_path / "q"
    run_export(EXAMPLES["tiny_cnn"](), out, ExportOptions(["onnx"], ("fp32", "int8"), verify_samples=1))
    entries = bench_folder(out, LocalDevice(), BenchOptions(runs=10, warmup=2, rounds=2, threads=(1,), precisions=["int8"],
                                                           compare="fp32", energy="off"))
    by = {e["artifact"]: e for e in entries}
    assert set(by) == {"onnx:fp32", "onnx:int8"} and all(e["status"] == "ok" for e in entries)
    sv = by["onnx:int8"]["speedup_vs"]
    assert sv["precision"] == "fp32" and "speedup_vs" not in by["onnx:fp32"]
    assert sv["x"] == pytest.approx(by["onnx:fp32"]["latency_ms"]["p50"] / by["onnx:int8"]["latency_ms"]["p50"], rel=1e-3)
    assert len(sv["rounds_x"]) == 2 and all(x > 0 for x in sv["rounds_x"])
    assert _bench_entries(out) == entries


# ------------------------------------------------------------------------------------------ containment

@pytest.mark.parametrize("rel", ["../../escaped/evil.sh", "/etc/evil.sh", "onnx/../../evil.sh", "..", "", ".",
                                 "onnx\\..\\..\\evil", "a\0b"])
def test_remote_paths_never_leave_the_temp_folder(rel: str):
    with pytest.raises(EdgeshipError, match="would leave the device's temp folder"):
        remote_path("/tmp/edgeship-x", rel)
    assert remote_path("/tmp/edgeship-x", "./onnx//model.onnx") == "/tmp/edgeship-x/onnx/model.onnx"


def test_containment_holds_even_if_the_manifest_check_is_bypassed(folder: Path, tmp_path: Path, monkeypatch):
    """Defence in depth: with manifest.load's own containment check switched off, the harness still reads no
    artifact from outside the folder and writes nothing outside its temp folder."""
    from edgeship import manifest as manifest_mod
    monkeypatch.setattr(manifest_mod, "load", lambda f: json.loads((Path(f) / "manifest.json").read_text()))
    m = json.loads((folder / "manifest.json").read_text())
    evil = tmp_path / "escaped" / "evil.sh"
    evil.parent.mkdir()
    evil.write_text("#!/bin/sh\n")
    m["artifacts"][0]["path"] = "../../escaped/evil.sh"
    (folder / "manifest.json").write_text(json.dumps(m))
    dev = LocalDevice()
    made = _spy_tempdirs(dev)
    with pytest.raises(EdgeshipError, match="not a relative path"):
        bench_folder(folder, dev, BenchOptions(formats=["onnx"], energy="off", **OPTS))
    assert made == [] and _bench_entries(folder) == []


def test_artifact_changed_since_export_fails_and_is_not_pushed(folder: Path):
    """A file whose sha256 no longer matches the manifest fails with the reason; the other artifact still runs."""
    onnx = folder / "onnx" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    dev = LocalDevice()
    pushed: list[str] = []
    original = dev.push
    dev.push = lambda local, remote: (pushed.append(remote), original(local, remote))[1]
    entries = {e["format"]: e for e in bench_folder(folder, dev, BenchOptions(energy="off", **OPTS))}
    assert entries["onnx"]["status"] == "failed" and "latency_ms" not in entries["onnx"]
    assert "changed since export" in entries["onnx"]["reason"] and "run edgeship verify" in entries["onnx"]["reason"]
    assert entries["tflite"]["status"] == "ok"
    assert not any(r.endswith("model.onnx") for r in pushed) and any(r.endswith("model.tflite") for r in pushed)


# ------------------------------------------------------------------------------------------ ssh

def test_ssh(folder: Path, sshd: SshServer):
    """Over a real ssh connection (loopback sshd); the board's python is the project venv's."""
    dev = SshDevice(sshd.url(), ssh_config=sshd.config, python=VENV_PY)
    made = _spy_tempdirs(dev)
    entries = bench_folder(folder, dev, BenchOptions(threads=(1, 2), rounds=2, **OPTS))
    _check_ok_entries(entries, device_id=sshd.url(), kind="ssh", threads=(1, 2), rounds=2)
    assert all("no vcgencmd" in e["energy"]["reason"] for e in entries)   # not a Raspberry Pi 5
    assert len(made) == 1 and made[0].startswith("/tmp/edgeship-") and not Path(made[0]).exists()
    assert _bench_entries(folder) == entries


def test_ssh_board_without_runtimes(folder: Path, sshd: SshServer, tmp_path: Path):
    """A board whose python has neither onnxruntime nor LiteRT: both artifacts are skipped, saying why."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    dev = SshDevice(sshd.url(), ssh_config=sshd.config, python=str(bare / "bin" / "python"))
    made = _spy_tempdirs(dev)
    entries = bench_folder(folder, dev, BenchOptions(**OPTS))
    assert [(e["artifact"], e["status"]) for e in entries] == [("onnx:fp32", "skipped"), ("tflite:fp32", "skipped")]
    assert "No module named 'onnxruntime'" in entries[0]["reason"]
    assert "ai_edge_litert" in entries[1]["reason"] and "tflite_runtime" in entries[1]["reason"]
    assert "latency_ms" not in entries[0] and made == []       # nothing pushed when nothing can run
    assert _bench_entries(folder) == entries


# ------------------------------------------------------------------------------------------ adb

def _adb_python(fake, tmp_path: Path, extra_amps: float) -> str:
    """The fake phone's "python": the project venv's, and while a benchmark runs the fake battery gauge shows
    ``extra_amps`` more discharge current (as a phone's SoC would draw). The draw starts 0.5 s before the runner, so
    that even on a fast host the window holds enough gauge samples (the sampler reads every 0.1 s, needs 3)."""
    bat = fake.root / "sys/class/power_supply/battery/current_now"
    busy, idle = -int(350000 + extra_amps * 1e6), -350000
    py = tmp_path / "phone-python"
    py.write_text(f"""#!/bin/sh
case "$*" in
*edgeship_runtime.bench*) echo {busy} > {bat}; sleep 0.5; "{VENV_PY}" "$@"; rc=$?; echo {idle} > {bat}; exit $rc;;
esac
exec "{VENV_PY}" "$@"
""")
    py.chmod(0o755)
    return str(py)


def test_adb_with_energy(folder: Path, adb_lab: AdbLab, tmp_path: Path):
    """Through the real adb client and the fake adbd, with energy from the fake battery: 0.35 A idle, 1.35 A while
    the runner runs, at 3.85 V. The excess is 1 A × 3.85 V = 3.85 W for at most the measured window, so
    mJ/inference ≤ 3850 × window_s / inferences, and close to it (the runner is most of the window)."""
    fake, _ = adb_lab.add_device()
    fake.set_battery(current_now=-350000, voltage_now=3850000, status="Discharging")
    dev = AdbDevice(fake.serial, adb=adb_lab.adb, server_port=adb_lab.port, python=_adb_python(fake, tmp_path, 1.0))
    made = _spy_tempdirs(dev)
    entries = bench_folder(folder, dev, BenchOptions(threads=(2,), rounds=1, **OPTS))
    _check_ok_entries(entries, device_id=f"adb:{fake.serial}", kind="adb", threads=(2,), rounds=1,
                      energy_available=True)
    for e in entries:
        en = e["energy"]
        assert en["method"] == "android-battery" and en["inferences"] == 1 + OPTS["warmup"] + OPTS["runs"]
        assert en["idle_w"] == pytest.approx(0.35 * 3.85, rel=0.01)
        assert en["active_w"] > en["idle_w"] + 1.0
        bound = 3.85 * en["window_s"] / en["inferences"] * 1000
        assert 0.5 * bound < en["mj_per_inference"] <= bound * 1.01, (en["mj_per_inference"], bound)
        assert any("inferences" in n for n in en["notes"])
    assert e["device_info"]["model"] == "Edgeship EdgeshipTest" and e["device_info"]["os"] == "Android 14 (SDK 34)"
    assert len(made) == 1 and not fake.device_path(made[0]).exists()
    assert not fake.device_path(AdbDevice.BASE).exists()       # nothing left under /data/local/tmp


# ------------------------------------------------------------------------------------------ native tools (stand-ins)

def _recorded_body(name: str) -> str:
    """A recorded tool output without its leading '#' header (which says where the format comes from)."""
    lines = (DATA / name).read_text().splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "".join(lines)


def _stand_in_tool(path: Path, recording: str, argv_log: Path, model_flag: str, exit_code: int = 0) -> Path:
    """A shell script standing in for a native benchmark binary (none exists here): it logs its argv, checks that
    the model it was given exists on the device, and prints a recorded output of the real tool."""
    path.write_text(f"""#!/bin/sh
# STAND-IN for a native benchmark tool: prints {recording} (recorded from the tool's documented output format)
printf '%s\\n' "$@" > {argv_log}
model=
for a in "$@"; do case "$a" in {model_flag}*) model="${{a#{model_flag}}}";; esac; done
[ -z "$model" ] && model="$(for a in "$@"; do last="$a"; done; echo "$last")"
[ -f "$model" ] || {{ echo "stand-in: no model at $model" >&2; exit 9; }}
cat <<'RECORDED'
{_recorded_body(recording)}RECORDED
exit {exit_code}
""")
    path.chmod(0o644)          # not executable on purpose: the harness must chmod what it pushes
    return path


def test_adb_native_tools(folder: Path, adb_lab: AdbLab, tmp_path: Path):
    """The tool path through the real adb client on a phone without python. The binaries are STAND-INS (shell
    scripts printing recorded benchmark_model / onnxruntime_perf_test output; no real binary exists on this
    machine); pushing them, chmod, the argv they get, parsing, failures and the report are the real code."""
    fake, dev = adb_lab.add_device()                      # like a real phone: no python
    assert dev.info().python is None
    logs = tmp_path / "argv-bm.txt", tmp_path / "argv-ort.txt"
    bm = _stand_in_tool(tmp_path / "benchmark_model", "benchmark_model.txt", logs[0], "--graph=")
    ortdir = tmp_path / "ort"                                # a folder: binary + its .so files
    ortdir.mkdir()
    (ortdir / "libonnxruntime.so").write_bytes(b"\x7fELF stand-in")
    _stand_in_tool(ortdir / "onnxruntime_perf_test", "onnxruntime_perf_test_failed.txt", logs[1], "", exit_code=1)
    made = _spy_tempdirs(dev)
    opts = BenchOptions(threads=(2,), rounds=2, energy="off", via="tool", tools={"tflite": bm, "onnx": ortdir}, **OPTS)
    entries = {e["format"]: e for e in bench_folder(folder, dev, opts)}

    ok = entries["tflite"]
    assert ok["status"] == "ok" and ok["via"] == "tool" and ok["tool"] == "benchmark_model"
    assert ok["runtime"] == "litert" and ok["threads"] == 2 and (ok["runs"], ok["warmup"]) == (20, 3)
    assert ok["latency_ms"]["p50"] == pytest.approx(0.792) and ok["latency_ms"]["p90"] is None
    assert ok["rounds_p50_ms"] == pytest.approx([0.792, 0.792]) and ok["peak_rss_mb"] == pytest.approx(9.33984)
    assert any("benchmark_model" in n for n in ok["notes"])
    d = made[0]
    device_argv = [a.replace(str(fake.root), "") for a in logs[0].read_text().splitlines()]
    assert device_argv == native.benchmark_model_argv("x", f"{d}/tflite/model.tflite", runs=20, warmup=3, threads=2,
                                                      max_secs=opts.timeout_s)[1:]

    bad = entries["onnx"]
    assert bad["status"] == "failed" and "onnxruntime_perf_test failed" in bad["reason"]
    assert "Protobuf parsing failed" in bad["reason"] and "latency_ms" not in bad
    ort_argv = [a.replace(str(fake.root), "") for a in logs[1].read_text().splitlines()]
    assert ort_argv == ["-m", "times", "-r", "20", "-e", "cpu", "-I", "-s", "-x", "2", f"{d}/onnx/model.onnx"]
    assert not fake.device_path(d).exists()

    html = (folder / "report.html").read_text()               # a tool's unknown figures render as —
    assert "<td>0.792</td><td>—</td><td>—</td>" in html

    only_tflite = bench_folder(folder, dev, BenchOptions(energy="off", via="tool", tools={"tflite": bm}, threads=(2,), **OPTS))
    skipped = next(e for e in only_tflite if e["format"] == "onnx")
    assert skipped["status"] == "skipped" and "--tool onnx=/path/to/onnxruntime_perf_test" in skipped["reason"]


# ------------------------------------------------------------------------------------------ the android-demo app (stand-in)

def _stand_in_app(fake, tmp_path: Path, packaged: Path) -> tuple[Path, Path]:
    """`am` and `run-as` on the fake phone, standing in for Android with the android-demo app installed (there is no
    Android here). `am start` parses the intent the way BenchmarkActivity reads its extras and, like the app's
    benchmark thread, writes the runner's JSON to files/bench/<out> atomically in the background, here by running
    the Python runner on the packaged copy of the export; `run-as` runs a command in the app's data folder."""
    appdata, log = tmp_path / "appdata", tmp_path / "am.log"
    appdata.mkdir()
    bindir = fake.root / "system/bin"
    (bindir / "am").write_text(f"""#!/bin/sh
# STAND-IN for Android's am with dev.edgeship.demo installed
echo "$@" >> {log}
case "$1" in force-stop) exit 0;; start) shift;; *) echo "Error: stand-in am knows start and force-stop"; exit 1;; esac
comp=; model=; runs=50; warmup=5; threads=0; out=result.json
while [ $# -gt 0 ]; do case "$1" in
  -n) comp=$2; shift 2;;
  --es) case "$2" in model) model=$3;; out) out=$3;; esac; shift 3;;
  --ei) case "$2" in runs) runs=$3;; warmup) warmup=$3;; threads) threads=$3;; esac; shift 3;;
  *) shift;;
esac; done
if [ "$comp" != "{native.APP_COMPONENT}" ] || [ -f {tmp_path}/uninstalled ]; then
  echo "Error: Activity class {{$comp}} does not exist."; exit 0; fi
echo "Starting: Intent {{ cmp=$comp (has extras) }}"
r={appdata}/files/bench; mkdir -p $r; rm -f "$r/$out"
t=; [ "$threads" -gt 0 ] && t="--threads $threads"
( cd {packaged} && PYTHONPATH={RUNNER_DIR.parent} "{VENV_PY}" -m edgeship_runtime.bench "$model" --manifest manifest.json \\
    --runs $runs --warmup $warmup $t > "$r/.$out.tmp" && mv "$r/.$out.tmp" "$r/$out" ) </dev/null >/dev/null 2>&1 &
echo "Status: ok"; echo "LaunchState: COLD"; echo "Activity: $comp"; echo "Complete"
""")
    (bindir / "run-as").write_text(f"""#!/bin/sh
# STAND-IN for Android's run-as: the command runs in the app's data folder
[ "$1" = {native.APP_PACKAGE} ] || {{ echo "run-as: unknown package: $1" >&2; exit 1; }}
shift; cd {appdata} && exec "$@"
""")
    for name in ("am", "run-as"):
        (bindir / name).chmod(0o755)
    return appdata, log


def test_adb_app(folder: Path, adb_lab: AdbLab, tmp_path: Path):
    """The app path through the real adb client: `am start` with the extras, poll `run-as ... cat`, parse, clean up.
    The app is a STAND-IN (`am`/`run-as` scripts on the fake phone running the Python runner on a packaged copy of
    the export), since neither Android nor the compiled app exists here."""
    fake, dev = adb_lab.add_device()
    packaged = Path(shutil.copytree(folder, tmp_path / "assets-model"))
    appdata, log = _stand_in_app(fake, tmp_path, packaged)
    entries = bench_folder(folder, dev, BenchOptions(threads=(2,), energy="off", via="app", **OPTS))
    assert [(e["artifact"], e["status"]) for e in entries] == [("onnx:fp32", "ok"), ("tflite:fp32", "ok")], entries
    for e in entries:
        assert e["via"] == "app" and e["tool"] == "android-demo" and e["threads"] == 2
        assert e["runtime"] == RUNTIME[e["format"]] and (e["runs"], e["warmup"]) == (20, 3)
        lat = e["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"]
        assert any("android-demo" in n for n in e["notes"]) and not any("asked for" in n for n in e["notes"])
    starts = [ln.split() for ln in log.read_text().splitlines() if ln.startswith("start")]
    assert starts[0] == ["start", "-S", "-W", "-n", native.APP_COMPONENT, "--es", "model", "onnx/model.onnx", "--ei",
                         "runs", "20", "--ei", "warmup", "3", "--ei", "threads", "2", "--es", "out", starts[0][-1]]
    assert log.read_text().count("force-stop dev.edgeship.demo") == 2
    assert list((appdata / "files/bench").iterdir()) == []    # results are removed after reading

    (tmp_path / "uninstalled").write_text("")
    entries = bench_folder(folder, dev, BenchOptions(formats=["tflite"], energy="off", via="app", **OPTS))
    assert entries[0]["status"] == "failed" and "cannot start dev.edgeship.demo/.BenchmarkActivity" in entries[0]["reason"]
    assert "installDebug" in entries[0]["reason"]

    with pytest.raises(EdgeshipError, match="needs an adb device"):
        bench_folder(folder, LocalDevice(), BenchOptions(via="app", **OPTS))


# ------------------------------------------------------------------------------------------ CLI

def test_cli_bench_json(folder: Path):
    cp = subprocess.run([sys.executable, "-m", "edgeship.cli", "bench", str(folder), "--device", "local", "--runs", "5",
                         "--warmup", "1", "--json"], capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr
    entries = json.loads(cp.stdout)
    assert [(e["artifact"], e["status"], e["runs"], e["warmup"]) for e in entries] == [
        ("onnx:fp32", "ok", 5, 1), ("tflite:fp32", "ok", 5, 1)]
    assert _bench_entries(folder) == entries


@pytest.fixture
def cli_main(monkeypatch):
    """edgeship's main() in this process (a fresh interpreter per case costs seconds of imports); the CLI's
    logging setup is undone afterwards."""
    from edgeship import cli
    names = ("edgeship", "torch", "torchao", "coremltools", "executorch", "absl", "jax")
    levels = {n: logging.getLogger(n).level for n in names}

    def run(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["edgeship", *args])
        with pytest.raises(SystemExit) as e:
            cli.main()
        return e.value.code
    yield run
    for n, lvl in levels.items():
        logging.getLogger(n).setLevel(lvl)


@pytest.mark.parametrize("args,fragment", [
    (["--device", "bogus"], "unknown device 'bogus'"),
    (["--threads", "0"], "--threads must be ≥ 1"),
    (["--threads", "two"], "is not a number"),
    (["--formats", "caffe"], "unknown format caffe"),
    (["--via", "carrier-pigeon"], "--via must be one of"),
    (["--tool", "tflite"], "is not FORMAT=PATH"),
    (["--tool", "tflite=/nonexistent/benchmark_model"], "does not exist"),
    (["--via", "app"], "needs an adb device"),
    (["--compare", "int8"], "--compare int8: the folder has no int8 artifact"),
    ([], "not an edgeship export folder"),
])
def test_cli_bench_bad_input(cli_main, capsys, folder: Path, tmp_path: Path, args, fragment):
    target = str(tmp_path / "empty") if not args else str(folder)
    (tmp_path / "empty").mkdir(exist_ok=True)
    assert cli_main("bench", target, *args) == 2
    out = capsys.readouterr()
    assert fragment in out.err, out.err
    assert "Traceback" not in out.err + out.out
    assert _bench_entries(folder) == []                       # nothing was benched or written
