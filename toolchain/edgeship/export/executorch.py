"""ExecuTorch: torch.export -> to_edge_transform_and_lower(XNNPACK) -> .pte; runs in ExecuTorch's runtime.

int8: PT2E static quantization with XNNPACK's own quantizer (per-channel symmetric int8 weights, per-tensor int8
activations), calibrated, then exported again and lowered like fp32; the Q/DQ pairs become XNNPACK's int8 kernels.

dynamic-int8, and int8 of a model that takes integer inputs (token ids, transformer-style, as the ONNX exporter
does): the same quantizer in dynamic mode: int8 weights, activations quantized per inference (XNNPACK's QD8
kernels). Measured on the MiniLM-sized encoder, 1 thread CPU time: fp32 57.2 ms, static int8 54.0 ms (22.5 dB),
dynamic 49.8 ms (28.4 dB): faster and more faithful, since nothing is calibrated and LayerNorm/softmax stay float
without quantize/dequantize pairs around them.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

from ..model import ModelSpec
from ..verify import scheme
from . import Exported, artifact_name, require

log = logging.getLogger(__name__)


class ExecuTorchExporter:
    format = "executorch"
    suffix = ".pte"
    runtime = "executorch"
    precisions = frozenset({"fp32", "fp16", "int8", "dynamic-int8"})
    extra = "executorch"
    module = "executorch.exir"

    def export(self, spec: ModelSpec, out_dir: Path, precision: str, calib=None, quant=None) -> Exported:
        import torch
        exir = require("executorch.exir", self.extra, "ExecuTorch export")

        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / artifact_name(precision, self.suffix)
        module, args, notes = spec.module, spec.example_inputs(), []
        if precision == "fp16":
            import copy
            module = copy.deepcopy(module).half()
            args = tuple(a.half() if a.is_floating_point() else a for a in args)
            notes.append("fp16 model: float inputs and outputs are float16 in the .pte")
        pt2e = None
        if scheme(precision).kind in ("static", "dynamic"):
            from ..compress.quantize import dynamic_reason
            why = dynamic_reason(spec, precision)
            pt2e = _quantize(spec, calib, quant, dynamic_why=why)
            module = pt2e.module
            notes += pt2e.notes
        ep = torch.export.export(module, args, strict=False)
        edge = exir.to_edge_transform_and_lower(ep, partitioner=[partitioner()])
        details = delegation(edge.exported_program().graph_module)
        if pt2e is not None:
            from ..compress.quantize import layer_details, layers_note
            layers = lowered_layers(edge.exported_program().graph_module)
            details |= layer_details(layers)
            if quant is not None and quant.keep_float:
                notes += layers_note(quant.keep_float, layers)
            details["observer"] = "dynamic" if why is not None else pt2e.observer
            details["recipe"] = pt2e.recipe
            details["candidates_sqnr_db"] = pt2e.tried
            details["candidates_s"] = pt2e.seconds
            if any(k in details["portable_ops"] for k in ("quantize_per_tensor", "dequantize_per_tensor",
                                                         "quantize_per_channel", "dequantize_per_channel")):
                notes.append("some quantize/dequantize ops stayed outside XNNPACK (portable kernels)")
        if details["portable_ops"]:
            notes.append("left on portable kernels: " + ", ".join(f"{k}×{v}" for k, v in details["portable_ops"].items()))
        program = edge.to_executorch()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(program.buffer)
        os.replace(tmp, path)
        return Exported(path, precision, notes, details)


def _quantize(spec: ModelSpec, calib, quant=None, dynamic_why: str | None = None):
    """PT2E int8 with XNNPACK's quantizer: static, calibrated on ``calib`` (see compress.quantize), or dynamic when
    ``dynamic_why`` says why (compress.quantize.dynamic_reason; activations quantized per inference, ``calib`` only
    measures). The layers in ``quant.keep_float`` stay float
    (they run as float ops, inside XNNPACK's delegates where it has them)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)

    from ..compress.quantize import OBSERVERS, calibration_inputs, quantize_pt2e

    dynamic = dynamic_why is not None
    samples, notes = calibration_inputs(spec, calib)
    result = quantize_pt2e(spec.module, spec.example_inputs(),
                           lambda: get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic),
                           lambda config: XNNPACKQuantizer().set_global(config), samples,
                           observers=("minmax",) if dynamic else OBSERVERS,   # no activation observer when dynamic
                           keep_float=quant.keep_float if quant is not None else (), calibrated_on_data=calib is not None,
                           pads=True)
    if dynamic:
        result.notes[0] = (f"dynamic int8 (XNNPACK quantizer, dynamic; {dynamic_why}): per-channel symmetric int8 weights, "
                           "activations quantized per inference (XNNPACK QD8 kernels), float32 I/O")
        notes = [n.replace("calibrated on", "measured on") for n in notes if "real data" not in n]
    result.notes[:0] = notes
    return result


def partitioner():
    """XNNPACK's partitioner with two fixes, both measured on real networks (bench/fidelity.md):

    * int8 constant pads: XNNPACK pads int8 tensors (a copy with the zero point), but ExecuTorch's config lists
      constant_pad_nd as fp32 only, so each pad of an int8 graph ran in float between conversions
      (compress.quantize.int8_pads makes them int8; PADS has the figures).
    * PReLU only on 4-D tensors: XNNPACK's channels-last pass requires PReLU's input in NHWC, so a PReLU after a
      Linear (MTCNN's R-Net and O-Net) failed the whole lowering, fp32 included ("Attempting to convert non-NHWC
      compatible node to NHWC"). Such a PReLU now stays outside the delegate (two portable ops, exact)."""
    import torch
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.config.generic_node_configs import ConstantPadConfig
    from executorch.backends.xnnpack.partition.config.node_configs import PreluConfig
    from executorch.backends.xnnpack.partition.config.xnnpack_config import ConfigPrecisionType
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    class Int8ConstantPadConfig(ConstantPadConfig):
        def supported_precision_types(self):
            return [ConfigPrecisionType.FP32, ConfigPrecisionType.STATIC_QUANT]

    class NHWCPreluConfig(PreluConfig):
        def check_constraints(self, node, ep) -> bool:
            val = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
            return getattr(val, "ndim", 0) == 4 and super().check_constraints(node, ep)

    swap = {ConstantPadConfig: Int8ConstantPadConfig, PreluConfig: NHWCPreluConfig}
    return XnnpackPartitioner(configs=[swap.get(c, c) for c in ALL_PARTITIONER_CONFIGS])


def lowered_layers(gm) -> dict[str, str]:
    """Conv/linear layer -> "int8" | "float" in the lowered program, read from the graphs XNNPACK's delegates
    were made from (and the ops left outside them)."""
    from ..compress.quantize import graph_layer_precisions

    layers = graph_layer_precisions(gm)
    for node in gm.graph.nodes:
        if node.op == "get_attr" and hasattr(getattr(gm, node.target, None), "original_module"):
            layers |= graph_layer_precisions(getattr(gm, node.target).original_module.graph_module)
    return layers


def delegation(gm) -> dict:
    """Count XNNPACK delegate calls and the ops that stayed on ExecuTorch's portable kernels."""
    delegates, portable = 0, Counter()
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if "executorch_call_delegate" in name:
            delegates += 1
        elif name != "getitem":
            portable[name.replace("aten.", "").split(".")[0]] += 1
    return {"delegates": delegates, "portable_nodes": sum(portable.values()), "portable_ops": dict(sorted(portable.items()))}
