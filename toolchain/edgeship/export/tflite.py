"""TFLite / LiteRT: litert-torch converts; ai-edge-quantizer casts weights for fp16; runs in ai-edge-litert."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..model import ModelSpec
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
    precisions = frozenset({"fp32", "fp16"})
    extra = "tflite"
    module = "litert_torch"

    def export(self, spec: ModelSpec, out_dir: Path, precision: str, calib=None) -> Exported:
        litert_torch = require("litert_torch", self.extra, "TFLite export")
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / artifact_name(precision, self.suffix)
        tmp = path.with_name(path.name + ".tmp")
        notes = []
        model = litert_torch.convert(spec.module, spec.example_inputs())
        model.export(str(tmp))
        if any(i.dtype == "int64" for i in spec.inputs):
            notes.append("int64 inputs are int32 in the .tflite (cast token ids before calling)")
        if precision == "fp16":
            from ai_edge_quantizer import quantizer as aeq
            q = aeq.Quantizer(str(tmp))
            q.load_quantization_recipe(FP16_RECIPE)
            fp16 = tmp.with_name(tmp.name + ".fp16")
            q.quantize().export_model(str(fp16), overwrite=True)
            os.replace(fp16, tmp)
            notes.append("fp16 weights (ai-edge-quantizer float casting), float32 compute and I/O")
        os.replace(tmp, path)
        return Exported(path, precision, notes, {})
