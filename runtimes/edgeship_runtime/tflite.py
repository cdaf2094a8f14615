"""TFLite / LiteRT models in ai_edge_litert's Interpreter (tflite_runtime's when that is what is installed).

Inputs and outputs carry the signature's names (litert-torch writes args_0, args_1, ... and output_0, ...) in the
model's positional order: the order of the subgraph's input tensors, which is the order of the PyTorch forward()
arguments. int64 feeds are cast to the int32 the file wants; quantized int8/uint8 inputs take float feeds.
"""
from __future__ import annotations

import re
import sys
from typing import Any, Dict, List

import numpy as np

from .base import Runtime, RuntimeUnavailable, TensorInfo


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class LiteRtRuntime(Runtime):
    """Options: ``signature`` (a SignatureDef key; default "serving_default" or the only one)."""

    name = "litert"
    install_hint = "pip install ai-edge-litert"

    @classmethod
    def import_backend(cls) -> Any:
        try:
            from ai_edge_litert import interpreter
        except ImportError as e:
            try:
                from tflite_runtime import interpreter  # legacy; see STACK.md before trusting it
            except ImportError:
                raise RuntimeUnavailable(f"no TFLite interpreter is installed ({e})", hint=cls.install_hint) from e
        return interpreter

    def _version(self) -> str:
        package = self.backend.__name__.split(".")[0]
        return str(getattr(sys.modules[package], "__version__", "unknown"))

    def _load(self) -> None:
        package = self.backend.__name__.split(".")[0]
        if package != "ai_edge_litert":
            self.notes.append(f"interpreter: {package} (legacy; results can differ from ai-edge-litert)")
        it = self.backend.Interpreter(model_path=str(self.path), num_threads=self.threads)
        it.allocate_tensors()
        self.interpreter = it
        ins, outs = it.get_input_details(), it.get_output_details()
        sigs = it.get_signature_list()
        key = self.opts.get("signature") or ("serving_default" if "serving_default" in sigs else next(iter(sigs), None))
        self._runner = None
        if key is None:  # no SignatureDef: the subgraph's own tensors, in order
            in_named: Dict[str, dict] = {d["name"]: d for d in ins}
            out_named: Dict[str, dict] = {d["name"]: d for d in outs}
        else:
            runner = it.get_signature_runner(key)
            in_named, out_named = runner.get_input_details(), runner.get_output_details()
            in_pos = {d["index"]: k for k, d in enumerate(ins)}
            out_pos = {d["index"]: k for k, d in enumerate(outs)}
            direct = (len(sigs) == 1 and sorted(d["index"] for d in in_named.values()) == sorted(in_pos)
                      and sorted(d["index"] for d in out_named.values()) == sorted(out_pos))
            if direct:  # the signature is subgraph 0: order by the subgraph's tensor order, invoke directly
                in_named = dict(sorted(in_named.items(), key=lambda kv: in_pos[kv[1]["index"]]))
                out_named = dict(sorted(out_named.items(), key=lambda kv: out_pos[kv[1]["index"]]))
            else:  # another subgraph: the SignatureRunner knows it; order names naturally (args_2 < args_10)
                in_named = dict(sorted(in_named.items(), key=lambda kv: _natural_key(kv[0])))
                out_named = dict(sorted(out_named.items(), key=lambda kv: _natural_key(kv[0])))
                self._runner = runner
        self.inputs = [_info(n, d) for n, d in in_named.items()]
        self.outputs = [_info(n, d) for n, d in out_named.items()]
        self._in_index = [d["index"] for d in in_named.values()]
        self._out_index = [d["index"] for d in out_named.values()]
        self._shapes = [tuple(d["shape"]) for d in in_named.values()]

    def _run(self, arrays: List[np.ndarray]) -> List[np.ndarray]:
        if self._runner is not None:
            res = self._runner(**{i.name: a for i, a in zip(self.inputs, arrays)})
            return [res[o.name] for o in self.outputs]
        it = self.interpreter
        if any(a.shape != s for a, s in zip(arrays, self._shapes)):  # dynamic dims: resize, then re-allocate
            for index, a in zip(self._in_index, arrays):
                it.resize_tensor_input(index, list(a.shape))
            it.allocate_tensors()
            self._shapes = [a.shape for a in arrays]
        for index, a in zip(self._in_index, arrays):
            it.set_tensor(index, a)
        it.invoke()
        return [it.get_tensor(index) for index in self._out_index]


def _info(name: str, d: dict) -> TensorInfo:
    shape = tuple(int(s) if s >= 0 else None for s in d.get("shape_signature", d["shape"]))
    q = d.get("quantization_parameters") or {}
    scales, zps = q.get("scales", ()), q.get("zero_points", ())
    quant = (float(scales[0]), int(zps[0])) if len(scales) == 1 and float(scales[0]) != 0.0 else None
    return TensorInfo(name, shape, np.dtype(d["dtype"]).name, quant)
