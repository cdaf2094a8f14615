"""ExecuTorchRuntime (XNNPACK-delegated .pte) against PyTorch; the process-wide threadpool."""
from __future__ import annotations

import numpy as np
import pytest

from edgeship_runtime import TensorInfo, open_runtime
from edgeship_runtime.executorch import ExecuTorchRuntime

pytestmark = pytest.mark.slow  # importing executorch.exir and exporting .pte files take seconds each


@pytest.mark.parametrize("name", ["cnn", "transformer", "two"])
def test_matches_torch(models, name):
    m = models[name]
    rt = open_runtime(m.path("executorch"))
    assert isinstance(rt, ExecuTorchRuntime) and rt.name == "executorch" and rt.version.startswith("1.")
    assert [(i.shape, i.dtype) for i in rt.inputs] == [(a.shape, a.dtype.name) for a in m.example.values()]
    assert [i.name for i in rt.inputs] == [f"input_{k}" for k in range(len(m.example))]
    ref = m.reference()
    assert rt.outputs == [TensorInfo("output_0", ref.shape, "float32", None)]
    out = rt.run(m.example)
    assert len(out) == 1 and out[0].dtype == np.float32
    assert np.abs(out[0] - ref).max() < 1e-4


def test_two_inputs_positional(models):
    m = models["two"]
    rt = open_runtime(m.path("executorch"))
    ref = m.reference()
    assert np.abs(rt.run([m.example["x"], m.example["y"]])[0] - ref).max() < 1e-4
    assert np.abs(rt.run([m.example["y"], m.example["x"]])[0] - ref).max() > 1e-2


def test_threads_reset_the_threadpool(models):
    from executorch.extension.pybindings import portable_lib
    m = models["cnn"]
    try:
        rt = open_runtime(m.path("executorch"), threads=1)
        assert rt.threads == 1 and portable_lib._threadpool_get_thread_count() == 1
        assert np.abs(rt.run(m.example)[0] - m.reference()).max() < 1e-4
    finally:
        open_runtime(m.path("executorch"), threads=2)
    assert portable_lib._threadpool_get_thread_count() == 2


def test_unknown_method(models):
    with pytest.raises(ValueError, match=r"has no method 'encode'; it has \['forward'\]"):
        open_runtime(models["cnn"].path("executorch"), method="encode")
