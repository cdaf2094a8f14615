"""Knowledge distillation: train a small student to imitate a teacher.

Loss per batch (Hinton et al. 2015)::

    loss = (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))   # soft targets
         + alpha * CE(student, y)                                                 # hard labels (when y is known)
         + feature_weight * sum_l MSE(adapter_l(student_l), teacher_l)            # optional feature distillation

Without labels (an unlabelled calibration folder) only the soft-target and feature terms remain. The student
is the user's model or one derived from the teacher by structured pruning to a width ratio
(:func:`edgeship.compress.prune.shrink_width`). Feature distillation hooks named layers of both models; when
their channel widths differ a learned 1x1 conv (4-d features) or linear layer (2-d/3-d) maps the student's to
the teacher's width. Adapters are trained with the student and then dropped.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..data import DataSource
from ..errors import EdgeshipError
from ..model import ModelSpec, flatten_outputs
from .train import FitResult, ProgressFn, _check_common, call, evaluate, fit

log = logging.getLogger(__name__)


SHIP_CHOICES = ("auto", "distilled", "baseline")
_STAGE_ONLY = ("student", "width", "baseline", "ship")   # what compress's distill stage reads; not the training loop


@dataclass
class DistillConfig:
    """Distillation settings; also the recipe's ``distill:`` stage (compress/stages.py), one set of defaults.

    ``student``, ``width``, ``baseline`` and ``ship`` are read by the stage (which student, and which one ships);
    :func:`distill` takes its student and width as arguments."""

    temperature: float = 4.0
    alpha: float = 0.5                  # weight of the hard-label cross-entropy; 1 - alpha on the soft targets
    epochs: int = 30
    lr: float = 2e-3
    batch_size: int = 64
    seed: int = 0
    patience: int | None = 8            # early stopping on val accuracy; None: run all epochs
    feature_layers: list[str] | dict[str, str] | None = None   # names, or {student_layer: teacher_layer}
    feature_weight: float = 1.0
    weight_decay: float = 0.0
    student: str | None = None          # MODEL reference; None derives one from the teacher at ``width``
    width: float | None = 0.5           # width ratio of a derived student
    baseline: bool = True               # also train the same student without the teacher, for comparison
    ship: str = "auto"                  # auto: the better of the two on the validation split | distilled | baseline

    def __post_init__(self):
        if self.ship not in SHIP_CHOICES:
            raise EdgeshipError(f"distill.ship must be one of {', '.join(SHIP_CHOICES)}, got {str(self.ship)[:60]!r}",
                                hint="auto ships the better student on the validation split; distilled or baseline forces one")
        if self.ship == "baseline" and not self.baseline:
            raise EdgeshipError("distill.ship is baseline, but distill.baseline is false (no baseline is trained)",
                                hint="set distill.baseline: true, or ship: distilled")
        if self.student is None and not (self.width and 0 < self.width <= 1):
            raise EdgeshipError(f"distill.width must be in (0, 1] when no student is given, got {self.width}")
        _check_common(self)
        if not self.temperature > 0:
            raise EdgeshipError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise EdgeshipError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.feature_weight < 0:
            raise EdgeshipError(f"feature_weight must be >= 0, got {self.feature_weight}")

    @classmethod
    def from_dict(cls, d: Mapping) -> "DistillConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise EdgeshipError(f"unknown distillation option(s): {', '.join(unknown)}", hint=f"known: {', '.join(sorted(known))}")
        return cls(**dict(d))

    def layer_pairs(self) -> list[tuple[str, str]]:
        fl = self.feature_layers
        if not fl:
            return []
        if isinstance(fl, Mapping):
            return [(str(s), str(t)) for s, t in fl.items()]
        if isinstance(fl, str):
            fl = [fl]
        return [(str(n), str(n)) for n in fl]


@dataclass
class DistillResult:
    spec: ModelSpec = field(repr=False)            # the trained student
    student_params: int
    teacher_params: int
    teacher_val_accuracy: float | None
    best_val_accuracy: float | None
    epochs_run: int
    stopped_early: bool
    resumed_from_epoch: int
    history: list[dict] = field(default_factory=list)

    @property
    def compression(self) -> float:
        return self.teacher_params / max(self.student_params, 1)

    def summary(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "spec"}
        d["compression"] = round(self.compression, 3)
        return d


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor | None,
            temperature: float, alpha: float) -> torch.Tensor:
    """(1 - alpha) * T^2 * KL(teacher_T || student_T) + alpha * CE(student, y); only the KL term when y is None."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                    reduction="batchmean", log_target=True) * (t * t)
    if y is None:
        return soft
    return (1.0 - alpha) * soft + alpha * F.cross_entropy(student_logits, y)


class _Capture:
    """Forward hooks that keep the latest output of named layers."""

    def __init__(self, model: nn.Module, names: Sequence[str], which: str):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            sample = [n for n in modules if n][:12]
            raise EdgeshipError(f"feature layer(s) {', '.join(missing)} not found in the {which}",
                                hint=f"{which} layer names look like: {', '.join(sample)}")
        self.out: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name):
        def hook(_m, _i, out):
            while isinstance(out, (tuple, list)):
                out = out[0]
            self.out[name] = out
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []


def _adapter(s_shape: torch.Size, t_shape: torch.Size, pair: tuple[str, str]) -> nn.Module:
    if len(s_shape) != len(t_shape):
        raise EdgeshipError(f"feature layers {pair[0]!r} (student, {tuple(s_shape)}) and {pair[1]!r} "
                            f"(teacher, {tuple(t_shape)}) have different ranks")
    if len(s_shape) == 4:
        if s_shape[2:] != t_shape[2:]:
            raise EdgeshipError(f"feature layers {pair} have different spatial sizes: {tuple(s_shape)} vs {tuple(t_shape)}",
                                hint="pick layers at the same resolution")
        return nn.Identity() if s_shape[1] == t_shape[1] else nn.Conv2d(s_shape[1], t_shape[1], 1, bias=False)
    if len(s_shape) in (2, 3):
        if s_shape[:-1] != t_shape[:-1]:
            raise EdgeshipError(f"feature layers {pair} differ in more than the feature width: "
                                f"{tuple(s_shape)} vs {tuple(t_shape)}")
        return nn.Identity() if s_shape[-1] == t_shape[-1] else nn.Linear(s_shape[-1], t_shape[-1], bias=False)
    raise EdgeshipError(f"feature distillation supports 2-d, 3-d and 4-d features; {pair[0]!r} gives {tuple(s_shape)}")


def distill(teacher: ModelSpec, student: ModelSpec | nn.Module | None, train: DataSource,
            val: DataSource | None = None, config: DistillConfig | None = None, *, width_ratio: float | None = None,
            checkpoint: str | Path | None = None, progress: ProgressFn | None = None) -> DistillResult:
    """Distill ``teacher`` into ``student`` (a copy is trained; the inputs are left untouched).

    ``student`` None derives one from the teacher by structured pruning to ``width_ratio`` of its channels.
    A student whose outputs have other shapes than the teacher's is an error, raised before training.
    ``checkpoint``: resume from / save to this path after every epoch (atomic). Returns the best student on
    ``val`` accuracy (early stopping after ``config.patience`` epochs without improvement).
    """
    cfg = config or DistillConfig()
    if not isinstance(teacher, ModelSpec):
        raise EdgeshipError("the teacher must be a ModelSpec (load it with edgeship.model.load)")
    if student is None:
        if width_ratio is None:
            raise EdgeshipError("no student model given", hint="give a student model, or a width ratio (e.g. 0.5) to derive one from the teacher")
        from .prune import recalibrate_bn, shrink_width
        sspec = shrink_width(teacher, width_ratio)
        recalibrate_bn(sspec.module, train)
    elif isinstance(student, ModelSpec):
        sspec = student.with_module(copy.deepcopy(student.module))
    elif isinstance(student, nn.Module):
        sspec = teacher.with_module(copy.deepcopy(student))
    else:
        raise EdgeshipError(f"the student is a {type(student).__name__}, not a torch.nn.Module or ModelSpec")
    s_model, t_model = sspec.module, teacher.module
    ex = teacher.example_inputs()
    t_model.eval()
    s_model.eval()
    pairs = cfg.layer_pairs()
    s_cap = _Capture(s_model, [p[0] for p in pairs], "student") if pairs else None
    t_cap = _Capture(t_model, [p[1] for p in pairs], "teacher") if pairs else None
    try:
        with torch.no_grad():
            t_out = flatten_outputs(t_model(*ex))
            try:
                s_out = flatten_outputs(s_model(*ex))
            except Exception as e:  # noqa: BLE001 - the user's student rejects the teacher's inputs
                raise EdgeshipError(f"the student fails on the teacher's inputs: {type(e).__name__}: {e}",
                                    hint="the student must take the same inputs as the teacher") from e
        t_shapes, s_shapes = [tuple(t.shape) for t in t_out], [tuple(t.shape) for t in s_out]
        if t_shapes != s_shapes:
            raise EdgeshipError(f"the student's output shape {s_shapes} differs from the teacher's {t_shapes}",
                                hint="the student must predict the same classes as the teacher (same output size)")
        adapters = nn.ModuleDict()
        for i, pair in enumerate(pairs):
            adapters[str(i)] = _adapter(s_cap.out[pair[0]].shape, t_cap.out[pair[1]].shape, pair)
        teacher_acc = evaluate(t_model, val) if val is not None and val.y is not None else None
        teacher_params = sum(p.numel() for p in t_model.parameters())

        def step(model, x, y):
            with torch.no_grad():
                t_logits = call(t_model, x)
                t_feats = {n: t_cap.out[n].detach() for _, n in pairs} if pairs else {}
            logits = call(model, x)
            loss = kd_loss(logits, t_logits, y, cfg.temperature, cfg.alpha)
            for i, (sn, tn) in enumerate(pairs):
                loss = loss + cfg.feature_weight * F.mse_loss(adapters[str(i)](s_cap.out[sn]), t_feats[tn])
            return loss, logits

        t_model.eval()
        fp = {"stage": "distill", "config": {k: v for k, v in asdict(cfg).items() if k not in _STAGE_ONLY},
              "teacher": [(k, tuple(v.shape)) for k, v in t_model.state_dict().items()]}
        res: FitResult = fit(s_model, train, val, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                             seed=cfg.seed, patience=cfg.patience, weight_decay=cfg.weight_decay, step_loss=step,
                             extra_modules=[adapters], stage="distill", progress=progress, checkpoint=checkpoint,
                             fingerprint=fp)
    finally:
        if s_cap:
            s_cap.remove()
        if t_cap:
            t_cap.remove()
        t_model.eval()
    s_model.eval()
    log.info("distilled: student %d params (teacher %d), best val accuracy %s (teacher %s)",
             sum(p.numel() for p in s_model.parameters()), teacher_params, res.best_val_accuracy, teacher_acc)
    return DistillResult(sspec, sum(p.numel() for p in s_model.parameters()), teacher_params, teacher_acc,
                         res.best_val_accuracy, res.epochs_run, res.stopped_early, res.resumed_from_epoch, res.history)
