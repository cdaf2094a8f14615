"""TFLite / LiteRT: litert-torch converts; ai-edge-quantizer casts weights for fp16; runs in ai-edge-litert.

int8 (full-integer static): litert-torch's own PT2E quantizer (per-channel symmetric int8 weights, per-tensor int8
activations, histogram observer), calibrated, converted with ``QuantConfig(pt2e_quantizer=...)``. The .tflite is
then measured in the LiteRT interpreter on the calibration inputs; below the int8 SQNR target, ai-edge-quantizer's
``static_wi8_ai8`` on the fp32 .tflite is tried too and the better one is kept (measured on the tiny CNN and tiny
transformer: PT2E 49.7 / 40.6 dB, ai-edge-quantizer 49.7 / 11.7 dB).

dynamic-int8, and int8 of a model with integer inputs (token ids): ai-edge-quantizer ``dynamic_wi8_afp32`` on the
fp32 .tflite (int8 weights, float activations quantized on the fly). PT2E dynamic int8 is not used: with an
embedding it converts but fails at run time.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..model import ModelSpec
from ..verify import scheme
from . import Exported, artifact_name, require

log = logging.getLogger(__name__)

FP16_RECIPE = [{
    "regex": ".*", "operation": "*", "algorithm_key": "float_casting",
    "op_config": {"weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"}, "compute_precision": "FLOAT",
                  "explicit_dequantize": True},
}]


class TFLiteExporter:
    format = "tflite"
    suffix = ".tflite"
    runtime = "litert"
    precisions = frozenset({"fp32", "fp16", "int8", "dynamic-int8"})
    extra = "tflite"
    module = "litert_torch"
    isolate = True   # its converter can end the process (exit(1) on a full disk): the pipeline runs it in a child
    # ... but only while no conversion ran in this process: the converter's thread pools (LLVM's, in MLIR verify)
    # do not survive fork, and a child forked after them waits forever
    converted_in_this_process = False

    def export(self, spec: ModelSpec, out_dir: Path, precision: str, calib=None, quant=None) -> Exported:
        litert_torch = require("litert_torch", self.extra, "TFLite export")
        type(self).converted_in_this_process = True   # set in a forked child, it stays there
        keep = quant.keep_float if quant is not None else frozenset()
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / artifact_name(precision, self.suffix)
        tmp = path.with_name(path.name + ".tmp")
        notes, details = [], {}
        fixed = None
        if spec.dynamic:   # litert-torch lowers each op through JAX, which needs concrete shapes
            fixed = {i.name: list(i.shape) for i in spec.inputs if i.dynamic}
            spec = spec.fixed()
        # int8 of a model with integer inputs (token ids) is dynamic, as for ONNX and ExecuTorch: measured on the
        # MiniLM-sized encoder (1 thread CPU time) static 33.5 ms at 25.6 dB, dynamic 31.1 ms at 28.7 dB, fp32 36.2 ms
        from ..compress.quantize import dynamic_reason
        why = dynamic_reason(spec, precision)
        dynamic = why is not None
        if precision == "int8" and not dynamic:
            notes, details = _static_int8(litert_torch, spec, calib, tmp, keep)
        else:
            model = litert_torch.convert(spec.module, spec.example_inputs())
            model.export(str(tmp))
        if any(i.dtype == "int64" for i in spec.inputs):
            notes.append("int64 inputs are int32 in the .tflite (cast token ids before calling)")
        if precision == "fp16":
            _apply_recipe(tmp, FP16_RECIPE)
            notes.append("fp16 weights (ai-edge-quantizer float casting), float32 compute and I/O")
        if dynamic:
            from ai_edge_quantizer import recipe
            _apply_recipe(tmp, keep_float_recipe(recipe.dynamic_wi8_afp32(), tmp, spec.module, keep))
            details = _inspect(tmp)
            notes.append(f"dynamic int8 (ai-edge-quantizer dynamic_wi8_afp32; {why}): per-channel int8 weights, float32 "
                         "activations quantized on the fly, float32 I/O; run it with ai-edge-litert (tflite-runtime "
                         "2.14 gives different results on such files)")
        if scheme(precision).kind in ("static", "dynamic"):
            from ..compress.quantize import layer_details, layers_note
            layers = layer_precisions(tmp, spec.module)
            details |= layer_details(layers)
            if keep:
                notes += layers_note(keep, layers)
        if fixed:
            details["fixed_shapes"] = fixed
            notes.append(f"{FIXED_SHAPES}; exported at the example size " + ", ".join(
                f"{k}:{'x'.join(map(str, v))}" for k, v in fixed.items()))
        os.replace(tmp, path)
        return Exported(path, precision, notes, details)


def _litert_torch_version() -> str:
    from importlib import metadata
    try:
        return metadata.version("litert-torch")
    except metadata.PackageNotFoundError:
        return "?"


FIXED_SHAPES = (f"tflite: fixed shapes only in litert-torch {_litert_torch_version()} (its JAX lowering needs concrete "
                "shapes: google-ai-edge/litert-torch#870)")


def _apply_recipe(path: Path, recipe, calibration: dict | None = None) -> None:
    """Quantize the .tflite at ``path`` in place with an ai-edge-quantizer recipe (calibrating when it needs it)."""
    from ai_edge_quantizer import quantizer as aeq
    q = aeq.Quantizer(str(path))
    q.load_quantization_recipe(recipe)
    result = q.calibrate(calibration) if q.need_calibration else None
    out = path.with_name(path.name + ".q")
    q.quantize(result).export_model(str(out), overwrite=True)
    os.replace(out, path)


def _static_int8(litert_torch, spec: ModelSpec, calib, tmp: Path, keep=frozenset()) -> tuple[list[str], dict]:
    """Full-integer static int8 into ``tmp``: PT2E first; ai-edge-quantizer static when PT2E misses the target.
    The layers in ``keep`` stay float in both (PT2E: compress.quantize.select_layers; ai-edge-quantizer:
    no_quantize entries, see :func:`keep_float_recipe`)."""
    from ..compress.quantize import (TARGET_DB, Candidate, calibration_inputs, choice_note, choose, low_sqnr_note,
                                     quantize_pt2e, reference_outputs, runtime_sqnr, split_calibration)

    samples, notes = calibration_inputs(spec, calib)
    calibrate_on, measure_on, held_note = split_calibration(samples)
    reference = reference_outputs(spec.module, measure_on)
    work = Path(tempfile.mkdtemp(dir=tmp.parent, prefix=".int8-"))
    made_notes: dict[str, list[str]] = {}
    recipes: dict[str, tuple[str, dict, dict]] = {}   # candidate -> (recipe, PT2E graphs tried: SQNR in torch, s)

    def pt2e() -> Path:
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig

        config = lambda: get_symmetric_quantization_config(is_per_channel=True)  # noqa: E731
        res = quantize_pt2e(spec.module, spec.example_inputs(), config, lambda c: PT2EQuantizer().set_global(c),
                            samples, fold_quantize=False, keep_float=keep, calibrated_on_data=calib is not None)
        out = work / "pt2e.tflite"
        quant = QuantConfig(pt2e_quantizer=PT2EQuantizer().set_global(config()))
        litert_torch.convert(res.module, spec.example_inputs(), quant_config=quant).export(str(out))
        made_notes["pt2e"] = ["litert-torch PT2E " + res.notes[0]] + res.notes[1:]
        recipes["pt2e"] = (f"litert-torch PT2E, {res.recipe}", res.tried, res.seconds)
        return out

    def aeq_static() -> Path:
        from ai_edge_litert.interpreter import Interpreter
        from ai_edge_quantizer import recipe

        out = work / "aeq.tflite"
        litert_torch.convert(spec.module, spec.example_inputs()).export(str(out))
        it = Interpreter(model_path=str(out))
        key, sig = next(iter(it.get_signature_list().items()))
        wanted = it.get_signature_runner(key).get_input_details()
        data = {key: [{name: t.numpy().astype(wanted[name]["dtype"]) for name, t in zip(sig["inputs"], s)}
                      for s in calibrate_on]}
        _apply_recipe(out, keep_float_recipe(recipe.static_wi8_ai8(), out, spec.module, keep), data)
        made_notes["ai-edge-quantizer"] = ["static int8 with ai-edge-quantizer static_wi8_ai8 (int8 weights and "
                                           "activations, min/max calibration)"]
        recipes["ai-edge-quantizer"] = ("ai-edge-quantizer static_wi8_ai8", {}, {})
        return out

    try:
        choice = choose([Candidate("pt2e", pt2e), Candidate("ai-edge-quantizer", aeq_static, round=1)],
                        lambda p: runtime_sqnr(p, measure_on, reference))
        os.replace(choice.made, tmp)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    kept = choice.label
    notes += made_notes[kept] + ([] if held_note in made_notes[kept] else [held_note])   # PT2E notes it already
    if len(choice.tried) > 1:
        notes.append(choice_note(choice))
    if choice.sqnr_db < TARGET_DB:
        notes.append(low_sqnr_note(choice, calibrated_on_data=calib is not None))
    details = {"quantizer": kept, "recipe": recipes[kept][0], "candidates_sqnr_db": choice.tried,
               "pt2e_candidates_sqnr_db": recipes.get("pt2e", ("", {}, {}))[1],
               "pt2e_candidates_s": recipes.get("pt2e", ("", {}, {}))[2], "candidates_s": choice.seconds,
               "calibration_samples": len(calibrate_on), "measured_on_samples": len(measure_on)}
    details |= _inspect(tmp)
    quantized_io = [n for n, dt in details["io_dtypes"].items() if dt in ("int8", "uint8")]
    if quantized_io:
        notes.append(f"{', '.join(quantized_io)} int8 in the file: quantize inputs and dequantize outputs with each "
                     "tensor's scale and zero point (the manifest lists them; edgeship_runtime does it)")
    return notes, details


def layer_location(module, name: str) -> str:
    """The location litert-torch writes into tensor names for the ops of submodule ``name``:
    ``RootClass/pkg.Class_attr/...`` (class full names, each with its attribute name), as in its debuginfo. Only
    modules that are called appear: a ModuleList or ModuleDict is not (its items are)."""
    import torch

    def full(m) -> str:
        cls = type(m)
        return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    parts, m = [full(module)], module
    for attr in name.split("."):
        m = getattr(m, attr)
        if not isinstance(m, (torch.nn.ModuleList, torch.nn.ModuleDict)):
            parts.append(f"{full(m)}_{attr}")
    return "/".join(parts)


def keep_float_recipe(recipe: list, path: Path, module, keep) -> list:
    """An ai-edge-quantizer recipe for the float .tflite at ``path`` plus one ``no_quantize`` entry per conv /
    fully-connected op of the layers in ``keep``. Entries match an op's scope (its output tensor names joined by
    ';'), and the last matching entry wins; the scope is taken from the file, since the op that makes a model
    output is named after the output, not after its layer."""
    import re

    from ..compress.quantize import covered
    entries = []
    for layer, op, _, tensors in _layer_ops(path, module):
        if covered([layer], keep):
            scope = ";".join(tensors[int(i)]["name"] for i in op["outputs"] if int(i) >= 0) + ";"
            entries.append({"regex": "^" + re.escape(scope) + "$", "operation": "*", "algorithm_key": "no_quantize"})
    return list(recipe) + entries


LAYER_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


def _layer_ops(path: Path, module):
    """``(layer, op, weight tensor, tensors)`` for each conv / fully-connected op of a .tflite whose weight tensor
    is named after one Conv/Linear layer of ``module``. Tensor names are ';'-separated locations (several when
    the converter folded ops together, e.g. a batch norm into its conv); see :func:`layer_location`."""
    from ai_edge_litert.interpreter import Interpreter

    from ..compress.quantize import quantizable_layers

    where = {layer_location(module, n): n for n in quantizable_layers(module)}
    it = Interpreter(model_path=str(path))
    tensors = {d["index"]: d for d in it.get_tensor_details()}
    try:
        ops = it._get_ops_details()   # the interpreter's (experimental) op list: op names and tensor indices
    except AttributeError:
        log.info("this ai-edge-litert has no _get_ops_details; per-layer precisions cannot be read")
        return
    for op in ops:
        if op["op_name"] not in LAYER_OPS or len(op["inputs"]) < 2 or int(op["inputs"][1]) not in tensors:
            continue
        w = tensors[int(op["inputs"][1])]
        found = {where[p] for p in w["name"].split(";") if p in where}
        if not found:   # a deduplicated constant ("arith.constant3"): the op's output names its layer
            found = {where[p] for i in op["outputs"] if int(i) in tensors for p in tensors[int(i)]["name"].split(";")
                     if p in where}
        if len(found) == 1:
            yield found.pop(), op, w, tensors


def layer_precisions(path: Path, module) -> dict[str, str]:
    """Conv/Linear layer -> "int8" | "float" in a .tflite, by the dtype of its op's weight tensor."""
    import numpy as np
    return {layer: "int8" if np.dtype(w["dtype"]).name in ("int8", "uint8", "int4") else "float"
            for layer, _, w, _ in _layer_ops(path, module)}


def _inspect(path: Path) -> dict:
    """I/O dtypes, how many tensors of each dtype the .tflite holds (int8 ones show what really is quantized), and
    its ops (:func:`runtime_graph`)."""
    from collections import Counter

    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    io = {d["name"]: np.dtype(d["dtype"]).name for d in it.get_input_details() + it.get_output_details()}
    dtypes = Counter(np.dtype(d["dtype"]).name for d in it.get_tensor_details())
    return {"io_dtypes": io, "tensor_dtypes": dict(sorted(dtypes.items())), "runtime_graph": runtime_graph(it)}


def runtime_graph(interpreter) -> dict:
    """The ops of a .tflite: QUANTIZE/DEQUANTIZE (conversions between int8 and float at run time) and the compute
    ops that take float tensors (float islands inside an int8 graph). ``interpreter``: a LiteRT Interpreter or a
    path."""
    from collections import Counter

    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    it = interpreter if not isinstance(interpreter, (str, Path)) else Interpreter(model_path=str(interpreter))
    tensors = {d["index"]: d for d in it.get_tensor_details()}
    ops = it._get_ops_details()   # noqa: SLF001 - LiteRT's only op listing (also used by its own visualizer)
    count = Counter(o["op_name"] for o in ops)
    floats = Counter(o["op_name"] for o in ops if o["op_name"] not in ("QUANTIZE", "DEQUANTIZE") and any(
        int(i) >= 0 and int(i) in tensors and np.dtype(tensors[int(i)]["dtype"]) == np.float32 for i in o["inputs"]))
    return {"qdq": {k: count[k] for k in ("QUANTIZE", "DEQUANTIZE") if count[k]},
            "ops": dict(sorted(count.items())), "float_ops": dict(sorted(floats.items()))}
