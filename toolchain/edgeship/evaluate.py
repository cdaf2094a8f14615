"""Accuracy on a labelled eval set: PyTorch's predictions, and each artifact's in its own runtime beside them."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .model import ModelSpec

def is_classifier(spec: ModelSpec, refs: list[list[np.ndarray]], eval_data) -> bool:
    """A classification task, or any model whose first output is one row of scores with labelled eval data whose
    labels index it: a plain module from the user's factory gets top-1 accuracy in every runtime too."""
    if spec.task.endswith("classification"):
        return True
    y = getattr(eval_data, "y", None)
    if y is None or not len(y) or not refs:
        return False
    first = refs[0][0]
    return (first.ndim == 2 and first.shape[0] == 1 and np.issubdtype(np.asarray(y).dtype, np.integer)
            and 0 <= int(np.min(y)) and int(np.max(y)) < first.shape[1])


def eval_reference(spec: ModelSpec, data) -> np.ndarray:
    """PyTorch's predicted classes on the eval set: what every artifact's predictions are compared to."""
    import torch
    preds = []
    with torch.no_grad():
        for x, _ in data.batches(batch_size=1):
            x = x if isinstance(x, tuple) else (x,)
            preds.append(int(torch.argmax(spec.reference(x)[0], dim=-1).reshape(-1)[0]))
    return np.asarray(preds)


def evaluate_artifact(path: Path, fmt: str, data, torch_pred: np.ndarray) -> dict:
    """Top-1 accuracy on ``data`` run in the artifact's own runtime, next to PyTorch fp32's, and their agreement."""
    y = data.y
    torch_acc = float(np.mean(torch_pred == y)) if y is not None else None
    base = {"examples": len(data), "torch_fp32": torch_acc}
    from edgeship_runtime.formats import FORMATS
    problem = FORMATS[fmt].platform_problem(sys.platform)   # Core ML predicts only on macOS: said, not failed
    if problem:
        return base | {"status": "not run", "reason": problem}
    from edgeship_runtime import RuntimeUnavailable, open_runtime
    try:
        rt = open_runtime(path)
        preds = np.asarray([int(np.argmax(rt.run([a[j:j + 1] for a in data.xs])[0].reshape(-1)))
                            for j in range(len(data))])
    except RuntimeUnavailable as e:
        return base | {"status": "not run", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - reported with the artifact, like a parity failure
        return base | {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
    acc = float(np.mean(preds == y)) if y is not None else None
    return base | {"status": "ok", "top1": acc, "agreement_with_torch": float(np.mean(preds == torch_pred)),
                   "drop_points": None if acc is None else round(100 * (torch_acc - acc), 2)}
