"""Run a benchmark on a Device for each artifact of an export folder; append results to report.json.

Three ways to measure (``BenchOptions.via``):

* ``python`` (default): the runner (runtimes/edgeship_runtime, numpy + one runtime, no torch) is pushed as files
  with the artifacts and the manifest and run with the device's python; nothing of ours is installed there.
* ``tool``: the runtimes' native benchmark binaries (LiteRT ``benchmark_model``, ``onnxruntime_perf_test``,
  ExecuTorch ``executor_runner``), given by host path in ``BenchOptions.tools``, are pushed with the artifacts,
  made executable and run; their output is parsed into the runner's JSON (see :mod:`edgeship.bench.native`).
  For phones and boards without Python.
* ``app``: the android-demo app's benchmark mode (adb only); it runs the artifact packaged in its APK.

Variance controls: warmup, repeated rounds in alternating order, a cooldown between artifacts, optional CPU
affinity and thread count; results whose coefficient of variation exceeds CV_FLAG are flagged.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, Sequence

import edgeship_runtime
from edgeship_runtime import formats

from .. import manifest as manifest_mod
from .. import report as report_mod
from .._io import inside, relative_parts
from ..errors import EdgeshipError
from . import native

log = logging.getLogger(__name__)
CV_FLAG = 0.10
RUNNER_DIR = Path(edgeship_runtime.__file__).parent
Event = Callable[[str, str, dict], None]
VIAS = ("python", "tool", "app")


@dataclass
class BenchOptions:
    runs: int = 100
    warmup: int = 10
    threads: Sequence[int | None] = (None,)
    rounds: int = 1
    cooldown_s: float = 0.0
    affinity: str | None = None          # CPU list for taskset, e.g. "4-7" (big cores)
    formats: Sequence[str] | None = None
    precisions: Sequence[str] | None = None
    energy: str = "auto"                 # auto | off
    power_cmd: str | None = None
    timeout_s: float = 900.0
    via: str = "python"                  # python (the runner) | tool (native binaries) | app (android-demo)
    tools: Mapping[str, str | Path] | None = None   # format -> native benchmark binary (or folder) on the host
    compare: str | None = None           # a precision (e.g. fp32): each artifact's speed-up over it, same format and run
    batch: Sequence[int] | None = None   # sizes of the dynamic batch dimension (axis 0) to bench at
    seq: Sequence[int] | None = None     # sizes of the other dynamic dimensions (sequence length) to bench at

    def __post_init__(self):
        if self.runs < 1 or self.warmup < 0 or self.rounds < 1:
            raise EdgeshipError(f"--runs must be ≥ 1, --warmup ≥ 0 and --rounds ≥ 1 (got {self.runs}, {self.warmup}, {self.rounds})")
        if any(t is not None and t < 1 for t in self.threads):
            raise EdgeshipError(f"--threads must be ≥ 1, got {list(self.threads)}")
        if self.energy not in ("auto", "off"):
            raise EdgeshipError(f"--energy must be auto or off, got {self.energy!r}")
        if self.via not in VIAS:
            raise EdgeshipError(f"--via must be one of {', '.join(VIAS)}, got {self.via!r}")
        self.tools = native.parse_tool_specs(self.tools)     # checks formats and that the files exist
        if self.via == "tool" and not self.tools:
            raise EdgeshipError("--via tool needs at least one native benchmark binary",
                                hint="--tool tflite=/path/to/benchmark_model (or onnx=.../onnxruntime_perf_test, "
                                     "executorch=.../executor_runner), built for the device")
        if self.tools and self.via != "tool":
            raise EdgeshipError(f"--tool is used only with --via tool (got --via {self.via})")
        for flag, sizes in (("--batch", self.batch), ("--seq", self.seq)):
            if sizes is not None and (not sizes or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sizes)):
                raise EdgeshipError(f"{flag} takes sizes ≥ 1, comma-separated (e.g. {flag} 1,4,8), got {list(sizes)}")
        if (self.batch or self.seq) and self.via != "python":
            raise EdgeshipError(f"--batch/--seq need the python runner (it resizes the inputs), not --via {self.via}")


def size_points(manifest: dict, opts: BenchOptions) -> list[dict] | None:
    """The input shapes to bench at for --batch and --seq (every batch × every seq), from the manifest's inputs:
    --batch sets axis 0 of every input whose axis 0 is dynamic, --seq every other dynamic dimension. None without
    --batch/--seq. A size outside an input's exported range, or a flag no dynamic dimension takes, is refused."""
    if not opts.batch and not opts.seq:
        return None
    inputs = manifest["inputs"]
    dyn = [{int(a): r for a, r in (i.get("dynamic") or {}).items()} for i in inputs]
    written = ", ".join(f"{i['name']}:" + "x".join(f"({d[a][0]}..{d[a][1]})" if a in d else str(n)
                                                  for a, n in enumerate(i["shape"])) for i, d in zip(inputs, dyn))
    hint = ("export with a dynamic dimension, e.g. --input image:(1..8)x3x224x224 for --batch or "
            "--input tokens:1x(8..512):int64 for --seq")
    for flag, values, axes in (("--batch", opts.batch, lambda d: [a for a in d if a == 0]),
                               ("--seq", opts.seq, lambda d: [a for a in d if a != 0])):
        if not values:
            continue
        if not any(axes(d) for d in dyn):
            raise EdgeshipError(f"{flag}: the folder's inputs ({written}) have no dynamic "
                                f"{'batch dimension (axis 0)' if flag == '--batch' else 'dimension beyond axis 0'}",
                                hint=hint)
        for i, d in zip(inputs, dyn):
            for a in axes(d):
                bad = [v for v in values if not d[a][0] <= v <= d[a][1]]
                if bad:
                    raise EdgeshipError(f"{flag} {','.join(map(str, bad))}: outside the range {d[a][0]}..{d[a][1]} that "
                                        f"input {i['name']!r} was exported with (dimension {a})",
                                        hint=f"choose sizes in {d[a][0]}..{d[a][1]}, or export with a wider range")
    points = []
    for b in opts.batch or [None]:
        for q in opts.seq or [None]:
            shapes = {}
            for i, d in zip(inputs, dyn):
                shape = list(i["shape"])
                for a in d:
                    shape[a] = b if a == 0 and b is not None else q if a != 0 and q is not None else shape[a]
                shapes[i["name"]] = shape
            label = " ".join(f"{k} {v}" for k, v in (("batch", b), ("seq", q)) if v is not None)
            points.append({"label": label, "batch": b, "seq": q, "shapes": shapes})
    return points


def _size_problem(art: dict, manifest: dict, point: dict) -> str | None:
    """Why ``art`` cannot run at ``point`` (a format exported with fixed shapes, e.g. TFLite), or None."""
    ins = art.get("inputs") or []
    for k, i in enumerate(manifest["inputs"]):
        want = point["shapes"][i["name"]]
        if k >= len(ins) or want == list(i["shape"]):
            continue
        a = ins[k]
        dyn = {int(x): r for x, r in (a.get("dynamic") or {}).items()}
        fixed = [n for x, n in enumerate(want) if x not in dyn and x < len(a["shape"]) and a["shape"][x] not in (None, n)]
        if fixed or any(not dyn[x][0] <= want[x] <= dyn[x][1] for x in dyn if x < len(want)):
            shape = "x".join("?" if n is None else str(n) for n in a["shape"])
            return f"fixed shape: takes {i['name']} {shape} only, not {'x'.join(map(str, want))}"
    return None


def select_artifacts(manifest: dict, opts: BenchOptions) -> list[dict]:
    """The artifacts to bench: --formats and --precisions, plus the --compare precision of each selected format."""
    arts = manifest["artifacts"]
    if opts.formats:
        arts = [a for a in arts if a["format"] in opts.formats]
    if opts.compare:
        have = {(a["format"], a["precision"]) for a in arts}
        if not any(p == opts.compare for _, p in have):
            raise EdgeshipError(f"--compare {opts.compare}: the folder has no {opts.compare} artifact to compare with",
                                hint=f"it has: {', '.join(sorted(f'{f}:{p}' for f, p in have)) or 'none'}; export "
                                     f"with --precision {opts.compare},int8 to have both")
    if opts.precisions:
        wanted = set(opts.precisions) | ({opts.compare} if opts.compare else set())
        arts = [a for a in arts if a["precision"] in wanted]
    if not arts:
        have = ", ".join(f"{a['format']}:{a['precision']}" for a in manifest["artifacts"]) or "none"
        raise EdgeshipError("no artifact in the folder matches --formats/--precisions", hint=f"the folder has: {have}")
    return arts


def add_speedups(entries: list[dict], baseline: str) -> None:
    """Give each measured entry ``speedup_vs``: the ``baseline`` precision's p50 over its own, for the same format,
    thread count and size, measured in the same run (alternating rounds), so the ratio is fair on a busy or drifting
    device."""
    def key(e: dict) -> tuple:
        return e["format"], e.get("threads"), (e.get("size") or {}).get("label")
    base = {key(e): e for e in entries if e["status"] == "ok" and e["precision"] == baseline}
    for e in entries:
        if e["status"] != "ok" or e["precision"] == baseline:
            continue
        b = base.get(key(e))
        if b is None:
            e["speedup_vs"] = {"precision": baseline, "x": None, "reason": f"no {baseline} {e['format']} result in this run"}
            continue
        x = _p50(b) / _p50(e)
        rounds = [pb / pe for pb, pe in zip(b.get("rounds_p50_ms") or [], e.get("rounds_p50_ms") or []) if pb and pe]
        e["speedup_vs"] = {"precision": baseline, "x": round(x, 4), "baseline_p50_ms": _p50(b),
                           "rounds_x": [round(r, 4) for r in rounds]}


def parse_runner_output(stdout: str) -> dict:
    """The runner prints one JSON object (the last line that parses); an {"error": ...} object is a failure."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise ValueError("the runner printed no JSON result")


def remote_path(d: str, rel: str) -> str:
    """``rel`` (a relative POSIX path from the manifest) inside the device temp folder ``d``, rebuilt from its parts.

    Defence in depth: ``manifest.load`` already refuses artifact paths that lead out of the export folder, but the
    path on the device is built here from ``rel``'s parts alone (``.`` and empty parts dropped), and anything that
    could climb out of ``d`` (``..``, an absolute path, a backslash, NUL) is refused, so no manifest can make the
    bench write outside its temp folder on any device."""
    parts = relative_parts(rel, f"artifact path {str(rel)[:200]!r} would leave the device's temp folder {d}",
                           hint="the manifest was edited by hand or tampered with: export the folder again")
    return f"{d}/{'/'.join(parts)}"


def _runner_argv(device, d: str, art: dict, opts: BenchOptions, threads: int | None,
                 point: dict | None = None) -> list[str]:
    argv = [device.python or "python3", "-m", "edgeship_runtime.bench", remote_path(d, art["path"]),
            "--manifest", f"{d}/manifest.json", "--runs", str(opts.runs), "--warmup", str(opts.warmup)]
    for name, shape in ((point or {}).get("shapes") or {}).items():
        argv += ["--shape", f"{name}={'x'.join(map(str, shape))}"]
    if threads:
        argv += ["--threads", str(threads)]
    if opts.affinity:
        argv = ["taskset", "-c", opts.affinity, *argv]
    return argv


def runner_env(d: str) -> dict[str, str]:
    """The environment of a python runner started in the device folder ``d``: the pushed edgeship_runtime on its path,
    and the formats registered in this process (``edgeship_runtime.formats.register``) so the runner knows them."""
    return {**formats.exported_env(), "PYTHONPATH": d}


def _energy_source(device, opts: BenchOptions):
    if opts.energy == "off":
        return None
    from .energy import power_source
    return power_source(device, opts.power_cmd)


def _inferences(out: dict) -> int:
    """Every inference the measured process made: the first run, the warm-up runs and the timed runs."""
    return (1 if out.get("first_run_ms") is not None else 0) + int(out.get("warmup") or 0) + int(out.get("runs") or 0)


def _measure(device, opts: BenchOptions, source, job: Callable[[], dict], what: str) -> tuple[dict, dict | None]:
    """Run ``job`` (one benchmark process on the device; returns the runner-style dict) inside the energy window."""
    from .energy import EnergySampler
    if source is None or source.unavailable_reason():
        out = job()
        energy = None if source is None else {"available": False, "method": "none", "reason": source.unavailable_reason()}
        return out, energy
    with EnergySampler(source) as sampler:
        sampler.measure_idle(2.0)
        with sampler.window():
            out = job()
        n = _inferences(out)
        result = sampler.result(inferences=max(n, 1))
    energy = result.to_dict()
    energy.setdefault("notes", []).append(f"the window spans the whole {what} process (load, first run, warm-up and "
                                          f"timed runs); divided by all {n} inferences")
    return out, energy


def _python_job(device, d: str, art: dict, opts: BenchOptions, threads: int | None,
                point: dict | None = None) -> Callable[[], dict]:
    def job() -> dict:
        cp = device.run(_runner_argv(device, d, art, opts, threads, point), timeout_s=opts.timeout_s, cwd=d,
                        env=runner_env(d))
        try:
            return parse_runner_output(cp.stdout)
        except ValueError:
            raise EdgeshipError(f"the runner failed on {device.id} (exit {cp.returncode}): {(cp.stderr or cp.stdout).strip()[-800:]}",
                                hint="run `edgeship devices` to see what the device can run") from None
    return job


def _tool_job(device, d: str, art: dict, opts: BenchOptions, threads: int | None, exe: str) -> Callable[[], dict]:
    fmt = art["format"]

    def job() -> dict:
        return native.run_tool(device, fmt, exe, remote_path(d, art["path"]), runs=opts.runs, warmup=opts.warmup,
                               threads=threads, timeout_s=opts.timeout_s, cwd=d,
                               env={"LD_LIBRARY_PATH": exe.rsplit("/", 1)[0]}, affinity=opts.affinity)
    return job


def _app_job(device, art: dict, opts: BenchOptions, threads: int | None) -> Callable[[], dict]:
    def job() -> dict:
        return native.run_app(device, art["path"], runs=opts.runs, warmup=opts.warmup, threads=threads,
                              timeout_s=opts.timeout_s)
    return job


def _why_not(art: dict, device, info, opts: BenchOptions) -> str | None:
    """None when ``art`` can be benched ``opts.via`` on the device, else why not."""
    fmt = art["format"]
    if opts.via == "tool":
        if fmt not in (opts.tools or {}):
            known = native.TOOLS.get(fmt)
            return (f"no native benchmark tool given for {fmt}" + (f" (--tool {fmt}=/path/to/{known.binary})" if known
                                                                  else f": none is known for {fmt}"))
        return None
    if opts.via == "app":
        return None if fmt in native.APP_FORMATS else f"the android-demo app has no {fmt} runtime"
    if not info.runtimes.get(fmt):
        return info.missing.get(fmt) or f"no {fmt} runtime on {device.id}"
    return None


def _push(device, d: str, folder: Path, runnable: list[dict], opts: BenchOptions) -> dict[str, str]:
    """Put what the chosen way needs on the device; returns {format: executable} for native tools.

    Every destination is built by :func:`remote_path` inside ``d``; every artifact is read through
    :func:`edgeship._io.inside` (symlinks followed), so nothing is read from outside ``folder`` nor written outside
    ``d``."""
    exes: dict[str, str] = {}
    if opts.via == "python":
        device.push(RUNNER_DIR, f"{d}/edgeship_runtime")
        device.push(folder / "manifest.json", f"{d}/manifest.json")
    if opts.via == "tool":
        for fmt in dict.fromkeys(a["format"] for a in runnable):
            src, name = native.resolve_tool(fmt, Path(opts.tools[fmt]))
            dest = remote_path(d, f"tools/{fmt}")
            device.push(src, remote_path(d, f"tools/{fmt}/{name}") if src.is_file() else dest)
            exes[fmt] = remote_path(d, f"tools/{fmt}/{name}")
            device.run(["chmod", "755", exes[fmt]], 60, check=True)
    for a in runnable:
        device.push(inside(folder, a["path"], "artifact path"), remote_path(d, a["path"]))
    return exes


def bench_folder(folder: Path, device, opts: BenchOptions, on_event: Event | None = None) -> list[dict]:
    """Benchmark every selected artifact of ``folder`` on ``device``; returns the new report.json bench entries.

    The folder is read through ``manifest.load`` (every artifact path stays inside it, symlinks followed); before
    anything is pushed each artifact's sha256 is checked against the manifest, and one that changed since export is
    not benched: its entry fails with the reason. Device paths are built by :func:`remote_path`."""
    on_event = on_event or (lambda *a: None)
    folder = Path(folder)
    manifest = manifest_mod.load(folder)
    report = report_mod.load(folder)
    arts = select_artifacts(manifest, opts)
    if opts.via == "app" and getattr(device, "kind", None) != "adb":
        raise EdgeshipError(f"--via app runs the android-demo app's benchmark mode: it needs an adb device, not {device.id}",
                            hint="--device adb (the app installed with ./gradlew installDebug)")
    points = size_points(manifest, opts)   # --batch/--seq, checked before anything runs
    info = device.info()
    entries: list[dict] = []
    runnable = []
    for a in arts:
        key = f"{a['format']}:{a['precision']}"
        # the bytes pushed must be the bytes exported (and verified); the app runs its own packaged copy
        changed = manifest_mod.artifact_problem(folder, a) if opts.via != "app" else None
        reason = None if changed else _why_not(a, device, info, opts)
        if changed:
            entries.append(_entry(device, info, a, None, opts, status="failed", reason=changed))
            on_event(key, "failed", {"reason": changed})
        elif reason:
            entries.append(_entry(device, info, a, None, opts, status="skipped", reason=reason))
            on_event(key, "skipped", {"reason": reason})
        else:
            runnable.append(a)
    source = _energy_source(device, opts)
    what = {"python": "runner", "tool": "benchmark tool", "app": "app"}[opts.via]
    results: dict[tuple[str, int | None, str | None], list[tuple[dict, dict | None]]] = {}
    sizes = points or [None]
    cant = {(a["path"], p["label"]): why for a in runnable for p in points or ()
            if (why := _size_problem(a, manifest, p))}
    if runnable:
        with (device.tempdir() if opts.via != "app" else contextlib.nullcontext("")) as d:
            exes = _push(device, d, folder, runnable, opts) if opts.via != "app" else {}
            for rnd in range(opts.rounds):
                order = runnable if rnd % 2 == 0 else runnable[::-1]    # alternate to spread drift and heat
                for threads in opts.threads:
                    for a, point in ((a, p) for p in sizes for a in order):
                        label = point and point["label"]
                        if (a["path"], label) in cant:
                            continue
                        key = f"{a['format']}:{a['precision']}"
                        on_event(key, "run", {"round": rnd + 1, "threads": threads, "size": label})
                        if opts.via == "python":
                            job = _python_job(device, d, a, opts, threads, point)
                        elif opts.via == "tool":
                            job = _tool_job(device, d, a, opts, threads, exes[a["format"]])
                        else:
                            job = _app_job(device, a, opts, threads)
                        try:
                            out, energy = _measure(device, opts, source, job, what)
                        except EdgeshipError as e:
                            out, energy = {"error": e.message + (f" (hint: {e.hint})" if e.hint else "")}, None
                        results.setdefault((a["path"], threads, label), []).append((out, energy))
                        if opts.cooldown_s:
                            time.sleep(opts.cooldown_s)
    for a in runnable:
        for threads in opts.threads:
            for point in sizes:
                label = point and point["label"]
                if (a["path"], label) in cant:
                    entry = _entry(device, info, a, None, opts, status="skipped", reason=cant[(a["path"], label)])
                else:
                    entry = _merge_rounds(device, info, a, results[(a["path"], threads, label)], opts)
                if point is not None:
                    entry["size"] = point
                entries.append(entry)
                on_event(f"{a['format']}:{a['precision']}", "done", entry)
    if opts.compare:
        add_speedups(entries, opts.compare)
    report.setdefault("bench", []).extend(entries)
    report_mod.write(folder, report)
    return entries


def _entry(device, info, art: dict, out: dict | None, opts: BenchOptions, status: str = "ok",
           reason: str | None = None) -> dict:
    e = {"artifact": f"{art['format']}:{art['precision']}", "path": art["path"], "format": art["format"],
         "precision": art["precision"], "size_bytes": art["size_bytes"], "device": device.id, "device_kind": info.kind,
         "device_info": {"os": info.os, "arch": info.arch, "cpu": info.cpu, "model": info.model,
                         "python_version": info.python_version, **{k: v for k, v in info.extra.items() if isinstance(v, (str, int, float))}},
         "via": opts.via, "status": status, "reason": reason,
         "timestamp": datetime.now(timezone.utc).replace(microsecond=0).isoformat()}
    return e


def _p50(out: dict) -> float:
    lat = out.get("latency_ms") or {}
    v = lat.get("p50")
    return v if v is not None else (lat.get("mean") if lat.get("mean") is not None else float("inf"))


def _merge_rounds(device, info, art: dict, rounds: list[tuple[dict, dict | None]], opts: BenchOptions) -> dict:
    good = [(o, en) for o, en in rounds if "error" not in o]
    if not good:
        return _entry(device, info, art, None, opts, status="failed", reason=rounds[0][0].get("error"))
    # the round with the median p50 (the mean where a tool reports no p50) stands for the artifact; every round's
    # p50 is kept
    good.sort(key=lambda r: _p50(r[0]))
    out, energy = good[len(good) // 2]
    e = _entry(device, info, art, out, opts)
    for k in ("runtime", "runtime_version", "threads", "runs", "warmup", "latency_ms", "cv", "load_ms", "first_run_ms",
              "peak_rss_mb", "load_rss_delta_mb", "inputs", "batch", "items_per_s"):
        e[k] = out.get(k)
    if out.get("tool"):
        e["tool"] = out["tool"]
    if out.get("notes"):
        e["notes"] = list(out["notes"])
    e["rounds_p50_ms"] = [(o.get("latency_ms") or {}).get("p50") for o, _ in good]
    e["cv_flag"] = bool(out.get("cv") is not None and out["cv"] > CV_FLAG)
    e["energy"] = energy if energy is not None else {"available": False, "method": "none", "reason": "energy measurement was off (--energy off)"}
    if len(good) < len(rounds):
        e["reason"] = f"{len(rounds) - len(good)} of {len(rounds)} rounds failed: {next(o['error'] for o, _ in rounds if 'error' in o)}"
    return e
