"""Knowledge distillation on digits: it must beat the same student trained alone, resume, and check inputs."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgeship.compress.distill import DistillConfig, distill, kd_loss
from edgeship.compress.train import Progress, TrainConfig, eval_nll, evaluate, train_classifier
from edgeship.data import DataSource
from edgeship.errors import EdgeshipError
from edgeship.examples import DigitsCNN, digits_cnn


from bench.distill import few_labels


@pytest.mark.slow
def test_distillation_beats_the_student_trained_alone_over_seeds(teacher, digits):
    """Same narrow student (width 16, ~3.9x fewer parameters), same init, data, epochs and seed; only the
    teacher's soft targets differ, with 20 labelled images per class. `make bench-distill` (bench/distill.py, seeds
    0-4) measured +2.50 ± 0.79 test points and 0.13 ± 0.06 nats lower cross-entropy on AVX-512; one seed at a time
    moves by single digits and differs between CPUs, so this asks only what holds well beyond that spread over 3
    seeds: a mean gain of at least 1 point, distilled better in at least 2 of 3, lower mean cross-entropy."""
    from bench.distill import run_seed
    rows = [run_seed(teacher, digits, seed) for seed in (0, 1, 2)]
    gains = [r["acc_kd"] - r["acc_alone"] for r in rows]
    assert np.mean(gains) >= 0.01 and sum(g > 0 for g in gains) >= 2, rows
    assert np.mean([r["nll_kd"] for r in rows]) < np.mean([r["nll_alone"] for r in rows]), rows


@pytest.mark.slow
def test_distill_reports_progress_and_leaves_the_student_untouched(teacher, digits):
    train = few_labels(digits["train"], 20)
    torch.manual_seed(0)
    student = DigitsCNN(16)
    events: list[Progress] = []
    res = distill(teacher, student, train, digits["val"],
                  DistillConfig(temperature=8, alpha=0.1, epochs=6, lr=2e-3, batch_size=32, seed=0, patience=None),
                  progress=events.append)
    assert 3.5 < res.compression < 4.5
    assert res.teacher_val_accuracy >= 0.97
    # progress: one "epoch" event per epoch with val accuracy, "step" events in between
    epochs = [e for e in events if e.kind == "epoch"]
    assert [e.epoch for e in epochs] == list(range(1, 7))
    assert all(e.val_accuracy is not None and e.stage == "distill" for e in epochs)
    assert max(e.val_accuracy for e in epochs) == res.best_val_accuracy
    # the user's student object was not trained in place
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), DigitsCNN(16).state_dict().values()))


def test_student_with_other_output_shape_fails_before_training(digits):
    calls = []
    with pytest.raises(EdgeshipError, match=r"output shape.*differs"):
        distill(digits_cnn(), DigitsCNN(8, num_classes=5), digits["train"], digits["val"],
                DistillConfig(epochs=1), progress=calls.append)
    assert calls == []


@pytest.mark.slow
def test_student_derived_from_the_teacher_by_width(teacher, digits):
    small = few_labels(digits["train"], 20)
    res = distill(teacher, None, small, digits["val"], DistillConfig(epochs=5, patience=None), width_ratio=0.5)
    assert 3.5 < res.compression < 4.5
    convs = [m for m in res.spec.module.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32]
    assert evaluate(res.spec.module, digits["test"]) >= 0.93   # pruned teacher weights + 5 short epochs (measured 0.972)


@pytest.mark.slow
def test_unlabelled_data_distils_from_soft_targets_alone(teacher, digits):
    """800 unlabelled digits, 8 epochs: 0.961-0.981 test accuracy over seeds 0-3 on AVX-512 (400 digits gave
    0.82-0.93, too close to any bound to hold on every CPU); every seed must clear 0.90."""
    x, _ = digits["train"].arrays()
    unlabelled = DataSource.from_arrays(x[:800], None, batch_size=32)
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        res = distill(teacher, DigitsCNN(16), unlabelled, digits["val"], DistillConfig(epochs=8, patience=None, seed=seed))
        assert evaluate(res.spec.module, digits["test"]) >= 0.90, seed   # never saw a label


@pytest.mark.slow
def test_feature_distillation_pulls_features_toward_the_teacher(teacher, digits):
    """Same width: identity adapter; after training on the feature loss only (alpha=1 keeps CE, feature_weight
    large), the student's named layer output is much closer to the teacher's than before."""
    small = few_labels(digits["train"], 20)
    x = torch.from_numpy(digits["val"].arrays()[0][:128])
    torch.manual_seed(1)
    student = DigitsCNN(32)

    def feat(m):
        out = {}
        h = m.features[2].register_forward_hook(lambda _m, _i, o: out.setdefault("f", o))
        m.eval()
        with torch.no_grad():
            m(x)
        h.remove()
        return out["f"]
    before = F.mse_loss(feat(student), feat(teacher.module))
    res = distill(teacher, student, small, None,
                  DistillConfig(epochs=5, alpha=1.0, feature_layers=["features.2"], feature_weight=10.0, patience=None))
    after = F.mse_loss(feat(res.spec.module), feat(teacher.module))
    assert after < 0.5 * before, (float(before), float(after))
    # different widths: a learned 1x1 adapter; the loss goes down
    torch.manual_seed(0)
    res = distill(teacher, DigitsCNN(8), small, None,
                  DistillConfig(epochs=4, feature_layers={"features.3": "features.3", "pool": "pool"}, patience=None))
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < losses[0]


def test_unknown_feature_layer_lists_names(digits):
    with pytest.raises(EdgeshipError, match="features.9.*not found in the student") as e:
        distill(digits_cnn(), DigitsCNN(8), digits["val"], None, DistillConfig(epochs=1, feature_layers=["features.9"]))
    assert "features.0" in e.value.hint


class Interrupt(Exception):
    pass


def test_checkpoint_resume_gives_the_same_student(digits, tmp_path):
    teacher = digits_cnn()   # resuming does not need a good teacher
    small = few_labels(digits["train"], 10)
    cfg = DistillConfig(epochs=4, patience=None, seed=3)
    torch.manual_seed(0)
    student = DigitsCNN(8)
    straight = distill(teacher, student, small, digits["val"], cfg)

    ckpt = tmp_path / "kd.ckpt"

    def stop_after_2(p: Progress):
        if p.kind == "epoch" and p.epoch == 2:
            raise Interrupt
    with pytest.raises(Interrupt):
        distill(teacher, student, small, digits["val"], cfg, checkpoint=ckpt, progress=stop_after_2)
    assert ckpt.exists() and not list(tmp_path.glob(".*.tmp"))
    resumed = distill(teacher, student, small, digits["val"], cfg, checkpoint=ckpt)
    assert resumed.resumed_from_epoch == 2 and resumed.epochs_run == 4
    for (k, a), b in zip(straight.spec.module.state_dict().items(), resumed.spec.module.state_dict().values()):
        assert torch.equal(a, b), k
    assert [h["val_accuracy"] for h in straight.history] == [h["val_accuracy"] for h in resumed.history]
    # another configuration must not resume from it
    with pytest.raises(EdgeshipError, match="different model or configuration"):
        distill(teacher, student, small, digits["val"], DistillConfig(epochs=4, temperature=2.0), checkpoint=ckpt)


def test_kd_loss_terms():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    assert kd_loss(s, t, y, 4.0, 1.0) == pytest.approx(float(F.cross_entropy(s, y)), rel=1e-6)
    assert float(kd_loss(t, t, None, 4.0, 0.5)) == pytest.approx(0.0, abs=1e-6)
    p_t = F.softmax(t / 3, -1)
    manual = (p_t * (p_t.log() - F.log_softmax(s / 3, -1))).sum(-1).mean() * 9
    assert kd_loss(s, t, None, 3.0, 0.5) == pytest.approx(float(manual), rel=1e-5)
    mixed = 0.7 * manual + 0.3 * F.cross_entropy(s, y)
    assert kd_loss(s, t, y, 3.0, 0.3) == pytest.approx(float(mixed), rel=1e-5)


@pytest.mark.parametrize("kw, msg", [({"temperature": 0}, "temperature"), ({"alpha": 1.5}, "alpha"),
                                     ({"epochs": -1}, "epochs"), ({"patience": 0}, "patience"), ({"lr": 0}, "learning rate")])
def test_config_validation(kw, msg):
    with pytest.raises(EdgeshipError, match=msg):
        DistillConfig(**kw)
    with pytest.raises(EdgeshipError, match="unknown distillation option"):
        DistillConfig.from_dict({"temprature": 3})


def test_the_better_student_ships_unless_forced(teacher, digits):
    """compress ships the better of distilled and no-teacher twin on the validation split (a user's 530-parameter
    student on breast-cancer data lost to its twin, 95.25% vs 97.36%, and the loser shipped); the recipe can force."""
    from edgeship.compress.run import choose_student
    untrained = teacher.with_module(DigitsCNN(32).eval())
    which, why = choose_student(untrained, teacher, digits["val"], "auto")
    assert which == "baseline" and "validation accuracy" in why
    assert choose_student(teacher, untrained, digits["val"], "auto")[0] == "distilled"
    assert choose_student(untrained, teacher, digits["val"], "distilled") == ("distilled", "forced by distill.ship: distilled")
    unlabelled = DataSource.from_arrays(digits["val"].arrays()[0], None)
    assert choose_student(untrained, teacher, unlabelled, "auto")[0] == "distilled"
