"""ONNX models in onnxruntime (CPU execution provider unless ``providers`` says otherwise)."""
from __future__ import annotations

from typing import Any, List, Optional

import numpy as np

from .base import Runtime, RuntimeUnavailable, TensorInfo

# onnxruntime's type strings -> numpy dtype names
_ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16", "tensor(int8)": "int8",
    "tensor(uint8)": "uint8", "tensor(uint16)": "uint16", "tensor(bool)": "bool",
}
_OPT_LEVELS = ("disable", "basic", "extended", "all")


class OnnxRuntime(Runtime):
    """Options: ``graph_optimization_level`` (disable|basic|extended|all, default all), ``providers`` (list),
    ``profile`` (a path prefix: onnxruntime writes a JSON trace; ``end_profiling()`` returns its path)."""

    name = "onnxruntime"
    install_hint = "pip install onnxruntime"

    @classmethod
    def import_backend(cls) -> Any:
        try:
            import onnxruntime
        except ImportError as e:
            raise RuntimeUnavailable(f"onnxruntime is not installed ({e})", hint=cls.install_hint) from e
        return onnxruntime

    def session_options(self) -> Any:
        ort = self.backend
        so = ort.SessionOptions()
        if self.threads is not None:
            so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        level = self.opts.get("graph_optimization_level", "all")
        if level not in _OPT_LEVELS:
            raise ValueError(f"graph_optimization_level must be one of {', '.join(_OPT_LEVELS)}, got {level!r}")
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        if self.opts.get("profile"):
            so.enable_profiling = True
            so.profile_file_prefix = str(self.opts["profile"])
        return so

    def _load(self) -> None:
        providers = self.opts.get("providers") or ["CPUExecutionProvider"]
        self.session = self.backend.InferenceSession(str(self.path), sess_options=self.session_options(),
                                                     providers=list(providers))
        self.inputs = [_info(a) for a in self.session.get_inputs()]
        self.outputs = [_info(a) for a in self.session.get_outputs()]
        self._input_names = [a.name for a in self.session.get_inputs()]

    def _run(self, arrays: List[np.ndarray]) -> List[np.ndarray]:
        return self.session.run(None, dict(zip(self._input_names, arrays)))

    def end_profiling(self) -> Optional[str]:
        """Stop profiling and return the trace file onnxruntime wrote (None when ``profile`` was not given)."""
        return self.session.end_profiling() if self.opts.get("profile") else None


def _info(arg: Any) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in (arg.shape or ()))
    return TensorInfo(arg.name, shape, _ORT_DTYPES.get(arg.type, arg.type))
