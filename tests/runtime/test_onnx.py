"""OnnxRuntime against PyTorch on the tiny models."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeship_runtime import TensorInfo, open_runtime
from edgeship_runtime.onnx import OnnxRuntime


def test_cnn_matches_torch(models):
    m = models["cnn"]
    rt = open_runtime(m.path("onnx"), threads=1)
    assert isinstance(rt, OnnxRuntime) and rt.name == "onnxruntime" and rt.version.count(".") >= 2
    assert rt.threads == 1 and rt.session.get_session_options().intra_op_num_threads == 1
    assert rt.inputs == [TensorInfo("image", (1, 3, 32, 32), "float32", None)]
    assert rt.outputs[0].shape == (1, 10) and rt.outputs[0].dtype == "float32"
    out = rt.run(m.example)
    assert len(out) == 1 and out[0].dtype == np.float32
    assert np.abs(out[0] - m.reference()).max() < 1e-4


def test_transformer_takes_int64_and_int32_tokens(models):
    m = models["transformer"]
    rt = open_runtime(m.path("onnx"))
    assert rt.inputs == [TensorInfo("tokens", (1, 16), "int64", None)]
    ref = m.reference()
    assert np.abs(rt.run(m.example)[0] - ref).max() < 1e-4
    as_int32 = {"tokens": m.example["tokens"].astype(np.int32)}  # widened to int64 for onnxruntime
    assert np.abs(rt.run(as_int32)[0] - ref).max() < 1e-4
    with pytest.raises(ValueError, match="expects int64, got float32"):
        rt.run({"tokens": m.example["tokens"].astype(np.float32)})


def test_session_options(models, tmp_path):
    m = models["cnn"]
    plain = open_runtime(m.path("onnx"), graph_optimization_level="disable")
    assert np.abs(plain.run(m.example)[0] - m.reference()).max() < 1e-4
    with pytest.raises(ValueError, match="graph_optimization_level must be one of disable, basic"):
        open_runtime(m.path("onnx"), graph_optimization_level="max")
    prof = open_runtime(m.path("onnx"), profile=tmp_path / "trace")
    prof.run(m.example)
    trace = prof.end_profiling()
    events = json.loads(Path(trace).read_text())
    assert any(e.get("cat") == "Node" for e in events)
