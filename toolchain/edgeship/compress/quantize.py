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
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

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


def sqnr_db(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> float:
    from ..verify import sqnr_db as _sqnr
    return _sqnr(np.concatenate([np.asarray(r, np.float64).ravel() for r in ref]),
                 np.concatenate([np.asarray(g, np.float64).ravel() for g in got]))


def _outputs(module: Callable, samples: Sequence[Inputs]) -> list[np.ndarray]:
    from ..model import flatten_outputs
    with torch.no_grad():
        return [np.concatenate([t.detach().float().numpy().ravel() for t in flatten_outputs(module(*s))]) for s in samples]


def prepare_calibrate_convert(module: torch.nn.Module, example_args: Inputs, make_config: Callable[[], Any],
                              make_quantizer: Callable[[Any], Any], samples: Sequence[Inputs], observer: str,
                              fold_quantize: bool = True) -> torch.fx.GraphModule:
    """One PT2E pass: export, insert observers, calibrate on ``samples``, convert to Q/DQ."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    gm = torch.export.export(copy.deepcopy(module).eval(), tuple(example_args), strict=False).module()
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
                  fold_quantize: bool = True) -> PT2EResult:
    """Static int8 with a backend's PT2E quantizer, measured: tries the activation ``observers`` in order and stops
    at the first whose quantized graph keeps ``target_db`` SQNR on the calibration inputs; otherwise keeps the best.

    ``make_config()`` returns the backend's ``QuantizationConfig`` (per-channel symmetric weights);
    ``make_quantizer(config)`` returns the backend's quantizer with that config set globally."""
    reference = _outputs(module, samples)
    candidates = [(o, (lambda o=o: prepare_calibrate_convert(module, example_args, make_config, make_quantizer,
                                                              samples, o, fold_quantize)))
                  for o in observers]
    converted, observer, tried = pick_best(candidates, lambda gm: sqnr_db(reference, _outputs(gm, samples)), target_db)
    s = tried[observer]
    notes = [f"static int8: per-channel symmetric int8 weights, per-tensor int8 activations ({observer} observer)"]
    if len(tried) > 1:
        notes.append(tried_note({f"{k} observer": v for k, v in tried.items()}, f"{observer} observer"))
    if s < target_db:
        notes.append(low_sqnr_note(s, target_db))
    return PT2EResult(converted, observer, s, tried, notes)


def low_sqnr_note(s: float, target_db: float = TARGET_DB) -> str:
    return (f"int8 keeps only {s:.1f} dB SQNR on the calibration inputs (target {target_db:g} dB): "
            "try real calibration data, more samples, or another format's int8")
