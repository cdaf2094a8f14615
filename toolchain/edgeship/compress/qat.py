"""Quantization-aware training (QAT) through PT2E: a short fine-tune with int8 fake-quantization in the loop.

The trip is torchao's QAT flow with XNNPACK's quantizer in QAT mode (per-channel symmetric int8 weights,
per-tensor int8 activations — the grid every int8 exporter here uses):

    torch.export (train mode, batch dimension dynamic) -> prepare_qat_pt2e (fake-quant; Conv+BN fused so the
    weights are fake-quantized *after* BN folding, as the exporters fold them) -> fine-tune a few epochs at a
    small learning rate, keeping the best val-accuracy epoch -> move_exported_model_to_eval -> convert_pt2e

The fake-quant computes its scales as convert_pt2e will (:func:`convert_matched`): with XNNPACK's stock QAT config
in torchao 0.18 the converted int8 graph is *not* the one that was trained.

How QAT reaches the artifacts: the exported graph keeps the original parameter and buffer names, so the
fine-tuned float weights (and the BatchNorm statistics updated during the fine-tune) are copied back into a copy
of the original ``nn.Module``. THAT float module goes on to every format's own int8 quantizer (ExecuTorch/XNNPACK
and litert-torch PT2E, onnxruntime static QDQ, Core ML weight quantization), so all formats benefit: its weights
were trained to sit well on the per-channel symmetric int8 grid and its activations to tolerate int8 rounding.
The QAT Q/DQ graph itself is measured (in torch) but not shipped. (It does lower to ExecuTorch as it is — one
XNNPACK delegate, no portable ops — and on digits ran at the same accuracy as the float-weights route: 98.89%.)

What is measured, on the eval data (the val split when none is given), all in PyTorch:
``float_accuracy`` (the fine-tuned float module), ``qat_accuracy`` (the converted QAT int8 graph),
``ptq_accuracy`` (plain PTQ — :func:`compress.quantize.quantize_pt2e` — of the float model QAT started from)
and ``ptq_after_qat_accuracy`` (the same PTQ of the fine-tuned float module: what the ExecuTorch exporter makes).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Collection

import numpy as np
import torch
from torch import nn

from ..data import DataSource
from ..errors import EdgeshipError
from ..model import ModelSpec
from .train import FitResult, ProgressFn, _check_common, ce_loss, evaluate, fit

log = logging.getLogger(__name__)


@dataclass
class QATConfig:
    """The fine-tune: a few epochs at a small learning rate (the model is already trained). Also the recipe's
    ``qat`` stage (``quantize: {qat: ...}`` or ``stages: [qat: ...]``; compress/stages.py), one set of defaults."""

    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 64
    seed: int = 0
    patience: int | None = None       # None: run every epoch (the best val-accuracy epoch is kept either way)
    calib_samples: int | None = None  # for the PTQ comparison; None: as many as the exporters calibrate on
                                      # (the recipe's quantize.calib_samples; 128 called directly)

    def __post_init__(self):
        if self.epochs < 1:
            raise EdgeshipError(f"qat.epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise EdgeshipError(f"qat.lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise EdgeshipError(f"qat.batch_size must be >= 1, got {self.batch_size}")
        _check_common(self)
        if self.calib_samples is not None and self.calib_samples < 1:
            raise EdgeshipError(f"qat.calib_samples must be >= 1, got {self.calib_samples}")


@dataclass
class QATResult:
    """The float module with QAT-tuned weights (goes on to the exporters) and what was measured."""

    spec: ModelSpec                          # the fine-tuned float module, eval mode
    converted: torch.fx.GraphModule          # the QAT int8 (Q/DQ) graph, batch dimension dynamic
    fit: FitResult
    float_accuracy: float | None             # fine-tuned float module on the eval data
    qat_accuracy: float | None               # converted QAT int8 graph, in torch
    ptq_accuracy: float | None               # PTQ of the float model QAT started from, in torch
    ptq_after_qat_accuracy: float | None     # PTQ of the fine-tuned float module (what the exporters ship), in torch
    weight_change: float                     # ||w_qat - w_0|| / ||w_0|| over the trained parameters
    convert_sqnr_db: float                   # converted graph vs the fake-quant model it was trained as (inf: identical)
    ptq_observer: str | None = None
    notes: list[str] = field(default_factory=list)


def xnnpack_config(is_qat: bool):
    """XNNPACK's PT2E config: per-channel symmetric int8 weights, per-tensor int8 activations (fake-quant when
    ``is_qat``) — what the ExecuTorch exporter quantizes with."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    return get_symmetric_quantization_config(is_per_channel=True, is_qat=is_qat)


def convert_matched(config):
    """A QAT ``QuantizationConfig`` whose fake-quant computes its qparams as ``convert_pt2e`` will.

    XNNPACK's QAT config uses ``FusedMovingAvgObsFakeQuantize``; in torchao 0.18 its fused kernel picks symmetric
    scales by another formula (max(|min|/128, |max|/127)·255/254) than the observer that ``convert_pt2e`` asks
    (max|x|/127), so the int8 graph is not the one that was trained — measured here: 37.7 dB between the
    fake-quant model and its converted graph at int8, 0 dB with 2-bit weights (fixed upstream after 0.18,
    pytorch/ao#4824). ``FakeQuantize`` takes its qparams from the observer, as convert does: the converted graph
    then equals the trained one exactly. Weights observe their current min/max (averaging constant 1), which is
    the grid PTQ puts the fine-tuned weights on in every exporter; activations keep a moving average."""
    import dataclasses

    from torchao.quantization.pt2e import FakeQuantize, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

    changes = {}
    for name in ("input_activation", "output_activation", "weight"):
        spec = getattr(config, name)
        if spec is None or spec.is_dynamic:
            continue
        per_channel = spec.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)
        observer = MovingAveragePerChannelMinMaxObserver if per_channel else MovingAverageMinMaxObserver
        kwargs = {"eps": 2 ** -12, **({"averaging_constant": 1.0} if name == "weight" else {})}
        changes[name] = dataclasses.replace(spec, observer_or_fake_quant_ctr=FakeQuantize.with_args(observer=observer, **kwargs))
    return dataclasses.replace(config, **changes)


def _xnnpack_quantizer(config):
    from ..export.executorch import xnnpack_quantizer
    return xnnpack_quantizer().set_global(config)


def _observers_follow_mode(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``.train()`` / ``.eval()`` on a prepared QAT graph: BatchNorm and dropout switch (torchao's
    allow_exported_model_train_eval) and the fake-quant observers run in train mode only, so evaluating
    (validation, measurement) leaves the quantization ranges as training left them."""
    import types

    from torchao.quantization.pt2e import allow_exported_model_train_eval, disable_observer, enable_observer

    allow_exported_model_train_eval(gm)
    switch = gm.train

    def _train(self, mode: bool = True):
        switch(mode)
        self.apply(enable_observer if mode else disable_observer)
        return self

    gm.train = types.MethodType(_train, gm)  # type: ignore[method-assign]
    gm.eval = types.MethodType(lambda self: self.train(False), gm)  # type: ignore[method-assign]
    return gm


def _example_batch(train: DataSource, spec: ModelSpec) -> tuple[torch.Tensor, ...]:
    x, _ = next(train.batches(batch_size=min(2, len(train))))
    xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    if len(xs) != len(spec.inputs):
        raise EdgeshipError(f"the training data has {len(xs)} inputs; the model takes {len(spec.inputs)}")
    if xs[0].shape[0] < 2:   # a batch of 1 would specialize the batch dimension to 1 in torch.export
        xs = tuple(torch.cat([t, t]) for t in xs)
    return xs


def prepare_qat(module: nn.Module, example: tuple[torch.Tensor, ...], quantizer) -> torch.fx.GraphModule:
    """Export ``module`` in train mode with a dynamic batch dimension and insert fake-quant (prepare_qat_pt2e).
    The returned graph switches with ``.train()`` / ``.eval()`` (see :func:`_observers_follow_mode`); it starts in
    train mode."""
    from torch.export import Dim
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    batch = Dim("batch", min=1)
    try:
        gm = torch.export.export(copy.deepcopy(module).train(), example, strict=False,
                                 dynamic_shapes=tuple({0: batch} for _ in example)).module()
    except Exception as e:  # noqa: BLE001 - torch.export reports many kinds of errors
        raise EdgeshipError(f"QAT could not export the model with a variable batch size: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}",
                            hint="QAT trains on batches; make the model's forward work for any batch size "
                                 "(no hard-coded batch of 1), or drop quantize.qat from the recipe") from e
    prepared = _observers_follow_mode(prepare_qat_pt2e(gm, quantizer))
    prepared.train()
    return prepared


def copy_float_weights(prepared: nn.Module, module: nn.Module) -> nn.Module:
    """A copy of ``module`` holding the parameters and buffers (BatchNorm statistics too) of the QAT graph
    ``prepared``, matched by name; every entry of the module's state dict must be found."""
    graph_state = prepared.state_dict()
    out = copy.deepcopy(module)
    own = out.state_dict()
    missing = [k for k in own if k not in graph_state]
    if missing:
        raise EdgeshipError(f"QAT: the exported graph lost {len(missing)} of the model's weights ({', '.join(missing[:5])})",
                            hint="this model's parameters are not plain attributes; drop quantize.qat from the recipe")
    bad = [k for k in own if graph_state[k].shape != own[k].shape]
    if bad:
        raise EdgeshipError(f"QAT: weights changed shape in the exported graph: {', '.join(bad[:5])}")
    out.load_state_dict({k: graph_state[k].detach().clone() for k in own})
    return out.eval()


def _weight_change(before: nn.Module, after: nn.Module) -> float:
    b = dict(before.named_parameters())
    num = den = 0.0
    for name, p in after.named_parameters():
        num += float((p.detach() - b[name].detach()).pow(2).sum())
        den += float(b[name].detach().pow(2).sum())
    return (num / den) ** 0.5 if den else 0.0


def _accuracy(module, data: DataSource | None, batch_size: int | None = None) -> float | None:
    """Top-1 accuracy of a module or an exported graph, or None without labelled data."""
    return None if data is None or data.y is None else evaluate(module, data, batch_size=batch_size)


def _probe_inputs(data: DataSource, n: int = 256):
    x, _ = next(data.batches(batch_size=min(n, len(data))))
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _outputs(module, args) -> "np.ndarray":
    from ..model import flatten_outputs
    with torch.no_grad():
        return np.concatenate([t.detach().float().numpy().ravel() for t in flatten_outputs(module(*args))])


def ptq(spec: ModelSpec, samples, make_config: Callable[[bool], Any] = xnnpack_config, keep_float: Collection[str] = ()):
    """Plain PTQ with XNNPACK's quantizer (the ExecuTorch exporter's first recipes, without its remedies: the
    baseline QAT is compared with), via compress.quantize."""
    from .quantize import quantize_pt2e
    return quantize_pt2e(spec.module, spec.example_inputs(), lambda: make_config(False), _xnnpack_quantizer, samples,
                         keep_float=keep_float, remedies=False)


def qat_finetune(spec: ModelSpec, train: DataSource, val: DataSource | None, config: QATConfig | None = None,
                 calib: Any = None, progress: ProgressFn | None = None, *, eval_data: DataSource | None = None,
                 keep_float: Collection[str] = (), compare_ptq: bool = True,
                 make_config: Callable[[bool], Any] = xnnpack_config) -> QATResult:
    """Fine-tune ``spec`` with int8 fake-quantization (PT2E QAT, XNNPACK quantizer, per-channel symmetric weights)
    on ``train`` (labelled), keeping the epoch with the best fake-quant accuracy on ``val``. Returns the float
    module with the fine-tuned weights — the one to hand to every format's own int8 quantizer — and the int8
    accuracies measured in torch on ``eval_data`` (default ``val``): the converted QAT graph, and PTQ of the float
    model before and after the fine-tune.

    ``calib``: calibration data for the PTQ comparison (what :func:`compress.quantize.calibration_inputs` takes;
    default ``config.calib_samples`` examples of ``train``). ``keep_float``: module names left in float (no
    fake-quant; as ``quantize.layers: {NAME: null}`` leaves them in the exports). ``make_config(is_qat)``: the
    XNNPACK quantizer's ``QuantizationConfig`` (default :func:`xnnpack_config`, the exporters' int8 grid); another
    grid (fewer weight bits, say) changes both the QAT run and the PTQ comparison."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    from ..verify import sqnr_db
    from .quantize import calibration_inputs, select_layers

    cfg = config or QATConfig()
    if train is None or train.y is None:
        raise EdgeshipError("QAT needs labelled training data", hint="add --data DATA (e.g. digits) or `data:` to the recipe")
    eval_data = eval_data if eval_data is not None else val
    base = spec.with_module(copy.deepcopy(spec.module).eval())
    quantizer = select_layers(_xnnpack_quantizer(convert_matched(make_config(True))), keep_float)
    prepared = prepare_qat(base.module, _example_batch(train, spec), quantizer)
    fitted = fit(prepared, train, val, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
                 patience=cfg.patience, step_loss=ce_loss(), stage="qat", progress=progress)
    prepared.eval()   # BatchNorm on running statistics, dropout off, observers off (fit ends so already)
    tuned = spec.with_module(copy_float_weights(prepared, base.module))
    change = _weight_change(base.module, tuned.module)
    if change == 0.0:
        raise EdgeshipError("QAT left every weight unchanged", hint="raise qat.lr or qat.epochs")
    probe = _probe_inputs(eval_data if eval_data is not None else train)
    trained = _outputs(prepared, probe)
    converted = convert_pt2e(prepared, fold_quantize=True)
    convert_sqnr = sqnr_db(trained, _outputs(converted, probe))
    qat_acc = _accuracy(converted, eval_data)
    float_acc = _accuracy(tuned.module, eval_data)
    ptq_acc = ptq_after = observer = None
    if compare_ptq:
        samples, _ = calibration_inputs(spec, calib if calib is not None else train.calibration(cfg.calib_samples or 128))
        before = ptq(base, samples, make_config, keep_float)
        after = ptq(tuned, samples, make_config, keep_float)
        observer = after.observer
        # the PTQ graphs were exported at the model's example shape (batch 1): evaluate one example at a time
        ptq_acc = _accuracy(before.module, eval_data, batch_size=1)
        ptq_after = _accuracy(after.module, eval_data, batch_size=1)
    notes = [f"QAT: PT2E fake-quant (XNNPACK quantizer, per-channel symmetric int8 weights, per-tensor int8 "
             f"activations), {fitted.epochs_run} epochs at lr {cfg.lr:g}, kept epoch {fitted.best_epoch}; the "
             "fine-tuned float weights (and BatchNorm statistics) go on to every format's own int8 quantizer"]
    if qat_acc is not None and ptq_acc is not None:
        notes.append(f"int8 accuracy in torch on {eval_data.name} ({eval_data.split}): QAT graph {qat_acc:.2%}, "
                     f"PTQ of the model before QAT {ptq_acc:.2%}, PTQ of the fine-tuned model {ptq_after:.2%}")
    log.info("QAT: float %s, QAT int8 %s, PTQ int8 before %s / after %s; converted graph vs fake-quant model %.1f dB",
             float_acc, qat_acc, ptq_acc, ptq_after, convert_sqnr)
    return QATResult(tuned, converted, fitted, float_acc, qat_acc, ptq_acc, ptq_after, change, convert_sqnr, observer, notes)
