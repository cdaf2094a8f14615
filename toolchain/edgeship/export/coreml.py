"""Core ML: torch.export -> run_decompositions -> coremltools.convert to an ML Program .mlpackage.

Prediction needs macOS; on Linux the package is checked for what can be checked (it loads as a spec,
its input/output names, shapes and dtypes match the model) and parity is "not run: needs macOS".

Weight compression (coremltools.optimize.coreml, on the converted fp16 ML Program; compute stays fp16):
``w8`` linear_quantize_weights (int8, per-channel symmetric), ``w6``/``w4`` palettize_weights (k-means look-up
tables of 2^6 / 2^4 entries, per tensor). ``int8`` means ``w8`` here. All need iOS 16 / macOS 13. Activation
quantization (linear_quantize_activations, iOS 17+) is not applied: Core ML int8 here is weights only.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ..errors import EdgeshipError
from ..model import ModelSpec
from . import Exported, artifact_name, require

log = logging.getLogger(__name__)
MIN_IOS = "iOS16"   # ML Program with fp16 compute; iOS 16 also allows weight compression


class CoreMLExporter:
    format = "coreml"
    suffix = ".mlpackage"
    runtime = "coreml"
    precisions = frozenset({"fp32", "fp16", "w8", "w6", "w4"})
    # Core ML packages compute in fp16 by default (what the Neural Engine runs); an fp32 request gets that too.
    # int8 is weight-only int8 (w8): activation quantization needs iOS 17 and is left out.
    precision_map = {"fp32": "fp16", "int8": "w8"}
    extra = "coreml"
    module = "coremltools"

    def export(self, spec: ModelSpec, out_dir: Path, precision: str, calib=None) -> Exported:
        import torch
        ct = require("coremltools", self.extra, "Core ML export")
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / artifact_name(precision, self.suffix)
        compute = "fp16" if precision in WEIGHT_COMPRESSION else precision
        ep = torch.export.export(spec.module, spec.example_inputs(), strict=False)
        n_out = len(spec.check_runs())
        out_names = list(spec.output_names or (["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]))
        inputs = [ct.TensorType(name=i.name, shape=i.shape, dtype=_np_dtype(i.dtype)) for i in spec.inputs]
        convert = lambda program: ct.convert(  # noqa: E731
            program, convert_to="mlprogram", inputs=inputs, outputs=[ct.TensorType(name=n) for n in out_names],
            compute_precision=ct.precision.FLOAT16 if compute == "fp16" else ct.precision.FLOAT32,
            minimum_deployment_target=getattr(ct.target, MIN_IOS), skip_model_load=True)
        notes = [f"compute precision {compute}; minimum deployment target {MIN_IOS}"]
        try:
            # Without run_decompositions coremltools refuses ("Provided Dialect: TRAINING"); an empty table keeps
            # composite ops (attention, layer norm) whole, which Core ML has kernels for.
            mlmodel = convert(ep.run_decompositions({}))
        except NotImplementedError as e:
            if "Unsupported fx node" not in str(e):
                raise
            # An op coremltools lacks (e.g. lstm): decompose to core ATen and try once more.
            log.info("coremltools: %s; retrying with core ATen decompositions", e)
            mlmodel = convert(ep.run_decompositions())
            notes.append(f"converted after decomposing to core ATen ops ({str(e).split(',')[0]})")
        details = {"compute_precision": compute}
        if precision in WEIGHT_COMPRESSION:
            mlmodel, cnotes, cdetails = compress_weights(mlmodel, precision)
            notes += cnotes
            details |= cdetails
        mlmodel.short_description = f"{spec.name} exported by edgeship"
        tmp = path.with_name(f".tmp-{path.name}")  # coremltools insists on the .mlpackage suffix
        if tmp.exists():
            shutil.rmtree(tmp)
        mlmodel.save(str(tmp))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return Exported(path, precision if precision in WEIGHT_COMPRESSION else compute, notes, details,
                        min_os={"ios": MIN_IOS.removeprefix("iOS"), "macos": "13"})


WEIGHT_COMPRESSION = ("w8", "w6", "w4")
WEIGHT_THRESHOLD = 64   # compress weights with more elements than this (coremltools' default 2048 skips tiny layers)
COMPRESSED_OPS = ("constexpr_affine_dequantize", "constexpr_lut_to_dense", "constexpr_blockwise_shift_scale")


def compress_weights(mlmodel, precision: str):
    """Compress an ML Program's weights: w8 linear int8 per channel, w6/w4 k-means palettization.
    Returns (model, notes, details); details count the compressed weights (constexpr ops in the program)."""
    from coremltools.optimize import coreml as cto

    if precision == "w8":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                         weight_threshold=WEIGHT_THRESHOLD)
        model = cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
        note = "w8: int8 weights (linear symmetric, per output channel), dequantized at load; fp16 compute"
    else:
        nbits = int(precision[1:])
        op = cto.OpPalettizerConfig(mode="kmeans", nbits=nbits, granularity="per_tensor",
                                    weight_threshold=WEIGHT_THRESHOLD)
        model = cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
        note = f"{precision}: {nbits}-bit palettized weights (k-means look-up table of {2 ** nbits} per tensor); fp16 compute"
    counts = program_ops(model)
    compressed = sum(counts.get(k, 0) for k in COMPRESSED_OPS)
    notes = [note, f"{compressed} weight tensors compressed (those with more than {WEIGHT_THRESHOLD} elements; biases "
                   "and norms stay fp16)",
             "activations stay fp16: activation quantization (iOS 17+) is not applied"]
    return model, notes, {"compressed_weights": compressed, "compression_ops": {k: counts[k] for k in COMPRESSED_OPS if k in counts}}


def program_ops(mlmodel) -> dict[str, int]:
    """Op types in the ML Program's main function, counted (from the spec; works without macOS)."""
    from collections import Counter
    counts: Counter = Counter()
    for fn in mlmodel.get_spec().mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                counts[op.type] += 1
    return dict(counts)


def _np_dtype(dtype: str):
    import numpy as np
    if dtype == "int64":   # Core ML has no int64 inputs; int32 token ids are what apps pass
        return np.int32
    return getattr(np, dtype)
