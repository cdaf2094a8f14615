"""PyTorch Mobile lite-interpreter files (.ptl) in torch's lite interpreter (``torch.jit.mobile``).

The legacy PyTorch Mobile path: here the "one runtime" is torch itself, so this is the one module of the package
that imports torch, and only when a model is opened (``import edgeship_runtime.torchscript`` stays torch-free).

The lite interpreter keeps no input/output names or shapes: edgeship stores them in the file
(``<archive>/extra/edgeship.json``) and they are read from there; a .ptl without it is refused with a hint.

Quantized (dynamic int8) files run with the engine they were quantized for (qnnpack, PyTorch Mobile's engine on
phones) where this torch has it: it is set while the model is loaded and run, and restored after (the process may
be the toolchain's own); option ``engine`` overrides it.
Threads: ``threads`` calls ``torch.set_num_threads`` for the whole process (torch has one intra-op pool).
"""
from __future__ import annotations

import contextlib
import json
import zipfile
from typing import Any, Iterator, List, Optional

import numpy as np

from .base import Runtime, RuntimeUnavailable, TensorInfo

META_SUFFIX = "/extra/edgeship.json"


class TorchScriptRuntime(Runtime):
    """Options: ``engine`` (the quantized engine while loading and running; default: the one the file was
    quantized for, qnnpack, where this torch has it)."""

    name = "pytorch-mobile"
    install_hint = "pip install torch"

    @classmethod
    def import_backend(cls) -> Any:
        try:
            import torch
            import torch.jit.mobile  # noqa: F401 - the lite interpreter
        except ImportError as e:
            raise RuntimeUnavailable(f"torch is not installed ({e}); PyTorch Mobile files run in torch's lite "
                                     "interpreter", hint=cls.install_hint) from e
        return torch

    def _load(self) -> None:
        torch = self.backend
        meta = read_metadata(self.path)
        self.inputs = [TensorInfo(t["name"], tuple(t["shape"]), t["dtype"]) for t in meta["inputs"]]
        self.outputs = [TensorInfo(t["name"], tuple(t["shape"]), t["dtype"]) for t in meta["outputs"]]
        supported = list(torch.backends.quantized.supported_engines)
        wanted = meta.get("quantized_engine")   # None for float files: the engine does not matter to them
        self.engine: Optional[str] = self.opts.get("engine") or (wanted if wanted in supported else None)
        if self.engine is not None and self.engine not in supported:
            raise ValueError(f"engine must be one of {', '.join(supported)}, got {self.engine!r}")
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        self.threads = int(torch.get_num_threads())
        with self._engine():
            self.module = torch.jit.mobile._load_for_lite_interpreter(str(self.path), map_location="cpu")
        if wanted and self.engine != wanted:
            self.notes.append(f"quantized for the {wanted} engine, run with "
                              f"{self.engine or torch.backends.quantized.engine}")

    @contextlib.contextmanager
    def _engine(self) -> Iterator[None]:
        quantized = self.backend.backends.quantized
        prev = quantized.engine
        if self.engine is not None and self.engine != prev:
            quantized.engine = self.engine
        try:
            yield
        finally:
            if quantized.engine != prev:
                quantized.engine = prev

    def _run(self, arrays: List[np.ndarray]) -> List[np.ndarray]:
        torch = self.backend
        tensors = [torch.from_numpy(a if a.flags.writeable else a.copy()) for a in arrays]
        with self._engine(), torch.no_grad():
            out = self.module(*tensors)
        return [t.detach().numpy() if hasattr(t, "numpy") else np.asarray(t) for t in _flatten(out)]


def read_metadata(path) -> dict:
    """The input/output description edgeship stores in a .ptl (a zip archive) as extra/edgeship.json."""
    try:
        with zipfile.ZipFile(str(path)) as z:
            names = [n for n in z.namelist() if n.endswith(META_SUFFIX)]
            meta = json.loads(z.read(names[0])) if names else None
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path} is not a PyTorch Mobile file (not a zip archive: {e})") from None
    if meta is None:
        raise ValueError(f"{path} has no input/output description (extra/edgeship.json): the lite interpreter keeps "
                         "no tensor names or shapes; export it with `edgeship export MODEL --formats torchscript`")
    return meta


def _flatten(out: Any) -> list:
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flatten(o)]
    return [out]
