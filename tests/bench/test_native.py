"""Native benchmark tools and the android-demo app path, at the level that needs no device: the parsers on recorded
outputs with known answers, the argv each tool gets, the --tool specs, and the app's poll loop run by a real sh.

The recordings in tests/bench/data/ were composed from each tool's source (the header of every file says which
file and function print each line); no real benchmark_model / onnxruntime_perf_test / executor_runner binary exists
on this machine. The end-to-end plumbing (push, chmod, run, parse, report) is in test_harness.py.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from edgeship.bench import native
from edgeship.bench.harness import BenchOptions
from edgeship.errors import EdgeshipError

DATA = Path(__file__).parent / "data"


def recorded(name: str) -> str:
    """A recorded output without its leading '#' header (which says where the format comes from)."""
    lines = (DATA / name).read_text().splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "".join(lines)


RUNNER_KEYS = {"runtime", "runtime_version", "format", "model", "threads", "load_ms", "first_run_ms", "warmup", "runs",
               "latency_ms", "cv", "peak_rss_mb", "load_rss_delta_mb", "inputs", "notes", "python", "platform", "cpu_features"}
LAT_KEYS = {"mean", "std", "p50", "p90", "p99", "min", "max"}


def _shape_ok(out: dict, tool: str) -> None:
    assert RUNNER_KEYS <= set(out) and out["tool"] == tool
    assert LAT_KEYS <= set(out["latency_ms"])
    assert any(tool in n for n in out["notes"]), out["notes"]


# ------------------------------------------------------------------------------------------ parsers, known answers

def test_benchmark_model_parser():
    out = native.parse_benchmark_model(recorded("benchmark_model.txt"))
    _shape_ok(out, "benchmark_model")
    assert (out["runtime"], out["format"], out["runtime_version"]) == ("litert", "tflite", None)
    assert out["model"] == "/data/local/tmp/edgeship/model.tflite" and out["threads"] == 2
    assert out["load_ms"] == pytest.approx(14.682)
    assert out["first_run_ms"] == pytest.approx(2.811)
    assert (out["warmup"], out["runs"]) == (3, 20)          # 4 warm-up runs, the first stands for the first run
    lat = out["latency_ms"]
    assert lat["mean"] == pytest.approx(0.80335) and lat["std"] == pytest.approx(0.055)
    assert (lat["min"], lat["p50"], lat["max"]) == pytest.approx((0.771, 0.792, 1.043))
    assert (lat["p5"], lat["p95"]) == pytest.approx((0.776, 1.043))
    assert lat["p90"] is None and lat["p99"] is None      # the tool does not print them
    assert out["cv"] == pytest.approx(55 / 803.35)
    assert out["peak_rss_mb"] == pytest.approx(9.33984) and out["load_rss_delta_mb"] == pytest.approx(3.17188)


def test_benchmark_model_all_same_and_no_percentiles():
    text = ("INFO: Initialized session in 3.2ms.\n"
            "INFO: Running benchmark for at least 1 iterations and at least 0 seconds but terminate if exceeding 150 seconds.\n"
            "INFO: count=1 curr=900\n\n"
            "INFO: Running benchmark for at least 5 iterations and at least 0 seconds but terminate if exceeding 150 seconds.\n"
            "INFO: count=5 curr=500(all same) p5=500 median=500 p95=500\n\n"
            "INFO: Inference timings in us: Init: 3200, First inference: 900, Warmup (avg): 900, Inference (avg): 500\n")
    out = native.parse_benchmark_model(text)
    assert (out["runs"], out["warmup"], out["first_run_ms"]) == (5, 0, 0.9)
    assert out["latency_ms"]["min"] == out["latency_ms"]["max"] == out["latency_ms"]["p50"] == 0.5
    assert out["latency_ms"]["std"] == 0 and out["cv"] == 0
    assert out["peak_rss_mb"] is None and out["threads"] is None      # not reported: unknown, not zero
    old = text.replace(" p5=500 median=500 p95=500", "").replace("INFO: ", "")   # an old build: no percentiles
    out = native.parse_benchmark_model(old)
    assert out["latency_ms"]["p50"] is None and out["latency_ms"]["mean"] == 0.5
    assert any("no percentiles" in n for n in out["notes"])


def test_onnxruntime_perf_test_parser():
    out = native.parse_onnxruntime_perf_test(recorded("onnxruntime_perf_test.txt"))
    _shape_ok(out, "onnxruntime_perf_test")
    assert (out["runtime"], out["format"]) == ("onnxruntime", "onnx")
    assert out["load_ms"] == pytest.approx(21.3456) and out["first_run_ms"] == 2.0
    assert (out["runs"], out["warmup"]) == (20, 0)
    lat = out["latency_ms"]
    assert lat["mean"] == pytest.approx(0.62205)
    assert (lat["min"], lat["p50"], lat["p90"], lat["p99"], lat["max"]) == pytest.approx((0.587, 0.601, 0.655, 0.999, 0.999))
    assert lat["std"] is None and out["cv"] is None           # it prints no standard deviation
    assert out["peak_rss_mb"] == pytest.approx(31227904 / 2**20)
    assert out["threads"] is None                             # not printed; the harness fills in what it asked for


def test_executor_runner_parser_with_iterations():
    out = native.parse_executor_runner(recorded("executor_runner.txt"), warmup=3)
    _shape_ok(out, "executor_runner")
    assert (out["runtime"], out["format"]) == ("executorch", "executorch")
    assert out["model"] == "/data/local/tmp/edgeship/model.pte" and out["threads"] == 2
    assert out["load_ms"] == pytest.approx(7.65231) and out["first_run_ms"] == pytest.approx(4.812)
    assert (out["warmup"], out["runs"]) == (3, 10)
    lat = out["latency_ms"]
    # numpy on the 10 timed iterations: mean 1.4336, std(ddof=1) 0.183492, p50 1.373, p90 1.4662, p99 1.90522
    assert lat["mean"] == pytest.approx(1.4336) and lat["std"] == pytest.approx(0.18349157)
    assert (lat["p50"], lat["p90"], lat["p99"]) == pytest.approx((1.373, 1.4662, 1.90522))
    assert (lat["min"], lat["max"]) == pytest.approx((1.359, 1.954))
    assert out["peak_rss_mb"] is None


def test_executor_runner_parser_old_total_only():
    out = native.parse_executor_runner(recorded("executor_runner_old.txt"), warmup=3)
    assert out["runs"] == 14 and out["warmup"] == 0 and out["first_run_ms"] is None
    assert out["latency_ms"]["mean"] == pytest.approx(23.318 / 14)
    assert out["latency_ms"]["p50"] is None and out["load_ms"] is None
    assert any("only the total" in n for n in out["notes"])


@pytest.mark.parametrize("parse,name,needle", [
    (native.parse_benchmark_model, "benchmark_model_failed.txt", "Failed to mmap model"),
    (native.parse_onnxruntime_perf_test, "onnxruntime_perf_test_failed.txt", "Protobuf parsing failed"),
    (native.parse_executor_runner, "executor_runner_failed.txt", "Failed to parse model file"),
])
def test_parsers_report_the_tools_error(parse, name, needle):
    with pytest.raises(ValueError, match=needle):
        parse(recorded(name))
    with pytest.raises(ValueError):
        parse("")


# ------------------------------------------------------------------------------------------ argv

def test_tool_argv():
    assert native.benchmark_model_argv("/t/bm", "/d/m.tflite", runs=20, warmup=3, threads=2, max_secs=600) == [
        "/t/bm", "--graph=/d/m.tflite", "--num_runs=20", "--warmup_runs=4", "--min_secs=0", "--warmup_min_secs=0",
        "--max_secs=600", "--report_peak_memory_footprint=true", "--num_threads=2"]
    assert native.benchmark_model_argv("bm", "m", runs=1, warmup=0, op_profiling=True)[-1] == "--enable_op_profiling=true"
    assert not any(a.startswith("--num_threads") for a in native.benchmark_model_argv("bm", "m", runs=1, warmup=0))
    assert native.onnxruntime_perf_test_argv("pt", "/d/m.onnx", runs=50, warmup=5, threads=4) == [
        "pt", "-m", "times", "-r", "50", "-e", "cpu", "-I", "-s", "-x", "4", "/d/m.onnx"]
    assert native.onnxruntime_perf_test_argv("pt", "m.onnx", runs=5)[-1] == "m.onnx"
    assert native.executor_runner_argv("er", "/d/m.pte", runs=10, warmup=3, threads=2) == [
        "er", "--model_path=/d/m.pte", "--num_executions=14", "--cpu_threads=2"]
    assert native.executor_runner_argv("er", "m.pte", runs=10, warmup=0) == ["er", "--model_path=m.pte", "--num_executions=11"]


def test_app_start_argv_uses_the_apps_real_names():
    manifest = (Path(__file__).parents[2] / "android-demo/app/src/main/AndroidManifest.xml").read_text()
    gradle = (Path(__file__).parents[2] / "android-demo/app/build.gradle.kts").read_text()
    assert 'android:name=".BenchmarkActivity"' in manifest and f'applicationId = "{native.APP_PACKAGE}"' in gradle
    argv = native.app_start_argv("tflite/model.tflite", runs=20, warmup=3, threads=None, out="r.json")
    assert argv == ["am", "start", "-S", "-W", "-n", "dev.edgeship.demo/.BenchmarkActivity", "--es", "model",
                    "tflite/model.tflite", "--ei", "runs", "20", "--ei", "warmup", "3", "--ei", "threads", "0",
                    "--es", "out", "r.json"]


# ------------------------------------------------------------------------------------------ --tool specs

def test_tool_specs(tmp_path: Path):
    bm = tmp_path / "benchmark_model"
    bm.write_text("#!/bin/sh\n")
    ortdir = tmp_path / "ort"
    ortdir.mkdir()
    assert native.parse_tool_specs([f"tflite={bm}"]) == {"tflite": bm}
    assert native.parse_tool_specs({"TFLite": str(bm)}) == {"tflite": bm}
    for bad, needle in [(["tflite"], "not FORMAT=PATH"), (["=x"], "not FORMAT=PATH"), ([f"caffe={bm}"], "no native benchmark tool"),
                        ([f"onnx={tmp_path / 'nope'}"], "does not exist"), ([f"onnx={ortdir}"], "has no onnxruntime_perf_test")]:
        with pytest.raises(EdgeshipError, match=needle) as e:
            native.parse_tool_specs(bad)
        assert e.value.hint
    (ortdir / "onnxruntime_perf_test").write_text("x")
    assert native.resolve_tool("onnx", ortdir) == (ortdir, "onnxruntime_perf_test")
    assert native.resolve_tool("tflite", bm) == (bm, "benchmark_model")


def test_bench_options_via(tmp_path: Path):
    bm = tmp_path / "bm"
    bm.write_text("x")
    assert BenchOptions(via="tool", tools={"tflite": str(bm)}).tools == {"tflite": bm}
    assert BenchOptions().via == "python" and BenchOptions().tools == {}
    with pytest.raises(EdgeshipError, match="needs at least one"):
        BenchOptions(via="tool")
    with pytest.raises(EdgeshipError, match="only with --via tool"):
        BenchOptions(via="python", tools={"tflite": str(bm)})
    with pytest.raises(EdgeshipError, match="--via must be one of"):
        BenchOptions(via="carrier-pigeon")


# ------------------------------------------------------------------------------------------ the app's poll loop, real sh

@pytest.fixture
def fake_run_as(tmp_path: Path):
    """A PATH with a `run-as` that runs commands in a folder standing for the app's data folder."""
    bindir, data = tmp_path / "bin", tmp_path / "appdata"
    (data / "files" / "bench").mkdir(parents=True)
    bindir.mkdir()
    ra = bindir / "run-as"
    ra.write_text(f'#!/bin/sh\n[ -f {tmp_path}/not-debuggable ] && {{ echo "run-as: package not debuggable: $1" >&2; exit 1; }}\n'
                  f'[ "$1" = {native.APP_PACKAGE} ] || {{ echo "run-as: unknown package: $1" >&2; exit 1; }}\n'
                  f'shift; cd {data} && exec "$@"\n')
    ra.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    return tmp_path, data / "files" / "bench", env


def test_app_poll_waits_for_the_result(fake_run_as):
    root, bench_dir, env = fake_run_as
    script = native.app_poll_script("r.json", timeout_s=10, interval_s=0.1)
    proc = subprocess.Popen(["sh", "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.4)
    assert proc.poll() is None                                # still waiting: no result yet
    (bench_dir / "r.json").write_text('{"runs": 3}\n')
    out, _err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and out.strip() == '{"runs": 3}'


def test_app_poll_fails_fast_or_times_out(fake_run_as):
    root, _bench_dir, env = fake_run_as
    cp = subprocess.run(["sh", "-c", native.app_poll_script("none.json", timeout_s=0.5, interval_s=0.1)], env=env,
                        capture_output=True, text=True, timeout=20)
    assert cp.returncode == 124 and "No such file" in cp.stderr
    (root / "not-debuggable").write_text("")
    t0 = time.monotonic()
    cp = subprocess.run(["sh", "-c", native.app_poll_script("none.json", timeout_s=30, interval_s=0.1)], env=env,
                        capture_output=True, text=True, timeout=20)
    assert cp.returncode == 3 and "not debuggable" in cp.stderr
    assert time.monotonic() - t0 < 5                          # did not wait for the 30 s timeout
