"""Shared fixtures for the compression tests: the digits splits and one well-trained teacher per session."""
from __future__ import annotations

import pytest

from edgeship.compress.train import TrainConfig, evaluate, train_classifier
from edgeship.data import load_data
from edgeship.examples import digits_cnn
from support.threads import one_thread


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def digits():
    spec = digits_cnn()
    return {s: load_data("digits", spec, s) for s in ("train", "val", "test")}


@pytest.fixture(scope="session")
def teacher(digits):
    """DigitsCNN(width 32) trained on the digits train split (about 99% test accuracy, ~10 s)."""
    spec = digits_cnn()
    with one_thread():
        train_classifier(spec.module, digits["train"], digits["val"], TrainConfig(epochs=20, lr=2e-3, patience=6))
        acc = evaluate(spec.module, digits["test"])
    assert acc >= 0.97, f"the teacher only reached {acc:.3f} on the digits test split"
    return spec
