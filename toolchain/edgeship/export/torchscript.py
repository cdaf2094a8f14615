"""PyTorch Mobile (legacy): torch.jit.trace -> freeze -> lite-interpreter .ptl; runs in torch's lite interpreter.

The path PyTorch Mobile apps load with ``LiteModuleLoader`` (Android) / ``TorchModule`` (iOS). PyTorch has
deprecated it in favour of ExecuTorch; it is opt-in here (``--formats torchscript``), never a default format.

What torch 2.13 (the CPU wheel) does here, measured on the example models:

* ``optimize_for_mobile`` stops with an internal assert ("Mobile optimization only available with XNNPACK") in a
  torch built without XNNPACK, as the CPU wheel is. Then the module is frozen with ``torch.jit.freeze`` instead
  (inlines the weights, folds Conv+BatchNorm, drops dropout); the XNNPACK prepacking passes are skipped, so the
  .ptl calls plain ATen kernels. Where torch has XNNPACK, ``optimize_for_mobile`` is used.
* Tracing is the way in; ``torch.jit.script`` is tried when tracing fails. Scripting a dynamically quantized
  ``nn.TransformerEncoder`` fails ("method cannot be used as a value"), tracing works.
* ``dynamic-int8``: eager ``torch.ao.quantization.quantize_dynamic`` with the qnnpack engine (PyTorch Mobile's int8
  engine) on nn.Linear, nn.LSTM and nn.GRU: int8 weights, activations quantized at run time. Convolutions stay fp32
  (dynamic quantization has no conv). The quantized ``nn.TransformerEncoder`` fails in the multi-head-attention
  fast path (``'function' object has no attribute 'device'``); with the fast path off
  (``torch.backends.mha.set_fastpath_enabled(False)``, set only while tracing) it traces and keeps ~38-41 dB SQNR.
  The fast path is off for fp32 too, so the .ptl holds plain ops rather than the fused native encoder kernel.
* ``int8`` asks for ``dynamic-int8`` (eager static int8 needs QuantStub edits to the model; the XNNPACK quantizer,
  ``--formats executorch --precision int8``, is its successor). No fp16: PyTorch Mobile's CPU kernels are fp32/int8.

The .ptl carries ``extra/edgeship.json`` (input/output names, shapes, dtypes): the lite interpreter keeps none,
and ``edgeship_runtime.torchscript`` reads them from there.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import warnings
from collections import Counter
from pathlib import Path

from ..errors import EdgeshipError
from ..model import ModelSpec
from . import Exported, artifact_name, require

log = logging.getLogger(__name__)
ENGINE = "qnnpack"
META_FILE = "edgeship.json"   # stored as <archive>/extra/edgeship.json
SUCCESSOR_HINT = ("PyTorch Mobile is legacy: ExecuTorch is its successor (--formats executorch), and the XNNPACK quantizer "
                  "replaces qnnpack for int8 (--formats executorch --precision int8)")


class TorchScriptExporter:
    format = "torchscript"
    suffix = ".ptl"
    runtime = "pytorch-mobile"
    precisions = frozenset({"fp32", "dynamic-int8"})
    # Eager static int8 would need QuantStub/DeQuantStub in the user's model: int8 means dynamic int8 here.
    precision_map = {"int8": "dynamic-int8"}
    extra = "all"
    module = "torch"

    def export(self, spec: ModelSpec, out_dir: Path, precision: str, calib=None, quant=None) -> Exported:
        torch = require("torch", self.extra, "TorchScript export")
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / artifact_name(precision, self.suffix)
        args = spec.example_inputs()
        module, notes, details = spec.module, [], {}
        with legacy_mode(torch, precision):
            if precision == "dynamic-int8":
                keep = quant.keep_float if quant is not None else frozenset()
                module, qnotes, qdetails = quantize_dynamic(torch, spec.module, keep)
                notes += qnotes
                details |= qdetails
            scripted, how, tnotes = to_torchscript(torch, module, args)
            notes += tnotes
            if any(isinstance(m, torch.nn.MultiheadAttention) for m in module.modules()):
                notes.append("multi-head-attention fast path off while capturing (torch.backends.mha): the .ptl holds "
                             "plain ops; with it on, a dynamically quantized nn.TransformerEncoder fails "
                             "('function' object has no attribute 'device')")
            try:
                mobile, onotes = optimize(torch, scripted)
                with torch.no_grad():
                    outputs = _flatten(mobile(*args))
            except Exception as e:  # noqa: BLE001 - freezing or running the TorchScript module failed
                raise EdgeshipError(f"the TorchScript module ({how}) cannot be frozen for PyTorch Mobile or fails to run: "
                                    f"{_cause(e)}", hint=SUCCESSOR_HINT) from e
            notes += onotes
            meta = _metadata(spec, precision, outputs)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)   # "Lite Interpreter is deprecated"
                    data = mobile._save_to_buffer_for_lite_interpreter(_extra_files={META_FILE: json.dumps(meta)})
            except Exception as e:  # noqa: BLE001 - an op or type the lite interpreter cannot hold
                raise EdgeshipError(f"PyTorch Mobile cannot save this model for the lite interpreter: "
                                    f"{type(e).__name__}: {_first_line(e)}", hint=SUCCESSOR_HINT) from e
        from torch.jit.mobile import _export_operator_list, _get_model_bytecode_version, _load_for_lite_interpreter
        ops = sorted(_export_operator_list(_load_for_lite_interpreter(io.BytesIO(data))))
        details |= {"captured_by": how, "operators": len(ops),
                    "quantized_operators": [o for o in ops if "quantized" in o],
                    "bytecode_version": int(_get_model_bytecode_version(io.BytesIO(data)))}
        notes.append("legacy PyTorch Mobile lite-interpreter file (deprecated by PyTorch in favour of ExecuTorch); "
                     "load it with LiteModuleLoader (Android) or TorchModule (iOS)")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return Exported(path, precision, notes, details)


@contextlib.contextmanager
def legacy_mode(torch, precision: str):
    """The qnnpack quantized engine (for dynamic-int8) and the MHA fast path off, restored on the way out."""
    engine, fastpath = torch.backends.quantized.engine, torch.backends.mha.get_fastpath_enabled()
    if precision == "dynamic-int8" and ENGINE not in torch.backends.quantized.supported_engines:
        raise EdgeshipError(f"this torch has no {ENGINE} quantized engine (it has "
                            f"{', '.join(torch.backends.quantized.supported_engines)})", hint=SUCCESSOR_HINT)
    try:
        if precision == "dynamic-int8":
            torch.backends.quantized.engine = ENGINE
        torch.backends.mha.set_fastpath_enabled(False)
        yield
    finally:
        torch.backends.quantized.engine = engine
        torch.backends.mha.set_fastpath_enabled(fastpath)


def quantize_dynamic(torch, module, keep_float=frozenset()):
    """Eager dynamic int8 (torch.ao) of a copy of ``module``; the layers in ``keep_float`` (module names, or
    containers of them) stay float. Returns (quantized module, notes, details)."""
    from ..compress.quantize import covered

    nn = torch.nn
    types = {nn.Linear, nn.LSTM, nn.GRU}
    chosen = {n for n, m in module.named_modules() if type(m) in types and not covered([n], keep_float)}
    found = Counter(type(m).__name__ for n, m in module.named_modules() if n in chosen)
    if not found:
        raise EdgeshipError("dynamic int8 for PyTorch Mobile quantizes nn.Linear, nn.LSTM and nn.GRU weights, and this "
                            "model has none" + (" outside the layers kept in float" if keep_float else ""),
                            hint=SUCCESSOR_HINT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch.ao eager quantization is deprecated in 2.13 (-> torchao)
        q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(module).eval(), chosen, dtype=torch.qint8)
    # Left in float: what has weights but no dynamic int8 kernel (attention's projections included: its out_proj is
    # a NonDynamicallyQuantizableLinear and its in_proj a bare parameter).
    left = Counter(type(m).__name__ for m in q.modules()
                   if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Embedding,
                                     nn.MultiheadAttention)))
    notes = [f"dynamic int8 (torch.ao quantize_dynamic, {ENGINE} engine): int8 weights in "
             + ", ".join(f"{n}×{k}" for n, k in sorted(found.items()))
             + ", activations quantized at run time, float32 I/O"]
    if left:
        notes.append("left in fp32 (dynamic quantization has no kernel for them): "
                     + ", ".join(f"{n}×{k}" for n, k in sorted(left.items())))
    kept = sorted(n for n, m in module.named_modules() if type(m) in types and n not in chosen)
    if keep_float:
        notes.append(f"layers kept in float: {', '.join(kept) or 'none'}")
    return q, notes, {"quantizer": f"torch.ao quantize_dynamic ({ENGINE})", "quantized_modules": dict(sorted(found.items())),
                      "float_modules": dict(sorted(left.items())), "int8_layers": sorted(chosen), "float_layers": kept}


def to_torchscript(torch, module, args):
    """Trace ``module`` (script it if tracing fails); returns (ScriptModule, "trace"|"script", notes)."""
    errors = []
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always", torch.jit.TracerWarning)
        try:
            traced = torch.jit.trace(module.eval(), args, strict=False)
            _no_python_calls(traced)
            tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
            notes = []
            if tracer:
                notes.append(f"traced with {len(tracer)} tracer warning(s) (the trace may not generalise; parity is "
                             f"checked on other inputs): {_first_line(tracer[0].message).split('. ')[0]}")
            return traced, "trace", notes
        except Exception as e:  # noqa: BLE001 - try scripting next
            errors.append(("torch.jit.trace", e))
            log.info("torch.jit.trace failed (%s); trying torch.jit.script", e)
        try:
            scripted = _no_python_calls(torch.jit.script(module.eval()))
            return scripted, "script", [f"captured with torch.jit.script (tracing failed: {_cause(errors[0][1])})"]
        except Exception as e:  # noqa: BLE001
            errors.append(("torch.jit.script", e))
    causes = dict.fromkeys(_cause(e) for _, e in errors)
    why = "; ".join(f"{how}: {_cause(e)}" for how, e in errors) if len(causes) > 1 else next(iter(causes))
    raise EdgeshipError(f"PyTorch Mobile needs TorchScript, and the model neither traces nor scripts: {why}",
                        hint=SUCCESSOR_HINT) from errors[-1][1]


def _no_python_calls(ts):
    """Raise when the TorchScript graph calls back into Python (a torch.autograd.Function, an ignored function):
    the lite interpreter has no Python, and saving such a module fails."""
    calls = sorted({n.pyname() for n in ts.inlined_graph.nodes() if n.kind() == "prim::PythonOp"})
    if calls:
        raise RuntimeError(f"it calls Python function(s) {', '.join(calls)} (a torch.autograd.Function?), which "
                           "TorchScript keeps as Python calls that a mobile file cannot hold")
    return ts


def optimize(torch, scripted):
    """optimize_for_mobile where torch has XNNPACK, else torch.jit.freeze; returns (module, notes)."""
    if torch._C._is_xnnpack_enabled():
        from torch.utils.mobile_optimizer import optimize_for_mobile
        return optimize_for_mobile(scripted), ["optimize_for_mobile (frozen, Conv+BatchNorm folded, XNNPACK prepacked ops)"]
    return torch.jit.freeze(scripted.eval()), [
        "frozen with torch.jit.freeze (Conv+BatchNorm folded, dropout removed): this torch has no XNNPACK, so "
        "optimize_for_mobile cannot run and its XNNPACK prepacking is skipped (plain ATen ops)"]


def _metadata(spec: ModelSpec, precision: str, outputs) -> dict:
    names = list(spec.output_names or (["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]))
    return {"schema": 1, "format": "torchscript", "precision": precision,
            "quantized_engine": ENGINE if precision == "dynamic-int8" else None,
            "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in spec.inputs],
            "outputs": [{"name": n, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                        for n, t in zip(names, outputs)]}


def _flatten(out) -> list:
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flatten(o)]
    return [out]


def _first_line(e) -> str:
    text = str(e).strip()
    return (text.splitlines() or [type(e).__name__])[0][:300]


def _cause(e: Exception) -> str:
    text = str(e)
    if "'function' object has no attribute 'device'" in text:
        return ("the multi-head-attention fast path fails on dynamically quantized Linear layers "
                f"({type(e).__name__}: 'function' object has no attribute 'device')")
    # TorchScript errors put the message first and the source excerpt after it
    return f"{type(e).__name__}: {' '.join(text.split())[:300]}"
