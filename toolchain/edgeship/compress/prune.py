"""Pruning: unstructured magnitude pruning (made permanent) and structured channel pruning (a smaller dense model).

- :func:`prune_unstructured` zeroes the smallest-magnitude weights (L1, global or per layer) of conv and linear
  layers with ``torch.nn.utils.prune`` and ALWAYS removes the re-parametrisation hooks before returning (hooks
  left on make ExecuTorch mis-lower the model, see STACK.md). It does not shrink exported files: the tensors
  stay dense, with zeros.
- :func:`prune_structured` removes whole channels with Torch-Pruning's dependency graph, so coupled layers
  (residual additions, depthwise convs, BatchNorm, the layer after) shrink together and the result is a smaller
  dense model: fewer parameters, fewer MACs, smaller files. The layers that produce the model's outputs are
  never pruned, so output shapes do not change. ``sparsity`` there is the fraction of channels removed from
  each prunable layer; the result reports the real fraction of parameters removed.

Both take a ModelSpec (or a module with ``example_inputs``), work on a copy unless ``inplace=True``, optionally
fine-tune (iteratively: prune a step, fine-tune, repeat) and return a :class:`PruneResult`.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from ..data import DataSource
from ..errors import EdgeshipError, quote
from ..model import ModelSpec, flatten_outputs
from .train import ProgressFn, TrainConfig, call, evaluate, train_classifier

log = logging.getLogger(__name__)

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                                               nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
IMPORTANCES = ("l1", "l2", "bn")


@dataclass
class PruneResult:
    """What pruning did. ``sparsity`` is measured, not the target: for unstructured pruning the fraction of
    zeros in the pruned weight tensors, for structured pruning the fraction of parameters removed."""

    method: str
    target_sparsity: float
    sparsity: float
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    nonzero_params_after: int
    module: nn.Module = field(repr=False)
    spec: ModelSpec | None = field(default=None, repr=False)
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    steps: list[dict] = field(default_factory=list)

    @property
    def params_ratio(self) -> float:
        """params before / after (> 1 means smaller)."""
        return self.params_before / max(self.params_after, 1)

    @property
    def macs_ratio(self) -> float:
        return self.macs_before / max(self.macs_after, 1)

    def summary(self) -> dict:
        return {"method": self.method, "target_sparsity": self.target_sparsity, "sparsity": round(self.sparsity, 6),
                "params_before": self.params_before, "params_after": self.params_after,
                "nonzero_params_after": self.nonzero_params_after,
                "macs_before": self.macs_before, "macs_after": self.macs_after,
                "params_ratio": round(self.params_ratio, 4), "macs_ratio": round(self.macs_ratio, 4),
                "accuracy_before": self.accuracy_before, "accuracy_after": self.accuracy_after, "steps": self.steps}


@dataclass
class PruneConfig:
    """The recipe's ``prune:`` stage (compress/stages.py): prune to ``sparsity``, fine-tune after each step."""

    method: str = "structured"          # structured | unstructured
    sparsity: float = 0.5
    steps: int = 1
    finetune_epochs: int = 10           # 0: no fine-tune (and no data needed)
    lr: float = 5e-4
    patience: int | None = 5            # the fine-tune's early stopping on val accuracy; None: every epoch
    layers: dict[str, float | None] = field(default_factory=dict)   # layer name or type -> null: leave it unpruned

    def __post_init__(self):
        if self.method not in ("structured", "unstructured"):
            raise EdgeshipError(f"prune.method must be structured or unstructured, got {quote(self.method)}")
        check_sparsity(self.sparsity)
        if self.steps < 1 or self.finetune_epochs < 0:
            raise EdgeshipError(f"prune.steps must be >= 1 and finetune_epochs >= 0 (got {self.steps}, {self.finetune_epochs})")
        odd = {k: v for k, v in self.layers.items() if v is not None}
        if odd:
            raise EdgeshipError(f"prune.layers: only null (leave the layer unpruned) is supported, got {quote(odd)}",
                                hint="set the global sparsity, and null for layers to keep whole")
        if self.finetune_epochs:
            self.finetune()   # lr and patience checked as the fine-tune will see them

    def finetune(self) -> TrainConfig:
        return TrainConfig(self.finetune_epochs, self.lr, patience=self.patience)


# -- small helpers -----------------------------------------------------------------------------------------
def check_sparsity(sparsity: float) -> float:
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise EdgeshipError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not 0.0 <= s < 1.0:
        raise EdgeshipError(f"sparsity must be in [0, 1), got {sparsity}",
                            hint="0.5 removes half; 1.0 would remove everything")
    return s


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_nonzero(module: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p.detach())) for p in module.parameters())


def count_macs(module: nn.Module, example_inputs: Sequence[torch.Tensor]) -> int:
    """Multiply-accumulates of one forward pass (Torch-Pruning's op counter; conv/linear/norm layers)."""
    tp = _tp()
    was_training = module.training
    module.eval()
    try:
        macs, _ = tp.utils.count_ops_and_params(module, tuple(example_inputs))
    finally:
        module.train(was_training)
    return int(macs)


def has_pruning_hooks(module: nn.Module) -> bool:
    """True if any submodule still carries torch.nn.utils.prune re-parametrisation (``weight_orig``/``weight_mask``)."""
    for m in module.modules():
        if any(isinstance(h, tprune.BasePruningMethod) for h in m._forward_pre_hooks.values()):
            return True
        if any(n.endswith("_orig") for n, _ in m.named_parameters(recurse=False)) and \
                any(n.endswith("_mask") for n, _ in m.named_buffers(recurse=False)):
            return True
    return False


def make_permanent(module: nn.Module) -> int:
    """Fold every pruning mask into its weight and remove the hooks (``prune.remove``); returns how many."""
    n = 0
    for m in module.modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, tprune.BasePruningMethod):
                tprune.remove(m, hook._tensor_name)
                n += 1
    return n


def _tp():
    try:
        import torch_pruning
    except ImportError as e:
        raise EdgeshipError("structured pruning needs the Python package 'torch_pruning', which is not installed",
                            hint="pip install 'edgeship[compress]'  (or run 'make setup')") from e
    return torch_pruning


def _target(target: ModelSpec | nn.Module, example_inputs, inplace: bool) -> tuple[nn.Module, ModelSpec | None, tuple]:
    if isinstance(target, ModelSpec):
        spec = target
        module = spec.module if inplace else copy.deepcopy(spec.module)
        ex = tuple(example_inputs) if example_inputs is not None else spec.example_inputs()
        return module, spec, ex
    if isinstance(target, nn.Module):
        if example_inputs is None:
            raise EdgeshipError("pruning a bare module needs example_inputs", hint="pass a ModelSpec, or example_inputs=(x,)")
        ex = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
        return (target if inplace else copy.deepcopy(target)), None, ex
    raise EdgeshipError(f"cannot prune a {type(target).__name__}; give a ModelSpec or a torch.nn.Module")


def _out_shapes(module: nn.Module, ex: tuple) -> list[tuple[int, ...]]:
    module.eval()
    with torch.no_grad():
        return [tuple(t.shape) for t in flatten_outputs(module(*ex))]


@torch.no_grad()
def recalibrate_bn(module: nn.Module, data: DataSource, max_examples: int = 2048) -> int:
    """Re-estimate BatchNorm running statistics on ``data`` (cumulative average, no weight change).

    Removing channels shifts every later layer's activations, so the stored statistics are stale: a pruned
    digits CNN drops to chance until they are re-estimated. Returns how many BatchNorm layers were reset."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    was_training = module.training
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None          # cumulative moving average over the batches below
    module.train()
    seen = 0
    try:
        for x, _ in data.batches(shuffle=True, seed=0, batch_size=max(data.batch_size, 64)):
            call(module, x)
            seen += len(x[0] if isinstance(x, (tuple, list)) else x)
            if seen >= max_examples:
                break
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        module.train(was_training)
    return len(bns)


def _finetune(module, train, val, finetune: TrainConfig | None, progress, stage) -> dict | None:
    if train is None or finetune is None or finetune.epochs == 0:
        return None
    res = train_classifier(module, train, val, finetune, progress=progress, stage=stage)
    return {"epochs_run": res.epochs_run, "best_val_accuracy": res.best_val_accuracy}


def _acc(module, data: DataSource | None) -> float | None:
    return evaluate(module, data) if data is not None and data.y is not None else None


# -- unstructured ------------------------------------------------------------------------------------------
def prunable_weights(module: nn.Module, layer_types: tuple[type[nn.Module], ...] = PRUNABLE_TYPES
                     ) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in module.modules() if isinstance(m, layer_types)
            and isinstance(getattr(m, "weight", None), torch.Tensor)]


def weight_sparsity(module: nn.Module, layer_types: tuple[type[nn.Module], ...] = PRUNABLE_TYPES) -> float:
    """Fraction of exact zeros in the conv/linear weights."""
    ws = [getattr(m, n) for m, n in prunable_weights(module, layer_types)]
    total = sum(w.numel() for w in ws)
    return sum(int((w == 0).sum()) for w in ws) / max(total, 1)


def prune_unstructured(target: ModelSpec | nn.Module, sparsity: float, *, scope: str = "global",
                       example_inputs: Sequence[torch.Tensor] | None = None, steps: int = 1,
                       train: DataSource | None = None, val: DataSource | None = None,
                       finetune: TrainConfig | None = None, layer_types: tuple[type[nn.Module], ...] = PRUNABLE_TYPES,
                       progress: ProgressFn | None = None, inplace: bool = False) -> PruneResult:
    """L1 magnitude pruning of conv/linear weights to ``sparsity`` (``scope``: "global" ranks all weights
    together, "layer" prunes each layer to the same fraction). With ``train`` and ``finetune``, fine-tunes after
    each of ``steps`` steps with the masks kept (pruned weights stay zero). The hooks are always removed."""
    s = check_sparsity(sparsity)
    if scope not in ("global", "layer"):
        raise EdgeshipError(f"unknown pruning scope {scope!r}", hint="use 'global' or 'layer'")
    if steps < 1:
        raise EdgeshipError(f"steps must be >= 1, got {steps}")
    module, spec, ex = _target(target, example_inputs, inplace)
    params = prunable_weights(module, layer_types)
    if not params:
        raise EdgeshipError("the model has no conv or linear weights to prune")
    params_before = count_params(module)
    macs = count_macs(module, ex)
    acc_before = _acc(module, val)
    total = sum(getattr(m, n).numel() for m, n in params)
    history = []
    try:
        for i in range(1, steps + 1):
            s_i = s * i / steps
            if scope == "global":
                already = sum(int((getattr(m, n) == 0).sum()) for m, n in params) if i > 1 else 0
                amount = max(0, int(round(s_i * total)) - already)
                if amount:
                    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=amount)
            else:
                for m, n in params:
                    w = getattr(m, n)
                    amount = max(0, int(round(s_i * w.numel())) - (int((w == 0).sum()) if i > 1 else 0))
                    if amount:
                        tprune.l1_unstructured(m, n, amount=amount)
            ft = _finetune(module, train, val, finetune, progress, f"prune {i}/{steps}")
            history.append({"step": i, "target_sparsity": s_i, "sparsity": weight_sparsity(module, layer_types),
                            **({"finetune": ft} if ft else {})})
    finally:
        make_permanent(module)
    if has_pruning_hooks(module):  # pragma: no cover - make_permanent removes them all
        raise EdgeshipError("internal error: pruning hooks are still attached after make_permanent")
    module.eval()
    real = weight_sparsity(module, layer_types)
    log.info("unstructured pruning (%s): target %.3f, real %.4f", scope, s, real)
    return PruneResult("unstructured", s, real, params_before, count_params(module), macs, macs, count_nonzero(module),
                       module, spec.with_module(module) if spec else None, acc_before, _acc(module, val), history)


# -- structured --------------------------------------------------------------------------------------------
def output_layers(module: nn.Module, example_inputs: Sequence[torch.Tensor]) -> list[nn.Module]:
    """The conv/linear/LSTM/embedding layers whose output channels reach a model output directly (through
    pooling, reshapes, element-wise ops): pruning them would change the output shape."""
    tp = _tp()
    from torch_pruning import ops
    stops = {ops.OPTYPE.CONV, ops.OPTYPE.DEPTHWISE_CONV, ops.OPTYPE.LINEAR, ops.OPTYPE.LSTM, ops.OPTYPE.EMBED,
             ops.OPTYPE.MHA}
    module.eval()
    dg = tp.DependencyGraph().build_dependency(module, example_inputs=tuple(example_inputs))
    found: list[nn.Module] = []
    seen: set[int] = set()
    stack = [n for n in dg.module2node.values() if not n.outputs]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.type in stops:
            if node.module not in found:
                found.append(node.module)
            continue
        stack.extend(node.inputs)
    return found


def _importance(name: str):
    tp = _tp()
    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "bn":
        return tp.importance.BNScaleImportance()
    raise EdgeshipError(f"unknown channel importance {name!r}", hint=f"use one of {', '.join(IMPORTANCES)}")


def prune_structured(target: ModelSpec | nn.Module, sparsity: float, *,
                     example_inputs: Sequence[torch.Tensor] | None = None, steps: int = 1,
                     train: DataSource | None = None, val: DataSource | None = None,
                     finetune: TrainConfig | None = None, importance: str = "l1", global_pruning: bool = False,
                     ignored_layers: Sequence[str] = (), round_to: int | None = None,
                     progress: ProgressFn | None = None, inplace: bool = False) -> PruneResult:
    """Remove ``sparsity`` of the channels of every prunable layer (iteratively over ``steps``, fine-tuning
    ``finetune.epochs`` after each step when ``train`` is given). Dependencies (residual adds, depthwise convs,
    BatchNorm, concatenations) are handled by Torch-Pruning's DependencyGraph; layers feeding the outputs and
    those named in ``ignored_layers`` keep their output channels. With ``train``, BatchNorm statistics are
    re-estimated after each step (:func:`recalibrate_bn`). Returns a smaller dense model."""
    s = check_sparsity(sparsity)
    if steps < 1:
        raise EdgeshipError(f"steps must be >= 1, got {steps}")
    tp = _tp()
    module, spec, ex = _target(target, example_inputs, inplace)
    if has_pruning_hooks(module):
        make_permanent(module)
    shapes = _out_shapes(module, ex)
    params_before, macs_before = count_params(module), count_macs(module, ex)
    acc_before = _acc(module, val)
    names = dict(module.named_modules())
    unknown = [n for n in ignored_layers if n not in names]
    if unknown:
        raise EdgeshipError(f"ignored layers not found in the model: {', '.join(unknown)}",
                            hint=f"layer names look like: {', '.join(list(names)[1:8])}")
    history: list[dict] = []
    if s > 0:
        try:
            ignored = output_layers(module, ex) + [names[n] for n in ignored_layers]
            pruner = tp.pruner.BasePruner(
                module, ex, importance=_importance(importance), pruning_ratio=s, iterative_steps=steps,
                ignored_layers=ignored, global_pruning=global_pruning, round_to=round_to,
                max_pruning_ratio=0.95 if global_pruning else 1.0)
        except EdgeshipError:
            raise
        except Exception as e:  # noqa: BLE001 - Torch-Pruning could not trace this model
            raise EdgeshipError(f"structured pruning cannot trace this model: {type(e).__name__}: {e}",
                                hint="use unstructured pruning (--method unstructured), or ignore the layers it trips on") from e
        for i in range(1, steps + 1):
            module.eval()
            try:
                pruner.step()
            except Exception as e:  # noqa: BLE001 - a layer type Torch-Pruning cannot shrink correctly
                raise EdgeshipError(f"structured pruning failed on this model: {type(e).__name__}: {e}",
                                    hint="ignore the layers involved (ignored_layers=...) or use unstructured pruning") from e
            try:
                new_shapes = _out_shapes(module, ex)
            except Exception as e:  # noqa: BLE001
                raise EdgeshipError(f"the model no longer runs after structured pruning: {type(e).__name__}: {e}",
                                    hint="ignore the layers involved (ignored_layers=...) or use unstructured pruning") from e
            if new_shapes != shapes:
                raise EdgeshipError(f"structured pruning changed the output shapes {shapes} -> {new_shapes}",
                                    hint="ignore the output layers (ignored_layers=...)")
            if train is not None:
                recalibrate_bn(module, train)
            ft = _finetune(module, train, val, finetune, progress, f"prune {i}/{steps}")
            history.append({"step": i, "params": count_params(module), "macs": count_macs(module, ex),
                            **({"finetune": ft} if ft else {})})
    module.eval()
    params_after, macs_after = count_params(module), count_macs(module, ex)
    real = 1.0 - params_after / params_before
    log.info("structured pruning: channels %.3f -> params %d -> %d, MACs %d -> %d", s, params_before, params_after,
             macs_before, macs_after)
    return PruneResult("structured", s, real, params_before, params_after, macs_before, macs_after,
                       count_nonzero(module), module, spec.with_module(module) if spec else None,
                       acc_before, _acc(module, val), history)


def prune(target: ModelSpec | nn.Module, sparsity: float, method: str = "structured", **kw) -> PruneResult:
    """Dispatch to :func:`prune_structured` or :func:`prune_unstructured`."""
    if method == "structured":
        return prune_structured(target, sparsity, **kw)
    if method == "unstructured":
        return prune_unstructured(target, sparsity, **kw)
    raise EdgeshipError(f"unknown pruning method {method!r}", hint="use 'structured' or 'unstructured'")


def shrink_width(spec: ModelSpec, width_ratio: float) -> ModelSpec:
    """A narrower copy of ``spec``'s model: structured pruning keeping ``width_ratio`` of the channels of each
    prunable layer (weights inherited from the teacher, no fine-tuning). The usual distillation student."""
    if not 0.0 < float(width_ratio) <= 1.0:
        raise EdgeshipError(f"width ratio must be in (0, 1], got {width_ratio}")
    return prune_structured(spec, 1.0 - float(width_ratio)).spec


# -- sweep -------------------------------------------------------------------------------------------------
@dataclass
class SweepRow:
    sparsity: float
    params: int
    macs: int
    accuracy: float | None
    real_sparsity: float = 0.0
    nonzero_params: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def sweep(spec: ModelSpec, sparsities: Sequence[float], train: DataSource | None, val: DataSource | None,
          finetune_epochs: int = 0, method: str = "structured", *, eval_data: DataSource | None = None,
          finetune: TrainConfig | None = None, progress: ProgressFn | None = None, **kw) -> list[SweepRow]:
    """Prune a fresh copy of ``spec`` to each sparsity, fine-tune ``finetune_epochs`` on ``train`` (early
    stopping on ``val``), and measure accuracy on ``eval_data`` (default ``val``). Sparsity 0 is the
    unpruned baseline (not fine-tuned)."""
    values = sorted({check_sparsity(s) for s in sparsities})
    cfg = finetune if finetune is not None else TrainConfig(epochs=finetune_epochs, lr=5e-4, patience=5)
    data = eval_data if eval_data is not None else val
    rows = []
    for s in values:
        use = cfg if s > 0 and cfg.epochs and train is not None else None
        res = prune(spec, s, method, train=train, val=val, finetune=use, progress=progress, **kw)
        acc = _acc(res.module, data)
        rows.append(SweepRow(s, res.params_after, res.macs_after, acc, res.sparsity, res.nonzero_params_after))
        log.info("sweep %s %.2f: params %d, MACs %d, accuracy %s", method, s, res.params_after, res.macs_after, acc)
    return rows


def plot_sweep(rows: Sequence[SweepRow | dict], path: str | Path, title: str | None = None, key: str = "sparsity") -> Path:
    """Accuracy against MACs (and the point's ``key``: sparsity, or a low-rank sweep's energy) as a PNG, written
    atomically."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return _plot(rows, Path(path), title, plt, key)


def _plot(rows, path: Path, title, plt, key: str = "sparsity") -> Path:
    import io
    import os
    import tempfile
    rs = [r if isinstance(r, dict) else r.as_dict() for r in rows]
    if not rs:
        raise EdgeshipError("nothing to plot: the sweep has no rows")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    try:
        sp = [r[key] for r in rs]
        acc = [100 * r["accuracy"] if r["accuracy"] is not None else float("nan") for r in rs]
        macs = [r["macs"] / 1e6 for r in rs]
        ax1.plot(sp, acc, "o-")
        ax1.set_xlabel("sparsity (target)" if key == "sparsity" else f"{key} kept per layer")
        ax1.set_ylabel("accuracy (%)")
        ax1.grid(alpha=0.3)
        ax2.plot(macs, acc, "o-")
        for r, x, y in zip(rs, macs, acc):
            ax2.annotate(f"{r[key]:.2f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax2.set_xlabel("MMACs")
        ax2.set_ylabel("accuracy (%)")
        ax2.grid(alpha=0.3)
        fig.suptitle(title or "pruning sweep")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
    finally:
        plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
