"""The shared training loop: determinism, early stopping, checkpoints, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeship.compress.train import TrainConfig, evaluate, train_classifier
from edgeship.data import DataSource
from edgeship.errors import EdgeshipError
from edgeship.examples import DigitsCNN


@pytest.fixture(scope="module")
def small(digits):
    return digits["train"].subset(np.arange(300))


def _fresh(width=8):
    torch.manual_seed(0)
    return DigitsCNN(width)


def test_same_seed_same_weights_other_seed_differs(small, digits):
    a, b, c = _fresh(), _fresh(), _fresh()
    cfg = TrainConfig(epochs=2, patience=None)
    train_classifier(a, small, digits["val"], cfg)
    train_classifier(b, small, digits["val"], cfg)
    train_classifier(c, small, digits["val"], TrainConfig(epochs=2, patience=None, seed=1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_training_learns_and_keeps_the_best_epoch(small, digits):
    m = _fresh(16)
    res = train_classifier(m, small, digits["val"], TrainConfig(epochs=6, lr=3e-3, patience=None))
    accs = [h["val_accuracy"] for h in res.history]
    assert res.best_val_accuracy == max(accs) and res.best_epoch == accs.index(max(accs)) + 1
    assert evaluate(m, digits["val"]) == pytest.approx(res.best_val_accuracy)   # best weights restored
    assert res.best_val_accuracy > 0.8


def test_early_stopping_stops_when_val_accuracy_stalls(small, digits):
    # a learning rate so small nothing improves after the first epoch's measurement
    res = train_classifier(_fresh(), small, digits["val"], TrainConfig(epochs=30, lr=1e-9, patience=2))
    assert res.stopped_early and res.epochs_run < 30
    assert res.epochs_run - res.best_epoch == 2


def test_checkpoint_from_another_configuration_is_refused(small, digits, tmp_path):
    ckpt = tmp_path / "t.ckpt"
    train_classifier(_fresh(), small, None, TrainConfig(epochs=1), checkpoint=ckpt)
    # more epochs of the same run resume (epochs are not part of the fingerprint)
    res = train_classifier(_fresh(), small, None, TrainConfig(epochs=2), checkpoint=ckpt)
    assert res.resumed_from_epoch == 1 and res.epochs_run == 2
    with pytest.raises(EdgeshipError, match="different model or configuration"):
        train_classifier(_fresh(), small, None, TrainConfig(epochs=2, lr=5e-3), checkpoint=ckpt)
    with pytest.raises(EdgeshipError, match="different model or configuration"):
        train_classifier(_fresh(16), small, None, TrainConfig(epochs=2), checkpoint=ckpt)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(EdgeshipError, match="cannot read the checkpoint"):
        train_classifier(_fresh(), small, None, TrainConfig(epochs=1), checkpoint=tmp_path / "junk.ckpt")


def test_errors_unlabelled_and_diverging(small):
    x, _ = small.arrays()
    with pytest.raises(EdgeshipError, match="labelled"):
        train_classifier(_fresh(), DataSource.from_arrays(x), None, TrainConfig(epochs=1))
    with pytest.raises(EdgeshipError, match="labelled"):
        evaluate(_fresh(), DataSource.from_arrays(x))
    bad = x.copy()
    bad[5, 0, 3, 3] = np.nan       # one corrupt pixel: refused before any training
    with pytest.raises(EdgeshipError, match=r"1 non-finite value.*x\[5, 0, 3, 3\]"):
        train_classifier(_fresh(), DataSource.from_arrays(bad, small.y), None, TrainConfig(epochs=1))
    bad = x.copy()
    bad[5] = 3e38                  # finite, but the first layer's sums overflow: the loss is NaN on its batch
    with pytest.raises(EdgeshipError, match="loss became nan"):
        train_classifier(_fresh(), DataSource.from_arrays(bad, small.y), None, TrainConfig(epochs=1))
