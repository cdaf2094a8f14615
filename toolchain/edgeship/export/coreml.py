"""Core ML: torch.export -> run_decompositions -> coremltools.convert to an ML Program .mlpackage.

Prediction needs macOS; on Linux the package is checked for what can be checked (it loads as a spec,
its input/output names, shapes and dtypes match the model) and parity is "not run: needs macOS".
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
    precisions = frozenset({"fp32", "fp16"})
    # Core ML packages compute in fp16 by default (what the Neural Engine runs); an fp32 request gets that too.
    precision_map = {"fp32": "fp16"}
    extra = "coreml"
    module = "coremltools"

    def export(self, spec: ModelSpec, out_dir: Path, precision: str, calib=None) -> Exported:
        import torch
        ct = require("coremltools", self.extra, "Core ML export")
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / artifact_name(precision, self.suffix)
        compute = precision
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
        mlmodel.short_description = f"{spec.name} exported by edgeship"
        tmp = path.with_name(f".tmp-{path.name}")  # coremltools insists on the .mlpackage suffix
        if tmp.exists():
            shutil.rmtree(tmp)
        mlmodel.save(str(tmp))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return Exported(path, compute, notes, {"compute_precision": compute},
                        min_os={"ios": MIN_IOS.removeprefix("iOS"), "macos": "13"})


def _np_dtype(dtype: str):
    import numpy as np
    if dtype == "int64":   # Core ML has no int64 inputs; int32 token ids are what apps pass
        return np.int32
    return getattr(np, dtype)
