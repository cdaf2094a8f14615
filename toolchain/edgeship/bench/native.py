"""Benchmarks without Python on the device: the runtimes' own native benchmark binaries, and the android-demo app.

A phone has no Python, so ``python -m edgeship_runtime.bench`` cannot run there. Two other ways measure an export:

1. **Native tools** the user already has, built for the device, given by their path on the host and pushed next to
   the model (``edgeship bench dist/m --device adb --via tool --tool tflite=~/bin/benchmark_model``):

   ========== ========================= =====================================================================
   format     tool                      what we read (the tool's own output; see each parser)
   ========== ========================= =====================================================================
   tflite     ``benchmark_model``       LiteRT ``tflite/tools/benchmark``: stdout ``INFO:`` lines; p5/median/p95
   onnx       ``onnxruntime_perf_test`` onnxruntime ``test/perftest``: stdout; P50/P90/P99, min/max, no std
   executorch ``executor_runner``       ExecuTorch ``examples/portable/executor_runner``: ET_LOG lines (stderr);
                                        per-iteration times in recent versions, else only the total
   ========== ========================= =====================================================================

   A tool may also be given as a folder (pushed whole; the binary is the file named as in the table, and the
   folder is on ``LD_LIBRARY_PATH``, for builds that link ``libonnxruntime.so`` and friends dynamically).

2. **The android-demo app's benchmark mode** (``--via app``): ``am start -S -W -n dev.edgeship.demo/.BenchmarkActivity``
   with the model and run counts as intent extras; the app writes the same JSON as the Python runner to its private
   ``files/bench/<out>``, read back with ``run-as dev.edgeship.demo cat ...`` (a debug build, as ``installDebug`` makes).
   The app benchmarks the artifact packaged in its APK (``edgeship package FOLDER --app android``), matched by path.

Every parser returns the dict the Python runner prints (runtime, runtime_version, format, model, threads, load_ms,
first_run_ms, warmup, runs, latency_ms{mean, std, p50, p90, p99, min, max}, cv, peak_rss_mb, load_rss_delta_mb,
inputs, notes, python, platform) plus ``tool``: what the tool reports is filled in, what it does not is None, and
``notes`` names the tool and what differs from the Python runner. A missing result raises ValueError with the
tool's own error lines.
"""
from __future__ import annotations

import json
import logging
import math
import re
import shlex
import statistics
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from edgeship_runtime import formats as format_registry

from edgeship.errors import EdgeshipError

log = logging.getLogger(__name__)

__all__ = ["NativeTool", "TOOLS", "APP_PACKAGE", "APP_COMPONENT", "APP_FORMATS", "parse_benchmark_model",
           "parse_onnxruntime_perf_test", "parse_executor_runner", "benchmark_model_argv",
           "onnxruntime_perf_test_argv", "executor_runner_argv", "parse_tool_specs", "resolve_tool", "run_tool",
           "app_start_argv", "app_poll_script", "run_app"]

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|-?inf"


def _result(tool: str, runtime: str, fmt: str) -> dict[str, Any]:
    """The runner's result shape, all unknown."""
    return {"runtime": runtime, "runtime_version": None, "format": fmt, "model": None, "threads": None,
            "load_ms": None, "first_run_ms": None, "warmup": None, "runs": None,
            "latency_ms": {"mean": None, "std": None, "p50": None, "p90": None, "p99": None, "min": None, "max": None},
            "cv": None, "peak_rss_mb": None, "load_rss_delta_mb": None, "inputs": None, "notes": [],
            "python": None, "platform": None, "cpu_features": None, "tool": tool}


def _float(text: str) -> float:
    return float(text)


def _error_lines(text: str, pattern: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if re.search(pattern, ln)]
    if lines:
        return "; ".join(lines[-5:])
    tail = [ln.strip() for ln in text.strip().splitlines()[-5:]]
    return " | ".join(tail) or "no output"


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """numpy's default (linear) percentile, like the Python runner."""
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def _stats_ms(times: Sequence[float]) -> dict[str, float]:
    s = sorted(times)
    mean = statistics.fmean(s)
    return {"mean": mean, "std": statistics.stdev(s) if len(s) > 1 else 0.0, "p50": _percentile(s, 50),
            "p90": _percentile(s, 90), "p99": _percentile(s, 99), "min": s[0], "max": s[-1]}


# ------------------------------------------------------------------------------------------ LiteRT benchmark_model

_STAT = re.compile(r"(\w+)=(" + _NUM + r")")


def _tflite_stat(line: str) -> dict[str, float]:
    """A tsl ``StatWithPercentiles`` line: ``count=20 first=.. curr=.. min=.. max=.. avg=.. std=.. p5=.. median=..
    p95=..``, or ``count=20 curr=790(all same) p5=790 median=790 p95=790`` when every value is equal."""
    stat = {k: _float(v) for k, v in _STAT.findall(line)}
    if "(all same)" in line or ("min" not in stat and "curr" in stat):
        v = stat["curr"]
        for k in ("first", "min", "max", "avg"):
            stat.setdefault(k, v)
        stat.setdefault("std", 0.0)
    return stat


def parse_benchmark_model(text: str, *, warmup: int = 0) -> dict[str, Any]:
    """LiteRT's ``benchmark_model`` output -> the runner's result dict.

    Read (tflite/tools/benchmark/benchmark_model.cc, every line prefixed ``INFO: ``): ``Num threads: [N]`` and
    ``Graph: [PATH]`` (parameters it was given), ``Initialized session in X ms.`` (load), then two blocks
    ``Running benchmark for at least N iterations ...`` each followed by a statistics line in microseconds — the
    first block is the warm-up (its ``first`` is the first inference), the second the timed runs — and
    ``Memory footprint delta from the start of the tool (MB): init=X overall=Y`` and, with
    ``--report_peak_memory_footprint=true``, ``Overall peak memory footprint (MB) via periodic monitoring: Z``.
    The tool prints p5/median/p95, not p90/p99 (those stay None; p5 and p95 are added to latency_ms), and its std is
    the population standard deviation truncated to whole microseconds. ``warmup`` is not needed: the tool reports
    its warm-up block apart.
    """
    out = _result("benchmark_model", "litert", "tflite")
    lines = [re.sub(r"^(?:INFO|WARN|WARNING): ", "", ln.strip()) for ln in text.splitlines()]
    blocks: list[dict[str, float]] = []
    expecting = False
    for ln in lines:
        if ln.startswith("Running benchmark for at least"):
            expecting = True
        elif expecting and ln.startswith("count="):
            blocks.append(_tflite_stat(ln))
            expecting = False
        elif m := re.match(r"Num threads: \[(-?\d+)\]", ln):
            n = int(m.group(1))
            out["threads"] = n if n > 0 else None
        elif m := re.match(r"Graph: \[(.*)\]$", ln):
            out["model"] = m.group(1)
        elif m := re.match(r"Initialized session in (" + _NUM + r") ?ms", ln):
            out["load_ms"] = _float(m.group(1))
        elif m := re.match(r"Memory footprint delta from the start of the tool \(MB\): init=(" + _NUM + ")", ln):
            out["load_rss_delta_mb"] = _float(m.group(1))
        elif m := re.match(r"Overall peak memory footprint \(MB\) via periodic monitoring: (" + _NUM + ")", ln):
            peak = _float(m.group(1))
            out["peak_rss_mb"] = peak if peak > 0 else None
    summary = re.search(r"Inference timings in us: Init: (" + _NUM + r"), First inference: (" + _NUM + r"), "
                        r"Warmup \(avg\): (" + _NUM + r"), Inference \(avg\): (" + _NUM + ")", text)
    if summary is None or len(blocks) < 2 or not blocks[-1].get("count"):
        raise ValueError("benchmark_model printed no timings: " + _error_lines(text, r"ERROR|FATAL|[Ff]ailed"))
    warm, timed = blocks[-2], blocks[-1]
    if out["load_ms"] is None:
        out["load_ms"] = _float(summary.group(1)) / 1000.0
    us = 1000.0
    lat = out["latency_ms"]
    lat.update({"mean": timed["avg"] / us, "std": timed["std"] / us, "min": timed["min"] / us,
                "max": timed["max"] / us, "p50": timed["median"] / us if "median" in timed else None})
    if "p5" in timed:
        lat["p5"], lat["p95"] = timed["p5"] / us, timed["p95"] / us
    out["cv"] = timed["std"] / timed["avg"] if timed["avg"] > 0 else 0.0
    out["runs"] = int(timed["count"])
    if warm.get("count"):
        out["first_run_ms"] = warm["first"] / us
        out["warmup"] = int(warm["count"]) - 1           # the first warm-up run is the runner's "first run"
    else:
        out["warmup"] = 0
    out["notes"].append("measured by LiteRT benchmark_model (native); it reports p5/median/p95, so p90/p99 are "
                        "not known; std is the population std in whole µs; peak RSS is its ru_maxrss monitor")
    if "median" not in timed:
        out["notes"].append("this benchmark_model prints no percentiles (an old build): p50 is not known")
    return out


def benchmark_model_argv(tool: str, model: str, *, runs: int, warmup: int, threads: int | None = None,
                         max_secs: float = 900.0, op_profiling: bool = False) -> list[str]:
    """``benchmark_model`` flags (``--name=value``; tflite/tools/benchmark/README.md). ``--min_secs=0`` and
    ``--warmup_min_secs=0`` make the counts exact (by default it runs at least 1 s / 0.5 s); the first warm-up run
    stands for the runner's first run, so it gets ``warmup + 1`` warm-up runs."""
    argv = [tool, f"--graph={model}", f"--num_runs={runs}", f"--warmup_runs={warmup + 1}", "--min_secs=0",
            "--warmup_min_secs=0", f"--max_secs={max_secs:g}", "--report_peak_memory_footprint=true"]
    if threads:
        argv.append(f"--num_threads={threads}")
    if op_profiling:
        argv.append("--enable_op_profiling=true")
    return argv


# ------------------------------------------------------------------------------------------ onnxruntime_perf_test

def parse_onnxruntime_perf_test(text: str, *, warmup: int = 0) -> dict[str, Any]:
    """onnxruntime's ``onnxruntime_perf_test`` output -> the runner's result dict.

    Read (onnxruntime/test/perftest/performance_runner.cc): ``Session creation time cost: X s``, ``First inference
    time cost: N ms`` (whole ms), ``Total inference requests: N``, ``Average inference time cost: X ms``,
    ``Peak working set size: N bytes`` (ru_maxrss on Linux/Android) and, with ``-s`` or without a result file,
    ``Min/Max/P50/P90/P95/P99/P999 Latency: X s``. It prints no standard deviation (std and cv stay None), no thread
    count, and does exactly one untimed run before the timed ones (no other warm-up; ``warmup`` is not needed).
    """
    out = _result("onnxruntime_perf_test", "onnxruntime", "onnx")

    def num(pattern: str) -> float | None:
        m = re.search(pattern + r"\s*(" + _NUM + ")", text)
        return _float(m.group(1)) if m else None

    mean = num(r"Average inference time cost:")
    if mean is None:
        raise ValueError("onnxruntime_perf_test printed no timings: "
                         + _error_lines(text, r"Run failed|[Ee]rror|Exception|failed to initialize|fail"))
    session_s = num(r"Session creation time cost:")
    out["load_ms"] = None if session_s is None else session_s * 1000.0
    out["first_run_ms"] = num(r"First inference time cost:")
    runs = num(r"Total inference requests:")
    if runs is None:
        runs = num(r"\bRuns:")
    out["runs"] = None if runs is None else int(runs)
    out["warmup"] = 0
    peak = num(r"Peak working set size:")
    out["peak_rss_mb"] = None if peak is None else peak / 2**20
    lat = out["latency_ms"]
    lat["mean"] = mean
    for key, label in (("min", "Min"), ("max", "Max"), ("p50", "P50"), ("p90", "P90"), ("p99", "P99"),
                       ("p95", "P95")):
        v = num(label + r" Latency:")
        if v is not None:
            lat[key] = v * 1000.0
    out["notes"].append("measured by onnxruntime_perf_test (native); it reports no std (cv unknown), one untimed "
                        "first run and no other warm-up; first run in whole ms; peak RSS is its ru_maxrss")
    if lat["p50"] is None:
        out["notes"].append("no latency percentiles in the output (pass -s, or run without a result file)")
    return out


def onnxruntime_perf_test_argv(tool: str, model: str, *, runs: int, warmup: int = 0,
                               threads: int | None = None, max_secs: float | None = None) -> list[str]:
    """``-m times -r N`` (fixed count), ``-e cpu``, ``-I`` (generate the inputs: free dimensions become 1), ``-s``
    (print the percentiles), ``-x T`` (intra-op threads; 0 or absent lets onnxruntime choose); the model path last.
    ``warmup`` is not passed: the tool has no such option (it always does one untimed first run); nor ``max_secs``
    (in ``-m times`` it has no time limit: the device run's timeout stops it)."""
    argv = [tool, "-m", "times", "-r", str(runs), "-e", "cpu", "-I", "-s"]
    if threads:
        argv += ["-x", str(threads)]
    return argv + [model]


# ------------------------------------------------------------------------------------------ ExecuTorch executor_runner

_ET_MSG = re.compile(r"^(?P<level>[DIEF]) (?:\d+:\d\d:\d\d\.\d+ )?\[?executorch:[^\]]*\] ?(?P<msg>.*)$")


def parse_executor_runner(text: str, *, warmup: int = 0) -> dict[str, Any]:
    """ExecuTorch's ``executor_runner`` output -> the runner's result dict.

    Its ET_LOG lines (``I 00:00:00.012345 executorch:executor_runner.cpp:123] MESSAGE``, on stderr with the default
    POSIX platform layer) give ``Model file PATH is loaded.``, ``Resetting threadpool with num threads = N``, in
    recent versions ``Model loaded in X ms.`` and one ``Iteration i of N: X ms`` per execution, and always
    ``Model executed successfully N time(s) in X ms.``. With per-iteration times the first iteration is the first
    run, the next ``warmup`` are warm-up and the rest are timed (full statistics); without them only the mean over
    every execution is known. It reports no memory figures.
    """
    out = _result("executor_runner", "executorch", "executorch")
    iters: list[tuple[int, float]] = []
    total: tuple[int, float] | None = None
    errors = []
    for raw in text.splitlines():
        m = _ET_MSG.match(raw.strip())
        if not m:
            continue
        msg = m.group("msg").strip()
        if m.group("level") in "EF":
            errors.append(msg)
        if mm := re.match(r"Model file (.+) is loaded\.", msg):
            out["model"] = mm.group(1)
        elif mm := re.match(r"Resetting threadpool with num threads = (\d+)", msg):
            out["threads"] = int(mm.group(1)) or None
        elif mm := re.match(r"Model loaded in (" + _NUM + r") ms", msg):
            out["load_ms"] = _float(mm.group(1))
        elif mm := re.match(r"Iteration (\d+) of (\d+): (" + _NUM + r") ms", msg):
            iters.append((int(mm.group(1)), _float(mm.group(3))))
        elif mm := re.match(r"Model executed successfully (\d+) time\(s\) in (" + _NUM + r") ms", msg):
            total = (int(mm.group(1)), _float(mm.group(2)))
    if total is None:
        raise ValueError("executor_runner did not finish: " + ("; ".join(errors[-5:]) if errors
                                                               else _error_lines(text, r"rror|abort|Abort")))
    n, total_ms = total
    iters = [t for _i, t in sorted(iters)]
    lat = out["latency_ms"]
    if len(iters) == n and n >= warmup + 2:
        timed = iters[1 + warmup:]
        lat.update(_stats_ms(timed))
        out["first_run_ms"], out["warmup"], out["runs"] = iters[0], warmup, len(timed)
        out["cv"] = lat["std"] / lat["mean"] if lat["mean"] > 0 else 0.0
    else:
        lat["mean"] = total_ms / n if n else None
        out["warmup"], out["runs"] = 0, n
        out["notes"].append(f"this executor_runner prints only the total time: the mean is over all {n} executions, "
                            "first run and warm-up included; no percentiles")
    out["notes"].append("measured by ExecuTorch executor_runner (native); it reports no memory figures and sets "
                        "every input to ones")
    if out["load_ms"] is None:
        out["notes"].append("load time not printed by this executor_runner")
    return out


def executor_runner_argv(tool: str, model: str, *, runs: int, warmup: int, threads: int | None = None,
                         max_secs: float | None = None) -> list[str]:
    """gflags ``--name=value``: ``--model_path``, ``--num_executions`` (first run + warm-up + timed runs: the tool
    has no warm-up option, the parser drops the leading iterations), ``--cpu_threads`` (builds with a threadpool;
    -1, its default, picks the number of performant cores). ``max_secs`` is not passed: the tool has no time
    limit (the device run's timeout stops it)."""
    argv = [tool, f"--model_path={model}", f"--num_executions={1 + warmup + runs}"]
    if threads:
        argv.append(f"--cpu_threads={threads}")
    return argv


# ------------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class NativeTool:
    """How edgeship drives one native benchmark tool. Every ``argv`` takes (tool, model, *, runs, warmup, threads,
    max_secs) and every ``parse`` (text, *, warmup); ``binary`` is the format's ``native_tool`` in the format
    registry (edgeship_runtime.formats; a test keeps them equal)."""

    format: str
    binary: str                                          # the usual file name
    runtime: str
    origin: str
    argv: Callable[..., list[str]]
    parse: Callable[..., dict[str, Any]]


TOOLS: dict[str, NativeTool] = {
    "tflite": NativeTool("tflite", "benchmark_model", "litert", "LiteRT tflite/tools/benchmark",
                         benchmark_model_argv, parse_benchmark_model),
    "onnx": NativeTool("onnx", "onnxruntime_perf_test", "onnxruntime", "onnxruntime test/perftest",
                       onnxruntime_perf_test_argv, parse_onnxruntime_perf_test),
    "executorch": NativeTool("executorch", "executor_runner", "executorch",
                             "ExecuTorch examples/portable/executor_runner", executor_runner_argv,
                             parse_executor_runner),
}


def parse_tool_specs(specs: Sequence[str] | Mapping[str, str | Path] | None) -> dict[str, Path]:
    """``["tflite=/path/benchmark_model", ...]`` (or a mapping) -> {format: host path}, checked."""
    if not specs:
        return {}
    pairs: list[tuple[str, str | Path]] = []
    if isinstance(specs, Mapping):
        pairs = [(str(f).strip().lower(), p) for f, p in specs.items()]
    else:
        for s in specs:
            fmt, sep, path = str(s).partition("=")
            if not sep or not fmt.strip() or not path.strip():
                raise EdgeshipError(f"--tool {s!r} is not FORMAT=PATH",
                                    hint="e.g. --tool tflite=/path/to/benchmark_model --tool onnx=/path/to/onnxruntime_perf_test")
            pairs.append((fmt.strip().lower(), path.strip()))
    out: dict[str, Path] = {}
    for fmt, path in pairs:
        if fmt not in TOOLS:
            raise EdgeshipError(f"no native benchmark tool is known for format {fmt!r}",
                                hint="known: " + ", ".join(f"{f}={t.binary}" for f, t in TOOLS.items()))
        resolve_tool(fmt, Path(path).expanduser())
        out[fmt] = Path(path).expanduser()
    return out


def resolve_tool(fmt: str, path: Path) -> tuple[Path, str]:
    """(what to push, the executable's name inside it): a file is pushed as is; a folder whole, with the binary
    under its usual name."""
    tool = TOOLS[fmt]
    if path.is_file():
        return path, path.name
    if path.is_dir():
        if not (path / tool.binary).is_file():
            raise EdgeshipError(f"the folder {path} given for {fmt} has no {tool.binary}",
                                hint=f"give the binary itself, or a folder with {tool.binary} (and its .so files)")
        return path, tool.binary
    raise EdgeshipError(f"the {fmt} benchmark tool {path} does not exist",
                        hint=f"build {tool.binary} for the device ({tool.origin}) and give its path on this host")


def run_tool(device: Any, fmt: str, exe: str, model: str, *, runs: int, warmup: int, threads: int | None,
             timeout_s: float, cwd: str | None = None, env: Mapping[str, str] | None = None,
             affinity: str | None = None) -> dict[str, Any]:
    """Run a pushed native tool on ``device`` and parse its output; EdgeshipError when it fails."""
    tool = TOOLS[fmt]
    argv = tool.argv(exe, model, runs=runs, warmup=warmup, threads=threads, max_secs=timeout_s)
    if affinity:
        argv = ["taskset", "-c", affinity, *argv]
    cp = device.run(argv, timeout_s=timeout_s, cwd=cwd, env=dict(env or {}))
    text = (cp.stdout or "") + "\n" + (cp.stderr or "")
    if cp.returncode != 0:
        raise EdgeshipError(f"{tool.binary} failed on {device.id} (exit {cp.returncode}): "
                            f"{text.strip()[-800:] or 'no output'}",
                            hint=f"is it built for this device's ABI? try it by hand: {' '.join(map(shlex.quote, argv))}")
    try:
        out = tool.parse(text, warmup=warmup)
    except ValueError as e:
        raise EdgeshipError(f"cannot read {tool.binary}'s output on {device.id}: {e}") from None
    out["model"] = out.get("model") or model
    out["threads"] = out.get("threads") or threads
    return out


# ------------------------------------------------------------------------------------------ the android-demo app

APP_PACKAGE = "dev.edgeship.demo"                        # android-demo/app/build.gradle.kts applicationId
APP_COMPONENT = f"{APP_PACKAGE}/.BenchmarkActivity"      # AndroidManifest.xml, exported
APP_RESULT_DIR = "files/bench"                           # relative to the app's data folder (run-as's cwd)
# the runtimes the app links (Runners.kt), best first: apps["android"] in the format registry
APP_FORMATS = format_registry.KeyView(lambda: format_registry.app_formats("android"))


def app_start_argv(model: str, *, runs: int, warmup: int, threads: int | None, out: str) -> list[str]:
    """``am start -S -W``: -S force-stops the app first, so every benchmark is a fresh process (the activity is
    singleTask: a second intent to a live one would not run onCreate again); -W waits until it is displayed."""
    return ["am", "start", "-S", "-W", "-n", APP_COMPONENT, "--es", "model", model, "--ei", "runs", str(runs),
            "--ei", "warmup", str(warmup), "--ei", "threads", str(threads or 0), "--es", "out", out]


def app_poll_script(out: str, timeout_s: float, interval_s: float = 0.25) -> str:
    """A device-side loop: print files/bench/OUT once it exists (the app writes it atomically), fail fast when
    run-as itself refuses (not debuggable, not installed), exit 124 after ``timeout_s``."""
    n = max(1, int(timeout_s / interval_s))
    path = shlex.quote(f"{APP_RESULT_DIR}/{out}")
    return (f"i=0; while :; do r=$(run-as {APP_PACKAGE} cat {path} 2>&1) && {{ printf '%s\\n' \"$r\"; exit 0; }}; "
            f"case \"$r\" in run-as:*) printf '%s\\n' \"$r\" >&2; exit 3;; esac; i=$((i+1)); "
            f"if [ $i -ge {n} ]; then printf '%s\\n' \"$r\" >&2; exit 124; fi; sleep {interval_s:g}; done")


def _json_object(text: str) -> dict | None:
    """The whole text as one JSON object, else its last line that is one."""
    for candidate in [text.strip()] + text.strip().splitlines()[::-1]:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def run_app(device: Any, model: str, *, runs: int, warmup: int, threads: int | None, timeout_s: float) -> dict[str, Any]:
    """Start the app's benchmark activity for ``model`` (an artifact path of the packaged manifest) and read its JSON."""
    out = f"edgeship-{uuid.uuid4().hex[:12]}.json"
    cp = device.run(app_start_argv(model, runs=runs, warmup=warmup, threads=threads, out=out), timeout_s=60)
    said = (cp.stdout or "") + (cp.stderr or "")
    if cp.returncode != 0 or re.search(r"^Error", said, re.MULTILINE):
        raise EdgeshipError(f"cannot start {APP_COMPONENT} on {device.id}: {said.strip()[-400:] or cp.returncode}",
                            hint="install the demo app with your model: edgeship package FOLDER --app android; "
                                 "cd android-demo && ./gradlew installDebug")
    try:
        cp = device.run(["sh", "-c", app_poll_script(out, timeout_s)], timeout_s=timeout_s + 30)
    finally:
        device.run(["sh", "-c", f"run-as {APP_PACKAGE} rm -f {shlex.quote(APP_RESULT_DIR + '/' + out)}; "
                                f"am force-stop {APP_PACKAGE}"], timeout_s=30)
    if cp.returncode != 0:
        why = (cp.stderr or cp.stdout).strip()[-400:]
        if cp.returncode == 124:
            raise EdgeshipError(f"the app wrote no result within {timeout_s:g} s on {device.id}: {why}",
                                hint="see adb logcat -s EdgeshipBench; fewer --runs, or raise the timeout")
        raise EdgeshipError(f"cannot read the app's result on {device.id}: {why}",
                            hint="run-as needs a debuggable build (./gradlew installDebug)")
    result = _json_object(cp.stdout)
    if not isinstance(result, dict):
        raise EdgeshipError(f"the app's result on {device.id} is not JSON: {cp.stdout.strip()[-300:]}")
    if "error" in result:
        raise EdgeshipError(f"the app failed: {result['error']}", hint=result.get("hint"))
    result.setdefault("notes", [])
    result["notes"] = list(result["notes"] or []) + ["measured by the android-demo app's benchmark mode "
                                                     "(the artifact packaged in its APK)"]
    result["tool"] = "android-demo"
    if result.get("model") not in (None, model):
        result["notes"].append(f"asked for {model}, the app ran {result.get('model')}")
    return result
