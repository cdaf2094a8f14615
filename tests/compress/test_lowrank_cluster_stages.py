"""The lowrank and cluster stages (issue #16) through a recipe, on the trained digits CNN and the real digits data:
each row has parameters, MACs, accuracy and what changed in the shipped files (size and download size); the
clustered model's Core ML package stores its own values as look-up tables, and every artifact reports its
download size."""
from __future__ import annotations

import copy

import pytest

from edgeship import recipe
from edgeship.compress.cluster import distinct_values
from edgeship.compress.run import compress_model
from edgeship.errors import EdgeshipError
from edgeship.export import get_exporter

RECIPE = """
data: digits
lowrank: {energy: 0.9, finetune_epochs: 2, lr: 1e-3}
cluster: {bits: 4, finetune_epochs: 1}
export: {formats: [onnx, coreml]}
"""


@pytest.fixture(scope="module")
def compressed(teacher):
    spec = copy.deepcopy(teacher)
    final, record, _, _ = compress_model(spec, recipe.parse(RECIPE), None, None)
    return teacher, final, {r["stage"]: r for r in record["stages"]}


def test_lowrank_then_cluster_rows(compressed):
    teacher, final, rows = compressed
    low, clu = rows["lowrank"], rows["cluster"]
    assert low["layers_factorized"] >= 1 and low["parameters"] < rows["input"]["parameters"]
    assert low["macs"] < rows["input"]["macs"] and low["finetune"] == "cross-entropy on the labels"
    # the trained teacher is at ~99%; after low rank + fine-tune and 4-bit clustering + fine-tune it keeps most of
    # it (a loose bound: the point is the stages run and fine-tune, not the figure, which bench/ measures)
    assert clu["accuracy"] >= rows["input"]["accuracy"] - 0.05, (rows["input"]["accuracy"], clu["accuracy"])
    assert clu["max_distinct"] <= 16 and clu["weights_clustered"] >= 3 and final.clustered_bits == 4
    onnx_low = next(r for r in low["shipped"] if r["format"] == "onnx")
    assert onnx_low["size_after"] < onnx_low["size_before"]                 # low rank: the file itself shrinks
    onnx_clu = next(r for r in clu["shipped"] if r["format"] == "onnx")
    assert onnx_clu["download_after"] < 0.5 * onnx_clu["download_before"]   # clustering: the download shrinks
    assert "not run" in next(r for r in clu["shipped"] if r["format"] == "coreml").get("latency", "not run")


def test_clustered_coreml_package_keeps_the_values_as_lookup_tables(compressed, tmp_path):
    _, final, _ = compressed
    made = get_exporter("coreml").export(final, tmp_path, "fp32")
    assert made.details["palettized_weights"] >= 3 and "look-up tables" in " ".join(made.notes)
    assert max(distinct_values(made.path).values()) <= 16


def test_recipe_errors_for_the_new_stages():
    with pytest.raises(EdgeshipError, match="line 1.*energy or rank_ratio, not both"):
        recipe.parse("lowrank: {energy: 0.9, rank_ratio: 0.5}\n")
    with pytest.raises(EdgeshipError, match="line 1.*bits .* must be one of"):
        recipe.parse("cluster: {bits: 12}\n")
    with pytest.raises(EdgeshipError, match="low-rank options for 'lowrank.layers.fc'"):
        recipe.parse("lowrank: {layers: {fc: {energy: 0.5, rank: 3}}}\n")
    r = recipe.parse("stages: [lowrank, {cluster: {bits: 3}}]\n")
    assert [e.key for e in r.stages] == ["lowrank", "cluster"] and r.stages[0].config.energy == 0.9
