"""ONNX: torch.onnx (dynamo) -> onnx.checker -> optional onnxslim; runs in onnxruntime.

int8: onnxruntime.quantization on the fp32 graph (after ``quant_pre_process``). Float inputs: static QDQ with
per-channel int8 weights, chosen per model by measurement (compress.quantize.choose: fidelity first, then speed)
between int8 activations with 8-bit weights (S8S8, onnxruntime's default) and uint8 activations with 7-bit weights
(U8S8 reduce_range, which x86 kernels without VNNI need to avoid saturation), min/max calibration first, percentile
and entropy when neither meets the SQNR target in onnxruntime. Integer inputs (token ids, transformer-style): dynamic
quantization instead (int8 weights, activations quantized at run time), which measured 40 dB where static QDQ kept
only 19.5-20 dB on the tiny transformer. ``dynamic-int8`` asks for the dynamic recipe on any model.
"""
from __future__ import annotations

import functools
import logging
import os
import tempfile
from collections import Counter
from pathlib import Path

from ..errors import EdgeshipError
from ..model import ModelSpec
from ..verify import scheme
from . import Exported, artifact_name, dynamic_dims, require

log = logging.getLogger(__name__)
OPSET = 20
# Activation types tried for static int8 (S8S8: int8 activations, 8-bit weights; U8S8: uint8 activations and 7-bit
# weights). On the digits CNN without VNNI (AVX2), 8-bit weights saturated onnxruntime's u8s8 kernels (14.0 dB;
# 31.8 dB with 7-bit); on the pretrained PP-OCR direction classifier on AVX-512 VNNI, U8S8 7-bit kept 16.4 dB and S8S8
# 26.2 dB. Which is right depends on the model and the CPU, so both are measured (bench/fidelity.md).
ACTIVATIONS = ("S8S8", "U8S8")
INT8_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                      "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd", "QLinearMul"})


class OnnxExporter:
    format = "onnx"
    suffix = ".onnx"
    runtime = "onnxruntime"
    precisions = frozenset({"fp32", "fp16", "int8", "dynamic-int8"})
    extra = "all"
    module = "onnx"

    def __init__(self, simplify: bool = True):
        self.simplify = simplify

    def export(self, spec: ModelSpec, out_dir: Path, precision: str, calib=None, quant=None) -> Exported:
        import torch
        onnx = require("onnx", self.extra, "ONNX export")
        require("onnxscript", self.extra, "ONNX export")
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / artifact_name(precision, self.suffix)
        names = [i.name for i in spec.inputs]
        n_out = len(spec.check_runs())
        out_names = list(spec.output_names or (["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]))

        def to_onnx(module: torch.nn.Module, fp16: bool = False):
            """(model, scopes, notes, nodes as exported): ``module`` (``spec.module`` or a graph made from it with
            the same inputs, such as the SmoothQuant remedy's) as checked, slimmed ONNX."""
            with tempfile.TemporaryDirectory() as tmp:
                raw = Path(tmp) / "raw.onnx"
                # dynamic dimensions become named dynamic axes (batch, seq)
                prog = torch.onnx.export(module, spec.example_inputs(), str(raw), dynamo=True, external_data=False,
                                         opset_version=OPSET, input_names=names, output_names=out_names, verbose=False,
                                         dynamic_shapes=spec.dynamic_shapes())
                del prog
                model = onnx.load(str(raw))
            onnx.checker.check_model(model, full_check=True)
            scopes, made_notes, nodes = node_scopes(model, spec.module), [], len(model.graph.node)   # before onnxslim
            if fp16:
                from onnxruntime.transformers.float16 import convert_float_to_float16
                model = convert_float_to_float16(model, keep_io_types=True)
                made_notes.append("fp16 weights and compute; inputs and outputs stay float32 (keep_io_types)")
            if self.simplify:
                model, note = _slim(model, [t.numpy() for t in spec.example_inputs(seed=7)])
                made_notes.append(note)
            return model, scopes, made_notes, nodes

        model, scopes, notes, nodes = to_onnx(spec.module, fp16=precision == "fp16")
        details = {"opset": OPSET, "nodes": nodes}
        if spec.dynamic:
            details["dynamic"] = dynamic_dims(spec)
        merged, saved = dedupe_initializers(model)
        if merged:
            details["shared_weights_deduplicated"] = merged
            named = [f"{k} (= {', '.join(v)})" for k, v in merged.items()]
            notes.append(f"{sum(map(len, merged.values()))} duplicate weight initializer(s) stored once, "
                         f"{saved / 1e6:.1f} MB saved: " + "; ".join(named[:3]) + (" …" if len(named) > 3 else ""))
        if scheme(precision).kind in ("static", "dynamic"):
            model, qnotes, qdetails = _quantize(onnx, model, spec, precision, calib, out_dir, quant, scopes, to_onnx)
            notes += qnotes
            details |= qdetails
        details["nodes_after"] = len(model.graph.node)
        _save(onnx, model, path)
        return Exported(path, precision, notes, details)


def _quantize(onnx, model, spec: ModelSpec, precision: str, calib, out_dir: Path, quant=None, scopes=None,
              to_onnx=None):
    """onnxruntime int8 of the fp32 ``model``: returns (quantized model, notes, details). The nodes of the layers
    in ``quant.keep_float`` (found through ``scopes``, see :func:`node_scopes`) go to ``nodes_to_exclude``.
    ``to_onnx(module)`` -> (model, scopes, notes, nodes) exports a graph made from ``spec.module`` the way ``model``
    was: the SmoothQuant remedy (compress.smooth) re-exports the smoothed graph with it."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                         quantize_dynamic, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ..compress.quantize import (TARGET_DB, Candidate, calibration_inputs, choice_note, choose, dynamic_reason,
                                     low_sqnr_note, reference_outputs, runtime_latency, runtime_sqnr,
                                     split_calibration)

    why = dynamic_reason(spec, precision)
    dynamic = why is not None
    notes, details = [], {}
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".int8-") as tmp:
        def pre_processed(model, stem: str) -> Path:
            fp32, pre = Path(tmp) / f"{stem}.onnx", Path(tmp) / f"{stem}-pre.onnx"
            onnx.save_model(model, str(fp32))
            cwd = os.getcwd()   # run in tmp: onnxruntime's symbolic shape inference, when incomplete, writes
            os.chdir(tmp)       # sym_shape_infer_temp.onnx and its external data into the working directory
            try:
                quant_pre_process(str(fp32), str(pre))
            except Exception as e:  # noqa: BLE001 - pre-processing only helps; quantize the graph as it is
                log.warning("onnxruntime quant_pre_process failed, quantizing without it: %s", e)
                notes.append(f"quantized without quant_pre_process (it failed: {type(e).__name__})")
                pre = fp32
            finally:
                os.chdir(cwd)
            return pre

        forms = int8_kernel_forms(model) if not dynamic else {}
        if forms:
            details["int8_forms"] = forms
            notes.append("rewritten so onnxruntime runs them in int8 (not float between quantize/dequantize pairs): "
                         + ", ".join(f"{k} ×{v}" for k, v in forms.items()))
        pre = pre_processed(model, "fp32")
        keep = quant.keep_float if quant is not None else frozenset()
        exclude = excluded_nodes(onnx.load(str(pre)), scopes or {}, keep) if keep else []
        if dynamic:
            out = Path(tmp) / "dynamic.onnx"
            # reduce_range: 7-bit weights. onnxruntime's x86 u8s8 int8 GEMM kernels can saturate with full 8-bit
            # weights; on the tiny transformer 8-bit kept 12 dB SQNR, 7-bit 40 dB.
            # quantize_dynamic turns each Gemm into "<name>_MatMul" + "<name>_Add" before it looks at the names
            quantize_dynamic(str(pre), str(out), per_channel=True, reduce_range=True, weight_type=QuantType.QInt8,
                             nodes_to_exclude=exclude + [f"{n}_MatMul" for n in exclude])
            notes.append(f"dynamic int8 (onnxruntime quantize_dynamic; {why}): per-channel int8 weights (7-bit range, "
                         "reduce_range, to avoid saturation in x86 int8 kernels), activations quantized at run time, "
                         "float32 I/O")
            details["quantizer"] = "onnxruntime quantize_dynamic"
            made = onnx.load(str(out))
        else:
            samples, cnotes = calibration_inputs(spec, calib)
            samples, measure_on, held_note = split_calibration(samples)
            notes += cnotes + [held_note]
            names = [i.name for i in model.graph.input]
            reference = reference_outputs(spec.module, measure_on)

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.rows = iter([{n: t.numpy() for n, t in zip(names, s)} for s in samples])

                def get_next(self):
                    return next(self.rows, None)

            @functools.cache
            def smoothed() -> tuple[Path, list[str], str] | None:
                """The SmoothQuant-migrated graph, pre-processed, its exclusions and its note; None if no layer
                norm or linear layer feeds a linear layer."""
                from ..compress.quantize import export_graph
                from ..compress.smooth import smooth_graph, smooth_pairs
                graph = export_graph(spec.module, spec.example_inputs(), spec.dynamic_shapes())
                if to_onnx is None or not smooth_pairs(graph):
                    return None
                gm, report = smooth_graph(graph, samples)
                m, s_scopes, _, _ = to_onnx(gm)
                int8_kernel_forms(m)
                path = pre_processed(m, "smoothed")
                return path, excluded_nodes(onnx.load(str(path)), s_scopes, keep) if keep else [], report.note()

            def smooth() -> tuple[Path, list[str]]:
                from ..compress.quantize import NotApplicable
                if smoothed() is None:
                    raise NotApplicable("no layer norm or linear layer feeds a linear layer")
                return smoothed()[:2]

            def static(method, activations, smoothed_graph: bool = False):
                def make() -> Path:
                    src, skip = smooth() if smoothed_graph else (pre, exclude)
                    out = Path(tmp) / f"static-{method.name}-{activations}{'-smoothed' * smoothed_graph}.onnx"
                    quantize_static(str(src), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                    activation_type=QuantType.QUInt8 if activations == "U8S8" else QuantType.QInt8,
                                    weight_type=QuantType.QInt8,
                                    calibrate_method=method, reduce_range=activations == "U8S8",
                                    nodes_to_exclude=skip)
                    return out
                return make

            methods = (CalibrationMethod.MinMax, CalibrationMethod.Percentile, CalibrationMethod.Entropy)
            candidates = [Candidate(f"{a} {m.name.lower()}", static(m, a), round=r)
                          for r, m in enumerate(methods) for a in ACTIVATIONS]
            candidates += [Candidate(f"SmoothQuant {a} {m.name.lower()}", static(m, a, True), round=len(methods))
                           for m in methods[:2] for a in ACTIVATIONS]
            choice = choose(candidates, lambda p: runtime_sqnr(p, measure_on, reference),
                            speed=lambda paths: runtime_latency(paths, measure_on[0]))
            path, kept = choice.made, choice.label
            acts, method = kept.removeprefix("SmoothQuant ").split()
            if kept.startswith("SmoothQuant"):
                notes.append(smoothed()[2])
            notes.append(f"static int8 (onnxruntime quantize_static, QDQ): per-channel "
                         f"{'7-bit (reduce_range)' if acts == 'U8S8' else '8-bit'} int8 weights, per-tensor "
                         f"{'uint8' if acts == 'U8S8' else 'int8'} activations ({method} calibration), float32 I/O")
            notes.append(choice_note(choice))
            if choice.sqnr_db < TARGET_DB:
                notes.append(low_sqnr_note(choice, calibrated_on_data=calib is not None))
            details |= {"quantizer": "onnxruntime quantize_static (QDQ)", "recipe": kept, "calibration": method,
                        "activations": acts, "candidates_sqnr_db": choice.tried,
                        "candidates_latency_ms": choice.latency_ms, "candidates_s": choice.seconds,
                        "calibration_samples": len(samples),
                        "measured_on_samples": len(measure_on)}
            made = onnx.load(str(path))
    from ..compress.quantize import layer_details, layers_note
    layers = layer_precisions(onnx, made, spec.module, scopes)
    details |= layer_details(layers)
    if keep:
        details["nodes_excluded"] = exclude
        notes += layers_note(keep, layers)
    ops = Counter(n.op_type for n in made.graph.node)
    details["int8_ops"] = {k: v for k, v in sorted(ops.items()) if k in INT8_OPS}
    details["float_ops"] = {k: v for k, v in sorted(ops.items()) if k not in INT8_OPS}
    try:
        details["runtime_graph"] = runtime_graph(made)
    except Exception as e:  # noqa: BLE001 - a census only; the artifact is still checked by the parity gate
        log.warning("could not read onnxruntime's optimized graph: %s", e)
    return made, notes, details


def int8_kernel_forms(model) -> dict[str, int]:
    """Rewrite, in place, float ops that onnxruntime's quantizer leaves float into equivalent ones it has int8
    kernels for, so they do not stay float islands between quantize/dequantize pairs: a division by a constant
    becomes a multiplication by its reciprocal (QLinearMul; hardswish's ``/ 6``), and a mean over the two spatial
    axes of a 4-D tensor that keeps them becomes GlobalAveragePool (QLinearGlobalAveragePool; squeeze-excite
    blocks). Both are exact up to float rounding. Returns the count of each rewrite."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in (*onnx.shape_inference.infer_shapes(model).graph.value_info, *model.graph.input)
             if v.type.tensor_type.HasField("shape")}
    done: Counter = Counter()
    reciprocals: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "Div" and len(node.input) == 2 and node.input[1] in inits:
            d = numpy_helper.to_array(inits[node.input[1]])
            if d.dtype.kind != "f" or not np.all(np.isfinite(d)) or np.any(d == 0):
                continue
            if node.input[1] not in reciprocals:
                name = f"{node.input[1]}_reciprocal"
                model.graph.initializer.append(numpy_helper.from_array((1 / d).astype(d.dtype), name))
                reciprocals[node.input[1]] = name
            node.op_type = "Mul"
            node.input[1] = reciprocals[node.input[1]]
            done["Div -> Mul by the reciprocal"] += 1
        elif node.op_type == "ReduceMean" and ranks.get(node.input[0]) == 4:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            axes = attrs.get("axes")
            if axes is None and len(node.input) > 1 and node.input[1] in inits:
                axes = numpy_helper.to_array(inits[node.input[1]]).tolist()
            if attrs.get("keepdims", 1) != 1 or axes is None or sorted(a % 4 for a in axes) != [2, 3]:
                continue
            node.op_type = "GlobalAveragePool"
            del node.input[1:]
            del node.attribute[:]
            done["ReduceMean over H, W -> GlobalAveragePool"] += 1
    used = {i for n in model.graph.node for i in n.input}
    used |= {g.name for g in model.graph.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return dict(done)


def runtime_graph(model) -> dict:
    """What onnxruntime really runs on this CPU (its optimized graph, 1 thread): the quantize/dequantize ops left
    (each a conversion between int8 and float at run time), the int8 kernels, and the float compute ops: float
    islands inside an int8 graph. ``model``: an ONNX ModelProto or a path."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opt = Path(tmp) / "opt.onnx"
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(opt)
        so.intra_op_num_threads = 1
        src = model if isinstance(model, (str, Path)) else model.SerializeToString()
        ort.InferenceSession(str(src) if isinstance(src, Path) else src, so, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(str(opt)).graph.node)
    qdq = {k: v for k, v in ops.items() if k in ("QuantizeLinear", "DequantizeLinear")}
    integer = {k: v for k, v in ops.items() if k not in qdq and (k.startswith("Q") or k.endswith("Integer"))}
    floats = {k: v for k, v in ops.items() if k not in qdq and k not in integer}
    return {"qdq": dict(sorted(qdq.items())), "int8_kernels": dict(sorted(integer.items())),
            "float_ops": dict(sorted(floats.items()))}


def node_scopes(model, module) -> dict[str, set[str]]:
    """ONNX node name, and each node's output tensor names -> the torch module paths it comes from: the exporter's
    ``pkg.torch.onnx.name_scopes`` metadata, plus the owner of each parameter it reads. Both are needed: a conv
    fused with its batch norm carries the batch norm's scopes but still reads the conv's weight
    (``features.0.0.weight``). Outputs are keys too because onnxslim renames some nodes after their output."""
    import ast

    modules = {n for n, _ in module.named_modules() if n}
    inits = {i.name for i in model.graph.initializer}
    out: dict[str, set[str]] = {}
    for node in model.graph.node:
        paths: set[str] = set()
        meta = {p.key: p.value for p in node.metadata_props}
        try:
            paths |= {p for p in ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))[:-1] if p}  # last: the op
        except (ValueError, SyntaxError):
            pass
        paths |= {name.rsplit(".", 1)[0] for name in node.input if name in inits and name.rsplit(".", 1)[0] in modules}
        for key in (node.name, *node.output):
            out.setdefault(key, set()).update(paths)
    return out


def excluded_nodes(model, scopes: dict[str, set[str]], keep) -> list[str]:
    """Names of the nodes of ``model`` (the graph onnxruntime quantizes) that belong to the layers in ``keep``,
    found by node name or, where a node was renamed, by its outputs."""
    from ..compress.quantize import covered
    return [n.name for n in model.graph.node
            if covered(scopes.get(n.name, set()).union(*(scopes.get(o, set()) for o in n.output)), keep)]


def layer_precisions(onnx, model, module, scopes: dict[str, set[str]] | None = None) -> dict[str, str]:
    """Conv/Linear layer -> "int8" | "float" in a quantized graph. By its weight initializer first: onnxruntime
    stores a quantized weight as int8 ``<name>_quantized``; a layer left float keeps its float ``<module>.weight``
    (dynamic quantization transposes Gemm weights first: ``<module>.weight_Transposed``). Then, for weights the
    exporter renamed, by the node and its ``scopes`` (:func:`node_scopes`): an integer op, or a conv/matmul whose
    weight is a float constant (float) or the dequantized int8 one (int8)."""
    from ..compress.quantize import quantizable_layers

    layers = set(quantizable_layers(module))
    out: dict[str, str] = {}
    for init in model.graph.initializer:
        owner, _, leaf = init.name.removesuffix("_quantized").removesuffix("_Transposed").rpartition(".")
        if leaf == "weight" and owner in layers:
            out[owner] = "int8" if init.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) else "float"
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul", "ConvInteger", "MatMulInteger") or len(node.input) < 2:
            continue
        base = node.name.removesuffix("_quant").removesuffix("_MatMul")   # onnxruntime's renames
        paths = (scopes or {}).get(node.name) or (scopes or {}).get(base) or set()
        mine = [p for p in paths if p in layers]
        if len(mine) != 1 or mine[0] in out:
            continue
        w, dq = node.input[1], producer.get(node.input[1])
        if node.op_type.endswith("Integer"):
            out[mine[0]] = "int8"
        elif w in inits and inits[w].data_type == onnx.TensorProto.FLOAT:
            out[mine[0]] = "float"
        elif dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            out[mine[0]] = "int8"
    return out


def _slim(model, feeds: list):
    """onnxslim folds constants and fuses ops. It is kept only if it keeps parity: the slim and the checked
    graph are run in onnxruntime on the same inputs and must agree to 1e-5 (else the checked graph ships)."""
    try:
        import onnxslim
    except ImportError:
        return model, "not simplified: onnxslim is not installed"
    try:
        slim = onnxslim.slim(model)
    except Exception as e:  # noqa: BLE001 - simplification is optional; keep the checked model
        log.warning("onnxslim failed, keeping the unsimplified graph: %s", e)
        return model, f"not simplified: onnxslim failed ({type(e).__name__})"
    diff = _max_diff(model, slim, feeds)
    if diff is None or diff > 1e-5:
        log.warning("onnxslim changed the outputs (max abs %s); keeping the unsimplified graph", diff)
        return model, f"not simplified: onnxslim changed the outputs (max abs difference {diff})"
    return slim, f"simplified with onnxslim {onnxslim.__version__}: {len(model.graph.node)} -> {len(slim.graph.node)} nodes"


def _max_diff(a, b, feeds: list) -> float | None:
    """Largest absolute output difference of two ONNX graphs in onnxruntime (None if either fails to run)."""
    import numpy as np
    import onnxruntime as ort

    outs = []
    for m in (a, b):
        try:
            sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            names = [i.name for i in sess.get_inputs()]
            outs.append(sess.run(None, dict(zip(names, feeds))))
        except Exception as e:  # noqa: BLE001
            log.info("onnxruntime could not run a graph while checking onnxslim: %s", e)
            return None
    return max(float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) for x, y in zip(*outs))


DEDUPE_MIN_BYTES = 16384   # smaller constants (norms, biases, shapes) are left as the exporter named them


def dedupe_initializers(model) -> tuple[dict[str, list[str]], int]:
    """Make identical initializers (same dtype, shape and bytes; at least DEDUPE_MIN_BYTES) one, in place: every
    node, in subgraphs too, reads the first of them. Tied weights (GPT-2's token embedding and output layer) are
    one initializer when torch.onnx sees one tensor; this keeps them one whatever made the copy (an exporter that
    duplicates a shared parameter, a constant fold). Graph inputs and outputs are never renamed.
    Returns ({kept name: [merged names]}, bytes saved)."""
    import hashlib

    from onnx import numpy_helper

    graph = model.graph
    io = {v.name for v in graph.input} | {v.name for v in graph.output}
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    saved = 0
    for init in graph.initializer:
        if init.name in io:
            continue
        data = numpy_helper.to_array(init)
        if data.nbytes < DEDUPE_MIN_BYTES:
            continue
        key = (init.data_type, tuple(init.dims), hashlib.sha256(data.tobytes()).digest())
        if key in first:
            rename[init.name] = first[key]
            saved += data.nbytes
        else:
            first[key] = init.name
    if not rename:
        return {}, 0

    def rewire(g) -> None:
        for node in g.node:
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    rewire(sub)

    rewire(graph)
    kept = [i for i in graph.initializer if i.name not in rename]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    merged: dict[str, list[str]] = {}
    for dup, name in rename.items():
        merged.setdefault(name, []).append(dup)
    return merged, saved


def _save(onnx, model, path: Path) -> None:
    """Write ``model`` atomically, without torch.onnx's per-node debug metadata (module paths and class names of
    the user's code, stack traces): onnxslim drops it, but a graph it was not allowed to simplify (fp16 rarely
    stays within its 1e-5) kept it, and a MobileViT's fp16 file came out 2.24 MB against 1.40 MB in fp32."""
    for node in model.graph.node:
        del node.metadata_props[:]
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(model, str(tmp))
    os.replace(tmp, path)
