"""Compression stages: the torch -> torch steps `edgeship compress` runs in the order the recipe gives.

A stage is a class with a ``key`` (the recipe's name for it), a ``Config`` dataclass (the recipe's section for it
*is* that class: its fields are the keys, its defaults the defaults, its ``__post_init__`` the checks), whether it
needs training data and whether the model it returns may have other layer names, and
``apply(spec, cfg, ctx) -> (spec, row)``. ``STAGES`` maps each key to "module:Class", imported when a recipe names
it; :func:`register_stage` adds one from outside the package::

    @dataclass
    class ScaleConfig:
        factor: float = 2.0

    class Scale(Stage):
        key, Config = "scale", ScaleConfig
        def apply(self, spec, cfg, ctx):
            ...                                       # a new spec, never the one given changed in place
            return new_spec, ctx.row("scale", new_spec, factor=cfg.factor)

    register_stage("scale", Scale)                    # or "mypkg.stages:Scale"; then `stages: [- scale: {factor: 3}]`

Every row holds parameters, MACs and accuracy on the eval set (:meth:`StageContext.row`); compress/run.py's
``compress_model`` is the loop.
"""
from __future__ import annotations

import copy
import importlib
import logging
import statistics
import tempfile
from dataclasses import dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Sequence

from ..data import DataSource
from ..errors import EdgeshipError
from ..model import ModelSpec, load as load_model
from ..recipe import Recipe, resolve_layers
from .cluster import ClusterConfig
from .distill import DistillConfig
from .lowrank import LowRankConfig
from .prune import PruneConfig
from .qat import QATConfig
from .train import ProgressFn, TrainConfig, eval_nll, evaluate, train_classifier

log = logging.getLogger(__name__)

STAGES: dict[str, str | type] = {
    "train": "edgeship.compress.stages:TrainStage",
    "distill": "edgeship.compress.stages:DistillStage",
    "prune": "edgeship.compress.stages:PruneStage",
    "qat": "edgeship.compress.stages:QATStage",
    "lowrank": "edgeship.compress.stages:LowRankStage",
    "cluster": "edgeship.compress.stages:ClusterStage",
}
_BUILTIN = frozenset(STAGES)


@dataclass
class StageContext:
    """What every stage may use: the recipe, the data splits (None without DATA), the record being built
    (``record["stages"]`` holds the rows so far) and the progress callback."""

    recipe: Recipe
    train: DataSource | None = None
    val: DataSource | None = None
    eval: DataSource | None = None           # the held-out labelled data accuracy is reported on
    record: dict = field(default_factory=dict)
    progress: ProgressFn | None = None
    data_ref: str | None = None

    def row(self, name: str, spec: ModelSpec, **extra) -> dict:
        """A stage row: parameters, MACs and (with eval data) accuracy and cross-entropy of ``spec``, then ``extra``."""
        from .prune import count_macs, count_params
        data = self.eval
        row = {"stage": name, "parameters": count_params(spec.module), "macs": count_macs(spec.module, spec.example_inputs()),
               "accuracy": evaluate(spec.module, data) if data is not None else None,
               "eval_nll": round(eval_nll(spec.module, data), 4) if data is not None else None}
        row.update(extra)
        log.info("stage %s: %s", name, row)
        return row


class Stage:
    """Base of compression stages (subclass it; the class attributes are the declarations)."""

    key: ClassVar[str]
    Config: ClassVar[type]
    needs_data: ClassVar[bool] = False        # labelled training data (DATA): it trains or fine-tunes
    renames_layers: ClassVar[bool] = False    # the model it returns may have other layer names than the one given
    replaces_input_row: ClassVar[bool] = False   # first in the list, its row stands for the input model
    no_data: ClassVar[tuple[str, str] | None] = None   # (message, hint) when it needs data and none was given

    def wants_data(self, cfg) -> bool:
        """Whether this configuration needs DATA (default: ``needs_data``)."""
        return self.needs_data

    def renames(self, cfg) -> bool:
        """Whether this configuration may rename layers (default: ``renames_layers``)."""
        return self.renames_layers

    def check(self, spec: ModelSpec, cfg, ctx: StageContext) -> None:
        """Before any stage runs (the data is loaded): refuse what would fail later, after long work."""

    def apply(self, spec: ModelSpec, cfg, ctx: StageContext) -> tuple[ModelSpec, dict | Sequence[dict]]:
        """The compressed model and its row (or rows) for ``record["stages"]``."""
        raise NotImplementedError


# -- the registry -------------------------------------------------------------------------------------------
def register_stage(key: str, stage: str | type, replace: bool = False) -> None:
    """Add a stage under ``key``: a "module:Class" string, imported when a recipe first names it, or the class."""
    if not isinstance(key, str) or not key.isidentifier():
        raise ValueError(f"a stage key is an identifier, not {key!r}")
    if key in STAGES and not replace:
        raise ValueError(f"stage {key!r} is already registered (pass replace=True to replace it)")
    if not (isinstance(stage, type) or (isinstance(stage, str) and stage.count(":") == 1)):
        raise ValueError(f"a stage is 'module:Class' or a class, not {stage!r}")
    STAGES[key] = stage


def unregister_stage(key: str) -> None:
    """Remove a stage added with :func:`register_stage` (the built-in ones stay)."""
    if key not in _BUILTIN:
        STAGES.pop(key, None)


def known_stages() -> list[str]:
    return list(STAGES)


def get_stage(key: str) -> Stage:
    """The stage registered under ``key`` (an instance), imported on first use."""
    if key not in STAGES:
        raise EdgeshipError(f"unknown stage {key!r}", hint=f"known stages: {', '.join(STAGES)}")
    target = STAGES[key]
    if isinstance(target, str):
        mod, _, name = target.partition(":")
        try:
            target = getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError) as e:
            raise EdgeshipError(f"stage {key!r} ({STAGES[key]}) cannot be loaded: {e}") from None
    if not (isinstance(target, type) and issubclass(target, Stage) and is_dataclass(getattr(target, "Config", None))):
        raise EdgeshipError(f"stage {key!r} is not a Stage subclass with a Config dataclass: {target!r}")
    return target()


# -- the built-in stages ------------------------------------------------------------------------------------
class TrainStage(Stage):
    """Train the model (a model built in code is untrained); it becomes the teacher of a distill stage after it."""

    key, Config = "train", TrainConfig
    needs_data = True
    replaces_input_row = True

    def apply(self, spec, cfg: TrainConfig, ctx):
        module = copy.deepcopy(spec.module)
        fit = train_classifier(module, ctx.train, ctx.val, cfg, progress=ctx.progress, stage="train")
        trained = spec.with_module(module.eval())
        return trained, ctx.row("train", trained, epochs_run=fit.epochs_run)


class DistillStage(Stage):
    """Distill the model into a student; with ``baseline`` also train the same student on the labels alone, and
    ship the better of the two on the validation split (``ship: auto``; the recipe can force either). A teacher
    does not always help: on a 99% task one digit is noise, and on small tabular sets the twin can win outright."""

    key, Config = "distill", DistillConfig
    needs_data = True
    renames_layers = True

    def renames(self, cfg: DistillConfig) -> bool:
        return cfg.student is not None        # a student derived at a width keeps the teacher's names

    def apply(self, teacher, cfg: DistillConfig, ctx):
        from .distill import distill
        from .prune import recalibrate_bn, shrink_width
        train, val = ctx.train, ctx.val
        student = load_model(cfg.student, teacher.inputs, seed=ctx.recipe.seed) if cfg.student else None
        result = distill(teacher, student, train, val, cfg, width_ratio=None if student else cfg.width, progress=ctx.progress)
        distilled = result.spec
        rows = [ctx.row("distill", distilled, temperature=cfg.temperature, alpha=cfg.alpha,
                        student=cfg.student or f"teacher at width {cfg.width}")]
        if not cfg.baseline:
            ctx.record["student"] = {"shipped": "distilled", "why": "no baseline was trained (distill.baseline: false)"}
            return distilled, rows
        # the same student, trained on the labels alone for as many epochs: what the teacher adds
        if student is not None:
            base = teacher.with_module(copy.deepcopy(student.module))
        else:
            base = shrink_width(teacher, cfg.width)
            recalibrate_bn(base.module, train)
        cfg_b = TrainConfig(cfg.epochs, cfg.lr, cfg.batch_size, cfg.seed, cfg.patience)
        train_classifier(base.module, train, val, cfg_b, progress=ctx.progress, stage="baseline")
        base = base.with_module(base.module.eval())
        rows.append(ctx.row("student-without-teacher", base))
        shipped, why = choose_student(distilled, base, val, cfg.ship)
        ctx.record["student"] = {"shipped": shipped, "why": why}
        return (distilled if shipped == "distilled" else base), rows


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


class PruneStage(Stage):
    """Structured or unstructured pruning, fine-tuned after each step; the row says what changed in what ships."""

    key, Config = "prune", PruneConfig

    def wants_data(self, cfg: PruneConfig) -> bool:
        return bool(cfg.finetune_epochs)

    def apply(self, current, cfg: PruneConfig, ctx):
        from .prune import prune
        ignored = [n for n, v in resolve_layers(current.module, cfg.layers, cfg.sparsity).items() if v is None]
        finetune = cfg.finetune() if cfg.finetune_epochs and ctx.train is not None else None
        kw = {"steps": cfg.steps, "train": ctx.train, "val": ctx.val, "finetune": finetune, "progress": ctx.progress}
        if cfg.method == "structured":
            kw["ignored_layers"] = ignored
        elif ignored:
            raise EdgeshipError("prune.layers with null is supported for structured pruning only")
        res = prune(current, cfg.sparsity, cfg.method, **kw)
        return res.spec, ctx.row(f"prune-{cfg.method}", res.spec, sparsity_target=cfg.sparsity, sparsity=res.sparsity,
                                 macs_ratio=res.macs_ratio, params_ratio=res.params_ratio,
                                 shipped=shipped_change(current, res.spec, ctx.recipe.export.formats))


def shipped_change(before: ModelSpec, after: ModelSpec, formats, *, runs: int = 100, warmup: int = 10,
                   rounds: int = 3) -> list[dict]:
    """What a stage changed in what ships: per format, the fp32 file of the model ``before`` and ``after`` it
    (exported to a scratch folder; the shipped files come from the same exporters), their sizes and download sizes
    (zip deflate 9: what an app store or an APK pays) and their latency in the format's own runtime on this host:
    1 thread, ``rounds`` alternating rounds of ``runs`` timed inferences, the median round's p50. A runtime that
    cannot run here is said, not skipped silently."""
    from edgeship_runtime import RuntimeUnavailable
    from edgeship_runtime.bench import bench

    from .._io import captured_output, size_path
    from ..sizes import download_size
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
            row |= {"size_before": size_path(paths["before"]), "size_after": size_path(paths["after"]),
                    "download_before": download_size(paths["before"]), "download_after": download_size(paths["after"])}
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


class QATStage(Stage):
    """Quantization-aware fine-tune (compress/qat.py); the float module with the fine-tuned weights goes on to
    every format's own int8 quantizer. The row holds the float accuracy and, in torch, the int8 accuracy of the
    QAT graph and of plain PTQ before and after the fine-tune. Needs the recipe's quantize section (int8)."""

    key, Config = "qat", QATConfig
    needs_data = True
    no_data = ("quantize.qat fine-tunes the model with int8 fake-quantization and needs labelled training data, "
               "but no data was given",
               "add --data DATA (e.g. digits) or `data:` to the recipe, or drop quantize.qat")

    def check(self, spec, cfg, ctx):
        if ctx.train is not None and ctx.train.y is None:
            raise EdgeshipError(f"quantize.qat needs labelled training data; {ctx.data_ref!r} has no labels",
                                hint="an image folder per class, or an .npz with y")

    def apply(self, current, cfg: QATConfig, ctx):
        from dataclasses import replace

        from .qat import qat_finetune
        q = ctx.recipe.quantize
        cfg = replace(cfg, calib_samples=cfg.calib_samples or q.calib_samples)
        keep = q.keep_float(current.module) if q.layers else ()
        res = qat_finetune(current, ctx.train, ctx.val, cfg, calib=ctx.train.calibration(cfg.calib_samples),
                           progress=ctx.progress, eval_data=ctx.eval, keep_float=keep)
        return res.spec, ctx.row("qat", res.spec, qat_accuracy=res.qat_accuracy, ptq_accuracy=res.ptq_accuracy,
                                 ptq_after_qat_accuracy=res.ptq_after_qat_accuracy, epochs_run=res.fit.epochs_run,
                                 lr=cfg.lr, note="the fine-tuned float weights go on to every format's own int8 "
                                                 "quantizer; qat/ptq accuracies are the int8 graphs in PyTorch")


def _finetune_config(cfg) -> TrainConfig:
    """The fine-tune after a lowrank or cluster stage: its epochs, lr, batch size and patience."""
    return TrainConfig(epochs=cfg.finetune_epochs, lr=cfg.lr, batch_size=cfg.batch_size, patience=cfg.patience)


class LowRankStage(Stage):
    """Truncated SVD of Linear and convolution weights (compress/lowrank.py): each factorized layer becomes two
    thin ones under its own name, so every format exports it and files and MACs really shrink; then an optional
    fine-tune, against the unfactorized model's outputs when ``distill`` is set. The row gives the layers
    factorized, the parameters of the candidate layers before and after, and what changed in what ships."""

    key, Config = "lowrank", LowRankConfig
    renames_layers = True           # fc -> fc.0, fc.1

    def wants_data(self, cfg) -> bool:
        return bool(cfg.finetune_epochs)

    def apply(self, current, cfg, ctx):
        from .lowrank import factorize, summary
        module, layers = factorize(current.module, energy=cfg.energy, rank_ratio=cfg.rank_ratio, layers=cfg.layers)
        made = current.with_module(module.eval())
        tuned = None
        if cfg.finetune_epochs and ctx.train is not None:
            if cfg.distill:
                from .distill import distill
                dcfg = DistillConfig(temperature=cfg.temperature, alpha=cfg.alpha, epochs=cfg.finetune_epochs,
                                     lr=cfg.lr, batch_size=cfg.batch_size, patience=cfg.patience, baseline=False)
                made = distill(current, made, ctx.train, ctx.val, dcfg, progress=ctx.progress).spec
                tuned = "distilled from the unfactorized model"
            else:
                train_classifier(made.module, ctx.train, ctx.val, _finetune_config(cfg), progress=ctx.progress,
                                 stage="lowrank-finetune")
                made = made.with_module(made.module.eval())
                tuned = "cross-entropy on the labels"
        total = summary(layers)
        return made, ctx.row("lowrank", made, layers_factorized=total["factorized"], layer_params_before=total["params_before"],
                             layer_params_after=total["params_after"], finetune=tuned,
                             layers=[{k: r[k] for k in ("name", "shape", "rank", "full_rank", "energy_kept", "reason")}
                                     for r in layers],
                             shipped=shipped_change(current, made, ctx.recipe.export.formats))


class ClusterStage(Stage):
    """k-means weight sharing (compress/cluster.py): each weight holds at most 2^bits distinct values; then an
    optional fine-tune with the centroids shared. Core ML stores such weights as their own look-up table (the
    exporter palettizes with the clustered values); every other format stores floats that compress far better, so
    the row's ``shipped`` gives each format's file and download size (zip deflate 9) before and after."""

    key, Config = "cluster", ClusterConfig

    def wants_data(self, cfg) -> bool:
        return bool(cfg.finetune_epochs)

    def apply(self, current, cfg, ctx):
        from .cluster import cluster, finetune
        module, rows = cluster(current.module, bits=cfg.bits, layers=cfg.layers, group_size=cfg.group_size,
                               example_args=current.example_inputs())   # LayerNorms folded into their Linears first
        tuned = None
        if cfg.finetune_epochs and ctx.train is not None:
            finetune(module, ctx.train, ctx.val, _finetune_config(cfg), rows=rows, progress=ctx.progress)
            tuned = "centroids trained, assignments fixed"
        made = replace(current, module=module.eval(), clustered_bits=max(
            (r["bits"] for r in rows if r["clustered"]), default=None))
        done = [r for r in rows if r["clustered"]]
        return made, ctx.row("cluster", made, bits=cfg.bits, weights_clustered=len(done),
                             max_distinct=max((r["distinct_after"] for r in done), default=None),
                             min_weight_sqnr_db=min((r["sqnr_db"] for r in done), default=None), finetune=tuned,
                             shipped=shipped_change(current, made, ctx.recipe.export.formats))


def config_of(key: str) -> type:
    """The Config dataclass of stage ``key`` (what the recipe's section for it is built as)."""
    return type(get_stage(key)).Config


def plan(recipe: Recipe) -> list[tuple[Stage, Any]]:
    """The recipe's stages in order, each with its config."""
    return [(get_stage(e.key), e.config) for e in recipe.stages]
