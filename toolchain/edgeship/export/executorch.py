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
from . import Exported, artifact_name, dynamic_dims, export_program, require

log = logging.getLogger(__name__)


class ExecuTorchExporter:
    format = "executorch"
    suffix = ".pte"
    runtime = "executorch"
    precisions = frozenset({"fp32", "fp16", "int8", "dynamic-int8"})
    extra = "executorch"
    module = "executorch.exir"

    def __init__(self, share_tied_weights: bool = True):
        # False: a float weight shared with a portable op (a tied embedding) is copied into XNNPACK's delegate as
        # a constant, as ExecuTorch does: a larger file, no packing at each inference (see partitioner()).
        self.share_tied_weights = share_tied_weights

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
        # dynamic dimensions: bounded (memory planned for MAX)
        ep = export_program(module, args, spec, "the model" if module is spec.module else f"the {precision} graph")
        part = partitioner(self.share_tied_weights)
        edge = exir.to_edge_transform_and_lower(ep, partitioner=[part])
        lone = _delegate_only(edge.exported_program(), part.runtime_weights)
        if lone:   # see partitioner(): such a weight crashed ExecuTorch 1.5.1 when the .pte is loaded from a file
            log.info("weights %s became run-time inputs read only by XNNPACK; lowering again with them as constants", lone)
            edge = exir.to_edge_transform_and_lower(ep, partitioner=[partitioner(False)])
        details = delegation(edge.exported_program().graph_module)
        if spec.dynamic:
            details["dynamic"] = dynamic_dims(spec)
            notes.append("dynamic dimensions with upper bounds: " + ", ".join(i.name + ":" + i.text for i in spec.inputs
                                                                           if i.dynamic) + " (memory planned for the largest)")
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
        shared = shared_weights(edge.exported_program())
        if shared:
            details["shared_weights_deduplicated"] = shared
            notes.append("stored once: " + ", ".join(f"{k} ({v / 1e6:.1f} MB)" for k, v in shared.items())
                         + ", read by a portable op and by XNNPACK, which takes it as a run-time input instead of "
                           "keeping a second copy (it packs the weight at each inference: smaller file, some latency)")
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
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

    from ..compress.quantize import OBSERVERS, calibration_inputs, quantize_pt2e

    dynamic = dynamic_why is not None
    samples, notes = calibration_inputs(spec, calib)
    result = quantize_pt2e(spec.module, spec.example_inputs(),
                           lambda: get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic),
                           lambda config: xnnpack_quantizer().set_global(config), samples,
                           observers=("minmax",) if dynamic else OBSERVERS,   # no activation observer when dynamic
                           keep_float=quant.keep_float if quant is not None else (), calibrated_on_data=calib is not None,
                           pads=True, dynamic_shapes=spec.dynamic_shapes())
    if dynamic:
        result.notes[0] = (f"dynamic int8 (XNNPACK quantizer, dynamic; {dynamic_why}): per-channel symmetric int8 weights, "
                           "activations quantized per inference (XNNPACK QD8 kernels), float32 I/O")
        notes = [n.replace("calibrated on", "measured on") for n in notes if "real data" not in n]
    result.notes[:0] = notes
    return result


def xnnpack_quantizer():
    """XNNPACK's PT2E quantizer, with the integer scalars it lifts kept integer.

    Before annotating, the quantizer lifts every scalar of ``aten.add.Tensor`` / ``aten.mul.Tensor`` into a
    ``torch.tensor(float(x))`` constant (``_convert_scalars_to_attrs``), so an integer ``arange(n) + 0`` (the mask
    arithmetic of Hugging Face BERT given an attention mask) turns float, and the ``aten.index`` it feeds fails when
    the prepared graph is calibrated: "IndexError: tensors used as indices must be long, int, byte or bool tensors"
    (pytorch/executorch#22062, fixed upstream by #22065, after executorch 1.5.1). Here each lifted constant takes the
    dtype of the node that reads it, as the upstream fix does; where executorch has the fix this changes nothing."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    class IntegerScalarsXNNPACKQuantizer(XNNPACKQuantizer):
        def transform_for_annotation(self, model):
            return keep_integer_scalars(super().transform_for_annotation(model))

    return IntegerScalarsXNNPACKQuantizer()


def keep_integer_scalars(gm):
    """Give each 0-d float constant that an integer ``add``/``mul`` reads (a lifted scalar) the node's own dtype:
    an integer tensor and a Python float would have made a float node, so the scalar was an integer. In place."""
    import torch
    changed = False
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if (node.op != "call_function" or node.target not in (torch.ops.aten.add.Tensor, torch.ops.aten.mul.Tensor)
                or not isinstance(val, torch.Tensor) or val.dtype.is_floating_point or val.dtype.is_complex):
            continue
        for arg in node.args:
            const = getattr(gm, arg.target, None) if isinstance(arg, torch.fx.Node) and arg.op == "get_attr" else None
            if isinstance(const, torch.Tensor) and const.ndim == 0 and const.is_floating_point():
                setattr(gm, arg.target, const.to(val.dtype))   # a buffer the lifting pass registered
                if isinstance(arg.meta.get("val"), torch.Tensor):
                    arg.meta["val"] = arg.meta["val"].to(val.dtype)
                changed = True
    if changed:
        gm.recompile()
    return gm


def partitioner(share_tied_weights: bool = True):
    """XNNPACK's partitioner with three fixes, the first two measured on real networks (bench/fidelity.md):

    * int8 constant pads: XNNPACK pads int8 tensors (a copy with the zero point), but ExecuTorch's config lists
      constant_pad_nd as fp32 only, so each pad of an int8 graph ran in float between conversions
      (compress.quantize.int8_pads makes them int8; PADS has the figures).
    * PReLU only on 4-D tensors: XNNPACK's channels-last pass requires PReLU's input in NHWC, so a PReLU after a
      Linear (MTCNN's R-Net and O-Net) failed the whole lowering, fp32 included ("Attempting to convert non-NHWC
      compatible node to NHWC"). Such a PReLU now stays outside the delegate (two portable ops, exact).
    * Tied weights stored once: a float weight that a Linear shares with an op XNNPACK does not take (GPT-2's
      output layer reads the token embedding's matrix) was copied into the delegate while the embedding kept its
      own, so the .pte held it twice (tiny GPT-2: 6.78 MB for 4.18 MB of parameters). Such a Linear now takes its
      weight as a run-time input (XNNPACK's ``force_non_static_weights_for_f32_linear``, for that Linear only):
      one copy in the program (4.22 MB), which XNNPACK packs at each inference (:func:`shared_weights` lists them).
      The cost, measured at 1 thread on a GPT-2 with a 50257 x 256 embedding: 109.4 -> 57.9 MB, and 7.4 -> 19.4 ms
      for 16 tokens, 80.7 -> 90.1 ms for 128 (the packing is a fixed ~10 ms). ``share_tied_weights=False`` (the
      exporter's option) keeps ExecuTorch's behaviour. A weight made a run-time input that in the end only XNNPACK
      reads (the other reader was delegated too) is lowered again as a constant: in executorch 1.5.1 such a .pte
      crashed (segmentation fault) when loaded from a file path, though it ran when loaded from bytes."""
    import torch
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.config.gemm_configs import LinearConfig
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

    class SharedWeightLinearConfig(LinearConfig):
        def _get_weight_deps(self, node, ep, precision):
            weight = node.args[1] if len(node.args) > 1 else None
            if share_tied_weights and precision == ConfigPrecisionType.FP32 and _shared_with_other_ops(ep, weight):
                made.runtime_weights.add(weight.name)
                return True, []   # the weight stays outside the partition: a run-time input of the delegate
            return super()._get_weight_deps(node, ep, precision)

    swap = {ConstantPadConfig: Int8ConstantPadConfig, PreluConfig: NHWCPreluConfig,
            LinearConfig: SharedWeightLinearConfig}
    made = XnnpackPartitioner(configs=[swap.get(c, c) for c in ALL_PARTITIONER_CONFIGS])
    made.runtime_weights = set()   # the weight nodes left to the delegates as run-time inputs
    return made


def _shared_with_other_ops(ep, weight) -> bool:
    """Whether ``weight`` (a Linear's weight node) is a parameter or constant that an op other than a Linear also
    reads (a tied embedding): delegated as a constant, it would be stored twice."""
    import torch
    from executorch.backends.xnnpack.utils.utils import is_param_node
    if not isinstance(weight, torch.fx.Node) or not is_param_node(ep, weight):
        return False
    # aten.linear.default is an OpOverload ("linear.default") or, in the edge dialect, an EdgeOpOverload ("aten.…")
    return any(getattr(u.target, "__name__", "").removeprefix("aten.") != "linear.default" for u in weight.users)


def _delegate_only(ep, names) -> list[str]:
    """Of the placeholders named ``names``, those that only XNNPACK delegates read in the lowered program."""
    return [n.name for n in ep.graph_module.graph.nodes
            if n.op == "placeholder" and n.name in names and n.users
            and all("executorch_call_delegate" in getattr(u.target, "__name__", "") for u in n.users)]


def shared_weights(ep) -> dict[str, int]:
    """The parameters and constants of a lowered program (``edge.exported_program()``) that XNNPACK delegates take
    as run-time inputs while other ops read them too: each is stored once in the .pte. Name -> bytes."""
    sig = ep.graph_signature
    names = {**sig.inputs_to_parameters, **sig.inputs_to_buffers, **sig.inputs_to_lifted_tensor_constants}
    out: dict[str, int] = {}
    for node in ep.graph_module.graph.nodes:
        if node.op != "placeholder" or node.name not in names:
            continue
        delegates = [u for u in node.users if "executorch_call_delegate" in getattr(u.target, "__name__", "")]
        val = node.meta.get("val")
        if delegates and len(delegates) < len(node.users) and val is not None:
            out[names[node.name]] = int(val.numel() * val.element_size())
    return out


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
