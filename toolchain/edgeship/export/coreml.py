"""Core ML: torch.export -> run_decompositions -> coremltools.convert to an ML Program .mlpackage.

Prediction needs macOS; on Linux the package is checked for what can be checked (it loads as a spec,
its input/output names, shapes and dtypes match the model) and parity is "not run: needs macOS".

Precisions name what the package holds: ``fp32`` computes in fp32 (CPU and GPU; the Neural Engine runs fp16 only),
``fp16`` in fp16 (Apple's default, what the Neural Engine runs). Weight compression (coremltools.optimize.coreml, on
the converted fp16 ML Program; compute stays fp16):
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
from ..verify import SCHEMES
from . import Exported, artifact_name, dynamic_dims, export_program, require

log = logging.getLogger(__name__)
MIN_IOS = "iOS16"   # ML Program; iOS 16 also allows weight compression


class CoreMLExporter:
    format = "coreml"
    suffix = ".mlpackage"
    runtime = "coreml"
    precisions = frozenset({"fp32", "fp16", "w8", "w6", "w4"})
    # int8 is weight-only int8 (w8, fp16 compute): activation quantization needs iOS 17 and is left out.
    precision_map = {"int8": "w8"}
    extra = "coreml"
    module = "coremltools"

    def export(self, spec: ModelSpec, out_dir: Path, precision: str, calib=None, quant=None) -> Exported:
        import torch
        ct = require("coremltools", self.extra, "Core ML export")
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / artifact_name(precision, self.suffix)
        compute = "fp16" if precision in WEIGHT_COMPRESSION else precision
        ep = export_program(spec.module, spec.example_inputs(), spec)
        n_out = len(spec.check_runs())
        out_names = list(spec.output_names or (["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]))
        inputs = [ct.TensorType(name=i.name, shape=_shape(ct, i), dtype=_np_dtype(i.dtype)) for i in spec.inputs]
        convert = lambda program: ct.convert(  # noqa: E731
            program, convert_to="mlprogram", inputs=inputs, outputs=[ct.TensorType(name=n) for n in out_names],
            compute_precision=ct.precision.FLOAT16 if compute == "fp16" else ct.precision.FLOAT32,
            minimum_deployment_target=getattr(ct.target, MIN_IOS), skip_model_load=True)
        notes = [f"compute precision {compute}; minimum deployment target {MIN_IOS}"]
        try:
            # Without run_decompositions coremltools refuses ("Provided Dialect: TRAINING"); an empty table keeps
            # composite ops (attention, layer norm) whole, which Core ML has kernels for.
            program = ep.run_decompositions({})
            aliases = drop_aliases(program)
            mlmodel = convert(program)
        except NotImplementedError as e:
            if "Unsupported fx node" not in str(e):
                raise
            # An op coremltools lacks (e.g. lstm): decompose to core ATen and try once more.
            log.info("coremltools: %s; retrying with core ATen decompositions", e)
            program = ep.run_decompositions()
            aliases = drop_aliases(program)
            try:
                mlmodel = convert(program)
            except NotImplementedError as again:
                raise unsupported_op_error(ct, again) from again
            notes.append(f"converted after decomposing to core ATen ops ({str(e).split(',')[0]})")
        details = {"compute_precision": compute}
        if spec.dynamic:
            details["dynamic"] = dynamic_dims(spec)
            notes.append("dynamic dimensions as Core ML RangeDim (flexible shapes): " + ", ".join(
                i.name + ":" + i.text for i in spec.inputs if i.dynamic) + "; the Neural Engine may run only the "
                "default (example) size and fall back to the GPU or CPU for others")
        if aliases:
            details["aliases_removed"] = aliases
            notes.append(f"{aliases} aten.alias op{'s' * (aliases > 1)} (a view that changes nothing, e.g. GPT-2's "
                         "logits_to_keep slice) removed before conversion: coremltools has no converter for it")
        if precision in WEIGHT_COMPRESSION:
            from ..compress.quantize import fx_layer_scopes, layer_details, layers_note
            keep = quant.keep_float if quant is not None else frozenset()
            scopes = fx_layer_scopes(program.graph)
            scopes |= {name: scopes.get(fx, set()) for name, fx in zip(out_names, _fx_outputs(program.graph))}
            mlmodel, cnotes, cdetails = compress_weights(mlmodel, precision, keep_ops(mlmodel, scopes, keep))
            notes += cnotes
            details |= cdetails
            layers = layer_precisions(mlmodel, scopes, spec.module, precision)
            details |= layer_details(layers, precision)
            if keep:
                notes += layers_note(keep, layers)
        elif spec.clustered_bits:   # the cluster stage's values become the package's look-up tables, as they are
            from ..compress.cluster import palettize_unique
            mlmodel, cnotes, cdetails = palettize_unique(mlmodel)   # lossless: the weights hold these values
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


def _shape(ct, i):
    """An input's Core ML shape: its dimensions, a dynamic one as RangeDim(MIN, MAX, default=the example size)."""
    if not i.dynamic:
        return i.shape
    return ct.Shape([ct.RangeDim(*i.dynamic[a], default=d) if a in i.dynamic else d for a, d in enumerate(i.shape)])


def drop_aliases(program) -> int:
    """Remove the ``aten.alias`` nodes of an exported program in place (each user reads the aliased tensor
    instead); returns how many. torch.export keeps ``x[:, 0:]`` as an alias (GPT-2's ``slice_logits_to_keep`` with
    ``logits_to_keep=0``), and coremltools 9.0 rejects it ("Unsupported fx node alias"), also after the core ATen
    decompositions. An alias that is itself an output of the graph is kept (its name is the output's)."""
    import torch
    aliases = (torch.ops.aten.alias.default, torch.ops.aten.alias_copy.default)
    gm, dropped = program.graph_module, 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in aliases and all(u.op != "output" for u in node.users):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            dropped += 1
    if dropped:
        gm.recompile()
    return dropped


def unsupported_op_error(ct, exc: NotImplementedError) -> EdgeshipError:
    """The error for an op coremltools cannot convert even after the core ATen decompositions, naming the op."""
    import re
    text = str(exc)
    found = re.search(r"Unsupported fx node (\S+?),?\s", text + " ")
    op = found.group(1) if found else None
    if op is None:
        first = text.splitlines()[0] if text else type(exc).__name__
        return EdgeshipError(f"coremltools {ct.__version__} cannot convert this model: {first}",
                             hint="--debug shows the converter's log; the other formats may still work")
    return EdgeshipError(f"coremltools {ct.__version__} cannot convert the op aten.{op} (NotImplementedError: "
                         f"Unsupported fx node {op}), also after decomposing to core ATen ops",
                         hint="the other formats may still work; rewriting that part of the model without the op "
                              "(or a coremltools release that converts it) fixes Core ML")


WEIGHT_COMPRESSION = tuple(n for n, s in SCHEMES.items() if s.kind == "weight-only")
WEIGHT_THRESHOLD = 64   # compress weights with more elements than this (coremltools' default 2048 skips tiny layers)
COMPRESSED_OPS = ("constexpr_affine_dequantize", "constexpr_lut_to_dense", "constexpr_blockwise_shift_scale")


def compress_weights(mlmodel, precision: str, skip_ops=()):
    """Compress an ML Program's weights: w8 linear int8 per channel, w6/w4 k-means palettization; the ops named
    in ``skip_ops`` keep float weights (``op_name_configs`` set to None).
    Returns (model, notes, details); details count the compressed weights (constexpr ops in the program)."""
    from coremltools.optimize import coreml as cto

    if precision == "w8":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                         weight_threshold=WEIGHT_THRESHOLD)
        model = cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op, op_name_configs=dict.fromkeys(skip_ops)))
        note = "w8: int8 weights (linear symmetric, per output channel), dequantized at load; fp16 compute"
    else:
        nbits = SCHEMES[precision].bits
        op = cto.OpPalettizerConfig(mode="kmeans", nbits=nbits, granularity="per_tensor",
                                    weight_threshold=WEIGHT_THRESHOLD)
        model = cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op, op_name_configs=dict.fromkeys(skip_ops)))
        note = f"{precision}: {nbits}-bit palettized weights (k-means look-up table of {2 ** nbits} per tensor); fp16 compute"
    counts = program_ops(model)
    compressed = sum(counts.get(k, 0) for k in COMPRESSED_OPS)
    notes = [note, f"{compressed} weight tensors compressed (those with more than {WEIGHT_THRESHOLD} elements; biases "
                   "and norms stay fp16)",
             "activations stay fp16: activation quantization (iOS 17+) is not applied"]
    details = {"compressed_weights": compressed, "compression_ops": {k: counts[k] for k in COMPRESSED_OPS if k in counts}}
    fidelity = weight_fidelity(mlmodel, model)
    if fidelity["tensors"]:
        details["decompressed_weights"] = fidelity
        notes.append(f"weights checked without macOS: each compressed tensor decompressed in numpy (coremltools' own "
                     f"decompression) against the uncompressed fp16 weights: SQNR {fidelity['min_db']:.1f} dB at worst "
                     f"({fidelity['worst']}), median {fidelity['median_db']:.1f} dB over {fidelity['tensors']} tensors")
    return model, notes, details


def weight_fidelity(before, after) -> dict:
    """SQNR (dB) of each compressed conv/linear weight of ``after``, decompressed in numpy by the constexpr op's own
    ``materialized_val_inference``, against the same op's weight in ``before`` (the uncompressed program). What
    Linux can check of a compressed Core ML package: prediction needs macOS, but the weights it will load are
    these. Returns ``{"tensors", "min_db", "worst", "median_db", "per_tensor_db"}``."""
    import numpy as np

    from ..verify import sqnr_db

    def weights(model, compressed: bool) -> dict:
        out = {}
        for op in model._mil_program.functions["main"].operations:
            w = op.inputs.get("weight") if op.op_type in LAYER_OPS else None
            if w is None or w.op is None:
                continue
            if compressed and w.op.op_type in COMPRESSED_OPS:
                out[op.name] = np.asarray(w.op.materialized_val_inference(), np.float64)
            elif not compressed and w.val is not None:
                out[op.name] = np.asarray(w.val, np.float64)
        return out

    ref, got = weights(before, False), weights(after, True)
    per = {k: round(sqnr_db(ref[k], got[k]), 2) for k in got if k in ref and ref[k].shape == got[k].shape}
    if not per:
        return {"tensors": 0}
    worst = min(per, key=per.get)
    return {"tensors": len(per), "min_db": per[worst], "worst": worst,
            "median_db": float(np.median(list(per.values()))), "per_tensor_db": per}


LAYER_OPS = ("conv", "conv_transpose", "linear", "matmul")


def _fx_name(var_name: str) -> str:
    """An ML Program variable's torch.export node name (coremltools names variables after the FX nodes; the fp16
    pass appends ``_cast_fp16``)."""
    return var_name.removesuffix("_cast_fp16")


def _fx_outputs(graph) -> list[str]:
    """The FX node names of the graph's outputs, in order: the ML Program renames those variables to the
    model's output names."""
    import torch
    out = next(n for n in graph.nodes if n.op == "output")
    names: list[str] = []
    torch.fx.node.map_arg(out.args[0], lambda n: names.append(n.name))
    return names


def keep_ops(mlmodel, scopes: dict[str, set[str]], keep) -> list[str]:
    """Names of the ML Program's conv/linear ops that come from the layers in ``keep``, for ``op_name_configs``:
    each op's output variable is named after its FX node, whose module paths ``scopes`` holds
    (``compress.quantize.fx_layer_scopes``: a conv fused with its batch norm carries the batch norm's name)."""
    from ..compress.quantize import covered
    if not keep:
        return []
    return [op.name for op in mlmodel._mil_program.functions["main"].operations
            if op.op_type in LAYER_OPS and covered(scopes.get(_fx_name(op.outputs[0].name), ()), keep)]


def layer_precisions(mlmodel, scopes: dict[str, set[str]], module, compressed: str) -> dict[str, str]:
    """Conv/Linear layer -> ``compressed`` (its weight comes from a constexpr op) | "float", read from the spec."""
    from ..compress.quantize import quantizable_layers
    layers = set(quantizable_layers(module))
    out: dict[str, str] = {}
    for fn in mlmodel.get_spec().mlProgram.functions.values():
        for block in fn.block_specializations.values():
            producer = {o.name: op.type for op in block.operations for o in op.outputs}
            for op in block.operations:
                if op.type not in LAYER_OPS or "weight" not in op.inputs or not op.inputs["weight"].arguments:
                    continue
                mine = [p for p in scopes.get(_fx_name(op.outputs[0].name), ()) if p in layers]
                if len(mine) == 1:
                    kind = producer.get(op.inputs["weight"].arguments[0].name, "")
                    out[mine[0]] = compressed if kind.startswith("constexpr_") else "float"
    return out


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
