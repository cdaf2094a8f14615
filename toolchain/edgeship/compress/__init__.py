"""torch -> torch compression stages: distillation, pruning, quantization-aware training (and the shared training loop).

The stages a recipe runs are a registry (``compress.stages``: ``Stage``, ``register_stage``); each stage's settings
are one config dataclass (``TrainConfig``, ``DistillConfig``, ``PruneConfig``, ``QATConfig``) that is also its recipe
section.

Names are imported lazily so ``import edgeship.compress`` stays cheap (Torch-Pruning loads only when a
pruning function is used; ``compress.quantize`` is independent of this file). ``edgeship.compress.distill``
and ``edgeship.compress.prune`` are the submodules; their entry points are ``distill.distill`` and
``prune.prune`` (or ``prune_structured`` / ``prune_unstructured`` here).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "DistillConfig": "distill", "DistillResult": "distill", "kd_loss": "distill",
    "prune_structured": "prune", "prune_unstructured": "prune", "PruneResult": "prune",
    "has_pruning_hooks": "prune", "make_permanent": "prune", "shrink_width": "prune", "sweep": "prune",
    "plot_sweep": "prune", "SweepRow": "prune", "count_macs": "prune", "count_params": "prune",
    "train_classifier": "train", "TrainConfig": "train", "evaluate": "train", "Progress": "train",
    "FitResult": "train", "qat_finetune": "qat", "QATConfig": "qat", "QATResult": "qat", "PruneConfig": "prune",
    "Stage": "stages", "StageContext": "stages", "register_stage": "stages", "get_stage": "stages",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        mod = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
