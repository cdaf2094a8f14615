"""ONNX: torch.onnx (dynamo) -> onnx.checker -> optional onnxslim; runs in onnxruntime."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from ..errors import EdgeshipError
from ..model import ModelSpec
from . import Exported, artifact_name, require

log = logging.getLogger(__name__)
OPSET = 20


class OnnxExporter:
    format = "onnx"
    suffix = ".onnx"
    runtime = "onnxruntime"
    precisions = frozenset({"fp32", "fp16"})
    extra = "all"
    module = "onnx"

    def __init__(self, simplify: bool = True):
        self.simplify = simplify

    def export(self, spec: ModelSpec, out_dir: Path, precision: str, calib=None) -> Exported:
        import torch
        onnx = require("onnx", self.extra, "ONNX export")
        require("onnxscript", self.extra, "ONNX export")
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / artifact_name(precision, self.suffix)
        names = [i.name for i in spec.inputs]
        n_out = len(spec.check_runs())
        out_names = list(spec.output_names or (["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]))
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw.onnx"
            prog = torch.onnx.export(spec.module, spec.example_inputs(), str(raw), dynamo=True, external_data=False,
                                     opset_version=OPSET, input_names=names, output_names=out_names, verbose=False)
            del prog
            model = onnx.load(str(raw))
        onnx.checker.check_model(model, full_check=True)
        notes, details = [], {"opset": OPSET, "nodes": len(model.graph.node)}
        if precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16
            model = convert_float_to_float16(model, keep_io_types=True)
            notes.append("fp16 weights and compute; inputs and outputs stay float32 (keep_io_types)")
        if self.simplify:
            model, note = _slim(model)
            notes.append(note)
        details["nodes_after"] = len(model.graph.node)
        _save(onnx, model, path)
        return Exported(path, precision, notes, details)


def _slim(model):
    """onnxslim folds constants and fuses ops; the parity gate checks the result like any other artifact."""
    try:
        import onnxslim
    except ImportError:
        return model, "not simplified: onnxslim is not installed"
    try:
        slim = onnxslim.slim(model)
    except Exception as e:  # noqa: BLE001 - simplification is optional; keep the checked model
        log.warning("onnxslim failed, keeping the unsimplified graph: %s", e)
        return model, f"not simplified: onnxslim failed ({type(e).__name__})"
    return slim, f"simplified with onnxslim {onnxslim.__version__}: {len(model.graph.node)} -> {len(slim.graph.node)} nodes"


def _save(onnx, model, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(model, str(tmp))
    os.replace(tmp, path)
