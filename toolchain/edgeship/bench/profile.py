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
from .methods import parse_runner_output, push_runner, runner_env

log = logging.getLogger(__name__)
PROFILABLE = edgeship_runtime.formats.KeyView(edgeship_runtime.formats.profilable)   # "profilable" in the registry


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
                            hint="profile Core ML models on a Mac with Xcode's Core ML performance report"
                            if fmt == "coreml" else f"edgeship profile takes {', '.join(PROFILABLE)} files")
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
        push_runner(device, d)
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
        cp = device.run(argv, timeout_s=timeout_s, cwd=d, env=runner_env(d))
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


# ------------------------------------------------------------------------------------------------ compare

# onnxruntime runs one computation under different op types in float and in int8 (and after its fusions): one kind
_GEMM = "MatMul/Gemm"   # onnxruntime fuses a float MatMul+Add into Gemm, and dynamic int8 makes it MatMulIntegerToFloat
_ORT_KINDS = {"FusedConv": "Conv", "NhwcFusedConv": "Conv", "ConvInteger": "Conv", "Gemm": _GEMM, "QGemm": _GEMM,
              "FusedGemm": _GEMM, "MatMul": _GEMM, "MatMulInteger": _GEMM, "MatMulIntegerToFloat": _GEMM,
              "DynamicQuantizeMatMul": _GEMM, "FusedMatMul": _GEMM, "QLinearMatMul": _GEMM, "NhwcMaxPool": "MaxPool"}
QDQ_KIND = "quantize/dequantize"


def op_kind(op: str) -> str:
    """The computation an op row stands for, the same for its float and its quantized form: "QLinearConv" and
    "FusedConv" are "Conv"; XNNPACK's "Fully Connected GEMM" is itself; Q/DQ/Convert ops are quantize/dequantize."""
    from edgeship_runtime import profile as rprof
    if rprof.qdq_kind(op):
        return QDQ_KIND
    if op in _ORT_KINDS:
        return _ORT_KINDS[op]
    if op.startswith("QLinear") and len(op) > 7:
        return _ORT_KINDS.get(op[len("QLinear"):], op[len("QLinear"):])
    return op


def _by_kind(result: dict) -> dict[str, dict]:
    kinds: dict[str, dict] = {}
    for r in result.get("ops") or []:
        k = kinds.setdefault(op_kind(str(r.get("op"))), {"calls": 0, "ms": None, "dtypes": Counter()})
        k["calls"] += r.get("calls") or 0
        if r.get("total_ms") is not None:
            k["ms"] = (k["ms"] or 0.0) + r["total_ms"]
        k["dtypes"][r.get("dtype") or "—"] += 1
    return kinds


def compare_profiles(this: dict, baseline: dict) -> dict:
    """Per op kind, the time of ``this`` profile (e.g. the int8 artifact) against ``baseline`` (the fp32 one), both
    from the same runtime: {this, baseline, total_ms, speedup, rows: [{kind, calls, this_ms, baseline_ms, speedup,
    saved_ms, this_dtypes, baseline_dtypes}], cpu_features}. ``speedup`` = baseline time / this time."""
    if this.get("runtime") != baseline.get("runtime"):
        raise EdgeshipError(f"--compare needs two models of one runtime: {Path(str(this.get('model'))).name} runs in "
                            f"{this.get('runtime')}, {Path(str(baseline.get('model'))).name} in {baseline.get('runtime')}",
                            hint="compare e.g. executorch/model.int8.pte with executorch/model.pte")
    a, b = _by_kind(this), _by_kind(baseline)
    rows = []
    for kind in dict.fromkeys([*b, *a]):
        ra, rb = a.get(kind), b.get(kind)
        ta, tb = (ra or {}).get("ms"), (rb or {}).get("ms")
        rows.append({"kind": kind, "calls": (ra or rb)["calls"], "this_ms": ta if ra else 0.0, "baseline_ms": tb if rb else 0.0,
                     "speedup": tb / ta if ta and tb else None,
                     "saved_ms": None if (ra and ta is None) or (rb and tb is None) else (tb or 0.0) - (ta or 0.0),
                     "this_dtypes": dict((ra or {}).get("dtypes") or {}), "baseline_dtypes": dict((rb or {}).get("dtypes") or {})})
    rows.sort(key=lambda r: -max(r["this_ms"] or 0.0, r["baseline_ms"] or 0.0))
    ta, tb = this.get("total_ms"), baseline.get("total_ms")
    return {"this": this.get("model"), "baseline": baseline.get("model"), "runtime": this.get("runtime"),
            "threads": this.get("threads"), "device": this.get("device"),
            "total_ms": {"this": ta, "baseline": tb}, "speedup": tb / ta if ta and tb else None,
            "per_op_times": any(r["this_ms"] for r in rows), "rows": rows,
            "cpu_features": this.get("cpu_features") or baseline.get("cpu_features")}


def _dtypes(d: dict) -> str:
    return ", ".join(k for k in d if k != "—") or "—"


def compare_table(cmp: dict, top: int | None = None) -> Table:
    this, base = Path(str(cmp["this"])).name, Path(str(cmp["baseline"])).name
    sp = cmp["speedup"]
    title = (f"{cmp['runtime']} · {this} vs {base}{' on ' + cmp['device'] if cmp.get('device') else ''} · threads "
             f"{cmp.get('threads') or 'default'} · {_ms(cmp['total_ms']['this'])} vs {_ms(cmp['total_ms']['baseline'])} ms"
             + (f" · {sp:.2f}× faster" if sp and sp >= 1 else f" · {1 / sp:.2f}× slower" if sp else ""))
    t = Table(title=escape(title))
    for col, just in (("op kind", "left"), ("calls", "right"), (f"{base} ms", "right"), ("dtype", "left"),
                      (f"{this} ms", "right"), ("dtype ", "left"), ("speed-up", "right"), ("saved ms", "right")):
        t.add_column(escape(col), justify=just)
    rows = cmp["rows"] if top is None else cmp["rows"][:top]
    for r in rows:
        s = r["speedup"]
        style = "" if s is None else "green" if s >= 1.5 else "yellow" if s >= 1.0 else "red"
        t.add_row(escape(r["kind"]), str(r["calls"]), _ms(r["baseline_ms"]), escape(_dtypes(r["baseline_dtypes"])),
                  _ms(r["this_ms"]), escape(_dtypes(r["this_dtypes"])),
                  "—" if s is None else f"[{style}]{s:.2f}×[/]", _ms(r["saved_ms"]))
    if len(rows) < len(cmp["rows"]):
        t.add_row(f"… {len(cmp['rows']) - len(rows)} more", "", "", "", "", "", "", "")
    return t


def compare_summary(cmp: dict) -> list[str]:
    """Why the speed-up is what it is: the CPU's int8 instructions, the kinds that gain least, the Q/DQ cost."""
    lines = []
    sp = cmp["speedup"]
    if sp:
        lines.append(f"whole inference: {sp:.2f}× the baseline's speed ({_ms(cmp['total_ms']['baseline'])} -> "
                     f"{_ms(cmp['total_ms']['this'])} ms, the runtime's own time per inference)")
    cpu = cmp.get("cpu_features") or {}
    if cpu.get("int8_dot") is False:
        lines.append("int8 dot-product instructions: none on this CPU (flags " + " ".join(cpu.get("flags") or []) +
                     "; no avx512_vnni / avx_vnni / asimddp / i8mm): int8 GEMM and conv kernels multiply-add through "
                     "16-bit intermediates (x86 vpmaddwd or vpmaddubsw), about as many multiply-adds per cycle as "
                     "float FMA, so int8 gains come from memory traffic, not arithmetic")
    elif cpu.get("int8_dot"):
        lines.append(f"int8 dot-product instructions: {', '.join(cpu.get('int8_dot_flags') or [])}")
    if not cmp["per_op_times"]:
        lines.append("no per-op times from this runtime here (LiteRT needs --benchmark-model); the table compares "
                     "op counts and dtypes")
        return lines
    timed = [r for r in cmp["rows"] if r["speedup"] is not None and r["kind"] != QDQ_KIND]
    base_total = sum(r["baseline_ms"] or 0.0 for r in cmp["rows"]) or None
    slow = sorted((r for r in timed if r["speedup"] < 1.5), key=lambda r: -(r["baseline_ms"] or 0.0))[:4]
    for r in slow:
        share = f", {100 * r['baseline_ms'] / base_total:.0f}% of the baseline's op time" if base_total else ""
        lines.append(f"  {r['kind']}: {r['speedup']:.2f}× ({_ms(r['baseline_ms'])} -> {_ms(r['this_ms'])} ms{share}; "
                     f"{_dtypes(r['baseline_dtypes'])} -> {_dtypes(r['this_dtypes'])})")
    if slow:
        lines.insert(len(lines) - len(slow), "op kinds below 1.5×, largest first:")
    new = [r for r in cmp["rows"] if not r["baseline_ms"] and r["this_ms"]]
    if new:
        ms = sum(r["this_ms"] for r in new)
        lines.append(f"ops the baseline does not have: {', '.join(r['kind'] for r in new)} ({_ms(ms)} ms per inference)")
    return lines
