"""Which layers int8 hurts most, and keeping the worst in float until an accuracy budget holds.

The int8 simulation runs in torch: PT2E with XNNPACK's quantizer (the ExecuTorch export's recipe: per-channel
symmetric int8 weights, per-tensor int8 activations, histogram observer), calibrated on the calibration inputs;
for a model that takes integer inputs (token ids) its dynamic mode, as the exporters use for such models.

* :func:`layer_sensitivity`: for each quantizable layer (Conv1d/2d/3d, Linear) quantize only that layer and measure
  the model output's SQNR (dB) against float on the calibration inputs. Lowest first: the most sensitive layer.
* :func:`fit_accuracy_budget`: quantize every layer; while the accuracy drop on labelled eval data (points against
  fp32, measured on the quantized PT2E graph) exceeds ``max_accuracy_drop``, keep the next most sensitive layer in
  float and measure again. The set it returns goes to every format's own quantizer as ``QuantOptions.keep_float``;
  each artifact's accuracy is then measured again in its own runtime, which is what ships.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Sequence

import torch

from ..errors import EdgeshipError
from ..model import ModelSpec
from .quantize import (DEFAULT_CALIBRATION_SAMPLES, OBSERVERS, QuantOptions, calibration_inputs, dynamic_reason,
                       export_graph, prepare_calibrate_convert, quantizable_layers, reference_outputs, select_layers, sqnr_db)
from .train import evaluate

log = logging.getLogger(__name__)
SIMULATION = ("PT2E static int8 in torch with XNNPACK's quantizer: per-channel symmetric int8 weights, per-tensor "
              "int8 activations ({observer} observer)")
SIMULATION_DYNAMIC = ("PT2E dynamic int8 in torch with XNNPACK's quantizer (the model takes integer inputs, as the "
                      "exporters do for token models): per-channel symmetric int8 weights, activations quantized per run")
Progress = Callable[[str, int, int], None]   # (what, done, total)


@dataclass
class LayerSensitivity:
    name: str                   # module name, as in model.named_modules()
    type: str                   # its class name (Conv2d, Linear)
    sqnr_db: float              # model output vs float with only this layer int8, on the calibration inputs
    kept_float: bool = False
    why: str | None = None      # "given" (asked for) | "accuracy budget"

    def to_dict(self) -> dict:
        return {"layer": self.name, "type": self.type,
                "sqnr_db": round(self.sqnr_db, 2) if math.isfinite(self.sqnr_db) else None,
                "kept_float": self.kept_float, "why": self.why}


@dataclass
class SensitivityReport:
    """What :func:`fit_accuracy_budget` measured; ``to_dict()`` is report.json's ``"sensitivity"``."""

    layers: list[LayerSensitivity]                  # most sensitive (lowest SQNR) first
    keep_float: frozenset[str]
    simulation: str
    calibration: str
    max_accuracy_drop: float | None = None          # the budget, accuracy points
    eval_examples: int | None = None
    accuracy_fp32: float | None = None
    accuracy_int8: float | None = None              # every layer int8 (except those asked to stay float)
    accuracy_after: float | None = None             # with ``keep_float`` in float
    met: bool | None = None
    steps: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def drop_points(self) -> float | None:
        return None if self.accuracy_after is None else _points(self.accuracy_fp32, self.accuracy_after)

    def to_dict(self) -> dict:
        acc = {"fp32": self.accuracy_fp32, "int8_all_layers": self.accuracy_int8, "int8_after": self.accuracy_after,
               "drop_points_before": None if self.accuracy_int8 is None else _points(self.accuracy_fp32, self.accuracy_int8),
               "drop_points_after": self.drop_points}
        return {"simulation": self.simulation, "calibration": self.calibration, "metric": "output SQNR (dB) with only "
                "that layer int8, on the calibration inputs; lower is more sensitive",
                "max_accuracy_drop": self.max_accuracy_drop, "met": self.met, "eval_examples": self.eval_examples,
                "accuracy": acc, "keep_float": sorted(self.keep_float), "layers": [s.to_dict() for s in self.layers],
                "steps": self.steps, "notes": self.notes}


def _points(a: float, b: float) -> float:
    return round(100 * (a - b), 2)


class _Simulation:
    """One exported graph, quantized with XNNPACK's PT2E quantizer as often as asked (each time on a copy)."""

    def __init__(self, spec: ModelSpec, samples: Sequence[tuple], observer: str):
        from ..export import require
        require("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "executorch", "int8 sensitivity analysis")
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

        from ..export.executorch import xnnpack_quantizer
        XNNPACKQuantizer = type(xnnpack_quantizer())   # noqa: N806 - integer scalars kept integer (#22062)

        class PTQQuantizer(XNNPACKQuantizer):
            # prepare_pt2e folds batch norms into convs before annotating, so the conv+bn patterns never match in
            # post-training quantization; each one re-exports its pattern graphs (~2 s per prepare). Same graph, 5x faster.
            SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if "_bn" not in p.name]

        self.spec, self.samples, self.observer = spec, list(samples), observer
        self.dynamic = dynamic_reason(spec, "int8") is not None   # int8 of a token-id model is dynamic
        self.args = spec.example_inputs()
        self.exported = export_graph(spec.module, self.args)
        self._config = lambda: get_symmetric_quantization_config(is_per_channel=True, is_dynamic=self.dynamic)
        self._quantizer = PTQQuantizer

    @property
    def description(self) -> str:
        return SIMULATION_DYNAMIC if self.dynamic else SIMULATION.format(observer=self.observer)

    def quantize(self, keep_float: Collection[str] = (), only: Collection[str] | None = None) -> torch.fx.GraphModule:
        make = lambda c: select_layers(self._quantizer().set_global(c), keep_float, only)  # noqa: E731
        return prepare_calibrate_convert(self.spec.module, self.args, self._config, make, self.samples, self.observer,
                                         exported=self.exported)


def _sqnr(module, samples, reference) -> float:
    return sqnr_db(reference, reference_outputs(module, samples))


def layer_sensitivity(spec: ModelSpec, calib: Any = None, *, layers: Sequence[str] | None = None,
                      samples: int = DEFAULT_CALIBRATION_SAMPLES, observer: str = OBSERVERS[0],
                      progress: Progress | None = None) -> tuple[list[LayerSensitivity], list[str]]:
    """Per-layer sensitivity, most sensitive first: for each layer in ``layers`` (default: every Conv/Linear),
    only that layer is quantized and the output SQNR against float is measured on the calibration inputs.
    Returns ``(rows, notes)``; ``calib`` is what ``compress.quantize.calibration_inputs`` accepts."""
    inputs, notes = calibration_inputs(spec, calib, samples)
    sim = _Simulation(spec, inputs, observer)
    return _rank(sim, spec, layers, progress), notes


def _rank(sim: _Simulation, spec: ModelSpec, layers: Sequence[str] | None, progress: Progress | None) -> list[LayerSensitivity]:
    names = list(layers) if layers is not None else quantizable_layers(spec.module)
    if not names:
        raise EdgeshipError(f"{spec.name} has no Conv or Linear layers: nothing for int8 to quantize per layer")
    QuantOptions(frozenset(names)).check(spec.module)
    modules = dict(spec.module.named_modules())
    reference = reference_outputs(spec.module, sim.samples)
    rows = []
    for k, name in enumerate(names):
        if progress:
            progress(f"sensitivity: {name}", k, len(names))
        s = _sqnr(sim.quantize(only={name}), sim.samples, reference)
        log.info("layer %s alone in int8: %.2f dB SQNR", name, s)
        rows.append(LayerSensitivity(name, type(modules[name]).__name__, s))
    if progress:
        progress("sensitivity", len(names), len(names))
    rows.sort(key=lambda r: (r.sqnr_db, r.name))
    return rows


def check_budget(max_accuracy_drop, precisions: Collection[str] | None, eval_data=None, spec: ModelSpec | None = None,
                 *, option: str = "--max-accuracy-drop", eval_later: bool = False) -> float:
    """Validate an accuracy budget before any long work: a number >= 0, a quantized precision among ``precisions``
    (None: not known yet), labelled eval data (unless ``eval_later``: a recipe's eval comes with the command), and,
    given ``spec``, a classifier with layers to keep in float. The one check for the CLI, recipes and library callers;
    ``option`` names the setting in the messages."""
    from ..verify import QUANTIZED
    example = "1.0" if option.startswith("--") else ": 1.0"
    try:
        budget = float(max_accuracy_drop)
    except (TypeError, ValueError):
        raise EdgeshipError(f"{option} must be a number of accuracy points, got {max_accuracy_drop!r}",
                            hint=f"e.g. {option} {example} (one point of top-1 accuracy)") from None
    if not math.isfinite(budget) or budget < 0:
        raise EdgeshipError(f"{option} must be >= 0 accuracy points, got {max_accuracy_drop!r}",
                            hint=f"e.g. {option} {example} (one point of top-1 accuracy)")
    if precisions is not None and not QUANTIZED & set(precisions):
        raise EdgeshipError(f"{option} applies to quantized exports; the precisions are {', '.join(precisions)}",
                            hint="ask for a quantized precision, e.g. --precision fp32,int8 (quantize.precision: int8)")
    if eval_data is None and not eval_later:
        raise EdgeshipError(f"an accuracy budget ({option}) needs labelled eval data",
                            hint="add --eval DATA (e.g. --eval digits, an image folder per class, or an .npz with y; "
                                 "in a recipe, `eval:`)")
    if getattr(eval_data, "y", ...) is None:   # a loaded DataSource without labels (a DATA reference is checked on load)
        raise EdgeshipError("the eval data has no labels: an accuracy budget needs them",
                            hint="an image folder per class, or an .npz with y")
    if spec is not None:
        if not spec.task.endswith("classification"):
            raise EdgeshipError(f"an accuracy budget needs a classifier; {spec.name} is a {spec.task!r} model",
                                hint=f"drop {option}, or keep layers in float by name (quantize.layers)")
        if not quantizable_layers(spec.module):
            raise EdgeshipError(f"{spec.name} has no Conv or Linear layers: nothing to keep in float")
    return budget


def accuracy(module, data) -> float:
    """Top-1 accuracy of ``module`` (a torch module or a PT2E graph exported at batch 1) on labelled ``data``,
    one example at a time."""
    return evaluate(module, data, batch_size=1)


def fit_accuracy_budget(spec: ModelSpec, eval_data, max_accuracy_drop: float, calib: Any = None, *,
                        keep_float: Collection[str] = (), samples: int = DEFAULT_CALIBRATION_SAMPLES,
                        observer: str = OBSERVERS[0], progress: Progress | None = None) -> SensitivityReport:
    """Rank the layers (:func:`layer_sensitivity`), then keep the most sensitive ones in float, one at a time, until
    the int8 model's accuracy drop on ``eval_data`` is at most ``max_accuracy_drop`` points. Layers in
    ``keep_float`` stay float from the start. If the budget cannot be met even with every layer in float, the
    report says so (``met`` False, a note) and keeps them all."""
    budget = check_budget(max_accuracy_drop, None, eval_data, spec)
    given = frozenset(keep_float)
    QuantOptions(given).check(spec.module)
    inputs, cnotes = calibration_inputs(spec, calib, samples)
    sim = _Simulation(spec, inputs, observer)
    rows = _rank(sim, spec, None, progress)
    acc_fp32 = accuracy(spec.module, eval_data)
    keep = set(given)
    order = [r.name for r in rows if r.name not in given]
    total = len(order) + 1
    if progress:
        progress("accuracy budget: every layer int8", 0, total)
    acc = acc_int8 = accuracy(sim.quantize(keep), eval_data)
    steps = [{"kept_float": sorted(keep), "layer": None, "accuracy": acc, "drop_points": _points(acc_fp32, acc)}]
    log.info("int8 (every layer): accuracy %.4f, fp32 %.4f, drop %.2f points (budget %g)", acc, acc_fp32,
             _points(acc_fp32, acc), budget)
    while _points(acc_fp32, acc) > budget and order:
        layer = order.pop(0)
        keep.add(layer)
        if progress:
            progress(f"accuracy budget: {layer} in float", len(steps), total)
        acc = accuracy(sim.quantize(keep), eval_data)
        steps.append({"kept_float": sorted(keep), "layer": layer, "accuracy": acc, "drop_points": _points(acc_fp32, acc)})
        log.info("%s in float: accuracy %.4f, drop %.2f points", layer, acc, _points(acc_fp32, acc))
    if progress:
        progress("accuracy budget", total, total)
    met = _points(acc_fp32, acc) <= budget
    for r in rows:
        if r.name in keep:
            r.kept_float, r.why = True, "given" if r.name in given else "accuracy budget"
    notes = cnotes[1:]
    if not met:
        notes.append(f"the accuracy budget of {budget:g} points is not met even with every conv/linear layer in "
                     f"float: the drop is still {_points(acc_fp32, acc):g} points (the int8 activations between "
                     "layers cost it); try real calibration data (--calib), more samples, or a larger budget")
        log.warning(notes[-1])
    return SensitivityReport(rows, frozenset(keep), sim.description, cnotes[0], budget, len(eval_data), acc_fp32, acc_int8, acc,
                             met, steps, notes)
