"""PT2E static int8, shared by the exporters that quantize a torch graph (ExecuTorch/XNNPACK, litert-torch).

The trip is torchao's: ``torch.export`` -> ``prepare_pt2e`` (observers where the backend's quantizer annotates)
-> calibration (run the observed graph on representative inputs) -> ``convert_pt2e`` (quantize/dequantize pairs
that each backend lowers to its int8 kernels). What differs per backend is only the quantizer object.

DESIGN.md: int8 is where fidelity breaks, so :func:`quantize_pt2e` measures what it made (SQNR of the quantized
graph against the float model on the calibration inputs) and, when that is below ``target_db``, tries the other
activation observer and keeps the better. The shipped artifact is measured again in its runtime by the parity gate.

Calibration data (``calib``) is what :func:`calibration_inputs` accepts: ``None`` (seeded random inputs of the
model's example distribution, with a note saying real data is better), a list of input tuples (the form of
``ModelSpec.example_inputs()``), a list of single tensors, or anything with ``calibration(n)`` that returns such a
list (``edgeship.data.DataSource``).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Sequence, TypeVar

import numpy as np
import torch

from ..errors import EdgeshipError
from ..model import ModelSpec

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION_SAMPLES = 32
OBSERVERS = ("histogram", "minmax")   # activation observers; weights are always per-channel min/max (symmetric)
TARGET_DB = 20.0                      # verify.TOLERANCES["int8"]: below this a remedy is tried
RANDOM_CALIB_NOTE = ("calibrated on {n} random inputs of the example distribution (no calibration data given); "
                     "real data (--calib DATA) gives better int8 accuracy")

Inputs = tuple  # tuple[torch.Tensor, ...]
T = TypeVar("T")
QUANTIZABLE_LAYERS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)   # what a "layer" is here
_BN_TARGETS = ("batch_norm", "_native_batch_norm_legit")   # fused into the conv before them by every converter


@dataclass(frozen=True)
class QuantOptions:
    """Per-layer options for quantized exports (int8, dynamic-int8, Core ML w8/w6/w4), given to every exporter.

    ``keep_float``: torch module names as in ``model.named_modules()`` whose ops stay float; a container
    (``features.3``) keeps everything in it. Each format applies it with its own quantizer and reports, in the
    artifact's notes and ``details["float_layers"]``, which layers really stayed float (or that it could not)."""

    keep_float: frozenset[str] = frozenset()

    def __post_init__(self):
        if isinstance(self.keep_float, str):
            raise EdgeshipError("keep_float must be a collection of layer names, not one string",
                                hint=f"e.g. QuantOptions(keep_float={{{self.keep_float!r}}})")
        object.__setattr__(self, "keep_float", frozenset(self.keep_float))

    def check(self, module: torch.nn.Module) -> "QuantOptions":
        """Raise when a name is not a submodule of ``module`` (a typo would otherwise be silently ignored)."""
        known = {n for n, _ in module.named_modules() if n}
        unknown = sorted(self.keep_float - known)
        if unknown:
            examples = ", ".join(quantizable_layers(module)[:5]) or ", ".join(sorted(known)[:5])
            raise EdgeshipError(f"keep-float names layers the model does not have: {', '.join(unknown)}",
                                hint=f"use module names as in model.named_modules(), e.g. {examples}")
        return self


def quantizable_layers(module: torch.nn.Module) -> list[str]:
    """Names of the layers int8 quantizes (Conv1d/2d/3d and Linear), in module order."""
    return [n for n, m in module.named_modules() if n and isinstance(m, QUANTIZABLE_LAYERS)]


def covered(paths: Iterable[str], names: Collection[str]) -> bool:
    """Whether any module path in ``paths`` is one of ``names`` or inside one of them."""
    return any(p == n or p.startswith(n + ".") for p in paths for n in names if n)


def node_scopes(node) -> list[str]:
    """Module paths (outermost first) an FX node of a ``torch.export`` graph comes from."""
    paths = []
    for path, _ in (node.meta.get("nn_module_stack") or {}).values():
        paths.append(path[len("L['self']."):] if path.startswith("L['self'].") else path)
    return paths


def fx_layer_scopes(graph) -> dict[str, set[str]]:
    """FX node name -> module paths, where a batch norm (and what reads it) also counts as the layer before it:
    converters fuse conv + batch norm into one op that carries the batch norm's name."""
    scopes: dict[str, set[str]] = {}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        own = set(node_scopes(node))
        name = getattr(node.target, "__name__", str(node.target))
        if (any(t in name for t in _BN_TARGETS) or name == "getitem") and node.args and hasattr(node.args[0], "name"):
            own |= scopes.get(node.args[0].name, set())
        scopes[node.name] = own
    return scopes


LAYER_OPS = frozenset({"conv1d", "conv2d", "conv3d", "convolution", "_convolution", "linear"})


def graph_layer_precisions(graph) -> dict[str, str]:
    """For each conv/linear op of a converted PT2E graph (a GraphModule or a Graph, also ExecuTorch's edge
    dialect): its layer (module path) -> "int8" when its weight comes through a dequantize op, else "float"."""
    graph = getattr(graph, "graph", graph)
    out: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_function" or len(node.args) < 2 or _op_name(node.target) not in LAYER_OPS:
            continue
        paths = node_scopes(node)
        if not paths:
            continue
        w = node.args[1]
        quantized = getattr(w, "op", None) == "call_function" and "dequantize" in _op_name(w.target)
        out[paths[-1]] = "int8" if quantized else "float"
    return out


def _op_name(target) -> str:
    """``aten.conv2d.default`` / edge ``aten.convolution.default`` / ``quantized_decomposed.dequantize...`` -> base name."""
    name = getattr(target, "__name__", None) or str(target)
    parts = name.split(".")
    if parts[0] in ("aten", "quantized_decomposed", "torchao") and len(parts) > 1:
        parts = parts[1:]
    return parts[0]


def select_layers(quantizer, keep_float: Collection[str] = (), only: Collection[str] | None = None):
    """Wrap a backend's PT2E quantizer (XNNPACK's, litert-torch's) so the ops of the layers in ``keep_float`` stay
    float, or, with ``only``, so only the ops of those layers are quantized.

    How: before the backend annotates, the skipped ops are marked as already annotated (with nothing), so every
    pattern annotator passes over them; the marks are removed afterwards. This works with any quantizer built on
    torchao's annotators, unlike ``set_module_name``: XNNPACK's refuses ``None`` ("not supported yet"), and
    litert-torch's name and type filters do not match the ``nn_module_stack`` that ``torch.export`` writes."""
    keep, only = frozenset(keep_float), None if only is None else frozenset(only)
    if not keep and only is None:
        return quantizer
    return _selector_class()(quantizer, keep, only)


@functools.cache
def _selector_class():
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, Quantizer

    key = "quantization_annotation"

    class LayerSelection(Quantizer):
        def __init__(self, inner, keep: frozenset[str], only: frozenset[str] | None):
            super().__init__()
            self.inner, self.keep, self.only = inner, keep, only

        def _skipped(self, node) -> bool:
            paths = node_scopes(node)
            if self.only is not None and not covered(paths, self.only):
                return True
            return covered(paths, self.keep)

        def transform_for_annotation(self, model):
            return self.inner.transform_for_annotation(model)

        def annotate(self, model):
            marked = []
            for node in model.graph.nodes:
                if node.op == "call_function" and key not in node.meta and self._skipped(node):
                    node.meta[key] = mark = QuantizationAnnotation(_annotated=True)
                    marked.append((node, mark))
            model = self.inner.annotate(model) or model
            for node, mark in marked:
                if node.meta.get(key) is mark:
                    del node.meta[key]
            return model

        def validate(self, model):
            return self.inner.validate(model)

        def prepare_obs_or_fq_callback(self, model, edge_or_node_to_obs_or_fq):
            return self.inner.prepare_obs_or_fq_callback(model, edge_or_node_to_obs_or_fq)

    return LayerSelection


def layer_details(precisions: dict[str, str], quantized: str = "int8") -> dict:
    """``{"int8_layers": [...], "float_layers": [...]}`` for an artifact's details, from layer -> precision
    (``quantized`` names the other kind: Core ML's "w8", "w4", ...)."""
    return {f"{p}_layers": sorted(n for n, q in precisions.items() if q == p) for p in (quantized, "float")}


def layers_note(requested: Collection[str], precisions: dict[str, str]) -> list[str]:
    """Notes saying which layers stayed float in a made artifact (read from the artifact), and which of the
    ``requested`` ones it could not keep."""
    floats = sorted(n for n, p in precisions.items() if p == "float")
    notes = [f"layers kept in float: {', '.join(floats) if floats else 'none'}"]
    missed = sorted(n for n in requested if not covered([n], floats) and not any(covered([f], [n]) for f in floats))
    if missed:
        notes.append(f"asked to keep in float but no float conv/linear found for: {', '.join(missed)}")
    return notes


def dynamic_reason(spec: ModelSpec, precision: str) -> str | None:
    """Why ``precision`` is made as dynamic int8 (activations quantized per inference) for ``spec``, or None for
    static int8: "requested" for dynamic-int8, and, the policy of every exporter, int8 of a model whose inputs are
    integers (token ids), where static int8 measured slower and 3-12 dB less faithful."""
    if precision == "dynamic-int8":
        return "requested"
    if precision == "int8" and any(not i.dtype.startswith("float") for i in spec.inputs):
        return "the model takes integer inputs (token ids)"
    return None


def calibration_inputs(spec: ModelSpec, calib: Any = None, n: int = DEFAULT_CALIBRATION_SAMPLES) -> tuple[list[Inputs], list[str]]:
    """Normalize ``calib`` to a list of input tuples matching ``spec.inputs`` (shapes and dtypes checked);
    returns ``(inputs, notes)``. ``None`` gives ``n`` seeded random inputs and a note that says so."""
    if calib is None:
        return [spec.example_inputs(seed=s) for s in range(n)], [RANDOM_CALIB_NOTE.format(n=n)]
    if hasattr(calib, "calibration") and callable(calib.calibration):
        calib = calib.calibration(n)
    if isinstance(calib, torch.Tensor):
        raise EdgeshipError("calibration data is one tensor; give a list of samples (one input tuple per sample)",
                            hint="e.g. [spec.example_inputs(seed=s) for s in range(32)] or DataSource.calibration(32)")
    samples = []
    for k, item in enumerate(calib):
        item = (item,) if isinstance(item, (torch.Tensor, np.ndarray)) else tuple(item)
        if len(item) != len(spec.inputs):
            raise EdgeshipError(f"calibration sample {k} has {len(item)} tensors; the model takes {len(spec.inputs)} "
                                f"({', '.join(i.name for i in spec.inputs)})")
        row = []
        for t, want in zip(item, spec.inputs):
            t = torch.as_tensor(t)
            if tuple(t.shape) != want.shape:
                if t.numel() == int(np.prod(want.shape)):
                    t = t.reshape(want.shape)
                else:
                    raise EdgeshipError(f"calibration sample {k}: input {want.name!r} has shape {list(t.shape)}, "
                                        f"the model wants {list(want.shape)}")
            row.append(t.to(getattr(torch, want.dtype)))
        samples.append(tuple(row))
    if not samples:
        raise EdgeshipError("the calibration data is empty", hint="give at least one sample (32 or more is better)")
    notes = [f"calibrated on {len(samples)} given samples"]
    if len(samples) < 8:
        notes.append(f"only {len(samples)} calibration samples: activation ranges may be off (32 or more is better)")
    return samples, notes


def with_activation_observer(config, observer: str):
    """A copy of a PT2E ``QuantizationConfig`` whose activation observer is ``observer`` (histogram | minmax)."""
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

    if observer not in OBSERVERS:
        raise EdgeshipError(f"unknown activation observer {observer!r}", hint=f"use one of {', '.join(OBSERVERS)}")
    ctr = {"histogram": HistogramObserver, "minmax": MinMaxObserver}[observer].with_args(eps=2 ** -12)
    changes = {}
    for name in ("input_activation", "output_activation"):
        spec = getattr(config, name)
        if spec is not None and not spec.is_dynamic:
            changes[name] = dataclasses.replace(spec, observer_or_fake_quant_ctr=ctr)
    return dataclasses.replace(config, **changes)


@dataclass
class PT2EResult:
    """A converted (quantize/dequantize) graph and what was measured while making it."""

    module: torch.fx.GraphModule
    observer: str
    sqnr_db: float                                   # quantized graph vs float model, on the calibration inputs
    tried: dict[str, float] = field(default_factory=dict)   # observer -> SQNR dB
    notes: list[str] = field(default_factory=list)
    layers: dict[str, str] = field(default_factory=dict)    # conv/linear layer -> "int8" | "float", as converted


def sqnr_db(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> float:
    from ..verify import sqnr_db as _sqnr
    return _sqnr(np.concatenate([np.asarray(r, np.float64).ravel() for r in ref]),
                 np.concatenate([np.asarray(g, np.float64).ravel() for g in got]))


def _outputs(module: Callable, samples: Sequence[Inputs]) -> list[np.ndarray]:
    from ..model import flatten_outputs
    with torch.no_grad():
        return [np.concatenate([t.detach().float().numpy().ravel() for t in flatten_outputs(module(*s))]) for s in samples]


def export_graph(module: torch.nn.Module, example_args: Inputs) -> torch.fx.GraphModule:
    """``torch.export`` of a copy of ``module`` (eval mode), as the graph module PT2E prepares."""
    return torch.export.export(copy.deepcopy(module).eval(), tuple(example_args), strict=False).module()


def prepare_calibrate_convert(module: torch.nn.Module, example_args: Inputs, make_config: Callable[[], Any],
                              make_quantizer: Callable[[Any], Any], samples: Sequence[Inputs], observer: str,
                              fold_quantize: bool = True, exported: torch.fx.GraphModule | None = None
                              ) -> torch.fx.GraphModule:
    """One PT2E pass: export, insert observers, calibrate on ``samples``, convert to Q/DQ. ``exported`` (from
    :func:`export_graph`) saves the export when one module is quantized several ways; it is copied, not changed."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    gm = copy.deepcopy(exported) if exported is not None else export_graph(module, example_args)
    quantizer = make_quantizer(with_activation_observer(make_config(), observer))
    prepared = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for s in samples:
            prepared(*s)
    return convert_pt2e(prepared, fold_quantize=fold_quantize)


def pick_best(candidates: Sequence[tuple[str, Callable[[], T]]], measure: Callable[[T], float],
              target_db: float = TARGET_DB) -> tuple[T, str, dict[str, float]]:
    """Make the candidates in order, measure each (SQNR dB) and stop at the first that meets ``target_db``;
    otherwise keep the best. Returns ``(made, label, {label: SQNR})``. A candidate that raises is recorded as
    -inf and skipped (its error is logged); if all raise, the last error propagates."""
    tried: dict[str, float] = {}
    best: tuple[float, str, T] | None = None
    error: BaseException | None = None
    for label, make in candidates:
        try:
            made = make()
            s = float(measure(made))
        except Exception as e:  # noqa: BLE001 - one recipe failing leaves the others to try
            log.warning("int8 candidate %s failed: %s: %s", label, type(e).__name__, e)
            tried[label], error = float("-inf"), e
            continue
        tried[label] = round(s, 2)
        log.info("int8 candidate %s: %.2f dB SQNR on the calibration inputs", label, s)
        if best is None or s > best[0]:
            best = (s, label, made)
        if s >= target_db:
            break
    if best is None:
        raise error  # type: ignore[misc]
    return best[2], best[1], tried


def reference_outputs(module: Callable, samples: Sequence[Inputs]) -> list[np.ndarray]:
    """The float model's outputs on ``samples``, each sample's outputs flattened into one vector."""
    return _outputs(module, samples)


def runtime_sqnr(path, samples: Sequence[Inputs], reference: Sequence[np.ndarray]) -> float:
    """SQNR (dB) of an exported artifact run in its own runtime on ``samples`` against ``reference``."""
    from edgeship_runtime import open_runtime

    rt = open_runtime(path)
    got = [np.concatenate([np.asarray(o, np.float64).ravel() for o in rt.run([t.numpy() for t in s])]) for s in samples]
    return sqnr_db(reference, got)


def tried_note(tried: dict[str, float], kept: str) -> str:
    return ("int8 recipes tried (SQNR on the calibration inputs, dB): "
            + ", ".join(f"{k} {v:g}" for k, v in tried.items()) + f"; kept {kept}")


def quantize_pt2e(module: torch.nn.Module, example_args: Inputs, make_config: Callable[[], Any],
                  make_quantizer: Callable[[Any], Any], samples: Sequence[Inputs], *,
                  observers: Sequence[str] = OBSERVERS, target_db: float = TARGET_DB,
                  fold_quantize: bool = True, keep_float: Collection[str] = ()) -> PT2EResult:
    """Static int8 with a backend's PT2E quantizer, measured: tries the activation ``observers`` in order and stops
    at the first whose quantized graph keeps ``target_db`` SQNR on the calibration inputs; otherwise keeps the best.

    ``make_config()`` returns the backend's ``QuantizationConfig`` (per-channel symmetric weights);
    ``make_quantizer(config)`` returns the backend's quantizer with that config set globally. The layers in
    ``keep_float`` (module names) stay float (:func:`select_layers`)."""
    reference = _outputs(module, samples)
    quantizer = lambda c: select_layers(make_quantizer(c), keep_float)  # noqa: E731 - as is when keep_float is empty
    exported = export_graph(module, example_args)
    candidates = [(o, (lambda o=o: prepare_calibrate_convert(module, example_args, make_config, quantizer,
                                                              samples, o, fold_quantize, exported)))
                  for o in observers]
    converted, observer, tried = pick_best(candidates, lambda gm: sqnr_db(reference, _outputs(gm, samples)), target_db)
    s = tried[observer]
    notes = [f"static int8: per-channel symmetric int8 weights, per-tensor int8 activations ({observer} observer)"]
    if len(tried) > 1:
        notes.append(tried_note({f"{k} observer": v for k, v in tried.items()}, f"{observer} observer"))
    if s < target_db:
        notes.append(low_sqnr_note(s, target_db))
    return PT2EResult(converted, observer, s, tried, notes, graph_layer_precisions(converted))


def low_sqnr_note(s: float, target_db: float = TARGET_DB) -> str:
    return (f"int8 keeps only {s:.1f} dB SQNR on the calibration inputs (target {target_db:g} dB): "
            "try real calibration data, more samples, or another format's int8")
