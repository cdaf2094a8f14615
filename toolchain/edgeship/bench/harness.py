"""Run the device-side runner on a Device for each artifact of an export folder; append results to report.json.

The runner (runtimes/edgeship_runtime, numpy + one runtime, no torch) is pushed as files with the artifacts
and the manifest; nothing of ours is installed on the device. Variance controls: warmup, repeated rounds in
alternating order, a cooldown between artifacts, optional CPU affinity and thread count; results whose
coefficient of variation exceeds CV_FLAG are flagged.
"""
from __future__ import annotations

import json
import logging
import shlex
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import edgeship_runtime

from .. import manifest as manifest_mod
from .. import report as report_mod
from ..errors import EdgeshipError

log = logging.getLogger(__name__)
CV_FLAG = 0.10
RUNNER_DIR = Path(edgeship_runtime.__file__).parent
Event = Callable[[str, str, dict], None]


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

    def __post_init__(self):
        if self.runs < 1 or self.warmup < 0 or self.rounds < 1:
            raise EdgeshipError(f"--runs must be ≥ 1, --warmup ≥ 0 and --rounds ≥ 1 (got {self.runs}, {self.warmup}, {self.rounds})")
        if any(t is not None and t < 1 for t in self.threads):
            raise EdgeshipError(f"--threads must be ≥ 1, got {list(self.threads)}")
        if self.energy not in ("auto", "off"):
            raise EdgeshipError(f"--energy must be auto or off, got {self.energy!r}")


def select_artifacts(manifest: dict, opts: BenchOptions) -> list[dict]:
    arts = manifest["artifacts"]
    if opts.formats:
        arts = [a for a in arts if a["format"] in opts.formats]
    if opts.precisions:
        arts = [a for a in arts if a["precision"] in opts.precisions]
    if not arts:
        have = ", ".join(f"{a['format']}:{a['precision']}" for a in manifest["artifacts"]) or "none"
        raise EdgeshipError("no artifact in the folder matches --formats/--precisions", hint=f"the folder has: {have}")
    return arts


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


def _runner_argv(device, d: str, art: dict, opts: BenchOptions, threads: int | None) -> list[str]:
    argv = [device.python or "python3", "-m", "edgeship_runtime.bench", f"{d}/{art['path']}",
            "--manifest", f"{d}/manifest.json", "--runs", str(opts.runs), "--warmup", str(opts.warmup)]
    if threads:
        argv += ["--threads", str(threads)]
    if opts.affinity:
        argv = ["taskset", "-c", opts.affinity, *argv]
    return argv


def _energy_source(device, opts: BenchOptions):
    if opts.energy == "off":
        return None
    from .energy import power_source
    return power_source(device, opts.power_cmd)


def _measure(device, argv, d, opts: BenchOptions, source) -> tuple[dict, dict | None]:
    from .energy import EnergySampler
    env = {"PYTHONPATH": d}
    if source is None or source.unavailable_reason():
        cp = device.run(argv, timeout_s=opts.timeout_s, cwd=d, env=env)
        energy = None if source is None else {"available": False, "method": "none", "reason": source.unavailable_reason()}
    else:
        with EnergySampler(source) as sampler:
            sampler.measure_idle(2.0)
            with sampler.window():
                cp = device.run(argv, timeout_s=opts.timeout_s, cwd=d, env=env)
            result = sampler.result(inferences=opts.runs + opts.warmup)
        energy = result.to_dict()
        energy.setdefault("notes", []).append("the window spans the runner process: load, warmup and runs; divided by warmup + runs")
    try:
        out = parse_runner_output(cp.stdout)
    except ValueError:
        raise EdgeshipError(f"the runner failed on {device.id} (exit {cp.returncode}): {(cp.stderr or cp.stdout).strip()[-800:]}",
                            hint="run `edgeship devices` to see what the device can run") from None
    return out, energy


def bench_folder(folder: Path, device, opts: BenchOptions, on_event: Event | None = None) -> list[dict]:
    """Benchmark every selected artifact of ``folder`` on ``device``; returns the new report.json bench entries."""
    on_event = on_event or (lambda *a: None)
    folder = Path(folder)
    manifest = manifest_mod.load(folder)
    report = report_mod.load(folder)
    arts = select_artifacts(manifest, opts)
    info = device.info()
    entries: list[dict] = []
    runnable = []
    for a in arts:
        key = f"{a['format']}:{a['precision']}"
        if not info.runtimes.get(a["format"]):
            reason = info.missing.get(a["format"]) or f"no {a['format']} runtime on {device.id}"
            entries.append(_entry(device, info, a, None, status="skipped", reason=reason))
            on_event(key, "skipped", {"reason": reason})
        else:
            runnable.append(a)
    source = _energy_source(device, opts)
    results: dict[tuple[str, int | None], list[tuple[dict, dict | None]]] = {}
    if runnable:
        with device.tempdir() as d:
            device.push(RUNNER_DIR, f"{d}/edgeship_runtime")
            device.push(folder / "manifest.json", f"{d}/manifest.json")
            for a in runnable:
                device.push(folder / a["path"], f"{d}/{a['path']}")
            for rnd in range(opts.rounds):
                order = runnable if rnd % 2 == 0 else runnable[::-1]    # alternate to spread drift and heat
                for threads in opts.threads:
                    for a in order:
                        key = f"{a['format']}:{a['precision']}"
                        on_event(key, "run", {"round": rnd + 1, "threads": threads})
                        try:
                            out, energy = _measure(device, _runner_argv(device, d, a, opts, threads), d, opts, source)
                        except EdgeshipError as e:
                            out, energy = {"error": e.message}, None
                        results.setdefault((a["path"], threads), []).append((out, energy))
                        if opts.cooldown_s:
                            time.sleep(opts.cooldown_s)
    for a in runnable:
        for threads in opts.threads:
            rounds = results[(a["path"], threads)]
            entry = _merge_rounds(device, info, a, rounds)
            entries.append(entry)
            on_event(f"{a['format']}:{a['precision']}", "done", entry)
    report.setdefault("bench", []).extend(entries)
    report_mod.write(folder, report)
    return entries


def _entry(device, info, art: dict, out: dict | None, status: str = "ok", reason: str | None = None) -> dict:
    e = {"artifact": f"{art['format']}:{art['precision']}", "path": art["path"], "format": art["format"],
         "precision": art["precision"], "size_bytes": art["size_bytes"], "device": device.id, "device_kind": info.kind,
         "device_info": {"os": info.os, "arch": info.arch, "cpu": info.cpu, "model": info.model,
                         "python_version": info.python_version, **{k: v for k, v in info.extra.items() if isinstance(v, (str, int, float))}},
         "status": status, "reason": reason,
         "timestamp": datetime.now(timezone.utc).replace(microsecond=0).isoformat()}
    return e


def _merge_rounds(device, info, art: dict, rounds: list[tuple[dict, dict | None]]) -> dict:
    good = [(o, en) for o, en in rounds if "error" not in o]
    if not good:
        return _entry(device, info, art, None, status="failed", reason=rounds[0][0].get("error"))
    # the round with the median p50 stands for the artifact; every round's p50 is kept
    good.sort(key=lambda r: r[0]["latency_ms"]["p50"])
    out, energy = good[len(good) // 2]
    e = _entry(device, info, art, out)
    for k in ("runtime", "runtime_version", "threads", "runs", "warmup", "latency_ms", "cv", "load_ms", "first_run_ms",
              "peak_rss_mb", "load_rss_delta_mb", "inputs"):
        e[k] = out.get(k)
    e["rounds_p50_ms"] = [o["latency_ms"]["p50"] for o, _ in good]
    e["cv_flag"] = bool(out.get("cv") is not None and out["cv"] > CV_FLAG)
    e["energy"] = energy if energy is not None else {"available": False, "method": "none", "reason": "energy measurement was off (--energy off)"}
    if len(good) < len(rounds):
        e["reason"] = f"{len(rounds) - len(good)} of {len(rounds)} rounds failed: {next(o['error'] for o, _ in rounds if 'error' in o)}"
    return e
