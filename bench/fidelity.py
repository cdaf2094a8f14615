"""int8 fidelity of real pretrained networks, in each runtime: each library's plain recipe vs edgeship's.

    python bench/fidelity.py [--models ppocr_det,crepe_tiny] [--calib 32] [--eval 24] [--work dist/fidelity]
                             [--no-plain] [--rounds 3]

For every model of bench/real_models.py (weights from PyPI wheels, real inputs):

1. ``edgeship export bench/real_models.py:NAME -f onnx,tflite,executorch -p fp32,int8 --calib calib.npz
   --verify-data eval.npz --out DIR``: the real CLI, in a child process, calibrated on real inputs
   (real_models.real_inputs(NAME, N, "calib")).
2. Each library's plain int8 recipe, by hand, on the same calibration inputs (STACK.md's calls):
   onnxruntime ``quant_pre_process`` + ``quantize_static`` (QDQ, S8S8: int8 activations and weights, per-channel,
   MinMax) on edgeship's fp32 .onnx; XNNPACK PT2E (``XNNPACKQuantizer``, ``get_symmetric_quantization_config(
   is_per_channel=True)``, torchao ``prepare_pt2e``/``convert_pt2e``) lowered to a .pte; litert-torch PT2E
   (``PT2EQuantizer``, the same config, ``convert_pt2e(fold_quantize=False)``, ``QuantConfig``) to a .tflite.
3. Every artifact runs in its own runtime (edgeship_runtime.open_runtime, 1 thread) on held-back real inputs
   (real_inputs(NAME, M, "eval"): other photos, LFW images, sentences and tones than calibration's), against
   PyTorch fp32 on the same inputs:
   - SQNR (dB) over all outputs of all samples; fp32 artifacts also max abs difference;
   - task agreement with PyTorch fp32 (see AGREEMENT below);
   - file size; int8 export time (edgeship: the CLI's ``export_s``; plain: calibrate + quantize + convert);
   - latency at 1 thread, fp32 and both int8 files of a runtime in the same process, in alternating rounds
     (median of the rounds' medians), and the int8/fp32 ratio, with the CPU's int8 dot-product flags;
   - what stayed float: onnxruntime's optimized graph (the kernels it really runs: QLinearConv vs Conv between
     DequantizeLinear/QuantizeLinear), the .tflite's operators (QUANTIZE/DEQUANTIZE and float ops), the .pte's
     ops outside XNNPACK; and, for the PT2E graphs, SQNR layer by layer (where the error starts).

Writes bench/fidelity.json and bench/fidelity.md. Models whose packages (or espeak-ng, for audio) are missing are
skipped with the reason.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import real_models as R  # noqa: E402

NOISE_DB = 40          # the noise floor: input nudged by Gaussian noise this many dB below it
FORMATS = ("onnx", "tflite", "executorch")
RUNTIME = {"onnx": "onnxruntime", "tflite": "LiteRT", "executorch": "ExecuTorch (XNNPACK)"}
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "executorch": ".pte"}
PLAIN_RECIPE = {
    "onnx": "ORT quantize_static QDQ S8S8 per-channel MinMax",
    "tflite": "litert-torch PT2E per-channel (histogram)",
    "executorch": "XNNPACK PT2E per-channel (histogram)",
}
DEFAULT_MODELS = tuple(m for m in R.MODELS if m != "mtcnn_rnet")   # R-Net behaves as O-Net (--models adds it)

AGREEMENT = {
    "classification": "top-1 agreement with PyTorch fp32",
    "text-detection": f"text-mask IoU with PyTorch fp32: pixels with DB probability > {R.DET_THRESH} "
                      "(rapidocr's threshold), intersection / union summed over the eval images",
    "face-proposal": f"face-candidate IoU with PyTorch fp32: P-Net cells with face probability > "
                     f"{R.MTCNN_THRESHOLDS[0]} (MTCNN's first threshold), intersection / union over the images",
    "face-classification": "face / not-face decision agreement with PyTorch fp32 at MTCNN's threshold "
                           f"({R.MTCNN_THRESHOLDS[1]} R-Net, {R.MTCNN_THRESHOLDS[2]} O-Net) on LFW faces and non-faces",
    "pitch": "top-1 pitch-bin agreement with PyTorch fp32 (360 bins of 20 cents; json: within one bin too)",
    "speaker-embedding": "speaker-ID agreement: nearest of 6 voice centroids (PyTorch fp32 embeddings of the "
                         "calibration sentences) is the same as PyTorch fp32's (json: mean cosine to fp32 too)",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------------------------
# metrics

def sqnr_db(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    r = np.concatenate([np.asarray(a, np.float64).ravel() for a in ref])
    g = np.concatenate([np.asarray(a, np.float64).ravel() for a in got])
    noise = float(np.sum((r - g) ** 2))
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(r ** 2) / noise))


def max_abs(ref, got) -> float:
    return max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) for a, b in zip(ref, got))


def agreement(task: str, name: str, refs: list[list[np.ndarray]], gots: list[list[np.ndarray]], ctx: dict) -> dict:
    """Task agreement of an artifact's outputs ``gots`` with PyTorch fp32's ``refs`` (per sample, per output)."""
    if task == "classification":
        same = [int(np.argmax(r[0])) == int(np.argmax(g[0])) for r, g in zip(refs, gots)]
        return {"value": float(np.mean(same)), "metric": "top-1 agreement"}
    if task == "text-detection":
        inter = union = 0
        for r, g in zip(refs, gots):
            a, b = r[0] > R.DET_THRESH, g[0] > R.DET_THRESH
            inter += int(np.sum(a & b))
            union += int(np.sum(a | b))
        return {"value": inter / union if union else 1.0, "metric": "text-mask IoU", "text_pixels_fp32": int(
            sum(np.sum(r[0] > R.DET_THRESH) for r in refs))}
    if task == "face-proposal":
        inter = union = 0
        for r, g in zip(refs, gots):
            a, b = r[1][:, 1] > R.MTCNN_THRESHOLDS[0], g[1][:, 1] > R.MTCNN_THRESHOLDS[0]
            inter += int(np.sum(a & b))
            union += int(np.sum(a | b))
        return {"value": inter / union if union else 1.0, "metric": "face-candidate IoU",
                "candidates_fp32": int(sum(np.sum(r[1][:, 1] > R.MTCNN_THRESHOLDS[0]) for r in refs))}
    if task == "face-classification":
        t = R.MTCNN_THRESHOLDS[1 if name == "mtcnn_rnet" else 2]
        same = [(r[-1][0, 1] > t) == (g[-1][0, 1] > t) for r, g in zip(refs, gots)]
        return {"value": float(np.mean(same)), "metric": "face decision agreement"}
    if task == "pitch":
        br = np.array([int(np.argmax(r[0])) for r in refs])
        bg = np.array([int(np.argmax(g[0])) for g in gots])
        return {"value": float(np.mean(br == bg)), "metric": "pitch-bin agreement",
                "within_one_bin": float(np.mean(np.abs(br - bg) <= 1))}
    if task == "speaker-embedding":
        cent = ctx["centroids"]
        er = np.concatenate([r[0] for r in refs])
        eg = np.concatenate([g[0] for g in gots])
        eg_n = eg / np.maximum(np.linalg.norm(eg, axis=1, keepdims=True), 1e-12)
        same = (er @ cent.T).argmax(1) == (eg_n @ cent.T).argmax(1)
        return {"value": float(np.mean(same)), "metric": "speaker-ID agreement",
                "mean_cosine_to_fp32": float(np.mean(np.sum(er * eg_n, axis=1)))}
    raise ValueError(task)


def align_outputs(outs: list[np.ndarray], shapes: list[tuple]) -> list[np.ndarray]:
    """A runtime's outputs in PyTorch's order: by position when the shapes agree, else matched by shape."""
    outs = [np.asarray(o, np.float32) for o in outs]
    if [tuple(o.shape) for o in outs] == shapes:
        return outs
    pool, ordered = list(outs), []
    for s in shapes:
        k = next((i for i, o in enumerate(pool) if tuple(o.shape) == s or o.size == int(np.prod(s))), None)
        if k is None:
            raise ValueError(f"cannot match the runtime's outputs {[o.shape for o in outs]} to PyTorch's {shapes}")
        ordered.append(pool.pop(k).reshape(s))
    return ordered


# --------------------------------------------------------------------------------------------------------------
# edgeship: the real CLI

def edgeship_export(name: str, calib: Path, verify: Path, out: Path, n_calib: int) -> dict:
    argv = [sys.executable, "-m", "edgeship.cli", "export", f"{HERE / 'real_models.py'}:{name}", "-f",
            ",".join(FORMATS), "-p", "fp32,int8", "--calib", str(calib), "--calib-samples", str(n_calib),
            "--verify-data", str(verify), "--out", str(out), "--force", "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    report_path = out / "report.json"
    if not report_path.is_file():
        raise RuntimeError(f"edgeship export {name} wrote no report (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads(report_path.read_text())
    return {"command": "edgeship " + " ".join(argv[3:]).replace(str(ROOT) + "/", ""), "exit": proc.returncode,
            "wall_s": round(wall, 1), "report": report}


# --------------------------------------------------------------------------------------------------------------
# plain recipes

def plain_onnx(fp32_onnx: Path, calib: list[tuple[np.ndarray, ...]], out: Path) -> dict:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                         quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    import onnx

    names = [i.name for i in onnx.load(str(fp32_onnx)).graph.input]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter([dict(zip(names, s)) for s in calib])

        def get_next(self):
            return next(self.rows, None)

    t0 = time.perf_counter()
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32_onnx), str(pre))
        except Exception as e:  # noqa: BLE001 - as edgeship does: quantize the graph as it is
            notes.append(f"quant_pre_process failed ({type(e).__name__}: {str(e)[:120]}); quantized without it")
            pre = fp32_onnx
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    return {"export_s": round(time.perf_counter() - t0, 2), "notes": notes}


def _calibrated(module, example, calib, quantizer, fold_quantize: bool):
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    gm = torch.export.export(copy.deepcopy(module).eval(), example, strict=False).module()
    fp32_gm = copy.deepcopy(gm)
    prepared = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for s in calib:
            prepared(*(torch.from_numpy(a) for a in s))
    return fp32_gm, convert_pt2e(prepared, fold_quantize=fold_quantize)


def plain_executorch(module, example, calib, out: Path) -> dict:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from executorch.exir import to_edge_transform_and_lower

    t0 = time.perf_counter()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    fp32_gm, converted = _calibrated(module, example, calib, quantizer, fold_quantize=True)
    try:
        edge = to_edge_transform_and_lower(torch.export.export(converted, example, strict=False),
                                           partitioner=[XnnpackPartitioner()])
        from edgeship.export.executorch import delegation
        details = delegation(edge.exported_program().graph_module)
        out.write_bytes(edge.to_executorch().buffer)
    except Exception as e:  # noqa: BLE001 - the quantized graph is still worth a per-layer look
        return {"error": f"{type(e).__name__}: {str(e)[:400]}", "graphs": (fp32_gm, converted)}
    return {"export_s": round(time.perf_counter() - t0, 2), "details": details, "graphs": (fp32_gm, converted)}


def plain_tflite(module, example, calib, out: Path) -> dict:
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    t0 = time.perf_counter()
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    fp32_gm, converted = _calibrated(module, example, calib, quantizer, fold_quantize=False)
    try:
        litert_torch.convert(converted, example, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(out))
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {str(e)[:400]}", "graphs": (fp32_gm, converted)}
    return {"export_s": round(time.perf_counter() - t0, 2), "graphs": (fp32_gm, converted)}


def layer_sqnr(fp32_gm, q_gm, samples, limit: int = 8) -> dict:
    """SQNR of every op of a converted PT2E graph against the same op of the float graph (matched by node name),
    on ``samples``: where along the network the int8 error appears. Ops are in execution order."""
    import torch
    from torch.fx import Interpreter

    class Record(Interpreter):
        """Runs a graph; keeps the float outputs of the ``keep`` nodes, or, given ``ref``, adds up signal and
        noise against them as it goes (so only one graph's activations are held at a time)."""

        def __init__(self, gm, keep, ref=None):
            super().__init__(gm)
            self.keep, self.ref, self.values = keep, ref, {}

        def run_node(self, n):
            out = super().run_node(n)
            if n.name in self.keep and isinstance(out, torch.Tensor) and out.is_floating_point():
                if self.ref is None:
                    v = out.detach().float()
                    self.values[n.name] = v.clone()
                    st = stats.setdefault(n.name, [float("inf"), float("-inf"), 0.0, 0])
                    st[0], st[1] = min(st[0], float(v.min())), max(st[1], float(v.max()))
                    st[2] += float(torch.sum(v.double() ** 2))
                    st[3] += v.numel()
                elif n.name in self.ref and self.ref[n.name].shape == out.shape:
                    r = self.ref[n.name].double()
                    signal[n.name] += float(torch.sum(r ** 2))
                    noise[n.name] += float(torch.sum((r - out.detach().double()) ** 2))
            return out

    skip = ("quantize", "dequantize", "getitem", "_assert", "sym_size")
    q_nodes = {n.name: n for n in q_gm.graph.nodes if n.op == "call_function"}
    order = [n for n in fp32_gm.graph.nodes if n.op == "call_function" and n.name in q_nodes
             and not any(s in str(n.target) for s in skip)]
    keep = {n.name for n in order}
    signal = {k: 0.0 for k in keep}
    noise = {k: 0.0 for k in keep}
    stats: dict[str, list] = {}   # node -> [min, max, sum of squares, count] of its float output
    with torch.no_grad():
        for s in samples[:limit]:
            args = [torch.from_numpy(a) for a in s]
            ref = Record(fp32_gm, keep)
            ref.run(*args)
            Record(q_gm, keep, ref.values).run(*args)
            del ref
    rows = []
    for n in order:
        if signal[n.name] == 0 and noise[n.name] == 0:
            continue
        db = float("inf") if noise[n.name] == 0 else 10 * math.log10(max(signal[n.name], 1e-300) / noise[n.name])
        op = str(n.target).split(".")[-2] if "." in str(n.target) else str(n.target)
        scope = list(n.meta.get("nn_module_stack", {}).values())
        row = {"node": n.name, "op": op, "layer": scope[-1][0] if scope else "", "sqnr_db": round(db, 2)}
        st = stats.get(n.name)
        if st and st[3] and st[1] > st[0]:
            # The SQNR one per-tensor affine int8 scale (min/max over these samples) would give this output alone:
            # 10 log10(12 * 255^2 * mean(x^2) / (max - min)^2). Low where a few values stretch the range.
            row["int8_bound_db"] = round(10 * math.log10(12 * 255 ** 2 * (st[2] / st[3]) / (st[1] - st[0]) ** 2), 1)
        rows.append(row)
    by_name = {r["node"]: r for r in rows}
    for n in order:   # the SQNR an op loses itself: its inputs' worst SQNR minus its own
        r = by_name.get(n.name)
        ins = [by_name[a.name]["sqnr_db"] for a in n.all_input_nodes if a.name in by_name]
        if r is not None and ins and math.isfinite(min(ins)) and math.isfinite(r["sqnr_db"]):
            r["drop_db"] = round(min(ins) - r["sqnr_db"], 2)
    first_below = {t: next((r for r in rows if r["sqnr_db"] < t), None) for t in (30, 20, 10)}
    worst = sorted(rows, key=lambda r: r["sqnr_db"])[:6]
    ops_below_20 = Counter(r["op"] for r in rows if r["sqnr_db"] < 20)
    bounded = sorted((r for r in rows if "int8_bound_db" in r), key=lambda r: r["int8_bound_db"])
    return {"ops": len(rows), "first_below_db": {str(k): v for k, v in first_below.items()}, "worst": worst,
            "lowest_int8_bound": bounded[:4],
            "largest_drops": sorted((r for r in rows if "drop_db" in r), key=lambda r: -r["drop_db"])[:5],
            "ops_with_int8_bound_below_20db": sum(1 for r in bounded if r["int8_bound_db"] < 20),
            "ops_below_20db": dict(ops_below_20.most_common()), "last": rows[-1] if rows else None,
            "profile": [[r["node"], r["op"], r["sqnr_db"], r.get("int8_bound_db")] for r in rows]}


# --------------------------------------------------------------------------------------------------------------
# inspecting what runs in float

def onnx_kernels(path: Path) -> dict:
    from edgeship.export.onnx import runtime_graph
    return runtime_graph(Path(path))


def tflite_ops(path: Path) -> dict:
    from edgeship.export.tflite import runtime_graph
    return runtime_graph(Path(path))


def pte_ops(details: dict | None) -> dict:
    if not details:
        return {}
    return {"delegates": details.get("delegates"), "portable_ops": details.get("portable_ops")}


# --------------------------------------------------------------------------------------------------------------
# running artifacts

def run_artifact(path: Path, inputs, shapes) -> list[list[np.ndarray]]:
    from edgeship_runtime import open_runtime
    rt = open_runtime(path, threads=1)
    return [align_outputs(rt.run(list(x)), shapes) for x in inputs]


def latency(paths: dict[str, Path], x: tuple[np.ndarray, ...], rounds: int, budget_s: float = 0.25) -> dict:
    """ms per inference at 1 thread: each file opened once in this process, then ``rounds`` alternating rounds of
    timed runs (count chosen so one round of one file takes about ``budget_s``); median of the rounds' medians."""
    from edgeship_runtime import open_runtime
    rts = {k: open_runtime(p, threads=1) for k, p in paths.items()}
    feeds = {k: rt.prepare(list(x)) for k, rt in rts.items()}
    runs = {}
    for k, rt in rts.items():
        for _ in range(3):
            rt.run(feeds[k])
        t0 = time.perf_counter()
        rt.run(feeds[k])
        runs[k] = int(min(60, max(5, budget_s / max(time.perf_counter() - t0, 1e-5))))
    per_round: dict[str, list[float]] = {k: [] for k in rts}
    for r in range(rounds):
        order = list(rts) if r % 2 == 0 else list(reversed(list(rts)))
        for k in order:
            ts = []
            for _ in range(runs[k]):
                t0 = time.perf_counter_ns()
                rts[k].run(feeds[k])
                ts.append((time.perf_counter_ns() - t0) / 1e6)
            per_round[k].append(statistics.median(ts))
    return {k: {"ms": round(statistics.median(v), 3), "rounds_ms": [round(t, 3) for t in v], "runs": runs[k]}
            for k, v in per_round.items()}


# --------------------------------------------------------------------------------------------------------------

def measure_model(name: str, args, cpu: dict) -> dict:
    import torch
    torch.set_num_threads(1)
    task = R.TASKS[name]
    log(f"{name}: building the model and its real inputs")
    module, example = R.build(name)
    calib_s = R.real_samples(name, args.calib, "calib")
    eval_s = R.real_samples(name, args.eval, "eval")
    calib = [s.arrays for s in calib_s]
    evals = [s.arrays for s in eval_s]
    work = Path(args.work) / name
    work.mkdir(parents=True, exist_ok=True)
    calib_npz = R.save_npz(work / "calib.npz", calib)
    eval_npz = R.save_npz(work / "eval.npz", evals)

    def torch_run(m, xs):
        outs = []
        with torch.no_grad():
            for x in xs:
                o = m(*(torch.from_numpy(a) for a in x))
                o = o if isinstance(o, (tuple, list)) else (o,)
                outs.append([t.numpy().astype(np.float32) for t in o])
        return outs

    refs = torch_run(module, evals)
    shapes = [tuple(o.shape) for o in refs[0]]
    ctx = {}
    if task == "speaker-embedding":
        emb = np.concatenate([o[0] for o in torch_run(module, calib)])
        labels = np.array([s.label for s in calib_s])
        cent = np.stack([emb[labels == v].mean(0) for v in sorted(set(labels))])
        ctx["centroids"] = cent / np.linalg.norm(cent, axis=1, keepdims=True)
    # The model's own noise floor: PyTorch fp32 on the same inputs with Gaussian noise 40 dB below each input
    # (about 1% of its amplitude). An int8 file cannot be expected to stay closer to fp32 than fp32 stays to itself
    # under such a nudge; a model whose floor is below the int8 target is hypersensitive, and SQNR overstates its loss.
    rng = np.random.default_rng(0)
    nudged = [tuple((a + rng.standard_normal(a.shape) * np.sqrt(np.mean(a.astype(np.float64) ** 2) * 10 ** (-NOISE_DB / 10))
                     ).astype(a.dtype) for a in x) for x in evals]
    floor = torch_run(module, nudged)
    noise_floor = {"input_snr_db": NOISE_DB, "sqnr_db": round(sqnr_db([o for s in refs for o in s],
                                                                      [o for s in floor for o in s]), 2),
                   "agreement": agreement(task, name, refs, floor, ctx)}
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(3):
            module(*(torch.from_numpy(a) for a in evals[0]))
    eager_ms = (time.perf_counter() - t0) / 3 * 1e3
    conv = R.conversion_check(name) if name in R.PPOCR_FILES else None
    params = sum(p.numel() for p in module.parameters())

    log(f"{name}: edgeship export (onnx, tflite, executorch x fp32, int8)")
    out = work / "edgeship"
    if args.reuse and (out / "report.json").is_file() and (work / "edgeship_run.json").is_file():
        ex = json.loads((work / "edgeship_run.json").read_text())
        ex["report"] = json.loads((out / "report.json").read_text())
        log(f"{name}: reusing the edgeship export in {out}")
    else:
        ex = edgeship_export(name, calib_npz, eval_npz, out, args.calib)
        (work / "edgeship_run.json").write_text(json.dumps({k: v for k, v in ex.items() if k != "report"}))
    log(f"{name}: edgeship export took {ex['wall_s']} s (exit {ex['exit']})")
    arts = {a["key"]: a for a in ex["report"]["artifacts"]}

    plain_dir = work / "plain"
    plain_dir.mkdir(exist_ok=True)
    plain: dict[str, dict] = {}
    if not args.no_plain:
        for fmt in FORMATS:
            path = plain_dir / f"model.int8{SUFFIX[fmt]}"
            log(f"{name}: plain int8 recipe for {fmt}")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if fmt == "onnx":
                        fp32 = arts.get("onnx:fp32")
                        if not fp32 or fp32["status"] != "ok":
                            raise RuntimeError("edgeship's fp32 .onnx is missing")
                        res = plain_onnx(out / fp32["path"], calib, path)
                    elif fmt == "executorch":
                        res = plain_executorch(module, example, calib, path)
                    else:
                        res = plain_tflite(module, example, calib, path)
                graphs = res.pop("graphs", None)
                if graphs is not None:
                    log(f"{name}: per-layer SQNR of the {fmt} PT2E graph")
                    res["layer_sqnr"] = layer_sqnr(*graphs, evals)
                if "error" in res:
                    res["status"] = "failed"
                    log(f"{name}: plain {fmt} failed: {res['error']}")
                else:
                    res["path"] = path
                    res["status"] = "ok"
            except Exception as e:  # noqa: BLE001 - a failing recipe is a result
                res = {"status": "failed", "error": f"{type(e).__name__}: {str(e)[:400]}"}
                log(f"{name}: plain {fmt} failed: {res['error']}")
            plain[fmt] = res

    rows = []
    for fmt in FORMATS:
        row = {"format": fmt, "runtime": RUNTIME[fmt]}
        files: dict[str, Path] = {}
        for prec in ("fp32", "int8"):
            a = arts.get(f"{fmt}:{prec}")
            entry = {"recipe": "edgeship", "status": a["status"] if a else "missing"}
            if a and a["status"] == "ok":
                files[f"edgeship_{prec}"] = out / a["path"]
                entry.update(size_bytes=a["size_bytes"], export_s=a["export_s"], notes=a.get("notes"),
                             parity_gate=a.get("parity"), details=a.get("details"))
            elif a:
                entry["error"] = a.get("error")
            row[f"edgeship_{prec}"] = entry
        p = plain.get(fmt)
        if p is not None:
            entry = {"recipe": PLAIN_RECIPE[fmt], "status": p["status"]}
            if p["status"] == "ok":
                files["plain_int8"] = p["path"]
                entry.update(size_bytes=p["path"].stat().st_size, export_s=p["export_s"], notes=p.get("notes") or [])
                if "layer_sqnr" in p:
                    entry["layer_sqnr"] = p["layer_sqnr"]
                if "details" in p:
                    entry["float_islands"] = pte_ops(p["details"])
            else:
                entry["error"] = p["error"]
                if "layer_sqnr" in p:
                    entry["layer_sqnr"] = p["layer_sqnr"]
            row["plain_int8"] = entry
        for key, path in files.items():
            log(f"{name}: running {key} in {RUNTIME[fmt]} on {len(evals)} held-out inputs")
            try:
                gots = run_artifact(path, evals, shapes)
            except Exception as e:  # noqa: BLE001
                row[key]["run_error"] = f"{type(e).__name__}: {str(e)[:300]}"
                continue
            flat_r = [o for s in refs for o in s]
            flat_g = [o for s in gots for o in s]
            row[key]["sqnr_db"] = round(sqnr_db(flat_r, flat_g), 2)
            row[key]["per_output_sqnr_db"] = [round(sqnr_db([s[i] for s in refs], [g[i] for g in gots]), 2)
                                              for i in range(len(shapes))]
            row[key]["max_abs"] = max_abs(flat_r, flat_g)
            row[key]["agreement"] = agreement(task, name, refs, gots, ctx)
            if key.endswith("int8"):
                try:
                    if fmt == "onnx":
                        row[key]["float_islands"] = onnx_kernels(path)
                    elif fmt == "tflite":
                        row[key]["float_islands"] = tflite_ops(path)
                    elif key == "edgeship_int8":
                        row[key]["float_islands"] = pte_ops(row[key].get("details"))
                except Exception as e:  # noqa: BLE001
                    row[key]["float_islands"] = {"error": f"{type(e).__name__}: {e}"}
        runnable = {k: v for k, v in files.items() if "run_error" not in row[k]}
        if "edgeship_fp32" in runnable and len(runnable) > 1:
            log(f"{name}: latency in {RUNTIME[fmt]} ({', '.join(runnable)}), 1 thread, {args.rounds} rounds")
            lat = latency(runnable, evals[0], args.rounds)
            for k, v in lat.items():
                row[k]["latency"] = v
                if k != "edgeship_fp32":
                    row[k]["int8_over_fp32_latency"] = round(v["ms"] / lat["edgeship_fp32"]["ms"], 3)
        rows.append(row)
    return {"name": name, "task": task, "agreement_metric": AGREEMENT[task], "parameters": params,
            "input_shape": list(example[0].shape), "eager_fp32_ms": round(eager_ms, 2),
            "onnx2torch_check": conv, "calib_samples": len(calib), "eval_samples": len(evals),
            "calib_sources": sorted(set(s.source for s in calib_s)), "eval_sources": sorted(set(s.source for s in eval_s)),
            "edgeship_command": ex["command"], "edgeship_exit": ex["exit"], "edgeship_wall_s": ex["wall_s"],
            "noise_floor": noise_floor, "rows": rows}


# --------------------------------------------------------------------------------------------------------------
# writing

def _fmt_size(b):
    return "—" if b is None else f"{b / 1e6:.2f} MB" if b >= 1e6 else f"{b / 1e3:.1f} kB"


def _fmt(v, spec="{:.1f}"):
    return "—" if v is None else spec.format(v)


def _islands(e: dict) -> str:
    fi = e.get("float_islands") or {}
    if "error" in fi:
        return "?"
    if "delegates" in fi:
        port = fi.get("portable_ops") or {}
        return f"{fi['delegates']} delegates; outside XNNPACK: " + (", ".join(f"{k}×{v}" for k, v in port.items()) or "none")
    q = fi.get("qdq", {})
    qd = "/".join(str(q.get(k, 0)) for k in (("QuantizeLinear", "DequantizeLinear") if "QuantizeLinear" in q or
                                               "DequantizeLinear" in q else ("QUANTIZE", "DEQUANTIZE")))
    fl = fi.get("float_ops", {})
    top = ", ".join(f"{k}×{v}" for k, v in sorted(fl.items(), key=lambda kv: -kv[1])[:4])
    k8 = fi.get("int8_kernels")
    k8s = ("; int8: " + ", ".join(f"{k}×{v}" for k, v in k8.items())) if k8 else ""
    return f"Q/DQ {qd}; float: {top or 'none'}{k8s}"


def write_md(results: dict, path: Path) -> None:
    cpu = results["cpu"]
    L = ["# int8 fidelity on real pretrained networks", "",
         f"Measured {results['date']} by `{results['command']}` in {results['total_s'] / 60:.1f} min wall" +
         (f", {results['cpu_s'] / 60:.1f} min CPU" if results.get("cpu_s") else "") +
         (f" (load average {results['load_average_start'][0]:.1f} at the start, {results['load_average_end'][0]:.1f} "
          "at the end: other jobs shared the cores)" if results.get("load_average_end") else "") + " on "
         f"{results['host']['cpu']} ({results['host']['cores']} cores, shared), "
         f"int8 dot-product flags: **{', '.join(cpu.get('int8_dot_flags') or []) or 'none'}** "
         f"(ISA: {', '.join(cpu.get('flags') or [])}). Versions: " +
         ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".", "",
         *(["Models re-measured later (merged into this file): " + "; ".join(
             f"{', '.join(r['models'])} on {r['date']} by `{r['command']}` ({r['total_s'] / 60:.1f} min wall)"
             for r in results["merged_runs"]) + ".", ""] if results.get("merged_runs") else []),
         "Every figure is measured in the artifact's own runtime (onnxruntime, LiteRT, ExecuTorch; 1 thread) on "
         "real inputs held back from calibration, against PyTorch fp32 on the same inputs. SQNR is over all outputs "
         "of all held-out samples. Latency: the fp32 file and both int8 files of a runtime in one process, "
         f"alternating rounds ({results['rounds']}), median of the rounds' medians; ×fp32 is int8 latency over fp32 "
         "latency (< 1 is faster). Export s: edgeship's `export_s` for its int8 artifact (it tries several "
         "calibrations when the first misses 20 dB); for the plain recipe, calibrate + quantize + convert.", "",
         "Reproduce: `make fidelity` (it runs `make real-setup`: `pip install -e '.[all,dev,real]'` and "
         "`pip install --no-deps facenet-pytorch==2.6.0 onnx2torch==1.5.15 torchcrepe==0.0.24 resemblyzer==0.1.4`; "
         "espeak-ng from Debian for the speech), or `python bench/fidelity.py --models NAME` (bench/real_models.py "
         "says what each model is and why those four are --no-deps; artifacts go to dist/fidelity/).", "",
         "Plain recipes (each library's documented defaults, by hand): " +
         "; ".join(f"{RUNTIME[f]}: {r}" for f, r in PLAIN_RECIPE.items()) + ".", ""]
    def cell(e):
        if not e:
            return "—"
        if e.get("status") != "ok" or "sqnr_db" not in e:
            return "failed"
        sq = "∞" if math.isinf(e["sqnr_db"]) else f"{e['sqnr_db']:.1f}"
        return f"{sq} dB / {e['agreement']['value'] * 100:.0f}%"

    L += ["## Summary: int8 SQNR vs PyTorch fp32 / task agreement, plain recipe → edgeship", "",
          "| model | " + " | ".join(RUNTIME[f] for f in FORMATS) + f" | fp32 itself, input nudged by {NOISE_DB} dB noise |",
          "|---|" + "---|" * (len(FORMATS) + 1)]
    for m in results["models"]:
        if "skipped" in m:
            L.append(f"| {m['name']} | " + " | ".join("skipped" for _ in FORMATS) + " | |")
            continue
        rows = {r["format"]: r for r in m["rows"]}
        nf = m.get("noise_floor")
        L.append(f"| {m['name']} | " + " | ".join(
            f"{cell(rows.get(f, {}).get('plain_int8'))} → {cell(rows.get(f, {}).get('edgeship_int8'))}"
            for f in FORMATS) + f" | {cell(dict(nf, status='ok')) if nf else '—'} |")
    L += ["", f"The last column is the model's own noise floor: PyTorch fp32 on the held-out inputs with Gaussian noise "
          f"{NOISE_DB} dB below each input (about 1% of its amplitude), against fp32 on the clean inputs. int8 cannot be "
          "expected to stay closer to fp32 than that; where the floor is below the int8 target, the model is "
          "hypersensitive and its task agreement says more than its SQNR.", "",
          "Below 20 dB (DESIGN.md's int8 target) is a collapse; \"failed\" is an export or run that did not "
          "produce a result (the per-model tables say why).", ""]
    for m in results["models"]:
        if "skipped" in m:
            L += [f"## {m['name']}: skipped", "", m["skipped"], ""]
            continue
        conv = m.get("onnx2torch_check")
        L += [f"## {m['name']} ({m['task']}; {m['parameters']:,} parameters; input {'x'.join(map(str, m['input_shape']))})", "",
              f"Agreement: {m['agreement_metric']}. Calibration: {m['calib_samples']} real inputs "
              f"({', '.join(m['calib_sources'][:8])}{'…' if len(m['calib_sources']) > 8 else ''}); held out: "
              f"{m['eval_samples']} ({', '.join(m['eval_sources'][:8])}{'…' if len(m['eval_sources']) > 8 else ''}). "
              f"PyTorch eager fp32: {m['eager_fp32_ms']:.1f} ms. edgeship export: {m['edgeship_wall_s']:.0f} s "
              f"(exit {m['edgeship_exit']})." +
              (f" onnx2torch vs onnxruntime on the original .onnx: max abs diff {conv['max_abs_diff']:.1e} "
               f"({'matched' if conv['matched'] else 'MISMATCH'})." if conv else ""), "",
              "| runtime | artifact | SQNR dB | agreement | size | int8 export s | latency ms | ×fp32 | what stays float |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for row in m["rows"]:
            for key, label in (("edgeship_fp32", "fp32 (edgeship)"), ("plain_int8", "int8 plain"),
                               ("edgeship_int8", "int8 edgeship")):
                e = row.get(key)
                if e is None:
                    continue
                if e.get("status") != "ok" or "sqnr_db" not in e:
                    why = e.get("run_error") or e.get("error") or e.get("status")
                    L.append(f"| {row['runtime']} | {label} | failed | — | {_fmt_size(e.get('size_bytes'))} | — | — | — | "
                             f"{str(why)[:160].replace('|', '/')} |")
                    continue
                ag = e["agreement"]
                lat = e.get("latency", {}).get("ms")
                sq = "∞" if math.isinf(e["sqnr_db"]) else f"{e['sqnr_db']:.1f}"
                if key == "edgeship_fp32":
                    sq += f" (max abs {e['max_abs']:.1e})"
                L.append(f"| {row['runtime']} | {label}{'' if key != 'plain_int8' else ': ' + e['recipe']} | {sq} | "
                         f"{ag['value'] * 100:.1f}% | {_fmt_size(e.get('size_bytes'))} | "
                         f"{'—' if key == 'edgeship_fp32' else _fmt(e.get('export_s'))} | {_fmt(lat, '{:.2f}')} | "
                         f"{_fmt(e.get('int8_over_fp32_latency'), '{:.2f}')} | "
                         f"{'—' if key == 'edgeship_fp32' else _islands(e)} |")
        notes = []
        for row in m["rows"]:
            e = row.get("edgeship_int8") or {}
            kept = [n for n in (e.get("notes") or []) if "recipes tried" in n]
            if kept:
                notes.append(f"- {row['runtime']} edgeship int8: {kept[0]}")
            p = row.get("plain_int8") or {}
            for note in p.get("notes") or []:
                notes.append(f"- {row['runtime']} plain int8: {note}")
            ls = p.get("layer_sqnr")
            if ls:
                fb = ls["first_below_db"]
                first = ", ".join(f"< {t} dB at {v['node']} ({v['op']}, {v['sqnr_db']:.1f})" for t, v in fb.items() if v)
                worst = ", ".join(f"{w['node']} ({w['op']}) {w['sqnr_db']:.1f}" for w in ls["worst"][:3])
                drops = ", ".join([f"{w['node']} ({w['op']}, {w['layer']}) −{w['drop_db']:.1f} dB"
                                   for w in ls.get("largest_drops", []) if math.isfinite(w["drop_db"]) and w["drop_db"] > 0][:3]) or "none"
                notes.append(f"- {row['runtime']} plain PT2E graph, SQNR op by op ({ls['ops']} ops): first {first or 'none below 30 dB'}; "
                             f"worst {worst}; largest single-op losses {drops}; last op {ls['last']['node']} {ls['last']['sqnr_db']:.1f} dB; ops below 20 dB by type: "
                             f"{', '.join(f'{k}×{v}' for k, v in ls['ops_below_20db'].items()) or 'none'}"
                             + ("; outputs whose own per-tensor int8 range allows the least (bound dB): " + ", ".join(
                                 f"{w['node']} ({w['op']}) {w['int8_bound_db']:g}" for w in ls["lowest_int8_bound"][:3])
                                + f" ({ls['ops_with_int8_bound_below_20db']} ops bound below 20 dB)"
                                if ls.get("lowest_int8_bound") else ""))
        if notes:
            L += ["", *notes]
        L.append("")
    if results.get("findings"):
        L += ["## Findings (read from this run by hand; kept in fidelity.json under \"findings\")", ""] + [
            f"- {f}" for f in results["findings"]] + [""]
    L += ["## Agreement measures", ""] + [f"- **{k}**: {v}" for k, v in AGREEMENT.items()] + [""]
    path.write_text("\n".join(L))


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and (math.isinf(o) or math.isnan(o)):
        return str(o)
    if isinstance(o, (np.floating, np.integer)):
        return _jsonable(o.item())
    return o


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for p in ("torch", "onnxruntime", "executorch", "torchao", "litert-torch", "ai-edge-litert", "onnx2torch",
              "rapidocr-onnxruntime", "facenet-pytorch", "torchcrepe", "resemblyzer", "scikit-image"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the edgeship exports): a figure the other work on a
    shared machine inflates less than wall time."""
    import resource
    return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def _floats(o):
    """JSON's "inf"/"-inf"/"nan" strings back to floats (for --md-from)."""
    if isinstance(o, dict):
        return {k: _floats(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_floats(v) for v in o]
    if o in ("inf", "-inf", "nan"):
        return float(o)
    return o


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, of {', '.join(R.MODELS)}")
    p.add_argument("--calib", type=int, default=24, help="real calibration inputs per model")
    p.add_argument("--eval", type=int, default=24, help="held-out real inputs per model")
    p.add_argument("--rounds", type=int, default=3, help="alternating latency rounds")
    p.add_argument("--work", default=str(ROOT / "dist" / "fidelity"), help="where the artifacts go")
    p.add_argument("--no-plain", action="store_true", help="skip the plain recipes")
    p.add_argument("--json-out", default=str(HERE / "fidelity.json"))
    p.add_argument("--md-out", default=str(HERE / "fidelity.md"))
    p.add_argument("--md-from", help="only rewrite --md-out from this fidelity.json (no measuring)")
    p.add_argument("--reuse", action="store_true", help="reuse an earlier edgeship export in --work (same inputs)")
    p.add_argument("--merge", action="store_true", help="keep the other models of an existing --json-out")
    args = p.parse_args(argv)
    if args.md_from:
        write_md(_floats(json.loads(Path(args.md_from).read_text())), Path(args.md_out))
        return 0
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in R.MODELS]
    if unknown:
        p.error(f"unknown models {unknown}; known: {', '.join(R.MODELS)}")
    from edgeship_runtime.bench import cpu_features
    cpu = cpu_features()
    from edgeship.bench.devices import local_cpu_model
    model_name = local_cpu_model()
    t0 = time.perf_counter()
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python bench/fidelity.py " + " ".join(argv or sys.argv[1:]),
               "host": {"cpu": model_name, "cores": os.cpu_count(), "python": platform.python_version()},
               "cpu": cpu, "versions": versions(), "rounds": args.rounds, "agreement": AGREEMENT, "models": []}
    results["load_average_start"] = list(os.getloadavg())
    for name in names:
        t1 = time.perf_counter()
        try:
            m = measure_model(name, args, cpu)
        except R.MissingDependency as e:
            log(f"{name}: skipped: {e}")
            m = {"name": name, "skipped": str(e)}
        except Exception as e:  # noqa: BLE001 - one model failing leaves the others to measure
            import traceback
            log(f"{name}: failed: {traceback.format_exc()}")
            m = {"name": name, "skipped": f"the measurement failed: {type(e).__name__}: {str(e)[:500]}"}
        m["total_s"] = round(time.perf_counter() - t1, 1)
        log(f"{name}: done in {m['total_s']} s")
        results["models"].append(m)
        results["total_s"] = round(time.perf_counter() - t0, 1)
        results["cpu_s"] = round(cpu_seconds(), 1)
        results["load_average_end"] = list(os.getloadavg())
        written = results
        if args.merge and Path(args.json_out).is_file():   # replace these models in the earlier run's results
            old = _floats(json.loads(Path(args.json_out).read_text()))
            mine = {x["name"]: x for x in results["models"]}
            run = {k: results[k] for k in ("date", "command", "total_s", "cpu_s", "load_average_start",
                                           "load_average_end")}
            runs = [r for r in old.get("merged_runs", []) if r.get("date") != run["date"]]
            written = {**old, "models": [mine.pop(x["name"], x) for x in old["models"]] + list(mine.values()),
                       "merged_runs": runs + [{**run, "models": [x["name"] for x in results["models"]]}]}
        Path(args.json_out).write_text(json.dumps(_jsonable(written), indent=1) + "\n")
        write_md(written, Path(args.md_out))
    log(f"all done in {results['total_s'] / 60:.1f} min: {args.md_out}, {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
