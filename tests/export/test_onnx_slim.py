"""onnxslim ships only when it keeps parity: the guard that compares the two graphs in onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgeship.export.onnx import _max_diff, _slim


def _graph(op: str):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])


def test_max_diff_sees_a_changed_graph():
    feeds = [np.array([[1.0, -2.0, 3.0, -4.0]], dtype=np.float32)]
    assert _max_diff(_graph("Identity"), _graph("Identity"), feeds) == 0.0
    assert _max_diff(_graph("Identity"), _graph("Neg"), feeds) == 8.0


def test_slim_keeps_a_graph_that_agrees():
    model = _graph("Relu")
    slim, note = _slim(model, [np.ones((1, 4), dtype=np.float32)])
    onnx.checker.check_model(slim)
    assert note.startswith("simplified with onnxslim")
