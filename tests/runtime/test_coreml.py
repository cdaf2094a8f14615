"""CoreMLRuntime: the spec is read on any OS; prediction needs macOS."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from edgeship_runtime import RuntimeUnavailable, TensorInfo, open_runtime
from edgeship_runtime.coreml import CoreMLRuntime

pytestmark = pytest.mark.slow  # importing coremltools alone takes seconds


def test_spec_gives_names_shapes_dtypes(models):
    m = models["transformer"]
    rt = open_runtime(m.path("coreml"), threads=2)
    assert isinstance(rt, CoreMLRuntime) and rt.name == "coreml" and rt.version.startswith("9.")
    assert rt.inputs == [TensorInfo("tokens", (1, 16), "int32", None)]  # Core ML has no int64 arrays
    assert len(rt.outputs) == 1 and rt.outputs[0].shape == (1, 4) and rt.outputs[0].dtype == "float32"
    assert "Core ML chooses its own threads: threads is ignored" in rt.notes
    assert rt.prepare(m.example)[0].dtype == np.int32


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_run_needs_macos(models):
    m = models["transformer"]
    rt = open_runtime(m.path("coreml"))
    assert "not run: Core ML prediction needs macOS" in rt.notes
    with pytest.raises(RuntimeUnavailable, match="Core ML prediction needs macOS") as e:
        rt.run(m.example)
    assert "Mac" in e.value.hint
    with pytest.raises(ValueError, match="compute_units must be one of"):
        open_runtime(m.path("coreml"), compute_units="GPU")


@pytest.mark.macos
@pytest.mark.skipif(sys.platform != "darwin", reason="needs macOS")
def test_matches_torch_on_macos(models):
    m = models["transformer"]
    rt = open_runtime(m.path("coreml"), compute_units="CPU_ONLY")
    assert np.abs(rt.run(m.example)[0] - m.reference()).max() < 1e-3
