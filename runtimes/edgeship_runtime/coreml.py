"""Core ML models (.mlpackage directories, .mlmodel files) through coremltools.

Input/output names, shapes and dtypes come from the model's spec, which coremltools reads on any OS. Prediction
needs macOS (Core ML itself): elsewhere ``run`` raises RuntimeUnavailable. Importing coremltools takes seconds
(and imports torch when torch is installed), so this module imports it only when a model is opened.
"""
from __future__ import annotations

import sys
from typing import Any, List, Optional, Tuple

import numpy as np

from .base import Runtime, RuntimeUnavailable, TensorInfo

# ArrayFeatureType.ArrayDataType -> numpy dtype names
_ARRAY_DTYPES = {65568: "float32", 65600: "float64", 65552: "float16", 131104: "int32", 131080: "int8"}
_IMAGE_CHANNELS = {10: 1, 20: 3, 30: 3, 40: 1}  # GRAYSCALE, RGB, BGR, GRAYSCALE_FLOAT16
_COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
MACOS_HINT = "run it on a Mac (pip install coremltools), or benchmark the onnx/tflite/executorch files here"


class CoreMLRuntime(Runtime):
    """Options: ``compute_units`` (ALL|CPU_ONLY|CPU_AND_GPU|CPU_AND_NE, default ALL; macOS only)."""

    name = "coreml"
    install_hint = "pip install coremltools"

    @classmethod
    def check_platform(cls) -> None:
        if sys.platform != "darwin":
            raise RuntimeUnavailable(f"Core ML prediction needs macOS (this is {sys.platform})", hint=MACOS_HINT)

    @classmethod
    def import_backend(cls) -> Any:
        try:
            import coremltools
        except ImportError as e:
            raise RuntimeUnavailable(f"coremltools is not installed ({e})", hint=cls.install_hint) from e
        return coremltools

    def _load(self) -> None:
        ct = self.backend
        units = self.opts.get("compute_units", "ALL")
        if units not in _COMPUTE_UNITS:
            raise ValueError(f"compute_units must be one of {', '.join(_COMPUTE_UNITS)}, got {units!r}")
        self.spec = ct.utils.load_spec(str(self.path))
        self.inputs = [_info(f) for f in self.spec.description.input]
        self.outputs = [_info(f) for f in self.spec.description.output]
        if self.threads is not None:
            self.notes.append("Core ML chooses its own threads: threads is ignored")
        self.model = None
        if sys.platform == "darwin":
            self.model = ct.models.MLModel(str(self.path), compute_units=ct.ComputeUnit[units])
        else:
            self.notes.append("not run: Core ML prediction needs macOS")

    def _run(self, arrays: List[np.ndarray]) -> List[np.ndarray]:
        if self.model is None:
            raise RuntimeUnavailable(f"Core ML prediction needs macOS (this is {sys.platform}); "
                                     f"{self.path.name} was read but cannot be run here", hint=MACOS_HINT)
        res = self.model.predict({i.name: a for i, a in zip(self.inputs, arrays)})
        return [np.asarray(res[o.name]) for o in self.outputs]


def _info(feature: Any) -> TensorInfo:
    t = feature.type
    kind = t.WhichOneof("Type")
    shape: Tuple[Optional[int], ...] = ()
    if kind == "multiArrayType":
        a = t.multiArrayType
        shape = tuple(int(d) for d in a.shape)
        if a.WhichOneof("ShapeFlexibility") == "shapeRange":
            shape = tuple(int(r.lowerBound) if r.lowerBound == r.upperBound else None for r in a.shapeRange.sizeRanges)
        elif a.WhichOneof("ShapeFlexibility") == "enumeratedShapes":
            shapes = [tuple(s.shape) for s in a.enumeratedShapes.shapes]
            shape = tuple(d[0] if len(set(d)) == 1 else None for d in zip(*shapes))
        return TensorInfo(feature.name, shape, _ARRAY_DTYPES.get(a.dataType, f"array_type_{a.dataType}"))
    if kind == "imageType":  # fed as a PIL image on macOS; described here as N, C, H, W pixels
        im = t.imageType
        return TensorInfo(feature.name, (1, _IMAGE_CHANNELS.get(im.colorSpace, 3), int(im.height), int(im.width)),
                          "uint8")
    return TensorInfo(feature.name, shape, {"int64Type": "int64", "doubleType": "float64"}.get(kind, str(kind)))
