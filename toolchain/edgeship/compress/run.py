"""`edgeship compress`: train (optional) → distill → prune → quantize → export, with each stage's cost measured.

Every stage records parameters, MACs and accuracy on the eval set; the export then measures accuracy again in each
artifact's own runtime. All of it lands in report.json under "compression", next to the artifacts.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from ..data import DataSource, load_data
from ..errors import EdgeshipError
from ..model import ModelSpec, load as load_model
from ..recipe import Recipe, resolve_layers
from .train import ProgressFn, TrainConfig, eval_nll, evaluate, train_classifier

log = logging.getLogger(__name__)


def data_splits(ref: str, spec: ModelSpec) -> tuple[DataSource, DataSource]:
    """Train and validation splits of DATA (the fixed 60/20 of its examples)."""
    return load_data(ref, spec, "train"), load_data(ref, spec, "val")


def eval_split(ref: str, spec: ModelSpec) -> DataSource:
    """The held-out data accuracy is reported on: the test split of a data set, else all of DATA."""
    src = load_data(ref, spec, "test" if ref == "digits" else "all")
    if src.y is None:
        raise EdgeshipError(f"eval data {ref!r} has no labels", hint="accuracy needs labels: an image folder per class, or an .npz with y")
    return src


def _stage(name: str, spec: ModelSpec, eval_data: DataSource | None, **extra) -> dict:
    from .prune import count_macs, count_params
    row = {"stage": name, "parameters": count_params(spec.module), "macs": count_macs(spec.module, spec.example_inputs()),
           "accuracy": evaluate(spec.module, eval_data) if eval_data is not None else None,
           "eval_nll": round(eval_nll(spec.module, eval_data), 4) if eval_data is not None else None}
    row.update(extra)
    log.info("stage %s: %s", name, row)
    return row


def compress_model(spec: ModelSpec, recipe: Recipe, data_ref: str | None, eval_ref: str | None,
                   progress: ProgressFn | None = None) -> tuple[ModelSpec, dict, DataSource | None, DataSource | None]:
    """Run the torch → torch stages of ``recipe``; returns the final spec, the compression record, the
    calibration source and the eval data."""
    data_ref = data_ref or recipe.data
    eval_ref = eval_ref or recipe.eval or data_ref
    qat = recipe.quantize.qat if recipe.quantize else None
    if qat and not data_ref:
        raise EdgeshipError("quantize.qat fine-tunes the model with int8 fake-quantization and needs labelled training data, "
                            "but no data was given", hint="add --data DATA (e.g. digits) or `data:` to the recipe, or drop quantize.qat")
    needs_data = recipe.train or recipe.distill or (recipe.prune and recipe.prune.finetune_epochs)
    if needs_data and not data_ref:
        raise EdgeshipError("this recipe trains or fine-tunes, but no data was given", hint="add --data DATA (e.g. digits) or `data:` to the recipe")
    _check_quantize(spec, recipe, eval_ref)
    train = val = None
    if data_ref:
        train, val = data_splits(data_ref, spec)
        if qat and train.y is None:
            raise EdgeshipError(f"quantize.qat needs labelled training data; {data_ref!r} has no labels",
                                hint="an image folder per class, or an .npz with y")
    eval_data = eval_split(eval_ref, spec) if eval_ref else None
    record: dict = {"recipe": recipe.to_dict(), "data": data_ref, "eval": eval_ref, "stages": []}
    stages = record["stages"]
    teacher = spec
    if recipe.train:
        t = recipe.train
        cfg = TrainConfig(t.epochs, t.lr, t.batch_size, t.seed, t.patience)
        module = copy.deepcopy(spec.module)
        fit = train_classifier(module, train, val, cfg, progress=progress, stage="train")
        teacher = spec.with_module(module.eval())
        stages.append(_stage("train", teacher, eval_data, epochs_run=fit.epochs_run))
    else:
        stages.append(_stage("input", teacher, eval_data))
    current = teacher
    if recipe.distill:
        current = _distill(teacher, recipe, train, val, eval_data, record, progress)
    if recipe.prune:
        current = _prune(current, recipe, train, val, eval_data, stages, progress)
    if qat:
        current = _qat(current, recipe, train, val, eval_data, stages, progress)
    calib = train if train is not None else None
    return current, record, calib, eval_data


def _check_quantize(spec: ModelSpec, recipe: Recipe, eval_ref: str | None) -> None:
    """Before any training: quantize.layers names layers the model has, and a budget has labelled eval data."""
    q = recipe.quantize
    if q is None:
        return
    if q.layers and not (recipe.distill and recipe.distill.student):   # a derived student keeps the teacher's names
        q.keep_float(spec.module)
    if q.max_accuracy_drop is not None:
        from .sensitivity import check_budget
        check_budget(q.max_accuracy_drop, [q.precision], eval_ref or None, option="quantize.max_accuracy_drop")


def quant_options(spec: ModelSpec, recipe: Recipe) -> dict:
    """ExportOptions' per-layer int8 fields from the recipe's quantize section, for the final model ``spec``:
    ``quant`` (the layers quantize.layers resolves to null) and ``max_accuracy_drop``."""
    from .quantize import QuantOptions
    q = recipe.quantize
    if q is None:
        return {}
    return {"quant": QuantOptions(q.keep_float(spec.module)), "max_accuracy_drop": q.max_accuracy_drop}


def _distill(teacher, recipe: Recipe, train, val, eval_data, record, progress) -> ModelSpec:
    """Distill the student; with ``baseline`` also train the same student on the labels alone, and ship the better
    of the two on the validation split (``ship: auto``; the recipe can force either). A teacher does not always
    help: on a 99% task one digit is noise, and on small tabular sets the twin can win outright."""
    from .distill import DistillConfig, distill
    from .prune import recalibrate_bn, shrink_width
    d = recipe.distill
    stages = record["stages"]
    cfg = DistillConfig(d.temperature, d.alpha, d.epochs, d.lr, d.batch_size, d.seed, d.patience, d.feature_layers)
    student = load_model(d.student, teacher.inputs, seed=recipe.seed) if d.student else None
    result = distill(teacher, student, train, val, cfg, width_ratio=None if student else d.width, progress=progress)
    distilled = result.spec
    stages.append(_stage("distill", distilled, eval_data, temperature=d.temperature, alpha=d.alpha,
                         student=d.student or f"teacher at width {d.width}"))
    if not d.baseline:
        record["student"] = {"shipped": "distilled", "why": "no baseline was trained (distill.baseline: false)"}
        return distilled
    # the same student, trained on the labels alone for as many epochs: what the teacher adds
    if student is not None:
        base = teacher.with_module(copy.deepcopy(student.module))
    else:
        base = shrink_width(teacher, d.width)
        recalibrate_bn(base.module, train)
    cfg_b = TrainConfig(d.epochs, d.lr, d.batch_size, d.seed, d.patience)
    train_classifier(base.module, train, val, cfg_b, progress=progress, stage="baseline")
    base = base.with_module(base.module.eval())
    stages.append(_stage("student-without-teacher", base, eval_data))
    shipped, why = choose_student(distilled, base, val, d.ship)
    record["student"] = {"shipped": shipped, "why": why}
    return distilled if shipped == "distilled" else base


def choose_student(distilled: ModelSpec, baseline: ModelSpec, val: DataSource | None, ship: str) -> tuple[str, str]:
    """Which student ships: forced by ``ship``, else the higher validation accuracy, ties broken by the lower
    validation cross-entropy (the eval split stays untouched by the choice). Returns (which, why)."""
    if ship != "auto":
        return ship, f"forced by distill.ship: {ship}"
    if val is None or val.y is None:
        return "distilled", "no labelled validation data to compare the two on"
    acc = {"distilled": evaluate(distilled.module, val), "baseline": evaluate(baseline.module, val)}
    nll = {"distilled": eval_nll(distilled.module, val), "baseline": eval_nll(baseline.module, val)}
    best = max(acc, key=lambda k: (acc[k], -nll[k], k == "distilled"))
    other = "baseline" if best == "distilled" else "distilled"
    how = (f"validation accuracy {acc[best]:.2%} vs {acc[other]:.2%}" if acc[best] != acc[other] else
           f"validation accuracy tied at {acc[best]:.2%}; cross-entropy {nll[best]:.4f} vs {nll[other]:.4f} nats")
    names = {"distilled": "the distilled student", "baseline": "the same student trained without the teacher"}
    return best, f"{names[best]} is better than {names[other]}: {how}"


def _prune(current, recipe: Recipe, train, val, eval_data, stages, progress) -> ModelSpec:
    from .prune import prune
    p = recipe.prune
    ignored = [n for n, v in resolve_layers(current.module, p.layers, p.sparsity).items() if v is None]
    finetune = TrainConfig(p.finetune_epochs, p.lr) if p.finetune_epochs and train is not None else None
    kw = {"steps": p.steps, "train": train, "val": val, "finetune": finetune, "progress": progress}
    if p.method == "structured":
        kw["ignored_layers"] = ignored
    elif ignored:
        raise EdgeshipError("prune.layers with null is supported for structured pruning only")
    res = prune(current, p.sparsity, p.method, **kw)
    stages.append(_stage(f"prune-{p.method}", res.spec, eval_data, sparsity_target=p.sparsity, sparsity=res.sparsity,
                         macs_ratio=res.macs_ratio, params_ratio=res.params_ratio,
                         shipped=shipped_change(current, res.spec, recipe.export.formats)))
    return res.spec


def shipped_change(before: ModelSpec, after: ModelSpec, formats, *, runs: int = 100, warmup: int = 10,
                   rounds: int = 3) -> list[dict]:
    """What pruning changed in what ships: per format, the fp32 file of the model ``before`` and ``after`` pruning
    (exported to a scratch folder; the shipped files come from the same exporters) and their latency in the format's
    own runtime on this host: 1 thread, ``rounds`` alternating rounds of ``runs`` timed inferences, the median
    round's p50. A runtime that cannot run here is said, not skipped silently."""
    import statistics
    import tempfile

    from edgeship_runtime import RuntimeUnavailable
    from edgeship_runtime.bench import bench

    from .._io import captured_output, size_path
    from ..export import get_exporter
    from ..pipeline import export_artifact
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeship-prune-") as tmp:
        for fmt in formats:
            if "fp32" not in get_exporter(fmt).precisions:
                continue
            row: dict = {"format": fmt}
            try:   # the export path every artifact takes (its converter in a child where it can end the process)
                paths = {w: export_artifact(m, fmt, "fp32", Path(tmp) / w)[0].path
                         for w, m in (("before", before), ("after", after))}
            except EdgeshipError as e:   # a format the model does not export to: the main export reports why
                rows.append(row | {"error": e.message})
                continue
            row |= {"size_before": size_path(paths["before"]), "size_after": size_path(paths["after"])}
            p50: dict[str, list[float]] = {"before": [], "after": []}
            try:
                with captured_output():   # runtimes print to fd 1/2 (XNNPACK delegate, cpuinfo)
                    for _ in range(rounds):
                        for w in ("before", "after"):
                            p50[w].append(bench(paths[w], runs=runs, warmup=warmup, threads=1)["latency_ms"]["p50"])
            except RuntimeUnavailable as e:
                row["latency"] = f"not run: {e.args[0]}"
            else:
                row |= {"p50_ms_before": statistics.median(p50["before"]), "p50_ms_after": statistics.median(p50["after"]),
                        "threads": 1, "runs": runs, "rounds": rounds}
            rows.append(row)
    return rows


def _qat(current, recipe: Recipe, train, val, eval_data, stages, progress) -> ModelSpec:
    """Quantization-aware fine-tune (compress/qat.py); the float module with the fine-tuned weights goes on to
    every format's own int8 quantizer. The stage row holds the float accuracy and, in torch, the int8 accuracy of
    the QAT graph and of plain PTQ before and after the fine-tune."""
    from .qat import QATConfig, qat_finetune
    q = recipe.quantize
    cfg = QATConfig(q.qat.epochs, q.qat.lr, q.qat.batch_size, q.qat.seed, calib_samples=q.calib_samples)
    keep = q.keep_float(current.module) if q.layers else ()
    res = qat_finetune(current, train, val, cfg, calib=train.calibration(q.calib_samples), progress=progress,
                       eval_data=eval_data, keep_float=keep)
    stages.append(_stage("qat", res.spec, eval_data, qat_accuracy=res.qat_accuracy, ptq_accuracy=res.ptq_accuracy,
                         ptq_after_qat_accuracy=res.ptq_after_qat_accuracy, epochs_run=res.fit.epochs_run, lr=cfg.lr,
                         note="the fine-tuned float weights go on to every format's own int8 quantizer; "
                              "qat/ptq accuracies are the int8 graphs in PyTorch"))
    return res.spec
