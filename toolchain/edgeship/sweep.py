"""`edgeship sweep`: prune to each sparsity, fine-tune, measure (:func:`run_sweep`), and its output folder
(:func:`write_sweep`): report.json with the rows (kind "sweep", schemas/report.schema.json), sweep.png, report.html."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from ._io import write_json_atomic, write_text_atomic
from .errors import EdgeshipError
from .manifest import tool_versions

METHODS = ("structured", "unstructured")


def parse_sparsities(text: str | Sequence[float]) -> list[float]:
    """"0,0.3,0.5" (the --prune flag) or a list of numbers, each checked to lie in [0, 1)."""
    from .compress.prune import check_sparsity
    try:
        items = [float(x) for x in text.split(",") if x.strip()] if isinstance(text, str) else [float(x) for x in text]
        return [check_sparsity(x) for x in items]
    except ValueError:
        raise EdgeshipError(f"--prune {text!r} is not a comma-separated list of numbers", hint="e.g. --prune 0,0.3,0.5,0.7") from None


def check_method(method: str) -> str:
    if method not in METHODS:
        raise EdgeshipError(f"--method must be structured or unstructured, got {method!r}")
    return method


def run_sweep(spec, sparsities: Sequence[float], eval_ref: str, method: str = "structured", finetune_epochs: int = 5,
              train_epochs: int = 0, progress=None) -> tuple[list[dict], int]:
    """Train ``spec`` first when ``train_epochs`` (a model built in code is untrained), then prune a fresh copy to each
    sparsity, fine-tune on ``eval_ref``'s train split and measure on its held-out split. Returns the rows (one per
    sparsity, as report.json's ``sweep``) and the number of held-out examples."""
    from .compress.prune import sweep as prune_sweep
    from .compress.run import data_splits, eval_split
    train, val = data_splits(eval_ref, spec)
    test = eval_split(eval_ref, spec)
    if train_epochs:
        from .compress.train import TrainConfig, train_classifier
        cfg = TrainConfig(epochs=train_epochs, lr=1e-3, patience=5)   # the sweep's own schedule, as before #14
        train_classifier(spec.module, train, val, cfg, progress=progress, stage="train")
        spec.module.eval()
    rows = prune_sweep(spec, sparsities, train, val, finetune_epochs, method, eval_data=test, progress=progress)
    return [r.as_dict() for r in rows], len(test)


def write_sweep(out: Path, spec, rows: list[dict], method: str, force: bool) -> dict:
    from .compress.prune import plot_sweep
    from .outdir import staged_folder
    from .report import SCHEMA_VERSION, validate
    with staged_folder(out, force) as staging:
        plot_sweep(rows, staging / "sweep.png", title=f"{spec.name}: {method} pruning")
        report = {"schema_version": SCHEMA_VERSION, "name": spec.name, "kind": "sweep", "method": method,
                  "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(), "tools": tool_versions(),
                  "sweep": rows, "plot": "sweep.png"}
        validate(report, str(Path(out) / "report.json"))
        write_json_atomic(staging / "report.json", report)
        cells = "".join(f"<tr><td>{r['sparsity']:.2f}</td><td>{r['params']:,}</td><td>{r['macs']:,}</td>"
                        f"<td>{'—' if r['accuracy'] is None else format(r['accuracy'], '.2%')}</td></tr>" for r in rows)
        write_text_atomic(staging / "report.html", f"<!doctype html><meta charset=utf-8><title>sweep {spec.name}</title>"
                          f"<h1>{spec.name}: {method} pruning sweep</h1><table border=1><tr><th>sparsity</th><th>parameters</th>"
                          f"<th>MACs</th><th>accuracy</th></tr>{cells}</table><img src='sweep.png' alt='sparsity vs accuracy'>")
    return report
