"""The one train/evaluate loop the compression stages share (plain training, distillation, fine-tuning).

Deterministic: a fixed seed, shuffling and dropout seeded per epoch (``seed + epoch``), so a run resumed from
its checkpoint ends with the same weights as one that was never interrupted. Early stopping on validation
accuracy restores the best weights. Progress goes to a callback; nothing is printed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..data import DataSource
from ..errors import EdgeshipError

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """One progress event: ``kind`` is "step" (after a batch) or "epoch" (after validation)."""

    stage: str
    kind: str
    epoch: int            # 1-based
    epochs: int
    step: int             # 1-based within the epoch
    steps: int
    loss: float           # running mean over the epoch so far
    train_accuracy: float | None = None
    val_accuracy: float | None = None
    best_val_accuracy: float | None = None


ProgressFn = Callable[[Progress], None]


@dataclass
class TrainConfig:
    """Plain supervised training (cross-entropy) or fine-tuning; also the recipe's ``train:`` stage (compress/stages.py).

    One set of defaults: the recipe's (the ``train:`` section is this class) and distillation's (DistillConfig)."""

    epochs: int = 30
    lr: float = 2e-3
    batch_size: int = 64
    seed: int = 0
    patience: int | None = 8       # epochs without a better val accuracy before stopping; None: never
    weight_decay: float = 0.0
    label_smoothing: float = 0.0

    def __post_init__(self):
        _check_common(self)


def _check_common(cfg) -> None:
    if cfg.epochs < 0:
        raise EdgeshipError(f"epochs must be >= 0, got {cfg.epochs}")
    if not cfg.lr > 0:
        raise EdgeshipError(f"the learning rate must be > 0, got {cfg.lr}")
    if cfg.batch_size < 1:
        raise EdgeshipError(f"batch size must be >= 1, got {cfg.batch_size}")
    if cfg.patience is not None and cfg.patience < 1:
        raise EdgeshipError(f"patience must be >= 1 (or None), got {cfg.patience}")


@dataclass
class FitResult:
    epochs_run: int
    best_epoch: int | None
    best_val_accuracy: float | None
    stopped_early: bool
    resumed_from_epoch: int = 0
    history: list[dict] = field(default_factory=list)   # per epoch: epoch, loss, train_accuracy, val_accuracy


# A step loss: (model, x, y) -> (loss, logits). x is a tensor or a tuple of tensors; y may be None.
StepLoss = Callable[[nn.Module, Any, "torch.Tensor | None"], "tuple[torch.Tensor, torch.Tensor]"]


def call(model: nn.Module, x) -> torch.Tensor:
    """Run a model on a batch's x (tensor or tuple); the first output when it returns several."""
    out = model(*x) if isinstance(x, (tuple, list)) else model(x)
    while isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return out


def ce_loss(label_smoothing: float = 0.0) -> StepLoss:
    def step(model, x, y):
        if y is None:
            raise EdgeshipError("training with cross-entropy needs labelled data",
                                hint="give labelled data (an image folder with class subfolders, or y in the .npz)")
        logits = call(model, x)
        return nn.functional.cross_entropy(logits, y, label_smoothing=label_smoothing), logits
    return step


@torch.no_grad()
def evaluate(model: nn.Module, data: DataSource, batch_size: int | None = None) -> float:
    """Top-1 accuracy (0..1) on labelled data; the model is left in eval mode. ``model`` may be a torch.export'ed
    graph (a PT2E-quantized one); one exported at batch 1 needs ``batch_size=1``."""
    if data.y is None:
        raise EdgeshipError(f"accuracy needs labelled data; {data.name!r} has no labels")
    eval_mode(model)
    correct = 0
    for x, y in data.batches(batch_size=batch_size or max(data.batch_size, 256)):
        correct += int((call(model, x).argmax(-1) == y).sum())
    return correct / len(data)


def eval_mode(model: nn.Module) -> None:
    """``model.eval()``, also for a torch.export'ed graph, whose eval() torchao allows only when asked."""
    try:
        model.eval()
    except NotImplementedError:   # "Calling eval() is not supported yet" (an exported GraphModule)
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        allow_exported_model_train_eval(model)
        model.eval()


@torch.no_grad()
def eval_nll(model: nn.Module, data: DataSource, batch_size: int | None = None) -> float:
    """Mean cross-entropy (negative log-likelihood, nats) on labelled data: finer than top-1 where accuracy is at
    its ceiling (it tells two students apart that misclassify the same one or two examples)."""
    if data.y is None:
        raise EdgeshipError(f"the eval loss needs labelled data; {data.name!r} has no labels")
    eval_mode(model)
    total = 0.0
    for x, y in data.batches(batch_size=batch_size or max(data.batch_size, 256)):
        total += float(nn.functional.cross_entropy(call(model, x).float(), y, reduction="sum"))
    return total / len(data)


@torch.no_grad()
def predict(model: nn.Module, data: DataSource, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([call(model, x) for x, _ in data.batches(batch_size=batch_size)])


def fit(model: nn.Module, train: DataSource, val: DataSource | None, *, epochs: int, lr: float, batch_size: int,
        seed: int, patience: int | None, weight_decay: float = 0.0, step_loss: StepLoss | None = None,
        extra_modules: Iterable[nn.Module] = (), stage: str = "train", progress: ProgressFn | None = None,
        checkpoint: str | Path | None = None, fingerprint: dict | None = None) -> FitResult:
    """Train ``model`` in place with Adam; keep the best val-accuracy weights (early stopping).

    ``extra_modules`` (e.g. distillation adapters) are trained with the model and checkpointed with it.
    ``checkpoint``: a path written atomically after every epoch; when it exists and was made by the same
    configuration (``fingerprint``), training resumes from it. It is left in place at the end.
    """
    step_loss = step_loss or ce_loss()
    extra = nn.ModuleList(list(extra_modules))
    params = [p for p in list(model.parameters()) + list(extra.parameters()) if p.requires_grad]
    if not params:
        raise EdgeshipError("the model has no trainable parameters")
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    state = {"epoch": 0, "best_acc": None, "best_epoch": None, "best_state": None, "bad_epochs": 0, "history": []}
    fp = _fingerprint(model, fingerprint)
    ckpt = Path(checkpoint) if checkpoint else None
    resumed = 0
    if ckpt is not None and ckpt.exists():
        saved = _load_checkpoint(ckpt, fp)
        model.load_state_dict(saved["model"])
        extra.load_state_dict(saved["extra"])
        opt.load_state_dict(saved["optimizer"])
        state = saved["state"]
        resumed = state["epoch"]
        log.info("%s: resuming from %s at epoch %d", stage, ckpt, resumed)
    stopped = False
    steps = train.num_batches() if batch_size == train.batch_size else -(-len(train) // batch_size)
    epoch = state["epoch"]
    if _should_stop(state, patience):
        stopped = True
    while epoch < epochs and not stopped:
        epoch += 1
        torch.manual_seed(seed * 100003 + epoch)
        model.train()
        extra.train()
        total, seen, correct, labelled = 0.0, 0, 0, 0
        for i, (x, y) in enumerate(train.batches(shuffle=True, seed=seed * 100003 + epoch, batch_size=batch_size), 1):
            opt.zero_grad(set_to_none=True)
            loss, logits = step_loss(model, x, y)
            if not torch.isfinite(loss):
                raise EdgeshipError(f"{stage}: the loss became {float(loss.detach())} at epoch {epoch}",
                                    hint="check the data for NaN or inf values, or lower the learning rate (--lr)")
            loss.backward()
            opt.step()
            n = len(logits)
            total += float(loss.detach()) * n
            seen += n
            if y is not None:
                correct += int((logits.detach().argmax(-1) == y).sum())
                labelled += n
            if progress:
                progress(Progress(stage, "step", epoch, epochs, i, steps, total / seen))
        val_acc = evaluate(model, val) if val is not None and val.y is not None else None
        row = {"epoch": epoch, "loss": total / max(seen, 1),
               "train_accuracy": correct / labelled if labelled else None, "val_accuracy": val_acc}
        state["history"].append(row)
        if val_acc is not None and (state["best_acc"] is None or val_acc > state["best_acc"]):
            state.update(best_acc=val_acc, best_epoch=epoch, bad_epochs=0,
                         best_state={k: v.detach().clone() for k, v in model.state_dict().items()})
        elif val_acc is not None:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        stopped = _should_stop(state, patience) and epoch < epochs
        if ckpt is not None:
            _save_checkpoint(ckpt, {"fingerprint": fp, "model": model.state_dict(), "extra": extra.state_dict(),
                                    "optimizer": opt.state_dict(), "state": state})
        if progress:
            progress(Progress(stage, "epoch", epoch, epochs, steps, steps, row["loss"], row["train_accuracy"],
                              val_acc, state["best_acc"]))
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    model.eval()
    return FitResult(state["epoch"], state["best_epoch"], state["best_acc"], stopped, resumed,
                     [dict(r) for r in state["history"]])


def _should_stop(state: dict, patience: int | None) -> bool:
    return patience is not None and state["bad_epochs"] >= patience


def train_classifier(model: nn.Module, train: DataSource, val: DataSource | None = None,
                     config: TrainConfig | None = None, *, progress: ProgressFn | None = None,
                     checkpoint: str | Path | None = None, stage: str = "train") -> FitResult:
    """Supervised training with cross-entropy (in place); returns the history and best val accuracy."""
    cfg = config or TrainConfig()
    return fit(model, train, val, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
               patience=cfg.patience, weight_decay=cfg.weight_decay, step_loss=ce_loss(cfg.label_smoothing),
               stage=stage, progress=progress, checkpoint=checkpoint, fingerprint={"config": asdict(cfg), "stage": stage})


# -- checkpoints -------------------------------------------------------------------------------------------
def _fingerprint(model: nn.Module, extra: dict | None) -> str:
    """What must match to resume: the parameter names/shapes and the configuration (epochs excepted, so a
    finished run can be extended)."""
    cfg = dict(extra or {})
    if isinstance(cfg.get("config"), dict):
        cfg["config"] = {k: v for k, v in cfg["config"].items() if k != "epochs"}
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    blob = json.dumps({"shapes": shapes, "cfg": cfg}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_checkpoint(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _load_checkpoint(path: Path, fingerprint: str) -> dict:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file
        raise EdgeshipError(f"cannot read the checkpoint {path}: {e}", hint="delete it to start over") from e
    if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
        raise EdgeshipError(f"the checkpoint {path} was made by a different model or configuration",
                            hint="delete it to start over, or use another --checkpoint path")
    return saved
