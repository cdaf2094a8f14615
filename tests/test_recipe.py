"""Recipes: presets, overrides, and errors that name the key and the line before any long work starts."""
from __future__ import annotations

import subprocess
import sys

import pytest
from torch import nn

from edgeship import recipe
from edgeship.errors import EdgeshipError


def test_presets_load_and_validate():
    assert {"mobile-int8", "pi-int8", "tiny", "digits-demo"} <= set(recipe.presets())
    for name in recipe.presets():
        r = recipe.load(name)
        assert r.export.formats
    demo = recipe.load("digits-demo")
    assert demo.data == "digits" and demo.distill.width < 0.5 and demo.prune.sparsity == 0.3
    assert demo.quantize.precision == "int8"


def test_preset_with_overrides(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("preset: tiny\nprune: {sparsity: 0.3}\nexport: {formats: [onnx]}\n")
    r = recipe.load(str(f))
    assert r.prune.sparsity == 0.3 and r.prune.method == "structured"   # the rest of the preset's prune stays
    assert r.export.formats == ["onnx"] and r.distill.width == 0.5


@pytest.mark.parametrize("text,fragment", [
    ("prune:\n  sparsity: 0.5\n  methd: x\n", "line 3: unknown key 'prune.methd'"),
    ("prune:\n  sparsity: high\n", "line 2: 'prune.sparsity' must be float"),
    ("prune: {sparsity: 1.0}\n", "sparsity must be in [0, 1)"),
    ("quantize: {precision: int3}\n", "quantize.precision 'int3' is unknown"),
    ("export: {formats: [onnx, caffe]}\n", "unknown format caffe"),
    ("distill: {alpha: 1.5}\n", "alpha must be in [0, 1]"),
    ("bogus: 1\n", "line 1: unknown key 'bogus'"),
    ("preset: nope\n", "unknown preset 'nope'"),
    ("- a\n- b\n", "must be a YAML mapping"),
    ("prune: {layers: {classifier: 0.3}}\n", "only null"),
    ("quantize: {layers: {classifier: int4}}\n", "quantize.layers: only null (keep the layer in float) or 'int8'"),
    ("quantize: {max_accuracy_drop: -1}\n", "max_accuracy_drop must be >= 0"),
    ("quantize: {max_accuracy_drop: lots}\n", "'quantize.max_accuracy_drop' must be float | None"),
    ("quantize: {precision: fp16, max_accuracy_drop: 1.0}\n", "applies to quantized exports"),
])
def test_bad_recipes(text, fragment):
    with pytest.raises(EdgeshipError) as e:
        recipe.parse(text)
    assert fragment in str(e.value)


def test_layer_precedence_name_over_type_over_global():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Linear(2, 2), nn.Linear(2, 2))
    got = recipe.resolve_layers(m, {"Linear": None, "3": 0.9}, 0.5)
    assert got == {"0": 0.5, "1": 0.5, "2": None, "3": 0.9}
    with pytest.raises(EdgeshipError, match="does not have: classifier"):
        recipe.resolve_layers(m, {"classifier": None}, 0.5)


def test_quantize_layers_and_budget_parse_and_resolve_to_keep_float():
    r = recipe.parse("preset: mobile-int8\nquantize:\n  layers: {Linear: null, '3': int8, '0': null}\n  max_accuracy_drop: 1.5\n")
    q = r.quantize
    assert q.precision == "int8" and q.calib_samples == 128 and q.max_accuracy_drop == 1.5   # the preset's rest stays
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Linear(2, 2), nn.Linear(2, 2))
    assert q.keep_float(m) == {"0", "2"}                 # name ("3": int8) > type (Linear: null) > global (int8)
    assert recipe.parse(recipe.to_yaml(r)).quantize == q  # round-trips through YAML
    from edgeship.compress.quantize import QuantOptions
    from edgeship.compress.run import quant_options
    from edgeship.model import InputSpec, ModelSpec
    spec = ModelSpec(m, (InputSpec("x", (1, 1, 3, 3)),))
    assert quant_options(spec, r) == {"quant": QuantOptions({"0", "2"}), "max_accuracy_drop": 1.5}
    assert quant_options(spec, recipe.parse("export: {formats: [onnx]}\n")) == {}


@pytest.mark.parametrize("text,data,eval_ref,fragment", [
    ("train: {epochs: 1}\nquantize: {layers: {clasifier: null}}\n", "digits", None, "does not have: clasifier"),
    ("quantize: {max_accuracy_drop: 1.0}\n", None, None, "needs labelled eval data"),
])
def test_compress_checks_quantize_options_before_training(text, data, eval_ref, fragment):
    import time

    from edgeship.compress.run import compress_model
    from edgeship.examples import digits_cnn
    t0 = time.perf_counter()
    with pytest.raises(EdgeshipError, match=fragment):
        compress_model(digits_cnn(), recipe.parse(text), data, eval_ref)
    assert time.perf_counter() - t0 < 10   # nothing was trained


def test_compress_cli_rejects_bad_recipe_before_work(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("prune:\n  sparsity: 0.5\n  steps: 0\n")
    r = subprocess.run([sys.executable, "-m", "edgeship.cli", "compress", "example:digits_cnn", "--recipe", str(f),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "steps must be >= 1" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()
