"""Sensitive layers: per-layer keep-in-float reaches every format's own quantizer (checked in the shipped files:
the ONNX graph, the .tflite's op weights, the XNNPACK graph inside the .pte, the Core ML program), the per-layer
int8 sensitivity ranks the layer that breaks int8 first, and ``max_accuracy_drop`` keeps layers in float until
the budget holds (or says it cannot)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeship.compress.quantize import QuantOptions, graph_layer_precisions, select_layers
from edgeship.compress.sensitivity import accuracy, check_budget, fit_accuracy_budget, layer_sensitivity
from edgeship.data import load_data
from edgeship.errors import EdgeshipError
from edgeship.examples import digits_cnn
from edgeship.pipeline import ExportOptions, run_export

KEEP = frozenset({"features.0.0", "classifier"})   # digits_cnn: the first conv (1 -> 32, 3x3) and the head
GROUP = pytest.mark.xdist_group("sensitivity")


class OutlierHead(nn.Module):
    """A trained digits CNN whose pooled features go through ``expand``, a Linear that copies the 64 features and
    adds a 65th, constant ``outlier``, which the classifier ignores (zero weights). In float nothing changes; in
    int8 the per-tensor activation scale of that tensor is set by the outlier, and the 64 real features round to
    zero. ``via_cat``: the outlier is concatenated instead (an op, not a layer: keeping layers float cannot help)."""

    def __init__(self, cnn: nn.Module, via_cat: bool = False, outlier: float = 1e4):
        super().__init__()
        self.features, self.pool, self.via_cat = cnn.features, cnn.pool, via_cat
        n = cnn.classifier.in_features
        if via_cat:
            self.register_buffer("outlier", torch.full((1, 1), outlier))
        else:
            self.expand = nn.Linear(n, n + 1)
            with torch.no_grad():
                self.expand.weight.zero_()
                self.expand.weight[:n].copy_(torch.eye(n))
                self.expand.bias.zero_()
                self.expand.bias[n] = outlier
        self.classifier = nn.Linear(n + 1, cnn.classifier.out_features)
        with torch.no_grad():
            self.classifier.weight.zero_()
            self.classifier.weight[:, :n].copy_(cnn.classifier.weight)
            self.classifier.bias.copy_(cnn.classifier.bias)

    def forward(self, x):
        h = torch.flatten(self.pool(self.features(x)), 1)
        h = torch.cat([h, self.outlier.expand(h.shape[0], 1)], 1) if self.via_cat else self.expand(h)
        return self.classifier(h)


def outlier_spec(teacher, via_cat: bool = False):
    return teacher.with_module(OutlierHead(teacher.module, via_cat).eval())


# -- options and validation (fast) ---------------------------------------------------------------------------------

def test_quant_options_reject_unknown_layers_and_a_bare_string(tmp_path):
    spec = digits_cnn()
    assert QuantOptions(["classifier"]).check(spec.module).keep_float == frozenset({"classifier"})
    with pytest.raises(EdgeshipError, match="does not have: clasifier") as e:
        QuantOptions({"clasifier"}).check(spec.module)
    assert "features.0.0" in e.value.hint
    with pytest.raises(EdgeshipError, match="not one string"):
        QuantOptions("classifier")
    with pytest.raises(EdgeshipError, match="does not have"):
        run_export(spec, tmp_path / "o", ExportOptions(["onnx"], ["int8"], quant=QuantOptions({"nope"})))
    assert not (tmp_path / "o").exists()


def test_budget_is_checked_before_any_work(digits, tmp_path):
    spec = digits_cnn()
    with pytest.raises(EdgeshipError, match=">= 0"):
        check_budget(-0.5, ["int8"], digits["test"], spec)
    with pytest.raises(EdgeshipError, match="needs labelled eval data") as e:
        check_budget(1.0, ["int8"], None, spec)
    assert "--eval" in e.value.hint
    unlabelled = load_data("digits", spec, "test")
    unlabelled.y = None
    with pytest.raises(EdgeshipError, match="no labels"):
        check_budget(1.0, ["int8"], unlabelled, spec)
    with pytest.raises(EdgeshipError, match="quantized exports"):
        run_export(spec, tmp_path / "o", ExportOptions(["onnx"], ["fp32"], eval_data=digits["test"], max_accuracy_drop=1.0))
    assert check_budget(0, ["int8"], digits["test"], spec) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("args,fragment", [
    (["-p", "int8", "--max-accuracy-drop", "1"], "needs labelled eval data"),
    (["-p", "int8", "--max-accuracy-drop", "-1", "--eval", "digits"], "must be >= 0"),
    (["-p", "fp32", "--max-accuracy-drop", "1", "--eval", "digits"], "applies to quantized exports"),
])
def test_cli_rejects_a_bad_budget_before_work(tmp_path, args, fragment):
    r = subprocess.run([sys.executable, "-m", "edgeship.cli", "export", "example:digits_cnn", "-f", "onnx", "-o",
                        str(tmp_path / "o"), *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and fragment in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


# -- the PT2E selection every torch-side quantizer goes through ------------------------------------------------------

@pytest.mark.slow
def test_select_layers_quantizes_only_or_all_but_the_given_layers():
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from edgeship.compress.quantize import export_graph, prepare_calibrate_convert

    spec = digits_cnn()
    samples = [spec.example_inputs(seed=s) for s in range(4)]
    gm = export_graph(spec.module, spec.example_inputs())
    config = lambda: get_symmetric_quantization_config(is_per_channel=True)  # noqa: E731

    def layers(**kw):
        make = lambda c: select_layers(XNNPACKQuantizer().set_global(c), **kw)  # noqa: E731
        return graph_layer_precisions(prepare_calibrate_convert(spec.module, spec.example_inputs(), config, make,
                                                                samples, "minmax", exported=gm))
    everything = layers()
    assert set(everything.values()) == {"int8"} and len(everything) == 5
    kept = layers(keep_float=KEEP)
    assert {n for n, p in kept.items() if p == "float"} == KEEP and len(kept) == 5
    assert layers(only={"features.2.0"}) == {n: "int8" if n == "features.2.0" else "float" for n in everything}
    # a container keeps everything inside it
    assert {n for n, p in layers(keep_float={"features"}).items() if p == "float"} == set(everything) - {"classifier"}


# -- every format's own quantizer, checked in the shipped file -----------------------------------------------------

@pytest.fixture(scope="module")
def kept_export(tmp_path_factory):
    """digits_cnn (untrained: the structure is what is checked) in int8 in every format, KEEP in float."""
    spec = digits_cnn()
    calib = load_data("digits", spec, "train").calibration(16)
    out = tmp_path_factory.mktemp("keep-float") / "dist"
    report = run_export(spec, out, ExportOptions(["onnx", "tflite", "executorch", "coreml"], ["int8"],
                                                 verify_samples=3, calib=calib, quant=QuantOptions(KEEP)))
    return out, report


def _artifact(report: dict, fmt: str) -> dict:
    return next(a for a in report["artifacts"] if a["format"] == fmt)


def _check_reported(out: Path, report: dict, fmt: str) -> dict:
    art = _artifact(report, fmt)
    assert art["status"] == "ok", art
    assert art["details"]["float_layers"] == sorted(KEEP)
    quantized = next(v for k, v in art["details"].items() if k.endswith("_layers") and k != "float_layers")
    assert sorted(quantized) == ["features.1.0", "features.2.0", "features.3.0"]
    assert "layers kept in float: classifier, features.0.0" in art["notes"]
    entry = next(a for a in json.loads((out / "manifest.json").read_text())["artifacts"] if a["format"] == fmt)
    assert "layers kept in float: classifier, features.0.0" in entry["notes"]
    assert report["quantize"] == {"keep_float": sorted(KEEP)}
    return art


@pytest.mark.slow
@GROUP
def test_onnx_graph_keeps_the_layers_float(kept_export):
    import onnx
    out, report = kept_export
    art = _check_reported(out, report, "onnx")
    assert art["parity"]["status"] == "pass"
    model = onnx.load(str(out / art["path"]))
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    weights = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            w = node.input[1]
            if w in inits:
                weights[w] = "float" if inits[w].data_type == onnx.TensorProto.FLOAT else "?"
            elif producer.get(w) is not None and producer[w].op_type == "DequantizeLinear":
                q = inits[producer[w].input[0]]
                weights[q.name.removesuffix("_quantized")] = "int8" if q.data_type == onnx.TensorProto.INT8 else "?"
    assert weights == {"features.0.0.weight": "float", "classifier.weight": "float", "features.1.0.weight": "int8",
                       "features.2.0.weight": "int8", "features.3.0.weight": "int8"}


@pytest.mark.slow
@GROUP
def test_tflite_keeps_the_layers_float(kept_export):
    from ai_edge_litert.interpreter import Interpreter
    out, report = kept_export
    art = _check_reported(out, report, "tflite")
    assert art["parity"]["status"] == "pass"
    it = Interpreter(model_path=str(out / art["path"]))
    tensors = {d["index"]: d for d in it.get_tensor_details()}
    weights = sorted((op["op_name"], tuple(int(x) for x in tensors[op["inputs"][1]]["shape"]),
                      np.dtype(tensors[op["inputs"][1]]["dtype"]).name)
                     for op in it._get_ops_details() if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"))
    # OHWI filters; the first conv (1 -> 32 channels, 3x3) becomes a depthwise conv in the .tflite; the head 64 -> 10
    assert weights == [("CONV_2D", (32, 3, 3, 32), "int8"), ("CONV_2D", (64, 3, 3, 32), "int8"),
                       ("CONV_2D", (64, 3, 3, 64), "int8"), ("DEPTHWISE_CONV_2D", (1, 3, 3, 32), "float32"),
                       ("FULLY_CONNECTED", (10, 64), "float32")]


def _xnnpack_filters(pte: Path) -> list[tuple[str, tuple, str]]:
    """(node type, filter dims, XNNPACK datatype) of every conv / fully-connected node of the XNNPACK graph
    serialized inside a .pte, decoded with ExecuTorch's own flatc and XNNPACK's schema."""
    from executorch.backends.xnnpack.serialization import xnnpack_graph_serialize as ser
    from executorch.exir._serialize._flatbuffer import _flatc_decompile
    from executorch.exir._serialize._program import _extract_delegate_payload

    payload = _extract_delegate_payload(pte.read_bytes(), "xnnpack")
    header = ser.XNNHeader.from_bytes(payload[:ser.XNNHeader.EXPECTED_LENGTH])
    with tempfile.TemporaryDirectory() as d:
        Path(d, "graph.bin").write_bytes(payload[header.flatbuffer_offset:header.flatbuffer_offset + header.flatbuffer_size])
        _flatc_decompile(d, os.path.join(os.path.dirname(ser.__file__), "schema.fbs"), os.path.join(d, "graph.bin"))
        graph = json.loads(Path(d, "graph.json").read_text())
    values = {}
    for v in graph["xvalues"]:
        t = v["xvalue_union"].get("tensor_value", v["xvalue_union"])
        values[t["id_out"]] = (tuple(t["dims"]), t["datatype"].removeprefix("xnn_datatype_"))
    return sorted((n["xnode_union_type"], *values[n["xnode_union"]["filter_id"]]) for n in graph["xnodes"]
                  if "filter_id" in n["xnode_union"])


@pytest.mark.slow
@GROUP
def test_executorch_pte_keeps_the_layers_float(kept_export):
    out, report = kept_export
    art = _check_reported(out, report, "executorch")
    assert art["parity"]["status"] == "pass"
    # as in the .tflite, the first conv (1 -> 32 channels) runs as a depthwise conv
    assert _xnnpack_filters(out / art["path"]) == [
        ("XNNConv2d", (32, 3, 3, 32), "qcint8"), ("XNNConv2d", (64, 3, 3, 32), "qcint8"),
        ("XNNConv2d", (64, 3, 3, 64), "qcint8"), ("XNNDepthwiseConv2d", (1, 3, 3, 32), "fp32"),
        ("XNNFullyConnected", (10, 64), "fp32")]


@pytest.mark.slow
@GROUP
def test_coreml_keeps_the_layers_float(kept_export):
    import coremltools as ct
    out, report = kept_export
    art = _check_reported(out, report, "coreml")
    assert art["precision"] == "w8"
    spec = ct.utils.load_spec(str(out / art["path"]))
    block = next(iter(next(iter(spec.mlProgram.functions.values())).block_specializations.values()))
    made_by = {o.name: (op.type, [d.constant.size for d in o.type.tensorType.dimensions])
               for op in block.operations for o in op.outputs}
    weights = sorted((op.type, tuple(made_by[op.inputs["weight"].arguments[0].name][1]),
                      "compressed" if made_by[op.inputs["weight"].arguments[0].name][0].startswith("constexpr_") else "float")
                     for op in block.operations if op.type in ("conv", "linear"))
    assert weights == [("conv", (32, 1, 3, 3), "float"), ("conv", (32, 32, 3, 3), "compressed"),
                       ("conv", (64, 32, 3, 3), "compressed"), ("conv", (64, 64, 3, 3), "compressed"),
                       ("linear", (10, 64), "float")]


# -- sensitivity and the accuracy budget ---------------------------------------------------------------------------

@pytest.mark.slow
def test_sensitivity_ranks_the_layers_that_break_int8_first(teacher, digits):
    spec = outlier_spec(teacher)
    rows, notes = layer_sensitivity(spec, digits["train"].calibration(64))
    assert {r.name for r in rows[:2]} == {"classifier", "expand"}
    by_name = {r.name: r for r in rows}
    assert by_name["expand"].sqnr_db < 5 and by_name["classifier"].sqnr_db < 5   # the outlier wipes the features
    assert all(by_name[n].sqnr_db > 30 for n in ("features.0.0", "features.1.0", "features.2.0", "features.3.0"))
    assert [r.sqnr_db for r in rows] == sorted(r.sqnr_db for r in rows)
    assert by_name["expand"].type == "Linear" and notes == ["calibrated on 64 given samples"]


@pytest.mark.slow
def test_budget_keeps_the_worst_layers_float_until_it_holds(teacher, digits):
    spec = outlier_spec(teacher)
    result = fit_accuracy_budget(spec, digits["test"], 1.0, digits["train"].calibration(64))
    assert result.met and result.keep_float == {"expand", "classifier"}
    assert result.accuracy_fp32 == pytest.approx(accuracy(spec.module, digits["test"])) and result.accuracy_fp32 > 0.97
    assert result.accuracy_int8 < 0.5                          # every layer int8: the outlier wipes the features
    assert result.drop_points <= 1.0
    assert [s["layer"] for s in result.steps] == [None, result.layers[0].name, result.layers[1].name]
    d = result.to_dict()
    assert d["keep_float"] == ["classifier", "expand"] and d["met"] is True
    assert {r["layer"]: r["why"] for r in d["layers"] if r["kept_float"]} == {"classifier": "accuracy budget",
                                                                            "expand": "accuracy budget"}


@pytest.mark.slow
def test_budget_that_float_layers_cannot_meet_says_so(teacher, digits):
    spec = outlier_spec(teacher, via_cat=True)   # the outlier comes from a concatenation: no layer to keep float
    result = fit_accuracy_budget(spec, digits["test"], 1.0, digits["train"].calibration(64), keep_float={"features.0.0"})
    assert result.met is False
    assert result.keep_float == {"features.0.0", "features.1.0", "features.2.0", "features.3.0", "classifier"}
    assert result.drop_points > 50
    assert any("not met even with every conv/linear layer in float" in n for n in result.notes)
    assert {r.name: r.why for r in result.layers}["features.0.0"] == "given"


@pytest.mark.slow
def test_export_with_a_budget_ships_int8_that_holds_it_in_onnxruntime(teacher, digits, tmp_path):
    spec = outlier_spec(teacher)
    out = tmp_path / "dist"
    report = run_export(spec, out, ExportOptions(["onnx"], ["int8"], verify_samples=3, eval_data=digits["test"],
                                                 calib=digits["train"].calibration(64), max_accuracy_drop=1.0))
    sens = report["sensitivity"]
    assert sens["met"] is True and sens["keep_float"] == ["classifier", "expand"]
    assert sens["accuracy"]["drop_points_before"] > 50 and sens["accuracy"]["drop_points_after"] <= 1.0
    art = _artifact(report, "onnx")
    assert art["details"]["float_layers"] == ["classifier", "expand"]
    assert "layers kept in float: classifier, expand" in art["notes"]
    assert art["accuracy"]["status"] == "ok" and art["accuracy"]["drop_points"] <= 1.0   # measured in onnxruntime
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["sensitivity"]["layers"][0]["layer"] in ("classifier", "expand")
    page = (out / "report.html").read_text()
    assert "int8 sensitivity per layer" in page and "<td>expand</td>" in page and "met" in page


@pytest.mark.slow
def test_cli_prints_the_sensitivity_table(tmp_path):
    out = tmp_path / "o"
    r = subprocess.run([sys.executable, "-m", "edgeship.cli", "export", "example:digits_cnn", "-f", "onnx", "-p", "int8",
                        "--calib", "digits", "--calib-samples", "16", "--eval", "digits", "--max-accuracy-drop", "100",
                        "--keep-float", "Linear", "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "int8 sensitivity per layer" in r.stdout and "features.3.0" in r.stdout and "yes (given)" in r.stdout
    assert "accuracy budget 100 points: met" in r.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["sensitivity"]["keep_float"] == ["classifier"]   # --keep-float Linear: the type resolves to it
    assert _artifact(report, "onnx")["details"]["float_layers"] == ["classifier"]
