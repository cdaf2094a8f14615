"""Sweeps past one process: the same 4-point sweep (digits CNN, real training and pruning) run serially here, in a
local process pool (--jobs 2) and as Ray tasks on a real Ray cluster started on loopback (`ray start --head`, 2
CPUs); the points' results must be equal to the bit. Workers are killed mid-sweep (a factory that os._exit()s the
first worker process that builds it) and the sweep completes through the retry; a failing point is recorded and
the others go on; --resume runs only what is missing; without Ray, --ray says what to install."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeship import api
from edgeship.errors import EdgeshipError
from edgeship.sweep import ROW_KEYS
from support.tools import free_port

POINTS = [0.0, 0.3, 0.5, 0.7]
ARGS = dict(eval_data="digits", prune=POINTS, train_epochs=1, finetune_epochs=1)
RAY = Path(sys.executable).with_name("ray")

CRASHY = '''
import os
from edgeship.examples import EXAMPLES

def factory(marker="", parent=0):
    """digits_cnn; the first process other than ``parent`` that builds it dies (os._exit) before returning."""
    if os.getpid() != parent:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass
        else:
            os._exit(1)
    return EXAMPLES["digits_cnn"]()
'''


def rows(report) -> list[dict]:
    """The measured figures of each point (not where or how long it ran)."""
    return [{k: r.get(k) for k in (*ROW_KEYS, "status")} for r in (report.sweep if hasattr(report, "sweep") else report["sweep"])]


def crashy(tmp_path: Path) -> tuple[str, Path]:
    f = tmp_path / "crashy_model.py"
    f.write_text(CRASHY)
    marker = tmp_path / "crashed"
    return f"{f}:factory(marker={str(marker)!r}, parent={os.getpid()})", marker


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> dict:
    """The reference: the sweep in this process, one point after another (--jobs 1)."""
    out = tmp_path_factory.mktemp("serial") / "s"
    report = api.sweep("example:digits_cnn", out, **ARGS)
    assert report.to_dict() == json.loads((out / "report.json").read_text())
    return {"report": report, "out": out}


def test_serial_sweep_writes_every_point(serial):
    report = serial["report"].to_dict()
    assert [r["sparsity"] for r in report["sweep"]] == POINTS
    assert all(r["status"] == "ok" and 0 <= r["accuracy"] <= 1 for r in report["sweep"])
    assert report["complete"] is True and report["runner"]["kind"] == "serial"
    assert report["runner"]["points_run"] == 4 and report["runner"]["points_resumed"] == 0
    assert report["sweep_config"]["method"] == "structured" and report["sweep_config"]["cpus_per_point"] == 1
    assert (serial["out"] / "sweep.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_jobs_2_equals_jobs_1_even_when_a_worker_dies(serial, tmp_path):
    """Two spawned processes; the first to build the model dies: a new pool reruns what the dead one took down."""
    ref, marker = crashy(tmp_path)
    events = []
    report = api.sweep(ref, tmp_path / "p", jobs=2, **ARGS, on_event=lambda k, s, i: events.append((s, i)))
    assert marker.exists()                                   # a worker really died mid-sweep
    assert rows(report) == rows(serial["report"])            # to the bit: floats compared with ==
    assert report.to_dict()["runner"]["kind"] == "pool" and report.to_dict()["runner"]["workers"] == 2
    assert len({r["pid"] for r in report.sweep}) >= 2         # the points ran in other processes
    done = [i["done"] for s, i in events if s == "point"]
    assert done == [1, 2, 3, 4]                              # streamed, one event per finished point


def test_a_failed_point_is_recorded_and_resume_runs_only_what_is_missing(serial, tmp_path, monkeypatch):
    from edgeship.compress import prune

    real = prune.sweep

    def flaky(spec, sparsities, *a, **kw):
        if sparsities == [0.5]:
            raise RuntimeError("out of memory (simulated)")
        return real(spec, sparsities, *a, **kw)
    monkeypatch.setattr(prune, "sweep", flaky)
    out = tmp_path / "s"
    first = api.sweep("example:digits_cnn", out, **ARGS).to_dict()
    bad = [r for r in first["sweep"] if r["status"] == "failed"]
    assert [(r["sparsity"], r["error"]) for r in bad] == [(0.5, "RuntimeError: out of memory (simulated)")]
    assert [r["status"] for r in first["sweep"]] == ["ok", "ok", "failed", "ok"]
    assert (out / "sweep.png").exists() and "failed: RuntimeError" in (out / "report.html").read_text()
    with pytest.raises(EdgeshipError, match="exists and is not empty"):
        api.sweep("example:digits_cnn", out, **ARGS)
    with pytest.raises(EdgeshipError, match="other settings .*finetune_epochs 1 there, 2 now"):
        api.sweep("example:digits_cnn", out, **{**ARGS, "finetune_epochs": 2}, resume=True)

    monkeypatch.setattr(prune, "sweep", real)
    events = []
    again = api.sweep("example:digits_cnn", out, **ARGS, resume=True, on_event=lambda k, s, i: events.append((s, i)))
    measured = next(i for s, i in events if s == "measured")
    assert measured["todo"] == [0.5] and measured["skipped"] == [0.0, 0.3, 0.7]
    assert again.to_dict()["runner"]["points_run"] == 1 and again.to_dict()["runner"]["points_resumed"] == 3
    assert rows(again) == rows(serial["report"])             # the resumed sweep is the whole sweep


def test_without_ray_the_flag_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)            # import ray -> ImportError
    with pytest.raises(EdgeshipError, match="--ray needs Ray") as e:
        api.sweep("example:digits_cnn", tmp_path / "o", eval_data="digits", ray="auto")
    assert "pip install 'edgeship[ray]'" in e.value.hint
    with pytest.raises(EdgeshipError, match="--jobs must be >= 1"):
        api.sweep("example:digits_cnn", tmp_path / "o", eval_data="digits", jobs=0)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ a real Ray cluster

@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """`ray start --head --num-cpus 2 --block` on loopback, its own temp dir; stopped (SIGTERM to its process
    group, which ends every process it started) at teardown."""
    pytest.importorskip("ray")
    port = free_port()
    tmp = Path("/tmp") / f"ray-es-{os.getpid()}"   # Ray's socket paths must stay short
    # no token authentication on this private test cluster (ray start turns it on by default since 2.5x)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([str(RAY), "start", "--head", "--num-cpus", "2", "--port", str(port),
                             "--include-dashboard", "false", "--disable-usage-stats",
                             "--temp-dir", str(tmp), "--block"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=env)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited {proc.returncode}: {proc.stdout.read()[-3000:]}")
            if list(tmp.glob("session_latest/logs/raylet.out")) and _listening(port):
                time.sleep(2)
                break
            time.sleep(0.5)
        else:
            raise RuntimeError("the Ray head did not come up in 120 s")
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGTERM)      # the group holds only what this `ray start` started
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(1)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the GCS and raylet can outlive SIGTERM
        except ProcessLookupError:
            pass
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _listening(port: int) -> bool:
    import socket
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_ray_cluster_sweep_equals_the_local_run(serial, ray_cluster, tmp_path):
    events = []
    report = api.sweep("example:digits_cnn", tmp_path / "r", ray=ray_cluster, **ARGS,
                       on_event=lambda k, s, i: events.append((s, i)))
    assert rows(report) == rows(serial["report"])
    run = report.to_dict()["runner"]
    assert run["kind"] == "ray" and run["address"] == ray_cluster and run["cluster_cpus"] == 2.0 and run["workers"] == 2
    assert os.getpid() not in {r["pid"] for r in report.sweep}   # every point ran in a Ray worker
    assert [i["done"] for s, i in events if s == "point"] == [1, 2, 3, 4]


@pytest.mark.slow
def test_ray_retries_a_point_whose_worker_died(serial, ray_cluster, tmp_path):
    ref, marker = crashy(tmp_path)
    report = api.sweep(ref, tmp_path / "r", ray=ray_cluster, **ARGS)
    assert marker.exists()                                   # one worker process died building the model
    assert rows(report) == rows(serial["report"])            # and Ray's retry finished its point
