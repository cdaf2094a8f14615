"""Compression stages as a registry (issue #14, item 2): a stage registered from the test alone runs through a
recipe's ``stages:`` list; the section form and the list form are the same recipe; one set of defaults."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch

from edgeship import recipe
from edgeship.compress import stages
from edgeship.compress.distill import DistillConfig
from edgeship.compress.prune import PruneConfig
from edgeship.compress.qat import QATConfig
from edgeship.compress.run import compress_model
from edgeship.compress.train import TrainConfig
from edgeship.errors import EdgeshipError
from edgeship.examples import digits_cnn


@dataclass
class ScaleConfig:
    factor: float = 2.0
    layer: str = "classifier"

    def __post_init__(self):
        if not self.factor > 0:
            raise EdgeshipError(f"scale.factor must be > 0, got {self.factor}")


class ScaleStage(stages.Stage):
    """A toy stage: multiplies one Linear's weights by ``factor`` (on a copy)."""

    key, Config = "scale", ScaleConfig

    def apply(self, spec, cfg, ctx):
        module = copy.deepcopy(spec.module)
        with torch.no_grad():
            module.get_submodule(cfg.layer).weight.mul_(cfg.factor)
        out = spec.with_module(module)
        return out, ctx.row("scale", out, factor=cfg.factor, rows_before=len(ctx.record["stages"]))


class NeedsDataStage(ScaleStage):
    key = "scale_with_data"
    needs_data = True


@pytest.fixture
def toy_stages():
    stages.register_stage("scale", ScaleStage)
    stages.register_stage("scale_with_data", f"{__name__}:NeedsDataStage")   # the lazy "module:Class" form
    yield
    stages.unregister_stage("scale")
    stages.unregister_stage("scale_with_data")


def test_a_stage_registered_from_outside_runs_through_the_stages_list(toy_stages):
    spec = digits_cnn()
    before = spec.module.classifier.weight.detach().clone()
    r = recipe.parse("stages:\n  - scale: {factor: 3}\n  - scale\nexport: {formats: [onnx]}\n")
    assert [e.key for e in r.stages] == ["scale", "scale"] and r.stages[1].config == ScaleConfig()
    final, record, calib, eval_data = compress_model(spec, r, None, None)
    assert calib is None and eval_data is None
    assert [s["stage"] for s in record["stages"]] == ["input", "scale", "scale"]
    assert [s.get("factor") for s in record["stages"]] == [None, 3, 2.0]
    assert record["stages"][2]["rows_before"] == 2          # the context holds the record being built
    assert record["recipe"]["stages"] == [{"scale": {"factor": 3, "layer": "classifier"}},
                                          {"scale": {"factor": 2.0, "layer": "classifier"}}]
    assert torch.allclose(final.module.classifier.weight, before * 6)
    assert torch.equal(spec.module.classifier.weight, before)    # the input model is left alone
    assert recipe.parse(recipe.to_yaml(r)) == r


def test_a_stage_that_needs_data_is_refused_without_it_before_any_work(toy_stages):
    with pytest.raises(EdgeshipError, match="trains or fine-tunes, but no data was given") as e:
        compress_model(digits_cnn(), recipe.parse("stages: [scale_with_data]\n"), None, None)
    assert "--data" in e.value.hint


def _same_record_both_forms(monkeypatch, sections: str, listed: str, expect: list[str], rows: list[str]):
    # pruning's row measures the exported files' latency (not deterministic): stub it, the rest is compared whole
    monkeypatch.setattr(stages, "shipped_change", lambda before, after, formats: [{"format": f} for f in formats])
    a, b = recipe.parse(sections), recipe.parse(listed)
    assert a == b and a.to_dict() == b.to_dict() and [e.key for e in a.stages] == expect
    (fa, ra, _, _), (fb, rb, _, _) = (compress_model(digits_cnn(), r, None, None) for r in (a, b))
    assert ra == rb and [s["stage"] for s in ra["stages"]] == rows
    for pa, pb in zip(fa.module.state_dict().values(), fb.module.state_dict().values()):
        assert torch.equal(pa, pb)
    return ra


def test_the_section_form_and_the_stages_list_are_the_same_recipe_and_record(monkeypatch):
    common = "data: digits\neval: digits\nexport: {formats: [onnx]}\n"
    record = _same_record_both_forms(
        monkeypatch,
        common + "train: {epochs: 1}\nprune: {sparsity: 0.3, finetune_epochs: 0}\n",
        common + "stages:\n  - train: {epochs: 1}\n  - prune: {sparsity: 0.3, finetune_epochs: 0}\n",
        ["train", "prune"], ["train", "prune-structured"])
    train, pruned = record["stages"]
    assert train["epochs_run"] == 1 and train["accuracy"] > 0.3
    assert pruned["shipped"] == [{"format": "onnx"}] and pruned["params_ratio"] > 1.3
    assert record["recipe"]["train"]["epochs"] == 1 and "stages" not in record["recipe"]   # the section form, as before


def test_pruning_alone_without_data_either_form(monkeypatch):
    _same_record_both_forms(monkeypatch, "prune: {method: unstructured, finetune_epochs: 0}\n",
                            "stages: [{prune: {method: unstructured, finetune_epochs: 0}}]\n", ["prune"],
                            ["input", "prune-unstructured"])


DOCUMENTED = {   # recipe.py's docstring and README "Recipes"; the presets rely on the rest
    "train": {"epochs": 30, "lr": 2e-3, "batch_size": 64, "seed": 0, "patience": 8},
    "distill": {"width": 0.5, "temperature": 4.0, "alpha": 0.5, "epochs": 30, "lr": 2e-3, "patience": 8,
                "baseline": True, "ship": "auto", "student": None},
    "prune": {"method": "structured", "sparsity": 0.5, "steps": 1, "finetune_epochs": 10, "lr": 5e-4, "patience": 5},
    "qat": {"epochs": 3, "lr": 1e-4, "batch_size": 64, "seed": 0},
}


def test_one_set_of_defaults():
    r = recipe.parse("train: {}\ndistill: {}\nprune: {}\nquantize: {qat: {}}\n")
    got = {"train": r.train, "distill": r.distill, "prune": r.prune, "qat": r.quantize.qat}
    classes = {"train": TrainConfig, "distill": DistillConfig, "prune": PruneConfig, "qat": QATConfig}
    for key, cfg in got.items():
        assert type(cfg) is classes[key] is stages.config_of(key) is getattr(recipe, f"{key.capitalize() if key != 'qat' else 'QAT'}Section")
        assert cfg == classes[key](), key                       # the section's defaults are the stage's
        assert {k: getattr(cfg, k) for k in DOCUMENTED[key]} == DOCUMENTED[key], key
    assert [e.key for e in r.stages] == ["train", "distill", "prune", "qat"]
    listed = recipe.parse("stages: [train, distill, prune, qat]\nquantize: {}\n")
    assert listed == r and listed.to_dict() == r.to_dict()
    # the fine-tune a prune stage runs, and the export formats, come from the same single places
    assert r.prune.finetune() == TrainConfig(10, 5e-4, patience=5)
    from edgeship_runtime.formats import default_formats
    assert recipe.parse("{}").export.formats == list(default_formats())


@pytest.mark.parametrize("text,fragment,hint", [
    ("data: digits\nstages:\n  - prune: {}\n  - svd: {rank: 4}\n", "recipe line 4: unknown stage 'svd'",
     "known stages: train, distill, prune, qat, lowrank, cluster"),
    ("stages:\n  - prune:\n      sparsity: 0.5\n      amount: 0.5\n", "recipe line 4: unknown key 'prune.amount'",
     "known keys in prune: method, sparsity, steps, finetune_epochs, lr, patience, layers"),
    ("stages:\n  - prune: {sparsity: high}\n", "recipe line 2: 'prune.sparsity' must be float", None),
    ("stages:\n  - prune: {steps: 0}\n", "recipe line 2: prune.steps must be >= 1", None),
    ("stages:\n  - qat: {epochs: 0}\nquantize: {}\n", "recipe line 2: qat.epochs must be >= 1", None),
    ("prune: {sparsity: 0.3}\nstages:\n  - train: {}\n  - prune: {}\n", "recipe line 4: stage 'prune' is given twice",
     "either in the stages: list or as its section"),
    ("quantize: {qat: {}}\nstages: [qat]\n", "recipe line 2: stage 'qat' is given twice: as 'quantize.qat'", None),
    ("stages: [qat]\n", "the qat stage fine-tunes for the int8 exports, but the recipe has no quantize section",
     "quantize: {precision: int8}"),
    ("stages: [qat]\nquantize: {precision: fp16}\n", "quantize.qat trains for int8, but quantize.precision is 'fp16'", None),
    ("stages: {prune: {}}\n", "recipe line 1: 'stages' must be a list", None),
    ("stages:\n  - {prune: {}, train: {}}\n", "recipe line 2: each entry of 'stages' is one stage", None),
    ("stages: [3]\n", "each entry of 'stages' is one stage", None),
])
def test_bad_stage_lists_name_the_line_and_what_is_known(text, fragment, hint):
    with pytest.raises(EdgeshipError) as e:
        recipe.parse(text)
    assert fragment in e.value.message, e.value.message
    if hint:
        assert hint in e.value.hint, e.value.hint


def test_registered_stages_are_known_keys_and_registration_is_checked(toy_stages):
    with pytest.raises(EdgeshipError) as e:
        recipe.parse("stages: [scael]\n")
    assert "scale" in e.value.hint and "train" in e.value.hint
    with pytest.raises(EdgeshipError, match="line 2: 'scale.factor' must be float"):
        recipe.parse("stages:\n  - scale: {factor: big}\n")
    with pytest.raises(EdgeshipError, match="line 2: scale.factor must be > 0"):
        recipe.parse("stages:\n  - scale: {factor: -1}\n")
    with pytest.raises(ValueError, match="already registered"):
        stages.register_stage("prune", ScaleStage)
    with pytest.raises(ValueError, match="'module:Class' or a class"):
        stages.register_stage("other", "no_colon")
    stages.register_stage("broken", "edgeship.compress.stages:NoSuchStage")
    try:
        with pytest.raises(EdgeshipError, match="stage 'broken' .* cannot be loaded"):
            recipe.parse("stages: [broken]\n")
    finally:
        stages.unregister_stage("broken")
    stages.unregister_stage("prune")                      # built-in stages stay
    assert "prune" in stages.known_stages()


def test_a_users_stages_list_replaces_the_presets_stages():
    r = recipe.parse("preset: tiny\nstages:\n  - prune: {sparsity: 0.3}\n")
    assert [e.key for e in r.stages] == ["prune"] and r.distill is None and r.prune.sparsity == 0.3
    assert r.quantize.precision == "int8"                 # the rest of the preset stays
