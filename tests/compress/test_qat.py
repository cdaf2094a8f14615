"""Quantization-aware training (compress/qat.py) on scikit-learn's digits with the trained DigitsCNN teacher.

The int8 run goes through ``compress_model`` with a recipe (as ``edgeship compress`` runs it): the "qat" stage row
holds the float accuracy and the int8 accuracies of the QAT graph and of PTQ in torch, the fine-tuned weights
reach the returned float module, and that module exported to ExecuTorch int8 runs in the ExecuTorch runtime
within the int8 tolerance. On digits PTQ int8 already loses (almost) nothing, so a gain cannot be asserted there;
the run with 2-bit weights is the one that fails if QAT silently did nothing: PTQ collapses to ~25% and only
training with the fake-quant in the loop brings it back to ~90%.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from edgeship import recipe
from edgeship.compress.qat import QATConfig, QATResult, prepare_qat, qat_finetune, xnnpack_config
from edgeship.compress.run import compress_model
from edgeship.compress.train import eval_nll, evaluate
from edgeship.data import DataSource
from edgeship.errors import EdgeshipError
from edgeship.examples import digits_cnn
from edgeship.verify import sqnr_db, tolerance
from support.threads import one_thread

QAT_RECIPE = "data: digits\neval: digits\nquantize:\n  precision: int8\n  calib_samples: 128\n  qat: {epochs: 2, lr: 1e-4}\n"


@pytest.fixture(scope="module")
def compressed(teacher):
    """``compress_model`` with the QAT recipe on the trained teacher: (final spec, record, calib, eval data)."""
    with one_thread():
        return compress_model(teacher, recipe.parse(QAT_RECIPE), None, None)


@pytest.fixture(scope="module")
def two_bit(teacher, digits):
    """QAT with 2-bit weights ({-1, 0, 1} per channel; activations int8), the classifier left in float."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

    def ternary(is_qat: bool):
        return get_symmetric_quantization_config(is_per_channel=True, is_qat=is_qat, weight_qmin=-1, weight_qmax=1)
    with one_thread():
        return qat_finetune(teacher, digits["train"], digits["val"], QATConfig(epochs=1, lr=1e-3),
                            eval_data=digits["test"], keep_float={"classifier"}, make_config=ternary)


@pytest.mark.slow
def test_qat_stage_measures_int8_accuracy_of_the_qat_graph_and_of_ptq(compressed, teacher, digits):
    final, record, calib, eval_data = compressed
    stages = {s["stage"]: s for s in record["stages"]}
    assert list(stages) == ["input", "qat"]
    row, before = stages["qat"], stages["input"]
    float_acc = evaluate(teacher.module, digits["test"])
    assert before["accuracy"] == pytest.approx(float_acc)
    # measured here: float 99.17%, QAT int8 graph 98.89%, PTQ int8 99.17% (one test image apart; 360 images)
    for key in ("accuracy", "qat_accuracy", "ptq_accuracy", "ptq_after_qat_accuracy"):
        assert isinstance(row[key], float) and row[key] >= float_acc - 0.02, (key, row[key], float_acc)
    assert row["parameters"] == before["parameters"] and row["macs"] == before["macs"]
    # every stage row also has the eval loss (mean cross-entropy), finer than top-1 at its ceiling
    assert before["eval_nll"] == pytest.approx(eval_nll(teacher.module, digits["test"]), abs=1e-4) and before["eval_nll"] > 0
    assert row["epochs_run"] == 2 and row["lr"] == pytest.approx(1e-4)
    assert "every format's own int8 quantizer" in row["note"]
    assert record["recipe"]["quantize"]["qat"] == {"epochs": 2, "lr": 1e-4, "batch_size": 64, "seed": 0,
                                                  "patience": None, "calib_samples": None}
    assert row["accuracy"] == pytest.approx(evaluate(final.module, eval_data))   # the row describes the returned module


@pytest.mark.slow
def test_qat_weights_reach_the_float_module_that_goes_on_to_the_exporters(compressed, teacher):
    final = compressed[0]
    assert type(final.module) is type(teacher.module) and not isinstance(final.module, torch.fx.GraphModule)
    before, after = teacher.module.state_dict(), final.module.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    weights = [n for n, _ in teacher.module.named_parameters()]
    assert set(weights) <= set(changed), "QAT left some weights unchanged"
    assert "features.0.1.running_mean" in changed   # BatchNorm statistics are carried too
    rel = max(float((after[k] - before[k]).norm() / before[k].norm()) for k in weights)
    assert 1e-4 < rel < 0.2   # a fine-tune (lr 1e-4, 2 epochs), not a retraining


@pytest.mark.slow
def test_qat_model_exported_to_executorch_int8_runs_in_its_runtime(compressed, digits, tmp_path):
    from edgeship.export.executorch import ExecuTorchExporter
    from edgeship_runtime import open_runtime

    final, record, calib, _ = compressed
    exported = ExecuTorchExporter().export(final, tmp_path, "int8", calib.calibration(128))
    rt = open_runtime(exported.path)
    assert rt.name == "executorch"
    x, y = digits["test"].xs[0], digits["test"].y
    got = np.stack([rt.run([x[i:i + 1]])[0][0] for i in range(len(x))])
    with torch.no_grad():
        ref = final.module(torch.from_numpy(x)).numpy()
    s = sqnr_db(ref, got)
    assert s >= tolerance("int8")[1], f"ExecuTorch int8 of the QAT model keeps {s:.1f} dB"   # measured 38.6 dB
    acc = float((got.argmax(1) == y).mean())
    row = record["stages"][-1]
    assert acc >= row["qat_accuracy"] - 0.02, (acc, row)   # measured 98.89% in the runtime, as in torch


@pytest.mark.slow
def test_qat_recovers_what_ptq_loses_with_two_bit_weights(two_bit: QATResult, teacher, digits):
    r = two_bit
    # measured: PTQ 25.3%, QAT graph 90.0%, PTQ of the fine-tuned float weights 91.4% (float teacher 99.2%)
    assert r.ptq_accuracy < 0.5, r
    assert r.qat_accuracy >= r.ptq_accuracy + 0.3, r
    assert r.ptq_after_qat_accuracy >= r.ptq_accuracy + 0.3, r   # the float weights carry what QAT learned
    assert r.convert_sqnr_db > 60, r.convert_sqnr_db   # the converted graph is the one trained (inf measured)


@pytest.mark.slow
def test_qat_graph_is_int8_where_asked_and_float_where_kept(two_bit: QATResult):
    from edgeship.compress.quantize import graph_layer_precisions

    layers = graph_layer_precisions(two_bit.converted)
    assert layers == {"features.0.0": "int8", "features.1.0": "int8", "features.2.0": "int8", "features.3.0": "int8",
                      "classifier": "float"}
    frozen = [t for n, t in two_bit.converted.named_buffers() if t.dtype == torch.int8]
    assert len(frozen) == 4 and all(int(t.abs().max()) <= 1 for t in frozen)   # 2-bit weights, stored as int8
    assert two_bit.fit.epochs_run == 1 and two_bit.fit.history[0]["val_accuracy"] is not None


# -- errors a user can cause (fast: before any training) ----------------------------------------------------
def test_qat_without_training_data_is_refused_before_work():
    t0 = time.perf_counter()
    with pytest.raises(EdgeshipError, match="quantize.qat .*needs labelled training data") as e:
        compress_model(digits_cnn(), recipe.parse("quantize: {precision: int8, qat: {}}\n"), None, None)
    assert "--data" in e.value.hint
    assert time.perf_counter() - t0 < 5


def test_qat_with_unlabelled_data_is_refused_before_work(tmp_path):
    f = tmp_path / "x.npz"
    np.savez(f, x=np.random.default_rng(0).normal(size=(40, 1, 8, 8)).astype(np.float32))
    with pytest.raises(EdgeshipError, match="has no labels"):
        compress_model(digits_cnn(), recipe.parse("quantize: {qat: {}}\n"), str(f), None)


@pytest.mark.parametrize("text,fragment", [
    ("quantize:\n  precision: fp16\n  qat: {epochs: 2}\n", "recipe line 2: quantize.qat trains for int8, but quantize.precision is 'fp16'"),
    ("quantize:\n  qat:\n    epochs: 2\n    learning_rate: 0.1\n", "recipe line 4: unknown key 'quantize.qat.learning_rate'"),
    ("quantize:\n  qat: {lr: fast}\n", "recipe line 2: 'quantize.qat.lr' must be float, got 'fast'"),
    ("quantize:\n  qat: {epochs: 0}\n", "quantize.qat.epochs must be >= 1"),
    ("quantize:\n  qat: {lr: -1e-3}\n", "quantize.qat.lr must be > 0"),
])
def test_bad_qat_recipes_name_key_and_line(text, fragment):
    with pytest.raises(EdgeshipError) as e:
        recipe.parse(text)
    assert fragment in e.value.message


def test_qat_recipe_reads_1e_minus_4_and_round_trips():
    r = recipe.parse(QAT_RECIPE)
    assert r.quantize.qat == recipe.QATSection(epochs=2, lr=1e-4, batch_size=64, seed=0)   # YAML 1.1 reads 1e-4 as a string
    assert recipe.parse(recipe.to_yaml(r)) == r
    preset = recipe.load("mobile-qat")
    assert preset.quantize.precision == "int8" and preset.quantize.qat == recipe.QATSection()


def test_qat_finetune_refuses_unlabelled_data_and_bad_config():
    spec = digits_cnn()
    unlabelled = DataSource((np.zeros((8, 1, 8, 8), np.float32),))
    with pytest.raises(EdgeshipError, match="labelled training data"):
        qat_finetune(spec, unlabelled, None)
    with pytest.raises(EdgeshipError, match="epochs must be >= 1"):
        QATConfig(epochs=0)


class _BatchOfOne(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.reshape(1, 64))   # hard-codes a batch of 1


def test_qat_needs_a_model_whose_batch_size_can_vary():
    from edgeship.compress.qat import _xnnpack_quantizer

    with pytest.raises(EdgeshipError, match="variable batch size") as e:
        prepare_qat(_BatchOfOne(), (torch.zeros(2, 1, 8, 8),), _xnnpack_quantizer(xnnpack_config(True)))
    assert "batch" in e.value.hint
