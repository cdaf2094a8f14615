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


def test_a_saved_onnx_file_keeps_no_per_node_debug_metadata(tmp_path):
    """torch.onnx writes the user's module paths, class names and stack traces on every node; onnxslim drops them,
    but a graph it may not simplify kept them (fp16: a MobileViT's file was 2.24 MB at fp16, 1.40 MB at fp32)."""
    from edgeship.examples import EXAMPLES
    from edgeship.export.onnx import OnnxExporter

    spec = EXAMPLES["tiny_transformer"]()
    for simplify in (False, True):
        made = OnnxExporter(simplify=simplify).export(spec, tmp_path / str(simplify), "fp16")
        model = onnx.load(str(made.path))
        assert not [n.name for n in model.graph.node if n.metadata_props], simplify
    raw = OnnxExporter(simplify=False).export(spec, tmp_path / "fp32", "fp32")
    assert raw.path.stat().st_size > made.path.stat().st_size
