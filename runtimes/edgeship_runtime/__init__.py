"""edgeship_runtime: run an exported model in its own runtime — on the host for parity, on a device for benchmarks.

    from edgeship_runtime import open_runtime
    rt = open_runtime("dist/mnist/tflite/model.tflite", threads=2)
    rt.inputs            # [TensorInfo(name='args_0', shape=(1, 1, 28, 28), dtype='float32', quantization=None)]
    logits, = rt.run({"image": x})

Pure Python on numpy plus one runtime package; it never imports torch or edgeship (it is pushed to devices alone).
Importing this package imports no runtime: each format's class is imported when it is first asked for.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Dict, Optional, Type, Union

from .base import Runtime, RuntimeUnavailable, TensorInfo

__all__ = ["open_runtime", "runtime_class", "format_of", "FORMATS", "SUFFIXES", "Runtime", "TensorInfo",
           "RuntimeUnavailable"]
__version__ = "0.1.0"

# format key -> "module:Class", imported lazily (one registration mechanism, as in the toolchain).
FORMATS: Dict[str, str] = {
    "onnx": "edgeship_runtime.onnx:OnnxRuntime",
    "tflite": "edgeship_runtime.tflite:LiteRtRuntime",
    "executorch": "edgeship_runtime.executorch:ExecuTorchRuntime",
    "coreml": "edgeship_runtime.coreml:CoreMLRuntime",
    "torchscript": "edgeship_runtime.torchscript:TorchScriptRuntime",   # legacy PyTorch Mobile; imports torch
}

SUFFIXES: Dict[str, str] = {".onnx": "onnx", ".tflite": "tflite", ".pte": "executorch",
                            ".mlpackage": "coreml", ".mlmodel": "coreml", ".ptl": "torchscript"}


def format_of(path: Union[str, Path]) -> str:
    """The format key of a model file, by its suffix (a .mlpackage is a directory)."""
    suffix = Path(path).suffix.lower()
    try:
        return SUFFIXES[suffix]
    except KeyError:
        raise ValueError(f"cannot tell the format of {str(path)!r}: known suffixes are "
                         f"{', '.join(SUFFIXES)}") from None


def runtime_class(fmt: str) -> Type[Runtime]:
    """The Runtime class for a format key ("onnx", "tflite", "executorch", "coreml", "torchscript")."""
    try:
        target = FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def open_runtime(path: Union[str, Path], threads: Optional[int] = None, **opts: Any) -> Runtime:
    """Load a model in the runtime its suffix calls for (.onnx .tflite .pte .mlpackage .ptl).

    Raises FileNotFoundError, ValueError (unknown suffix) or RuntimeUnavailable (runtime package missing, with a
    ``hint`` such as "pip install ai-edge-litert").
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    return runtime_class(format_of(path))(path, threads=threads, **opts)
