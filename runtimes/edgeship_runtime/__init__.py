"""edgeship_runtime: run an exported model in its own runtime — on the host for parity, on a device for benchmarks.

    from edgeship_runtime import open_runtime
    rt = open_runtime("dist/mnist/tflite/model.tflite", threads=2)
    rt.inputs            # [TensorInfo(name='args_0', shape=(1, 1, 28, 28), dtype='float32', quantization=None)]
    logits, = rt.run({"image": x})

Pure Python on numpy plus one runtime package; it never imports torch or edgeship (it is pushed to devices alone).
Importing this package imports no runtime: each format's class is imported when it is first asked for. What a
format is (suffixes, runtime class, how a device finds it) is one record in :mod:`edgeship_runtime.formats`.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Optional, Type, Union

from .base import Runtime, RuntimeUnavailable, TensorInfo
from .formats import FORMATS, FormatSpec, format_for_suffix, register, suffixes

__all__ = ["open_runtime", "runtime_class", "format_of", "FORMATS", "FormatSpec", "register", "Runtime", "TensorInfo",
           "RuntimeUnavailable"]
__version__ = "0.1.0"


def format_of(path: Union[str, Path]) -> str:
    """The format key of a model file, by its suffix (a .mlpackage is a directory)."""
    fmt = format_for_suffix(Path(path).suffix)
    if fmt is None:
        raise ValueError(f"cannot tell the format of {str(path)!r}: known suffixes are "
                         f"{', '.join(suffixes())}") from None
    return fmt


def runtime_class(fmt: str) -> Type[Runtime]:
    """The Runtime class for a format key ("onnx", "tflite", "executorch", "coreml", "torchscript", or one added
    with :func:`register`)."""
    try:
        target = FORMATS[fmt].runtime
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
