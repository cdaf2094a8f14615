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
    # hostile: aliases, nesting and sizes past the budgets, unreadable values, paths as presets
    ("data: &a [x, *a]\n", "line 1: alias *a refers to a node that contains it (a recursive alias)"),
    ("data: " + "[" * 3000 + "]" * 3000 + "\n", "line 1: nested more than 64 levels deep"),
    ("data:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 80)), "line 64: nested more than 64 levels deep"),
    ("data: " + "d" * 5000 + "\n", "line 1: a value of 5,000 characters (the limit is 4,096)"),
    ("name: [" + ", ".join(["x"] * 100_001) + "]\n", "expands to more than 100,000 nodes"),
    ("data: *" + "q" * 3000 + "\n", "found undefined alias 'qqqqq"),
    ("data: dig\x07its\n", "non-printable character #x0007 at line 1 (character offset 9)"),
    ("name: 2020-13-45\n", "has a value that cannot be read: month must be in 1..12"),
    ("preset: /etc/../some/path.yaml\n", "unknown preset '/etc/../some/path.yaml'"),
    ("preset: ../presets/tiny\n", "unknown preset '../presets/tiny'"),
    ("preset: [tiny]\n", "unknown preset ['tiny']"),
])
def test_bad_recipes(text, fragment):
    with pytest.raises(EdgeshipError) as e:
        recipe.parse(text)
    assert fragment in str(e.value)
    assert len(str(e.value)) < 600, len(str(e.value))   # a message quotes at most a short prefix of any value


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


# -- hostile recipes (issue #11, items 6, 10, 11) ------------------------------------------------------------
def _alias_bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\nname: *a{levels}\n"


def test_alias_bomb_is_refused_while_composing():
    import time
    import tracemalloc
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(EdgeshipError) as e:
        recipe.parse(_alias_bomb())
    took, (_, peak) = time.perf_counter() - t0, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert "expands to more than 100,000 nodes" in str(e.value) and "alias bomb" in e.value.hint
    assert took < 5 and peak < 20e6, (took, peak)      # 10**10 nodes were never built


def test_aliases_within_the_budget_still_work():
    r = recipe.parse("data: &d digits\neval: *d\nprune: &p {sparsity: 0.3}\nquantize: {layers: &l {Linear: null}}\n")
    assert r.data == r.eval == "digits" and r.prune.sparsity == 0.3 and r.quantize.layers == {"Linear": None}
    r = recipe.parse("train: &t {epochs: 2, lr: 1e-3}\ndistill: {<<: *t, width: 0.25}\n")   # a merge key
    assert r.distill.epochs == 2 and r.distill.lr == 1e-3 and r.distill.width == 0.25


def test_preset_takes_a_name_not_a_path(tmp_path):
    (tmp_path / "evil.yaml").write_text("data: digits\n")
    with pytest.raises(EdgeshipError) as e:
        recipe.parse(f"preset: {tmp_path}/evil\n")
    assert "takes a name, not a path" in e.value.hint and "mobile-int8" in e.value.hint
    with pytest.raises(EdgeshipError, match="unknown preset"):
        recipe.load(f"{tmp_path}/../{tmp_path.name}/evil")       # no suffix, not a file: read as a preset name
    assert recipe.parse("preset: tiny\n").distill is not None


def test_errors_quote_a_short_prefix_of_any_value():
    big = "[" + ", ".join(["'" + "v" * 500 + "'"] * 9) + "]"       # repr of the expanded value: 40 MB
    text = "name: [&a " + big + ", " + ", ".join(["*a"] * 9000) + "]\n"
    with pytest.raises(EdgeshipError) as e:
        recipe.parse(text)
    msg = str(e.value)
    assert "'name' must be str | None, got [[" in msg and len(msg) < 300
    with pytest.raises(EdgeshipError) as e:
        recipe.parse("prune: {method: " + "m" * 4000 + "}\n")
    assert "prune.method must be structured or unstructured, got 'mmm" in str(e.value) and len(str(e.value)) < 300


def test_recipe_files_past_the_size_limit_or_not_utf8(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"data: digits\n#" + b"x" * recipe.MAX_RECIPE_BYTES)
    with pytest.raises(EdgeshipError, match=r"big.yaml is 1,048,590 bytes; the limit is 1,048,576 bytes \(1 MiB\)"):
        recipe.load(str(big))
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"data: digits\nname: caf\xe9\n")
    with pytest.raises(EdgeshipError) as e:
        recipe.load(str(bad))
    assert f"recipe {bad} is not valid UTF-8: byte 0xe9 at byte offset 22 (line 2)" in str(e.value)
    bom = tmp_path / "bom.yaml"
    bom.write_bytes("\ufeffdata: digits\nname: café\n".encode())
    assert recipe.load(str(bom)).name == "café"
    with pytest.raises(EdgeshipError, match="is not a regular file"):
        recipe.load(str(tmp_path))
    with pytest.raises(EdgeshipError, match="cannot be opened: File name too long"):
        recipe.load("r" * 300 + ".yaml")
