"""Per-op profile of one model file with its runtime's own profiler; prints one JSON object on stdout.

    python -m edgeship_runtime.profile MODEL [--manifest manifest.json] [--runs N] [--warmup M] [--threads T]
                                             [--inputs x.npz] [--seed S] [--etrecord FILE]
                                             [--benchmark-model PATH] [--json-out FILE]

One table shape for every runtime: ``ops`` lists the nodes in execution order, each
{op, name, calls, total_ms, share, where, delegated, dtype}: ``calls`` per inference, ``total_ms`` per inference
(all calls), ``share`` in percent of ``op_total_ms`` (the sum over the rows), ``where`` the delegate / execution
provider / kernel library that ran it, ``dtype`` the node's input (activation) dtype. ``total_ms`` at the top is
the runtime's own time for one whole inference; ``coverage`` = op_total_ms / total_ms (the rest is the runtime's
own overhead between ops). ``float_ops_in_quantized`` lists, for a model with integer activations, the
quantize/dequantize ops and the ops that still compute in float; ``not_delegated`` lists the ops a delegate left
to the runtime's own kernels.

- onnxruntime: session profiling (SessionOptions.enable_profiling): the JSON trace's node events (op_name, dur,
  provider, input types) inside the last ``runs`` model_run events.
- ExecuTorch: the program is loaded with an ETDump generator; executorch.devtools' Inspector reads the ETDump
  (and the ETRecord with --etrecord, for the aten ops behind each delegated op). XNNPACK reports its own ops
  inside each delegate call; the .pte's execution plan names the portable kernels and their tensors' dtypes.
- LiteRT: the Python interpreter has no op profiler. The op list (types, input dtypes, which ops the XNNPACK
  delegate took) comes from the interpreter and the time is for the whole model, unless --benchmark-model names
  LiteRT's ``benchmark_model`` binary: its ``--enable_op_profiling=true`` table is then parsed for per-op times.

Errors print {"error": ..., "hint": ...} and exit 2, as the bench runner does. Device-side code: numpy and one
runtime (ExecuTorch's Inspector brings torch and pandas, as executorch itself does).
"""
from __future__ import annotations

import bisect
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import format_of, runtime_class
from .base import Runtime, RuntimeUnavailable
from .bench import _input_specs, cpu_features, random_inputs, run_json_command, runner_parser

FLOAT_DTYPES = frozenset({"float32", "float16", "float64", "bfloat16"})
INT_DTYPES = frozenset({"int8", "uint8", "int16", "int4", "uint4"})   # quantized activations
QDQ_OPS = {  # op type -> what it does at the int/float boundary
    "QuantizeLinear": "quantize", "DequantizeLinear": "dequantize", "DynamicQuantizeLinear": "quantize",
    "QUANTIZE": "quantize", "DEQUANTIZE": "dequantize",
    "quantized_decomposed::quantize_per_tensor": "quantize", "quantized_decomposed::dequantize_per_tensor": "dequantize",
    "quantized_decomposed::quantize_per_channel": "quantize", "quantized_decomposed::dequantize_per_channel": "dequantize",
    "quantized_decomposed::choose_qparams": "quantize",
    "Convert": "convert",   # XNNPACK's float <-> int8 conversion (its name does not say which way)
}
# onnxruntime's type names in profile events -> numpy names
_ORT_TYPES = {"float": "float32", "double": "float64", "float16": "float16", "bfloat16": "bfloat16"}
# XNNPACK operator names carry "(LAYOUT, TYPE[, TYPE...])": the first type is the input's
_XNN_TYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "QS8": "int8", "QC8": "int8", "QD8": "int8",
              "QP8": "int8", "QU8": "uint8", "QS16": "int16", "X8": "8-bit", "X16": "16-bit", "X32": "32-bit",
              "S32": "int32"}
_XNN_LAYOUTS = {"NC", "ND", "NHWC", "NCHW", "NCW", "NWC", "NDHWC"}
_XNN_NAME = re.compile(r"^(?P<op>[^(#]+?)\s*(?:\((?P<args>[^)]*)\))?\s*(?P<kind>[^#(]*?)\s*(?:#\d+)?$")
# ExecuTorch c10::ScalarType codes
_SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32",
                 7: "float64", 11: "bool", 15: "bfloat16"}
_ET_WRAPPERS = {"Method::execute", "Method::init", "Program::load_method", "OPERATOR_CALL", "DELEGATE_CALL"}
BENCHMARK_MODEL_HINT = ("per-op time for LiteRT needs its benchmark_model tool: pass --benchmark-model PATH "
                        "(the binary on the device), which runs it with --enable_op_profiling=true")


# ------------------------------------------------------------------------------------------------ rows

def op_row(op: str, name: str, total_ms: Optional[float], where: str, dtype: Optional[str], calls: float = 1,
           delegated: Optional[bool] = None, **extra: Any) -> Dict[str, Any]:
    """One row of ``ops``; ``share`` is filled in by ``finish``."""
    calls = int(calls) if float(calls).is_integer() else round(float(calls), 3)
    return {"op": op, "name": name, "calls": calls, "total_ms": total_ms, "share": None, "where": where,
            "delegated": delegated, "dtype": dtype, **extra}


def xnnpack_op(name: str) -> Tuple[str, Optional[str]]:
    """("Convolution IGEMM", "float32") from an XNNPACK operator name such as "Convolution (NHWC, F32) IGEMM #1"."""
    m = _XNN_NAME.match(name.strip())
    if not m:
        return name.strip(), None
    op = " ".join(p for p in (m.group("op").strip(), m.group("kind").strip()) if p)
    dtype = None
    for token in (m.group("args") or "").split(","):
        token = token.strip()
        if token and token not in _XNN_LAYOUTS and token in _XNN_TYPES:
            dtype = _XNN_TYPES[token]
            break
    return op, dtype


def qdq_kind(op: str) -> Optional[str]:
    if op in QDQ_OPS:
        return QDQ_OPS[op]
    base = op.split(".")[0]
    return QDQ_OPS.get(base)


def finish(result: Dict[str, Any]) -> Dict[str, Any]:
    """Fill shares, op_total_ms, coverage, the float-op summary and the not-delegated list."""
    ops = result["ops"]
    timed = [r["total_ms"] for r in ops if r["total_ms"] is not None]
    op_total = float(sum(timed)) if timed else None
    for r in ops:
        if r["total_ms"] is not None and op_total:
            r["share"] = 100.0 * r["total_ms"] / op_total
    total = result.get("total_ms")
    result["coverage"] = round(op_total / total, 4) if op_total is not None and total else None
    result["op_total_ms"] = None if op_total is None else round(op_total, 6)
    for r in ops:   # ns resolution at most; shares to 0.001 %
        if r["total_ms"] is not None:
            r["total_ms"] = round(float(r["total_ms"]), 6)
        if r["share"] is not None:
            r["share"] = round(r["share"], 3)
    quantized = any(r["dtype"] in INT_DTYPES for r in ops) or any(qdq_kind(r["op"]) for r in ops)
    result["quantized"] = quantized
    floats = []
    if quantized:
        for r in ops:
            kind = qdq_kind(r["op"])
            if kind is None and r["dtype"] in FLOAT_DTYPES:
                kind = "float"
            if kind is None:
                continue
            floats.append({"op": r["op"], "name": r["name"], "kind": kind, "where": r["where"],
                           "delegated": r["delegated"], "dtype": r["dtype"], "total_ms": r["total_ms"]})
    result["float_ops_in_quantized"] = floats
    has_delegate = any(r["delegated"] for r in ops)
    result["not_delegated"] = ([{"op": r["op"], "name": r["name"], "where": r["where"], "dtype": r["dtype"],
                                 "total_ms": r["total_ms"]} for r in ops if r["delegated"] is False]
                               if has_delegate else [])
    untyped = [r for r in ops if r["dtype"] is None and not qdq_kind(r["op"])]
    if quantized and untyped:
        result.setdefault("notes", []).append(
            f"{len(untyped)} op(s) report no dtype (e.g. {untyped[0]['op']}): the float-op summary cannot judge them")
    return result


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(np.asarray(xs, dtype=np.float64))) if len(xs) else 0.0


def _timed_runs(rt: Runtime, prepared: List[np.ndarray], runs: int, warmup: int) -> List[float]:
    for _ in range(warmup):
        rt.run(prepared)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        rt.run(prepared)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return times


# ------------------------------------------------------------------------------------------------ onnxruntime

def _ort_dtype(type_shapes: Any) -> Optional[str]:
    if not type_shapes:
        return None
    first = type_shapes[0]
    if isinstance(first, dict) and first:
        t = next(iter(first))
        return _ORT_TYPES.get(t, t)
    return None


def parse_ort_trace(events: List[dict], runs: int) -> Tuple[List[Dict[str, Any]], float, int]:
    """(rows, ms per inference, runs used) from onnxruntime's profile trace: node events inside the last
    ``runs`` model_run events, summed per node and divided by the number of runs."""
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                     if e.get("cat") == "Session" and e.get("name") == "model_run")
    if not windows:
        raise ValueError("the onnxruntime trace has no model_run events")
    windows = windows[-runs:]
    starts = [w[0] for w in windows]
    rows: Dict[str, Dict[str, Any]] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        k = bisect.bisect_right(starts, e["ts"]) - 1
        if k < 0 or e["ts"] > windows[k][1]:
            continue   # a warmup run's node
        args = e.get("args", {})
        node = name[: -len("_kernel_time")]
        r = rows.get(node)
        if r is None:
            provider = args.get("provider", "unknown")
            r = rows[node] = op_row(args.get("op_name", node), node, 0.0, provider, _ort_dtype(args.get("input_type_shape")),
                                    calls=0, delegated=provider != "CPUExecutionProvider")
            r["_order"] = (k, e["ts"])
        r["total_ms"] += e["dur"] / 1000.0
        r["calls"] += 1
    n = len(windows)
    out = sorted(rows.values(), key=lambda r: r["_order"][1] - windows[r["_order"][0]][0])
    for r in out:
        del r["_order"]
        r["total_ms"] /= n
        calls = r["calls"] / n
        r["calls"] = int(calls) if calls.is_integer() else round(calls, 3)
    total = _mean([(b - a) / 1000.0 for a, b in windows])
    return out, total, n


def _profile_onnx(model: Path, prepared_feeds: Any, runs: int, warmup: int, threads: Optional[int],
                  **_: Any) -> Dict[str, Any]:
    from .onnx import OnnxRuntime
    tmp = tempfile.mkdtemp(prefix="edgeship-ortprof-")
    try:
        rt = OnnxRuntime(model, threads=threads, profile=os.path.join(tmp, "trace"))
        prepared = rt.prepare(prepared_feeds(rt))
        wall = _timed_runs(rt, prepared, runs, warmup)
        trace = rt.end_profiling()
        with open(trace) as f:
            events = json.load(f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ops, total, n = parse_ort_trace(events, runs)
    notes = []
    if n < runs:
        notes.append(f"the trace held {n} of {runs} runs")
    return {"rt": rt, "prepared": prepared, "ops": ops, "total_ms": total, "wall_ms": _mean(wall),
            "profiler": "onnxruntime session profiling (enable_profiling)", "notes": notes}


# ------------------------------------------------------------------------------------------------ ExecuTorch

def _pte_plan(model: Path) -> Dict[int, Dict[str, Any]]:
    """instruction id -> {kind: kernel|delegate, op|backend, delegate_index, dtype} from the .pte's execution plan.
    Uses executorch's own (private) deserializer; returns {} when it is not there."""
    try:
        from executorch.exir._serialize._program import deserialize_pte_binary
        pte = deserialize_pte_binary(model.read_bytes())
        plan = getattr(pte, "program", pte).execution_plan[0]
    except Exception:  # noqa: BLE001 -- names are a nicety; the timings stand without them
        return {}
    values = plan.values
    out: Dict[int, Dict[str, Any]] = {}

    def dtype_of(args: Sequence[int]) -> Optional[str]:
        tensors = [values[a].val for a in args if type(values[a].val).__name__ == "Tensor"]
        act = [t for t in tensors if getattr(t, "allocation_info", None) is not None] or tensors
        return _SCALAR_TYPES.get(int(act[0].scalar_type)) if act else None

    for k, ins in enumerate(plan.chains[0].instructions):
        a = ins.instr_args
        kind = type(a).__name__
        if kind == "KernelCall":
            op = plan.operators[a.op_index]
            out[k] = {"kind": "kernel", "op": op.name, "overload": op.overload, "dtype": dtype_of(a.args)}
        elif kind == "DelegateCall":
            out[k] = {"kind": "delegate", "backend": plan.delegates[a.delegate_index].id,
                      "delegate_index": a.delegate_index, "dtype": dtype_of(a.args)}
    return out


def _profile_executorch(model: Path, prepared_feeds: Any, runs: int, warmup: int, threads: Optional[int],
                        etrecord: Optional[Path] = None, **_: Any) -> Dict[str, Any]:
    from .executorch import ExecuTorchRuntime
    rt = ExecuTorchRuntime(model, threads=threads, etdump=True)
    try:
        from executorch.devtools import Inspector
    except ImportError as e:
        raise RuntimeUnavailable(f"executorch.devtools (the Inspector) does not import: {e}",
                                 hint="pip install executorch (with its pandas and tabulate requirements)") from e
    prepared = rt.prepare(prepared_feeds(rt))
    wall = _timed_runs(rt, prepared, runs, warmup)
    tmp = tempfile.mkdtemp(prefix="edgeship-etdump-")
    try:
        etdump = os.path.join(tmp, "run.etdp")
        rt.write_etdump(etdump, os.path.join(tmp, "debug.bin"))
        if not os.path.exists(etdump) or os.path.getsize(etdump) == 0:
            raise RuntimeUnavailable("this ExecuTorch runtime wrote no ETDump",
                                     hint="use a runtime built with EXECUTORCH_ENABLE_EVENT_TRACER=ON (the pip wheel is)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # "Output Buffer not found": we ask for timings only
            inspector = Inspector(etdump_path=etdump, etrecord=str(etrecord) if etrecord else None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    plan = _pte_plan(model)
    return {"rt": rt, "prepared": prepared, **etdump_rows(inspector.event_blocks, plan, runs),
            "wall_ms": _mean(wall), "etrecord": str(etrecord) if etrecord else None,
            "profiler": "ExecuTorch ETDump + executorch.devtools Inspector"}


def etdump_rows(blocks: Sequence[Any], plan: Dict[int, Dict[str, Any]], runs: int) -> Dict[str, Any]:
    """Rows from the Inspector's event blocks: the delegates' own op events and the portable kernels' events,
    each averaged over the last ``runs`` executions; a delegate call with no op events of its own is one row.
    ``delegates`` lists every delegate call: its time, its own ops' time and, with an ETRecord, the aten ops it runs
    (XNNPACK names its op events by string, which the ETRecord cannot map one by one)."""
    rows: List[Dict[str, Any]] = []
    delegate_ms: Dict[int, float] = {}
    delegate_src: Dict[int, List[str]] = {}
    delegate_backend: Dict[int, str] = {}
    inner_ms: Dict[int, float] = {}
    execute: List[float] = []
    notes: List[str] = []
    have_names = bool(plan)
    for block in blocks:
        for e in block.events:
            raw = list(e.perf_data.raw) if e.perf_data is not None else []
            if not raw:
                continue
            per_run = _mean(raw[-runs:])
            iid = getattr(e, "_instruction_id", None)
            info = plan.get(iid, {}) if iid is not None else {}
            if e.name == "Method::execute":
                execute.extend(raw[-runs:])
            elif e.name == "DELEGATE_CALL":
                delegate_ms[iid] = delegate_ms.get(iid, 0.0) + per_run
                if e.op_types:
                    delegate_src[iid] = list(e.op_types)
                if getattr(e, "delegate_backend_name", None):
                    delegate_backend[iid] = str(e.delegate_backend_name)
            elif e.name in _ET_WRAPPERS:
                continue
            elif e.delegate_debug_identifier is not None:   # an op inside a delegate, as the backend names it
                backend = info.get("backend", "delegate")
                op, dtype = xnnpack_op(str(e.name))
                where = f"{backend}[{info['delegate_index']}]" if "delegate_index" in info else backend
                row = op_row(op, f"{where}/{e.name}", per_run, backend, dtype, delegated=True)
                row["_iid"] = iid
                if e.op_types:
                    row["source_ops"] = list(e.op_types)
                rows.append(row)
                inner_ms[iid] = inner_ms.get(iid, 0.0) + per_run
            else:                                              # a portable (or other non-delegated) kernel
                name = str(e.name)
                op = info.get("op") or (name[len("native_call_"):].split(".")[0] if name.startswith("native_call_") else name)
                row = op_row(op, f"{name} [instr {iid}]", per_run, "portable", info.get("dtype"), delegated=False)
                row["_iid"] = iid
                rows.append(row)
    delegates = []
    for iid, ms in sorted(delegate_ms.items(), key=lambda kv: kv[0] if kv[0] is not None else -1):
        info = plan.get(iid, {})
        backend = info.get("backend") or delegate_backend.get(iid) or "delegate"
        where = f"{backend}[{info['delegate_index']}]" if "delegate_index" in info else f"{backend} @{iid}"
        d = {"name": where, "backend": backend, "instruction": iid, "total_ms": round(ms, 6),
             "ops_ms": None if iid not in inner_ms else round(inner_ms[iid], 6),
             "ops": sum(1 for r in rows if r.get("_iid") == iid and r["delegated"])}
        if iid in delegate_src:
            counts: Dict[str, int] = {}
            for op in delegate_src[iid]:
                counts[op] = counts.get(op, 0) + 1
            d["source_ops"] = counts
        delegates.append(d)
        if iid not in inner_ms:   # a delegate call without per-op events: one block row
            row = op_row(f"{backend} delegate", where, ms, backend, info.get("dtype"), delegated=True)
            row["_iid"] = iid
            if iid in delegate_src:
                row["source_ops"] = delegate_src[iid]
            rows.append(row)
            notes.append(f"{where}: the delegate reported no per-op events; its call is one row")
    rows.sort(key=lambda r: (r["_iid"] if r["_iid"] is not None else 1 << 30))   # stable: keeps in-delegate order
    for r in rows:
        del r["_iid"]
    overhead = sum(ms - inner_ms[i] for i, ms in delegate_ms.items() if i in inner_ms)
    if inner_ms:
        notes.append(f"delegate call overhead outside the delegates' own op events: {overhead:.4f} ms per inference")
    if not have_names:
        notes.append("the .pte's execution plan could not be read: delegates are named 'delegate'")
    return {"ops": rows, "total_ms": _mean(execute) if execute else None, "delegates": delegates,
            "delegate_overhead_ms": round(overhead, 6) if inner_ms else None, "notes": notes}


# ------------------------------------------------------------------------------------------------ LiteRT

_BM_ROW = re.compile(r"^\s*(?P<type>\S.*?)\s+(?P<first>[\d.]+)\s+(?P<avg>[\d.]+)\s+(?P<pct>[\d.]+)%\s+"
                     r"(?P<cdf>[\d.]+)%\s+(?P<mem>\S+)\s+(?P<calls>\d+)\s+(?P<name>\S.*?)\s*$")
_BM_TIMINGS = re.compile(r"Timings \(microseconds\):.*?\bavg=(?P<avg>[\d.eE+-]+)")
_BM_INFERENCE = re.compile(r"Inference \(avg\):\s*(?P<avg>[\d.eE+-]+)")
_BM_PREFIX = re.compile(r"^(?:INFO|WARN|WARNING|ERROR|VERBOSE): ")
_BM_SECTION = "Operator-wise Profiling Info for Regular Benchmark Runs"


def _bm_run_order(text: str) -> List[Dict[str, Any]]:
    """Rows of the first "Run Order" table in ``text`` (StatsCalculator's layout: node type, first, avg ms, %,
    cdf%, mem KB, times called, name; tab-separated, right-aligned)."""
    lines = text.splitlines()
    i = next((k for k, ln in enumerate(lines) if "Run Order" in ln), None)
    if i is None:
        return []
    k = i + 1
    if k < len(lines) and "[node type]" in lines[k].lower():
        k += 1
    rows = []
    for ln in lines[k:]:
        if not ln.strip() or ln.lstrip().startswith("="):
            break
        m = _BM_ROW.match(ln.replace("\t", "  "))
        if not m:
            continue
        calls, avg, name = int(m.group("calls")), float(m.group("avg")), m.group("name")
        idx = re.search(r":(\d+)$", name)
        rows.append({"type": m.group("type").strip(), "name": name, "first_ms": float(m.group("first")),
                     "avg_ms": avg, "calls": calls, "total_ms": avg * max(calls, 1),
                     "node_index": int(idx.group(1)) if idx else None})
    return rows


def parse_benchmark_model(text: str) -> Dict[str, Any]:
    """Parse LiteRT/TFLite ``benchmark_model --enable_op_profiling=true`` output (its default stdout mode).

    Under "Operator-wise Profiling Info for Regular Benchmark Runs" the profile summarizer prints a "Run Order"
    table for the graph's nodes (a delegate is one node, e.g. TfLiteXNNPackDelegate) and, when the delegate
    profiles its own ops, a second set after "Delegate internal:" whose rows are named "Delegate/<op>:<n>".
    Columns: node type, first, avg ms (per call), %, cdf%, mem KB, times called (per run), name. Returns
    {"ops": [...], "delegate_ops": [...], "total_ms": ms per inference or None}, each row {type, name, first_ms,
    avg_ms, calls, total_ms (= avg_ms * calls), node_index}. ``total_ms`` is "Inference (avg)" when printed, else
    the section's "Timings (microseconds) ... avg=". Lines may carry the tool's "INFO: " prefix.
    """
    text = "\n".join(_BM_PREFIX.sub("", ln) for ln in text.splitlines())
    start = text.find(_BM_SECTION)
    if start < 0:
        raise ValueError(f"no '{_BM_SECTION}' section: was benchmark_model run with --enable_op_profiling=true?")
    section = text[start:]
    cut = section.find("Delegate internal:")
    main, internal = (section, "") if cut < 0 else (section[:cut], section[cut:])
    m = _BM_INFERENCE.search(text)
    total = float(m.group("avg")) / 1000.0 if m else None
    if total is None:
        m = _BM_TIMINGS.search(main)
        total = float(m.group("avg")) / 1000.0 if m else None
    return {"ops": _bm_run_order(main), "delegate_ops": _bm_run_order(internal), "total_ms": total}


def benchmark_model_argv(exe: str, model: str, runs: int, warmup: int, threads: Optional[int]) -> List[str]:
    """benchmark_model flags for an exact number of runs with op profiling (--min_secs=0: no time floor)."""
    argv = [exe, f"--graph={model}", "--enable_op_profiling=true", f"--num_runs={runs}", f"--warmup_runs={warmup}",
            "--min_secs=0", "--warmup_min_secs=0"]
    if threads:
        argv.append(f"--num_threads={threads}")
    return argv


def _delegated_nodes(ops: List[dict], n_original: int) -> Dict[int, int]:
    """original node index -> the delegate node that replaced it: walk back from each delegate node's outputs
    through the original nodes that produce them, stopping at the delegate's inputs."""
    producer: Dict[int, int] = {}
    for o in ops[:n_original]:
        for t in o["outputs"]:
            producer[int(t)] = o["index"]
    taken: Dict[int, int] = {}
    for d in ops[n_original:]:
        stop = {int(t) for t in d["inputs"]}
        todo = [int(t) for t in d["outputs"]]
        seen = set()
        while todo:
            t = todo.pop()
            if t in seen or t in stop or t not in producer:
                continue
            seen.add(t)
            node = producer[t]
            if node in taken:
                continue
            taken[node] = d["index"]
            todo.extend(int(x) for x in ops[node]["inputs"] if int(x) >= 0)
    return taken


def _np_name(t: Any) -> Optional[str]:
    try:
        return np.dtype(t).name
    except TypeError:
        return None


def _is_delegate_type(t: str) -> bool:
    return t == "DELEGATE" or "delegate" in t.lower()


def litert_rows(details: Optional[List[dict]], bm: Optional[Dict[str, Any]] = None) -> Tuple[List[Dict[str, Any]], List[str]]:
    """LiteRT rows and notes: from the interpreter's op list (``details``: ``Interpreter._get_ops_details()``
    after delegation, delegate nodes last) and, when given, a parsed benchmark_model profile (``bm``), whose
    delegate node rows are replaced by the delegate's own op rows when it printed them."""
    details = details or []
    n_original = sum(1 for o in details if o["op_name"] != "DELEGATE")
    taken = _delegated_nodes(details, n_original) if details else {}
    by_index = {o["index"]: o for o in details[:n_original]}

    def in_dtype(o: Optional[dict]) -> Optional[str]:
        return _np_name(o["operand_types"][0]) if o and o.get("operand_types") else None

    notes: List[str] = []
    if bm is None:
        rows = [op_row(o["op_name"], f"{o['op_name']}:{o['index']}", None,
                       "XNNPACK delegate" if o["index"] in taken else "builtin", in_dtype(o),
                       delegated=o["index"] in taken) for o in details[:n_original]]
        n_delegates = len(details) - n_original
        notes.append("the LiteRT Python interpreter exposes no per-op timing: total_ms is the whole model; "
                     + BENCHMARK_MODEL_HINT)
        if n_delegates:
            notes.append(f"{len(taken)} of {n_original} ops run inside {n_delegates} XNNPACK delegate node(s)")
        return rows, notes
    rows = []
    inner = bm.get("delegate_ops") or []
    emitted = False
    block_ms = 0.0
    for b in bm["ops"]:
        if _is_delegate_type(b["type"]):
            block_ms += b["total_ms"]
            if inner:
                if not emitted:
                    for d in inner:
                        op, dtype = xnnpack_op(d["type"])
                        rows.append(op_row(op, d["name"], d["total_ms"], "XNNPACK delegate", dtype, calls=d["calls"],
                                           delegated=True))
                    emitted = True
                continue
            rows.append(op_row(f"{b['type']} (whole delegate)", b["name"], b["total_ms"], "XNNPACK delegate", None,
                               calls=b["calls"], delegated=True))
        else:
            node = by_index.get(b["node_index"])
            rows.append(op_row(b["type"], b["name"], b["total_ms"], "builtin", in_dtype(node), calls=b["calls"],
                               delegated=False if details else None))
    if inner and not emitted:   # delegate rows without a delegate node row (should not happen): keep them
        for d in inner:
            op, dtype = xnnpack_op(d["type"])
            rows.append(op_row(op, d["name"], d["total_ms"], "XNNPACK delegate", dtype, calls=d["calls"], delegated=True))
    if inner and block_ms:
        overhead = block_ms - sum(d["total_ms"] for d in inner)
        notes.append(f"delegate call overhead outside the delegate's own op events: {overhead:.4f} ms per inference")
    elif not inner and block_ms:
        notes.append("the delegate printed no per-op events: each delegate node is one row")
    notes.append("per-op times from LiteRT's benchmark_model --enable_op_profiling=true (its own process)")
    return rows, notes


def _profile_tflite(model: Path, prepared_feeds: Any, runs: int, warmup: int, threads: Optional[int],
                    benchmark_model: Optional[str] = None, **_: Any) -> Dict[str, Any]:
    from .tflite import LiteRtRuntime
    rt = LiteRtRuntime(model, threads=threads)
    prepared = rt.prepare(prepared_feeds(rt))
    wall = _timed_runs(rt, prepared, runs, warmup)
    details = rt.interpreter._get_ops_details()
    result: Dict[str, Any] = {"rt": rt, "prepared": prepared, "wall_ms": _mean(wall), "total_ms": _mean(wall)}
    bm = None
    if benchmark_model:
        bm = run_benchmark_model(benchmark_model, model, runs, warmup, threads)
        if bm["total_ms"] is not None:
            result["total_ms"] = bm["total_ms"]
        result["profiler"] = f"benchmark_model --enable_op_profiling=true ({benchmark_model})"
    else:
        result["profiler"] = "LiteRT interpreter op list (no per-op timing from Python)"
    rows, notes = litert_rows(details, bm)
    result.update(ops=rows, notes=notes)
    return result


def run_benchmark_model(binary: str, model: Path, runs: int, warmup: int, threads: Optional[int],
                        timeout_s: float = 600.0) -> Dict[str, Any]:
    """Run LiteRT's benchmark_model with op profiling on ``model`` and parse its tables."""
    exe = shutil.which(binary) or binary
    if not os.path.exists(exe):
        raise RuntimeUnavailable(f"benchmark_model not found: {binary}", hint=BENCHMARK_MODEL_HINT)
    cp = subprocess.run(benchmark_model_argv(exe, str(model), runs, warmup, threads), capture_output=True, text=True,
                        timeout=timeout_s)
    text = cp.stdout + "\n" + cp.stderr
    if cp.returncode != 0:
        raise RuntimeError(f"benchmark_model failed (exit {cp.returncode}): {text.strip()[-600:]}")
    return parse_benchmark_model(text)


# ------------------------------------------------------------------------------------------------ entry

# format -> its profiler: (model, feeds_for, runs, warmup, threads, *, etrecord, benchmark_model) -> partial result.
# The formats marked "profilable" in edgeship_runtime.formats (a test keeps the two equal).
PROFILERS: Dict[str, Callable[..., Dict[str, Any]]] = {
    "onnx": _profile_onnx, "tflite": _profile_tflite, "executorch": _profile_executorch}

def profile(model: Path, *, runs: int = 20, warmup: int = 3, threads: Optional[int] = None,
            manifest: Optional[Path] = None, inputs: Optional[Path] = None, seed: int = 0,
            etrecord: Optional[Path] = None, benchmark_model: Optional[str] = None) -> Dict[str, Any]:
    """Profile ``model`` in its runtime: ``warmup`` untimed runs, then ``runs`` profiled ones; returns the result
    dict the CLI prints (see the module docstring)."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"--runs must be >= 1 and --warmup >= 0, got {runs} and {warmup}")
    model = Path(model)
    if not model.exists():
        raise FileNotFoundError(f"model file not found: {model}")
    fmt = format_of(model)
    if fmt == "coreml":
        raise ValueError("per-op profiling of Core ML models needs a Mac: Xcode's Core ML performance report "
                         "(or MLComputePlan) shows per-op cost and compute unit")
    cls = runtime_class(fmt)
    cls.check_platform()
    cls.import_backend()

    def feeds_for(rt: Runtime) -> Dict[str, np.ndarray]:
        if inputs is not None:
            with np.load(inputs) as z:
                return {k: z[k] for k in z.files}
        return random_inputs(_input_specs(rt, manifest), seed)

    if fmt not in PROFILERS:
        raise ValueError(f"no profiler for format {fmt!r}")
    out = PROFILERS[fmt](model, feeds_for, runs, warmup, threads, etrecord=etrecord, benchmark_model=benchmark_model)
    rt, prepared = out.pop("rt"), out.pop("prepared")
    if out.get("total_ms") is None:
        out["total_ms"] = out["wall_ms"]
    result = {
        "runtime": rt.name, "runtime_version": rt.version, "format": fmt, "model": str(model), "runs": runs,
        "warmup": warmup, "threads": rt.threads, **out,
        "inputs": [{"name": i.name, "shape": list(a.shape), "dtype": str(a.dtype)} for i, a in zip(rt.inputs, prepared)],
        "python": platform.python_version(), "platform": platform.platform(), "cpu_features": cpu_features(),
    }
    result["notes"] = list(rt.notes) + list(result.get("notes", []))
    return finish(result)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = runner_parser("python -m edgeship_runtime.profile", runs=20, warmup=3)
    p.description = __doc__.splitlines()[0]
    p.add_argument("--etrecord", type=Path, help="ExecuTorch: the ETRecord written at export (aten ops per delegated op)")
    p.add_argument("--benchmark-model", help="LiteRT: path of the benchmark_model binary, for per-op times")
    return run_json_command(p, argv, lambda a: profile(
        a.model, runs=a.runs, warmup=a.warmup, threads=a.threads, manifest=a.manifest, inputs=a.inputs, seed=a.seed,
        etrecord=a.etrecord, benchmark_model=a.benchmark_model))


if __name__ == "__main__":
    sys.exit(main())
