"""`edgeship compress`: the recipe's stages in order (by default train → distill → prune → qat; compress/stages.py),
then quantize → export, with each stage's cost measured.

Every stage records parameters, MACs and accuracy on the eval set; the export then measures accuracy again in each
artifact's own runtime. All of it lands in report.json under "compression", next to the artifacts.
"""
from __future__ import annotations

import logging

from ..data import DataSource, load_data
from ..errors import EdgeshipError
from ..model import ModelSpec
from ..recipe import Recipe
from .train import ProgressFn

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


def compress_model(spec: ModelSpec, recipe: Recipe, data_ref: str | None, eval_ref: str | None,
                   progress: ProgressFn | None = None) -> tuple[ModelSpec, dict, DataSource | None, DataSource | None]:
    """Run the torch → torch stages of ``recipe`` in order (compress/stages.py); returns the final spec, the
    compression record, the calibration source and the eval data. Everything a stage would refuse after long
    work (missing data, unlabelled data, per-layer names the model lacks) is refused before the first stage."""
    from .stages import StageContext, plan as stage_plan
    data_ref = data_ref or recipe.data
    eval_ref = eval_ref or recipe.eval or data_ref
    plan = stage_plan(recipe)
    needy = [st for st, cfg in plan if st.wants_data(cfg)]
    if needy and not data_ref:
        said = next((st.no_data for st in needy if st.no_data), None)
        raise EdgeshipError(*said) if said else EdgeshipError(
            "this recipe trains or fine-tunes, but no data was given", hint="add --data DATA (e.g. digits) or `data:` to the recipe")
    _check_quantize(spec, recipe, eval_ref, renamed=any(st.renames(cfg) for st, cfg in plan))
    record: dict = {"recipe": recipe.to_dict(), "data": data_ref, "eval": eval_ref, "stages": []}
    ctx = StageContext(recipe, record=record, progress=progress, data_ref=data_ref)
    if data_ref:
        ctx.train, ctx.val = data_splits(data_ref, spec)
    for st, cfg in plan:
        st.check(spec, cfg, ctx)
    ctx.eval = eval_split(eval_ref, spec) if eval_ref else None
    if not (plan and plan[0][0].replaces_input_row):
        record["stages"].append(ctx.row("input", spec))
    current = spec
    for st, cfg in plan:
        current, rows = st.apply(current, cfg, ctx)
        record["stages"].extend([rows] if isinstance(rows, dict) else rows)
    return current, record, ctx.train, ctx.eval


def _check_quantize(spec: ModelSpec, recipe: Recipe, eval_ref: str | None, renamed: bool = False) -> None:
    """Before any training: quantize.layers names layers the model has (unless a stage renames them, as a
    student of its own does), and a budget has labelled eval data."""
    q = recipe.quantize
    if q is None:
        return
    if q.layers and not renamed:
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


def __getattr__(name: str):
    """``choose_student`` and ``shipped_change`` live with their stages (compress/stages.py)."""
    if name in ("choose_student", "shipped_change"):
        from . import stages
        return getattr(stages, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
