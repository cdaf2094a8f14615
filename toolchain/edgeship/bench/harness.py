"""Run a benchmark on a Device for each artifact of an export folder; append results to report.json.

Three ways to measure (``BenchOptions.via``), each a strategy object in :mod:`edgeship.bench.methods`:
``python`` (default; the pushed runner on the device's python), ``tool`` (the runtimes' native benchmark binaries,
pushed: for phones and boards without Python) and ``app`` (the device's demo app: android-demo over adb).

Variance controls: warmup, repeated rounds in alternating order, a cooldown between artifacts, optional CPU
affinity and thread count; results whose coefficient of variation exceeds CV_FLAG are flagged.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .. import manifest as manifest_mod
from .. import report as report_mod
from .._io import inside
from ..errors import EdgeshipError
from . import native
from .devices import Device, DeviceInfo
from .methods import METHODS, RUNNER_DIR, BenchMethod, methods_for, parse_runner_output, remote_path, runner_env

__all__ = ["BenchOptions", "bench_folder", "size_points", "select_artifacts", "add_speedups", "CV_FLAG", "VIAS",
           # re-exported from .methods, where they live
           "RUNNER_DIR", "remote_path", "parse_runner_output", "runner_env"]

log = logging.getLogger(__name__)
CV_FLAG = 0.10
Event = Callable[[str, str, dict], None]
VIAS = tuple(METHODS)


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


def _energy_source(device: Device, opts: BenchOptions, info: DeviceInfo):
    if opts.energy == "off":
        return None
    from .energy import power_source
    return power_source(device, opts.power_cmd, info)


def _inferences(out: dict) -> int:
    """Every inference the measured process made: the first run, the warm-up runs and the timed runs."""
    return (1 if out.get("first_run_ms") is not None else 0) + int(out.get("warmup") or 0) + int(out.get("runs") or 0)


def _measure(device: Device, opts: BenchOptions, source, job: Callable[[], dict], what: str) -> tuple[dict, dict | None]:
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


def bench_folder(folder: Path, device: Device, opts: BenchOptions, on_event: Event | None = None, *,
                 append: bool = True) -> list[dict]:
    """Benchmark every selected artifact of ``folder`` on ``device``; returns the new report.json bench entries.

    The folder is read through ``manifest.load`` (every artifact path stays inside it, symlinks followed); before
    anything is pushed each artifact's sha256 is checked against the manifest, and one that changed since export is
    not benched: its entry fails with the reason. Device paths are built by :func:`remote_path`. Each artifact is
    measured by its :class:`~edgeship.bench.methods.BenchMethod` (``opts.via``). ``append=False`` leaves
    report.json alone (the fleet bench, bench/fleet.py, writes every device's entries once, from one thread)."""
    on_event = on_event or (lambda *a: None)
    folder = Path(folder)
    if opts.via == "python" and getattr(device, "bench_via", None):   # a device without python (a browser): its own way
        opts = dataclasses.replace(opts, via=device.bench_via)
    manifest = manifest_mod.load(folder)
    report = report_mod.load(folder)
    arts = select_artifacts(manifest, opts)
    methods = methods_for(arts, opts)
    for m in dict.fromkeys(methods.values()):
        m.check(device)
    points = size_points(manifest, opts)   # --batch/--seq, checked before anything runs
    info = device.info()
    entries: list[dict] = []
    runnable = []
    for a in arts:
        key, method = f"{a['format']}:{a['precision']}", methods[a["path"]]
        # the bytes pushed must be the bytes exported (and verified); the app runs its own packaged copy
        changed = manifest_mod.artifact_problem(folder, a) if method.pushes else None
        reason = None if changed else method.why_not(a, device, info, opts)
        if changed:
            entries.append(_entry(device, info, a, None, opts, status="failed", reason=changed))
            on_event(key, "failed", {"reason": changed})
        elif reason:
            entries.append(_entry(device, info, a, None, opts, status="skipped", reason=reason))
            on_event(key, "skipped", {"reason": reason})
        else:
            runnable.append(a)
    source = _energy_source(device, opts, info)
    results: dict[tuple[str, int | None, str | None], list[tuple[dict, dict | None]]] = {}
    sizes = points or [None]
    cant = {(a["path"], p["label"]): why for a in runnable for p in points or ()
            if (why := _size_problem(a, manifest, p))}
    used = list(dict.fromkeys(methods[a["path"]] for a in runnable))
    if runnable:
        with (device.tempdir() if any(m.pushes for m in used) else contextlib.nullcontext("")) as d:
            _push(device, d, folder, runnable, methods, opts)
            for rnd in range(opts.rounds):
                order = runnable if rnd % 2 == 0 else runnable[::-1]    # alternate to spread drift and heat
                for threads in opts.threads:
                    for a, point in ((a, p) for p in sizes for a in order):
                        label = point and point["label"]
                        if (a["path"], label) in cant:
                            continue
                        key, method = f"{a['format']}:{a['precision']}", methods[a["path"]]
                        on_event(key, "run", {"round": rnd + 1, "threads": threads, "size": label})
                        job = method.job(device, d, a, opts, threads, point)
                        try:
                            out, energy = _measure(device, opts, source, job, method.what)
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
    if append:
        report.setdefault("bench", []).extend(entries)
        report_mod.write(folder, report)
    return entries


def _push(device: Device, d: str, folder: Path, runnable: list[dict], methods: dict[str, BenchMethod],
          opts: BenchOptions) -> None:
    """Put what each method needs in the device folder ``d``, then the artifacts of the methods that push them.

    Every destination is built by :func:`remote_path` inside ``d``; every artifact is read through
    :func:`edgeship._io.inside` (symlinks followed), so nothing is read from outside ``folder`` nor written outside
    ``d``."""
    for m in dict.fromkeys(methods[a["path"]] for a in runnable):
        m.prepare(device, d, folder, [a for a in runnable if methods[a["path"]] is m], opts)
    for a in runnable:
        if methods[a["path"]].pushes:
            device.push(inside(folder, a["path"], "artifact path"), remote_path(d, a["path"]))


def _entry(device: Device, info: DeviceInfo, art: dict, out: dict | None, opts: BenchOptions, status: str = "ok",
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


def _merge_rounds(device: Device, info: DeviceInfo, art: dict, rounds: list[tuple[dict, dict | None]], opts: BenchOptions) -> dict:
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
