"""Per-op profile of one artifact on a Device, in its runtime's own profiler, as one table shape for every runtime.

    from edgeship.bench.devices import parse_device
    from edgeship.bench.profile import profile_artifact, profile_table, profile_summary
    result = profile_artifact(Path("dist/q/executorch/model.int8.pte"), parse_device("local"), runs=20, warmup=3)
    console.print(profile_table(result, top=25)); [console.print(line) for line in profile_summary(result)]

The device-side runner (``python -m edgeship_runtime.profile``, numpy + one runtime) is pushed with the artifact
exactly as the bench harness pushes its runner; ``result`` is the runner's JSON (see edgeship_runtime.profile)
with ``device`` and the local ``model`` path added.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

import edgeship_runtime

from .. import manifest as manifest_mod
from ..errors import EdgeshipError
from .harness import RUNNER_DIR, parse_runner_output

log = logging.getLogger(__name__)
PROFILABLE = ("onnx", "tflite", "executorch")


def _manifest_for(path: Path) -> Path | None:
    """The export folder's manifest.json when ``path`` is one of its artifacts (dist/NAME/FORMAT/file)."""
    folder = path.resolve().parent.parent
    if not (folder / "manifest.json").is_file():
        return None
    try:
        manifest = manifest_mod.load(folder)
    except EdgeshipError as e:
        log.debug("ignoring %s/manifest.json: %s", folder, e.message)
        return None
    for a in manifest.get("artifacts", []):
        if (folder / a["path"]).resolve() == path.resolve():
            return folder / "manifest.json"
    return None


def profile_argv(device: Any, model: str, runs: int, warmup: int, threads: int | None, *,
                 manifest: str | None = None, etrecord: str | None = None, benchmark_model: str | None = None) -> list[str]:
    argv = [getattr(device, "python", None) or "python3", "-m", "edgeship_runtime.profile", model,
            "--runs", str(runs), "--warmup", str(warmup)]
    if threads:
        argv += ["--threads", str(threads)]
    if manifest:
        argv += ["--manifest", manifest]
    if etrecord:
        argv += ["--etrecord", etrecord]
    if benchmark_model:
        argv += ["--benchmark-model", benchmark_model]
    return argv


def profile_artifact(path: Path, device: Any, runs: int = 20, warmup: int = 3, threads: int | None = None, *,
                     etrecord: Path | None = None, benchmark_model: str | None = None, tool: Path | None = None,
                     timeout_s: float = 900.0) -> dict:
    """Profile one model file on ``device`` (a Device, or a spec such as "local", "ssh://pi@host", "adb").

    ``etrecord``: ExecuTorch's ETRecord from export (names the aten ops behind each delegated op).
    ``benchmark_model``: path *on the device* of LiteRT's benchmark_model binary, run by the Python runner for
    per-op LiteRT times (the LiteRT Python API has no op profiler; without it the LiteRT table lists ops, dtypes
    and delegation only). ``tool``: a benchmark_model binary *on this host*, built for the device: it is pushed
    and run without Python on the device (phones); the op list for dtypes comes from this host's LiteRT.
    Raises EdgeshipError for a bad argument, a format without a profiler, or a runner failure (with its message).
    """
    path = Path(path)
    if runs < 1 or warmup < 0 or (threads is not None and threads < 1):
        raise EdgeshipError(f"--runs must be ≥ 1, --warmup ≥ 0 and --threads ≥ 1 (got {runs}, {warmup}, {threads})")
    if not path.exists():
        raise EdgeshipError(f"{path} does not exist", hint="pass a model file, e.g. dist/NAME/onnx/model.onnx")
    try:
        fmt = edgeship_runtime.format_of(path)
    except ValueError as e:
        raise EdgeshipError(str(e), hint="profile takes one model file: .onnx, .tflite or .pte") from None
    if fmt not in PROFILABLE:
        raise EdgeshipError(f"no per-op profiler for {fmt} here",
                            hint="profile Core ML models on a Mac with Xcode's Core ML performance report")
    if isinstance(device, str):
        from .devices import parse_device
        device = parse_device(device)
    if etrecord is not None and not Path(etrecord).is_file():
        raise EdgeshipError(f"ETRecord {etrecord} does not exist")
    if tool is not None:
        if fmt != "tflite":
            raise EdgeshipError(f"--tool profiles .tflite files with LiteRT's benchmark_model, not {fmt}",
                                hint="drop --tool: onnx and executorch are profiled by the Python runner")
        return _profile_with_tool(path, device, Path(tool), runs, warmup, threads, timeout_s)
    manifest = _manifest_for(path)
    with device.tempdir() as d:
        device.push(RUNNER_DIR, f"{d}/edgeship_runtime")
        remote = f"{d}/model/{path.name}"
        device.push(path, remote)
        side = path.with_name(path.name + ".data")     # ONNX external weights, when the file has them
        if fmt == "onnx" and side.is_file():
            device.push(side, f"{d}/model/{side.name}")
        remote_manifest = remote_etrecord = None
        if manifest is not None:
            remote_manifest = f"{d}/manifest.json"
            device.push(manifest, remote_manifest)
        if etrecord is not None:
            remote_etrecord = f"{d}/model.etrecord"
            device.push(Path(etrecord), remote_etrecord)
        argv = profile_argv(device, remote, runs, warmup, threads, manifest=remote_manifest,
                            etrecord=remote_etrecord, benchmark_model=benchmark_model)
        cp = device.run(argv, timeout_s=timeout_s, cwd=d, env={"PYTHONPATH": d})
    try:
        out = parse_runner_output(cp.stdout)
    except ValueError:
        raise EdgeshipError(f"the profiler failed on {device.id} (exit {cp.returncode}): "
                            f"{(cp.stderr or cp.stdout).strip()[-800:]}",
                            hint="run `edgeship devices` to see what the device can run") from None
    if "error" in out:
        raise EdgeshipError(f"profiling {path.name} on {device.id} failed: {out['error']}", hint=out.get("hint"))
    out["device_model"] = out.get("model")
    out["model"] = str(path)
    out["device"] = device.id
    out["manifest"] = str(manifest) if manifest else None
    return out


def _profile_with_tool(path: Path, device: Any, tool: Path, runs: int, warmup: int, threads: int | None,
                       timeout_s: float) -> dict:
    """LiteRT's benchmark_model (a host file built for the device) pushed with the model and run with op profiling."""
    from edgeship_runtime import profile as rprof
    from edgeship_runtime.tflite import LiteRtRuntime

    if not tool.is_file():
        raise EdgeshipError(f"benchmark_model {tool} does not exist",
                            hint="build LiteRT's tflite/tools/benchmark:benchmark_model for the device and give its path")
    with device.tempdir() as d:
        exe, remote = f"{d}/benchmark_model", f"{d}/{path.name}"
        device.push(tool, exe)
        device.push(path, remote)
        device.run(["chmod", "755", exe], timeout_s=60, check=True)
        cp = device.run(rprof.benchmark_model_argv(exe, remote, runs, warmup, threads), timeout_s=timeout_s, cwd=d)
    text = (cp.stdout or "") + "\n" + (cp.stderr or "")
    if cp.returncode != 0:
        raise EdgeshipError(f"benchmark_model failed on {device.id} (exit {cp.returncode}): {text.strip()[-800:]}",
                            hint="is it built for this device's ABI, with op profiling?")
    try:
        bm = rprof.parse_benchmark_model(text)
    except ValueError as e:
        raise EdgeshipError(f"cannot read benchmark_model's op profile from {device.id}: {e}") from None
    rt = LiteRtRuntime(path, threads=threads)      # this host's op list: types, input dtypes, what XNNPACK takes
    rows, notes = rprof.litert_rows(rt.interpreter._get_ops_details(), bm)
    notes.append("op types and dtypes of builtin nodes are from this host's LiteRT, timings from the device")
    result = {"runtime": "litert", "runtime_version": None, "format": "tflite", "model": str(path), "runs": runs,
              "warmup": warmup, "threads": threads, "total_ms": bm["total_ms"], "wall_ms": None,
              "profiler": f"benchmark_model --enable_op_profiling=true ({tool.name}, pushed)", "ops": rows,
              "notes": notes, "device": device.id, "inputs": None, "python": None, "platform": None}
    return rprof.finish(result)


# ------------------------------------------------------------------------------------------------ display

def _ms(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" if v >= 0.01 else f"{v:.4f}"


def profile_table(result: dict, top: int | None = None, sort: str = "time") -> Table:
    """The per-op table: op, name, calls, total ms, share %, where (delegate / provider / kernels), dtype.

    ``sort``: "time" (slowest first; execution order when the runtime gave no per-op times) or "order".
    ``top``: show only the first N rows and sum up the rest in one line.
    """
    ops = list(result.get("ops") or [])
    timed = any(r.get("total_ms") is not None for r in ops)
    if sort == "time" and timed:
        ops.sort(key=lambda r: -(r.get("total_ms") or 0.0))
    total = result.get("total_ms")
    title = (f"{result.get('runtime')} {result.get('runtime_version')} · {Path(str(result.get('model'))).name}"
             f"{' on ' + result['device'] if result.get('device') else ''} · "
             f"{_ms(total)} ms per inference ({result.get('runs')} runs, threads {result.get('threads') or 'default'})")
    t = Table(title=escape(title))
    for col, just in (("op", "left"), ("name", "left"), ("calls", "right"), ("total ms", "right"),
                      ("share %", "right"), ("delegated / provider", "left"), ("dtype", "left")):
        t.add_column(col, justify=just)
    shown = ops if top is None else ops[:top]
    for r in shown:
        where = r.get("where") or "—"
        style = "green" if r.get("delegated") else ("yellow" if r.get("delegated") is False and result.get("not_delegated") else "")
        share = r.get("share")
        dtype = r.get("dtype") or "—"
        dstyle = "cyan" if dtype in ("float32", "float16", "float64", "bfloat16") and result.get("quantized") else ""
        t.add_row(escape(str(r.get("op"))), escape(str(r.get("name"))), str(r.get("calls")), _ms(r.get("total_ms")),
                  "—" if share is None else f"{share:.1f}",
                  f"[{style}]{escape(where)}[/]" if style else escape(where),
                  f"[{dstyle}]{escape(dtype)}[/]" if dstyle else escape(dtype))
    rest = ops[len(shown):]
    if rest:
        ms = sum(r.get("total_ms") or 0.0 for r in rest)
        share = sum(r.get("share") or 0.0 for r in rest)
        t.add_row(f"… {len(rest)} more", "", "", _ms(ms) if timed else "—", f"{share:.1f}" if timed else "—", "", "")
    op_total = result.get("op_total_ms")
    cov = result.get("coverage")
    cap = f"profiler: {result.get('profiler')}"
    if op_total is not None:
        cap += f" · ops sum to {_ms(op_total)} ms" + (f" ({cov:.0%} of the inference)" if cov else "")
    t.caption = escape(cap)
    return t


def _counted(rows: list[dict]) -> str:
    c = Counter(r["op"] for r in rows)
    return ", ".join(f"{op} ×{n}" if n > 1 else op for op, n in c.most_common())


def profile_summary(result: dict) -> list[str]:
    """Plain lines to print under the table: what ran in float inside an int8 model, what the delegate left
    out, and the runner's notes."""
    lines = []
    floats = result.get("float_ops_in_quantized") or []
    if result.get("quantized"):
        qdq = [f for f in floats if f["kind"] != "float"]
        fl = [f for f in floats if f["kind"] == "float"]
        op_total = result.get("op_total_ms")
        ms = sum(f.get("total_ms") or 0.0 for f in floats)
        cost = f" — {_ms(ms)} ms, {100.0 * ms / op_total:.1f}% of op time" if op_total and floats else ""
        lines.append(f"float inside this int8 model: {len(qdq)} quantize/dequantize op(s), {len(fl)} float op(s){cost}")
        if qdq:
            lines.append(f"  quantize/dequantize: {_counted(qdq)}")
        if fl:
            lines.append(f"  computing in float: {_counted(fl)}")
            for f in fl[:10]:
                lines.append(f"    {f['op']} {f['name']} ({f['where']}, {f['dtype']}, {_ms(f.get('total_ms'))} ms)")
    delegates = result.get("delegates") or []
    for dl in delegates[:6]:
        inner = (f"; its {dl['ops']} op(s) {_ms(dl['ops_ms'])} ms" if dl.get("ops_ms") is not None
                 else "; no per-op events from the delegate")
        src = dl.get("source_ops") or {}
        runs = ("; runs " + ", ".join(f"{op} ×{n}" if n > 1 else op for op, n in sorted(src.items(), key=lambda kv: -kv[1]))
                if src else "")
        lines.append(f"delegate {dl['name']}: {_ms(dl['total_ms'])} ms per inference{inner}{runs}")
    if len(delegates) > 6:
        lines.append(f"… {len(delegates) - 6} more delegate calls ({_ms(sum(d['total_ms'] for d in delegates[6:]))} ms)")
    nd = result.get("not_delegated") or []
    if nd:
        ms = sum(r.get("total_ms") or 0.0 for r in nd)
        timed = any(r.get("total_ms") is not None for r in nd)
        lines.append(f"outside the delegate: {len(nd)} op(s){f' ({_ms(ms)} ms)' if timed else ''}: {_counted(nd)}")
    for n in result.get("notes") or []:
        lines.append(f"note: {n}")
    return lines
