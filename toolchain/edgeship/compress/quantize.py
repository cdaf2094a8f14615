"""PT2E static int8, shared by the exporters that quantize a torch graph (ExecuTorch/XNNPACK, litert-torch).

The trip is torchao's: ``torch.export`` -> ``prepare_pt2e`` (observers where the backend's quantizer annotates)
-> calibration (run the observed graph on representative inputs) -> ``convert_pt2e`` (quantize/dequantize pairs
that each backend lowers to its int8 kernels). What differs per backend is only the quantizer object.

DESIGN.md: int8 is where fidelity breaks, so :func:`quantize_pt2e` measures what it made (SQNR of the quantized
graph against the float model on held-back calibration inputs) and, when that is below ``target_db``, tries the
other activation observer, then the remedies (cross-layer equalization, SmoothQuant, mixed precision), and keeps
the first that meets it, else the most faithful. The shipped artifact is measured again in its runtime by the parity gate.

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
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Sequence, TypeVar

import numpy as np
import torch

from ..errors import EdgeshipError
from ..model import ModelSpec
from ..verify import SCHEMES

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION_SAMPLES = 32
OBSERVERS = ("histogram", "minmax")   # activation observers; weights are always per-channel min/max (symmetric)
SPEED_MARGIN_DB = 3.0                 # choose: the faster recipe wins only within this many dB of the most faithful
TIE_DB = 1.0                          # ... and, when none meets the target, only within this (a tie): on the
# PP-OCR detector, U8S8 percentile measured 0.2-0.5 dB below S8S8 on 6 held-back images and 1.0 dB above it on
# 24 others, so differences under 1 dB on the held-back samples are noise (S8S8 runs 2x slower there)
SPEED_TIE = 0.10                      # ... and only when faster by more than this fraction: within it, timing noise
# on a shared 2-core host decides (tiny_lstm: S8S8 0.0255 ms vs U8S8 0.0257 ms in one run, 0.0250 vs 0.0246 in the
# next), so of the recipes that fast the most faithful is kept, and the same file comes out run after run
TARGET_DB = SCHEMES["int8"].threshold  # int8's tolerance: below this a remedy is tried
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


# Constant pads (TF-style "same" padding written as F.pad before a conv) that the backends' quantizers leave
# unannotated: each read the float tensor and only its output was quantized, so the pad ran in float between
# conversions, a float island. On a depthwise-separable CNN with explicit pads (1x3x224x224, 1 thread, this
# machine), ExecuTorch int8 ran 1.51 ms against 1.13 ms fp32; with the pads in int8 (int8_pads) 0.98 ms, same
# SQNR. LiteRT's converter folds zero pads into the convs itself (1 PAD op of 7 left in its int8 file), so only
# the ExecuTorch exporter asks for the pass.
PADS = frozenset({"constant_pad_nd", "pad"})


def int8_pads(gm: torch.fx.GraphModule) -> int:
    """Make each constant pad of a converted PT2E graph run on int8: where a pad reads a float tensor and its
    only user quantizes the result, quantize and dequantize its input with that same scale and zero point first.
    Exact: padding with 0 commutes with quantization when 0 maps to the zero point, which it does by construction.
    Returns how many pads changed."""
    changed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or _op_name(node.target) not in PADS or len(node.users) != 1:
            continue
        mode = node.args[2] if _op_name(node.target) == "pad" and len(node.args) > 2 else "constant"
        value = node.args[-1] if len(node.args) > (3 if _op_name(node.target) == "pad" else 2) else 0
        if mode != "constant" or value not in (None, 0, 0.0):
            continue   # reflect/replicate padding, or a pad value other than 0
        (q,) = node.users
        src = node.args[0]
        decomposed = torch.ops.quantized_decomposed
        if (q.target is not decomposed.quantize_per_tensor.default or not isinstance(src, torch.fx.Node)
                or "dequantize" in _op_name(getattr(src, "target", ""))):
            continue
        with gm.graph.inserting_before(node):
            qi = gm.graph.call_function(q.target, (src, *q.args[1:]), dict(q.kwargs))
            dqi = gm.graph.call_function(decomposed.dequantize_per_tensor.default, (qi, *q.args[1:]), {})
        node.replace_input_with(src, dqi)
        changed += 1
    if changed:
        gm.graph.lint()
        gm.recompile()
    return changed


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
    sqnr_db: float                                   # quantized graph vs float model, on held-back calibration inputs
    tried: dict[str, float] = field(default_factory=dict)   # recipe -> SQNR dB
    notes: list[str] = field(default_factory=list)
    layers: dict[str, str] = field(default_factory=dict)    # conv/linear layer -> "int8" | "float", as converted
    recipe: str = ""                                 # the kept candidate's label
    seconds: dict[str, float] = field(default_factory=dict)  # recipe -> s to build and measure it


def sqnr_db(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> float:
    from ..verify import sqnr_db as _sqnr
    return _sqnr(np.concatenate([np.asarray(r, np.float64).ravel() for r in ref]),
                 np.concatenate([np.asarray(g, np.float64).ravel() for g in got]))


def _outputs(module: Callable, samples: Sequence[Inputs]) -> list[np.ndarray]:
    from ..model import flatten_outputs
    with torch.no_grad():
        return [np.concatenate([t.detach().float().numpy().ravel() for t in flatten_outputs(module(*s))]) for s in samples]


def export_graph(module: torch.nn.Module, example_args: Inputs, dynamic_shapes=None) -> torch.fx.GraphModule:
    """``torch.export`` of a copy of ``module`` (eval mode), as the graph module PT2E prepares; ``dynamic_shapes``
    (``ModelSpec.dynamic_shapes()``) keeps dynamic dimensions symbolic, so the quantized graph exports with them."""
    return torch.export.export(copy.deepcopy(module).eval(), tuple(example_args), dynamic_shapes=dynamic_shapes,
                               strict=False).module()


def prepare_calibrate_convert(module: torch.nn.Module, example_args: Inputs, make_config: Callable[[], Any],
                              make_quantizer: Callable[[Any], Any], samples: Sequence[Inputs], observer: str,
                              fold_quantize: bool = True, exported: torch.fx.GraphModule | None = None,
                              pads: bool = False) -> torch.fx.GraphModule:
    """One PT2E pass: export, insert observers, calibrate on ``samples``, convert to Q/DQ. ``exported`` (from
    :func:`export_graph`) saves the export when one module is quantized several ways; it is copied, not changed.
    ``pads``: make constant pads int8 (:func:`int8_pads`; for XNNPACK's ExecuTorch delegate)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    gm = copy.deepcopy(exported) if exported is not None else export_graph(module, example_args)
    quantizer = make_quantizer(with_activation_observer(make_config(), observer))
    prepared = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for s in samples:
            prepared(*s)
    converted = convert_pt2e(prepared, fold_quantize=fold_quantize)
    if pads:
        int8_pads(converted)
    return converted


class NotApplicable(Exception):
    """Raised by a candidate's ``make`` when its recipe does not apply to this model (no layers it would change,
    nothing new to try): :func:`choose` passes over it without recording it."""


@dataclass(frozen=True)
class Candidate:
    """One way to make a format's int8 artifact: ``make()`` builds it (a file or a graph). Candidates in one
    ``round`` are all built and measured; a later round is tried only when none of an earlier one met the target."""

    label: str
    make: Callable[[], Any]
    round: int = 0


@dataclass
class Choice:
    """What :func:`choose` kept, and what it measured of every candidate it built."""

    made: Any
    label: str
    tried: dict[str, float]                     # label -> SQNR dB on the held-back samples (-inf: it failed)
    latency_ms: dict[str, float] = field(default_factory=dict)   # label -> ms, for the candidates that met the target
    why: str = ""
    seconds: dict[str, float] = field(default_factory=dict)      # label -> s to build and measure it

    @property
    def sqnr_db(self) -> float:
        return self.tried[self.label]


def choose(candidates: Sequence[Candidate], measure: Callable[[Any], float], *, target_db: float = TARGET_DB,
           speed: Callable[[list], list[float]] | None = None) -> Choice:
    """The one measure-and-choose loop of every int8 exporter (DESIGN.md: fidelity first, then speed).

    Round by round, build every candidate of the round and ``measure`` it (SQNR dB against the float model, in the
    format's own runtime, on calibration samples held back from calibration: :func:`split_calibration`). The first
    round where some candidates meet ``target_db`` ends the search: of those within ``SPEED_MARGIN_DB`` of the most
    faithful, the fastest by ``speed`` (ms of each, measured together) is kept, or the most faithful when there is
    no ``speed``. When no candidate meets the target, the most faithful of all is kept (the fastest of those within
    ``TIE_DB`` of it, given ``speed``). A candidate that raises :class:`NotApplicable` is passed over; one that raises
    anything else is recorded as -inf (its error logged); if every one raises, the last error propagates."""
    tried: dict[str, float] = {}
    built: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    error: BaseException | None = None
    for r in sorted({c.round for c in candidates}):
        for c in (c for c in candidates if c.round == r):
            start = time.perf_counter()
            try:
                made = c.make()
                tried[c.label] = round(float(measure(made)), 2)
                built[c.label] = made
                seconds[c.label] = round(time.perf_counter() - start, 1)
                log.info("int8 candidate %s: %.2f dB SQNR on the held-back samples (%.1f s)", c.label, tried[c.label],
                         seconds[c.label])
            except NotApplicable as e:
                log.info("int8 candidate %s does not apply: %s", c.label, e)
            except Exception as e:  # noqa: BLE001 - one recipe failing leaves the others to try
                log.warning("int8 candidate %s failed: %s: %s", c.label, type(e).__name__, e,
                            exc_info=log.isEnabledFor(logging.DEBUG))
                tried[c.label], error = float("-inf"), e
        meeting = [k for k in built if tried[k] >= target_db]
        if meeting:   # speed only among those close to the most faithful (a tie on the held-back samples)
            return dataclasses.replace(_keep(meeting, SPEED_MARGIN_DB, built, tried, speed, f"meets {target_db:g} dB",
                                             f"fastest of those meeting {target_db:g} dB"), seconds=seconds)
    if not built:
        raise error  # type: ignore[misc]
    return dataclasses.replace(_keep(list(built), TIE_DB, built, tried, speed, f"most faithful; none met {target_db:g} dB",
                                     f"none met {target_db:g} dB; fastest of those within {TIE_DB:g} dB of the most faithful"),
                               seconds=seconds)


def _keep(labels: list[str], margin_db: float, built: dict, tried: dict[str, float], speed, why_best: str,
          why_fastest: str) -> Choice:
    """Of ``labels``, the fastest by ``speed`` among those within ``margin_db`` of the most faithful (of those
    within ``SPEED_TIE`` of the fastest, the most faithful); the most faithful when there is no ``speed`` or nothing
    to compare it with."""
    best = max(labels, key=lambda k: tried[k])
    close = [k for k in labels if tried[k] >= tried[best] - margin_db]
    if speed is None or len(close) == 1:
        return Choice(built[best], best, tried, why=why_best)
    ms = dict(zip(close, (round(float(v), 4) for v in speed([built[k] for k in close]))))
    fastest = min(ms.values())
    label = max((k for k in close if ms[k] <= fastest * (1 + SPEED_TIE)), key=lambda k: tried[k])
    return Choice(built[label], label, tried, ms, why=why_fastest)


def split_calibration(samples: Sequence[Inputs], hold_back: float = 0.25, minimum: int = 8
                      ) -> tuple[list[Inputs], list[Inputs], str]:
    """Split calibration samples into ``(calibrate_on, measure_on, note)``: a quarter (at least 2) held back to
    measure candidates on inputs their calibration never saw. With fewer than ``minimum`` samples all are used for
    both, and the note says so."""
    samples = list(samples)
    if len(samples) < minimum:
        return samples, samples, (f"int8 candidates measured on the {len(samples)} calibration samples themselves "
                                  f"(fewer than {minimum}: none held back)")
    k = max(2, round(len(samples) * hold_back))
    return samples[:-k], samples[-k:], f"int8 candidates measured on {k} calibration samples held back from calibration"


def reference_outputs(module: Callable, samples: Sequence[Inputs]) -> list[np.ndarray]:
    """The float model's outputs on ``samples``, each sample's outputs flattened into one vector."""
    return _outputs(module, samples)


def runtime_sqnr(path, samples: Sequence[Inputs], reference: Sequence[np.ndarray]) -> float:
    """SQNR (dB) of an exported artifact run in its own runtime on ``samples`` against ``reference``."""
    from edgeship_runtime import open_runtime

    rt = open_runtime(path)
    got = [np.concatenate([np.asarray(o, np.float64).ravel() for o in rt.run([t.numpy() for t in s])]) for s in samples]
    return sqnr_db(reference, got)


def runtime_latency(paths: Sequence, sample: Inputs, rounds: int = 3, runs: int = 10) -> list[float]:
    """Median ms per run of each artifact in its own runtime on one thread, measured together: ``rounds``
    alternating rounds of ``runs`` runs each (one warm-up first), so a busy machine slows all of them alike."""
    import statistics
    import time

    from edgeship_runtime import open_runtime

    feeds = [t.numpy() for t in sample]
    rts = [open_runtime(p, threads=1) for p in paths]
    for rt in rts:
        rt.run(feeds)
    times: list[list[float]] = [[] for _ in rts]
    for _ in range(rounds):
        for k, rt in enumerate(rts):
            for _ in range(runs):
                t0 = time.perf_counter()
                rt.run(feeds)
                times[k].append(1000 * (time.perf_counter() - t0))
    return [statistics.median(t) for t in times]


def choice_note(choice: "Choice") -> str:
    """What :func:`choose` tried and why it kept what it kept, for the artifact's notes."""
    parts = []
    for label, db in choice.tried.items():
        ms = choice.latency_ms.get(label)
        parts.append(f"{label} {'failed' if db == float('-inf') else f'{db:g} dB'}" + (f" {ms:.3g} ms" if ms else ""))
    return f"int8 recipes tried (SQNR on held-back calibration samples): {', '.join(parts)}; kept {choice.label} ({choice.why})"


def quantize_pt2e(module: torch.nn.Module, example_args: Inputs, make_config: Callable[[], Any],
                  make_quantizer: Callable[[Any], Any], samples: Sequence[Inputs], *,
                  observers: Sequence[str] = OBSERVERS, target_db: float = TARGET_DB,
                  fold_quantize: bool = True, keep_float: Collection[str] = (), remedies: bool = True,
                  calibrated_on_data: bool = True, pads: bool = False, dynamic_shapes=None) -> PT2EResult:
    """Static int8 with a backend's PT2E quantizer, measured (:func:`choose`): the activation ``observers`` in order,
    then, when none meets ``target_db`` on held-back calibration samples, the remedies with the observer that did
    best (min/max on a tie: it calibrates faster): the cross-layer-equalized graph (compress.equalize; exact in
    float) and, where LayerNorms or linear layers feed linear layers, the SmoothQuant-migrated graph
    (compress.smooth; exact in float); then automatic mixed precision: the modules whose ops lose most SQNR
    (:func:`float_ranking`) kept in float, the fewest of the ``MIXED_STEPS`` sets within ``MIXED_FLOAT_BUDGET`` of
    the weights that meets the target, found by bisection (the largest set first). The first round that meets the
    target decides, else the most faithful of all is kept.

    ``make_config()`` returns the backend's ``QuantizationConfig`` (per-channel symmetric weights);
    ``make_quantizer(config)`` returns the backend's quantizer with that config set globally. The layers in
    ``keep_float`` (module names) stay float (:func:`select_layers`); ``pads``: see :func:`int8_pads`;
    ``remedies=False``: only the observers (plain PTQ, as a baseline). ``dynamic_shapes``: see :func:`export_graph`."""
    calibrate_on, measure_on, held_note = split_calibration(samples)
    reference = _outputs(module, measure_on)
    quantizer = lambda c: select_layers(make_quantizer(c), keep_float)  # noqa: E731
    exported = export_graph(module, example_args, dynamic_shapes)

    @functools.cache
    def equalization():   # (graph, report), made once and only when a remedy round is reached
        from .equalize import equalized_copy
        return equalized_copy(exported)

    @functools.cache
    def smoothing():      # (graph, report): SmoothQuant with activation ranges from the calibration samples
        from .smooth import smooth_graph
        return smooth_graph(exported, calibrate_on)

    graphs = {"plain": lambda: exported, "cle": lambda: equalization()[0], "smooth": lambda: smoothing()[0]}
    made: dict[str, torch.fx.GraphModule] = {}

    def remedy_observer() -> str:
        """The observer the remedies use: the best on the plain graph, the first of ``observers`` on a tie (on the
        PP-OCR detector both plain graphs kept 0 dB, and mixed precision kept 12.9 dB with the histogram observer,
        0 dB with min/max)."""
        db = {o: measure(made[o]) for o in observers if o in made}
        return next((o for o in observers if o in db and db[o] >= max(db.values()) - TIE_DB), observers[0])

    def make(observer: str | None, graph: str = "plain", keep: Collection[str] = ()):
        def build():
            if observer is None:
                return make(remedy_observer(), graph, keep)()
            q = (quantizer if not keep else
                 lambda c: select_layers(make_quantizer(c), frozenset(keep_float) | frozenset(keep)))  # noqa: E731
            gm = prepare_calibrate_convert(module, example_args, make_config, q, calibrate_on, observer,
                                           fold_quantize, graphs[graph](), pads)
            if graph == "plain" and not keep:
                made[observer] = gm   # the plain graphs: where the mixed precision looks for the losses
            return gm
        return build

    static = not any(c.is_dynamic for c in _activation_specs(make_config()))
    candidates = [Candidate(f"{o} observer", make(o), round=k) for k, o in enumerate(observers)]
    scores: dict[int, tuple[Any, float]] = {}   # id(graph) -> (graph, SQNR dB): the mixed precision search
                                                # measures as it goes; the graph is kept so its id stays its own
    def measure(gm) -> float:
        if id(gm) not in scores:
            scores[id(gm)] = (gm, sqnr_db(reference, _outputs(gm, measure_on)))
        return scores[id(gm)][1]

    mixed: dict[str, tuple[list[str], float, float]] = {}   # label -> (float modules, their weight share, SQNR dB)
    returned: list[str] = []                                # the label of the layer set the search returned
    if remedies and static:
        from .smooth import smooth_pairs
        candidates.append(Candidate("cross-layer equalized", make(None, "cle"), round=len(observers)))
        if smooth_pairs(exported):
            candidates.append(Candidate("SmoothQuant", make(None, "smooth"), round=len(observers)))
        ranking = functools.cache(lambda: float_ranking(module, exported, made[remedy_observer()],
                                                        (list(measure_on) + list(calibrate_on))[:RANKING_SAMPLES],
                                                        frozenset(keep_float)))

        def build_mixed():
            """The fewest float modules that meet the target, by bisection over the ``MIXED_STEPS`` layer sets (the
            largest first: when it misses, no smaller set is built)."""
            if not made:
                raise NotApplicable("no plain int8 graph to rank the layers on: every plain recipe failed")
            sets: list[tuple[list[str], float]] = []
            for k in MIXED_STEPS:
                keep, share = _top_within_budget(ranking(), k)
                if keep and all(keep != s[0] for s in sets):
                    sets.append((keep, share))
            if not sets:
                raise NotApplicable(f"no layer set within {MIXED_FLOAT_BUDGET:.0%} of the weights")
            built: dict[int, torch.fx.GraphModule] = {}
            label = lambda i: f"mixed precision, {len(sets[i][0])} float"  # noqa: E731

            def db(i: int) -> float:
                if i not in built:
                    built[i] = make(None, "plain", sets[i][0])()
                    mixed[label(i)] = (*sets[i], round(measure(built[i]), 2))
                return measure(built[i])

            lo, hi = 0, len(sets) - 1
            if db(hi) >= target_db:
                while lo < hi:
                    mid = (lo + hi) // 2
                    lo, hi = (lo, mid) if db(mid) >= target_db else (mid + 1, hi)
            returned.append(label(hi))
            return built[hi]
        candidates.append(Candidate("mixed precision", build_mixed, round=len(observers) + 1))
    choice = choose(candidates, measure, target_db=target_db)
    if "mixed precision" in choice.tried and mixed:   # list every layer set the search measured, name the one kept
        seconds = choice.seconds.pop("mixed precision", None)
        del choice.tried["mixed precision"]
        choice.tried |= {k: v[2] for k, v in mixed.items()}
        if seconds is not None:
            choice.seconds[returned[-1]] = seconds
        if choice.label == "mixed precision":
            choice.label = returned[-1]
    observer = choice.label.removesuffix(" observer") if choice.label.endswith(" observer") else remedy_observer()
    notes = [f"static int8: per-channel symmetric int8 weights, per-tensor int8 activations ({observer} observer)"]
    if choice.label.startswith("cross-layer"):
        notes.append(equalization()[1].note())
    if choice.label.startswith("SmoothQuant"):
        notes.append(smoothing()[1].note())
    if choice.label in mixed:
        keep, share, _ = mixed[choice.label]
        notes.append(f"mixed precision (automatic, the int8 recipes missed {target_db:g} dB): kept in float "
                     f"{', '.join(keep)} ({share:.1%} of the weights), the ops that lost most SQNR on held-back "
                     f"calibration samples; {1 - share:.1%} of the weights stay int8")
    notes.append(held_note)
    if len(choice.tried) > 1:
        notes.append(choice_note(choice))
    if choice.sqnr_db < target_db:
        notes.append(low_sqnr_note(choice, calibrated_on_data=calibrated_on_data))
    return PT2EResult(choice.made, observer, choice.sqnr_db, choice.tried, notes,
                      graph_layer_precisions(choice.made), choice.label, choice.seconds)


MIXED_STEPS = (1, 2, 4, 8, 16, 32)   # modules kept in float: the layer sets the automatic mixed precision bisects
MIXED_FLOAT_BUDGET = 0.10         # at most this share of the weights float (issue #12: >= 90% stay int8)
RANKING_SAMPLES = 4               # inputs the per-op loss ranking runs (2 missed PP-OCR's head conv, 4 found it)


def float_ranking(module: torch.nn.Module, exported: torch.fx.GraphModule, converted: torch.fx.GraphModule,
                  samples: Sequence[Inputs], skip: Collection[str] = ()) -> list[tuple[str, float, float]]:
    """Where int8 loses most: every op of ``converted`` against the same op (by name) of ``exported`` on
    ``samples``; an op's loss is the SQNR of its worst input minus the SQNR of its output (dB, inputs capped at
    60), charged to its module (deepest scope) and to the modules that produced its inputs. Returns ``(module path,
    loss dB, share of the model's weights)``, worst first."""
    from torch.fx import Interpreter

    def record(gm, x, ref=None):
        out: dict[str, Any] = {}

        class Run(Interpreter):
            def run_node(self, n):
                r = super().run_node(n)
                if n.op == "call_function" and isinstance(r, torch.Tensor) and r.is_floating_point():
                    if ref is None:
                        out[n.name] = r.detach().to(torch.float32)
                    elif n.name in ref and ref[n.name].shape == r.shape:
                        d = (ref[n.name].double() - r.detach().double())
                        out[n.name] = (float((ref[n.name].double() ** 2).sum()), float((d ** 2).sum()))
                return r
        with torch.no_grad():
            Run(gm).run(*x)
        return out

    sums: dict[str, list[float]] = {}
    for x in samples:
        ref = record(exported, x)
        for name, (sig, noise) in record(converted, x, ref).items():
            acc = sums.setdefault(name, [0.0, 0.0])
            acc[0] += sig
            acc[1] += noise
        del ref
    snr = {k: 10 * np.log10(max(sig, 1e-30) / max(noise, 1e-30)) for k, (sig, noise) in sums.items()}
    total = sum(p.numel() for p in module.parameters()) or 1
    weights = {n: sum(p.numel() for p in m.parameters()) / total for n, m in module.named_modules() if n}
    def owner(node) -> str | None:
        scopes = [p for p in node_scopes(node) if p in weights]
        return scopes[-1] if scopes and not covered(scopes[-1:], skip) else None

    losses: dict[str, float] = {}
    for node in exported.graph.nodes:
        if node.name not in snr:
            continue
        ins = [a for a in node.all_input_nodes if a.name in snr]
        loss = (min(min(snr[a.name], 60.0) for a in ins) if ins else 60.0) - snr[node.name]
        # The loss shows at the op, but its cause may be the int8 tensor it reads: that tensor's scale is its
        # producer's, and keeping only the reader in float leaves it quantized (an outlier feature that the
        # producer's output carries looks harmless there: it dominates that tensor's SQNR). Both are candidates.
        for m in {owner(node), *(owner(a) for a in ins)} - {None}:
            losses[m] = max(losses.get(m, float("-inf")), loss)
    return sorted(((m, round(l, 2), weights[m]) for m, l in losses.items() if l > 0), key=lambda r: (-r[1], r[0]))


def _top_within_budget(ranking: list[tuple[str, float, float]], k: int) -> tuple[list[str], float]:
    """The ``k`` worst modules of ``ranking`` whose weights together stay within ``MIXED_FLOAT_BUDGET``."""
    keep, share = [], 0.0
    for name, _, w in ranking:
        if len(keep) == k:
            break
        if share + w > MIXED_FLOAT_BUDGET or any(covered([name], [k_]) or covered([k_], [name]) for k_ in keep):
            continue
        keep.append(name)
        share += w
    return keep, share


def _activation_specs(config) -> list:
    return [s for s in (getattr(config, "input_activation", None), getattr(config, "output_activation", None)) if s]


def low_sqnr_note(choice: "Choice", calibrated_on_data: bool = True) -> str:
    """An honest hint when the most faithful int8 recipe still misses the target: what it kept and what is left to
    try, true to the case (real data only when the calibration was random)."""
    nexts = []
    if not calibrated_on_data:
        nexts.append("calibrate on real inputs (--calib DATA)")
    nexts += ["keep the most sensitive layers in float (--max-accuracy-drop N with labelled --eval picks them; "
              "--keep-float LAYER,... names them)",
              "quantization-aware training (edgeship compress with a qat: stage)",
              "fp16 (half the size, float accuracy)"]
    return (f"int8 keeps only {choice.sqnr_db:.1f} dB SQNR on held-back calibration samples (target "
            f"{TARGET_DB:g} dB) after {len(choice.tried)} recipe{'s' if len(choice.tried) > 1 else ''} "
            f"({', '.join(choice.tried)}); next: " + "; ".join(nexts))
