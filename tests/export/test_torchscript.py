"""Legacy PyTorch Mobile: real torch.jit capture + qnnpack dynamic int8 -> .ptl, run in torch's lite interpreter
(edgeship_runtime.torchscript) against the eager model; the clear errors where the path does not go; torch's
global settings (quantized engine, MHA fast path, threads) left as they were."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from edgeship import manifest as manifest_mod
from edgeship.errors import EdgeshipError
from edgeship.examples import tiny_cnn, tiny_lstm, tiny_transformer
from edgeship.export import DEFAULT_FORMATS, effective_precisions, get_exporter, parse_formats
from edgeship.export.torchscript import TorchScriptExporter
from edgeship.model import InputSpec, ModelSpec
from edgeship.verify import compare
from edgeship_runtime import format_of, open_runtime
from edgeship_runtime.bench import bench


def run_against_eager(spec: ModelSpec, path, precision: str, seeds=(11, 12, 13)):
    """The artifact in its runtime vs the eager fp32 model on inputs it was not captured on."""
    rt = open_runtime(path)
    feeds = [spec.example_inputs(seed=s) for s in seeds]
    refs = [[t.numpy() for t in spec.reference(f)] for f in feeds]
    gots = [rt.run([t.numpy() for t in f]) for f in feeds]
    return rt, compare(refs, gots, precision, classifier=spec.task.endswith("classification"))


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    spec, out = tiny_cnn(), tmp_path_factory.mktemp("ts")
    return spec, {p: TorchScriptExporter().export(spec, out, p) for p in ("fp32", "dynamic-int8")}


@pytest.fixture
def torch_globals():
    """Set torch's global switches to values the exporter does not use, and check it hands them back unchanged."""
    engine, fastpath = torch.backends.quantized.engine, torch.backends.mha.get_fastpath_enabled()
    torch.backends.quantized.engine = "x86"
    torch.backends.mha.set_fastpath_enabled(True)
    yield
    try:
        assert torch.backends.quantized.engine == "x86"
        assert torch.backends.mha.get_fastpath_enabled() is True
    finally:
        torch.backends.quantized.engine = engine
        torch.backends.mha.set_fastpath_enabled(fastpath)


def test_registry_opt_in_and_int8_means_dynamic_int8():
    assert "torchscript" not in DEFAULT_FORMATS and parse_formats("torchscript") == ["torchscript"]
    exporter = get_exporter("torchscript")
    assert (exporter.suffix, exporter.runtime) == (".ptl", "pytorch-mobile")
    assert exporter.precisions == {"fp32", "dynamic-int8"}          # no fp16: PyTorch Mobile's CPU kernels are fp32/int8
    assert effective_precisions("torchscript", ["fp32", "int8", "dynamic-int8"]) == ["fp32", "dynamic-int8"]
    assert format_of("dist/x/torchscript/model.dynamic-int8.ptl") == "torchscript"
    schema = manifest_mod.schema()["$defs"]["artifact"]["properties"]
    assert "torchscript" in schema["format"]["enum"]


def test_cnn_fp32_matches_eager_in_the_lite_interpreter(cnn):
    spec, made = cnn
    exported = made["fp32"]
    assert exported.path.name == "model.ptl" and exported.details["captured_by"] == "trace"
    assert exported.details["quantized_operators"] == []
    rt, parity = run_against_eager(spec, exported.path, "fp32")
    assert (rt.name, rt.version) == ("pytorch-mobile", torch.__version__)
    assert [(i.name, i.shape, i.dtype) for i in rt.inputs] == [("image", (1, 3, 32, 32), "float32")]
    assert [(o.name, o.shape, o.dtype) for o in rt.outputs] == [("output", (1, 10), "float32")]
    assert parity.status == "pass", parity
    assert parity.max_abs < 1e-4 and parity.cosine >= 0.9999 and parity.top1_agreement == 1.0


def test_cnn_dynamic_int8_quantizes_the_linear_with_qnnpack(cnn):
    spec, made = cnn
    exported = made["dynamic-int8"]
    assert exported.path.name == "model.dynamic-int8.ptl" and exported.precision == "dynamic-int8"
    assert exported.details["quantized_modules"] == {"Linear": 1}
    assert exported.details["float_modules"]["Conv2d"] > 0          # dynamic quantization has no conv: said so
    assert exported.details["quantized_operators"] == ["quantized::linear_dynamic"]
    assert any("Conv2d" in n and "fp32" in n for n in exported.notes)
    meta = json.loads(zipfile.ZipFile(exported.path).read(
        next(n for n in zipfile.ZipFile(exported.path).namelist() if n.endswith("extra/edgeship.json"))))
    assert meta["quantized_engine"] == "qnnpack" and meta["precision"] == "dynamic-int8"
    before = torch.backends.quantized.engine
    rt, parity = run_against_eager(spec, exported.path, "dynamic-int8")
    assert torch.backends.quantized.engine == before               # qnnpack only while loading and running
    assert rt.engine == "qnnpack"
    assert parity.status == "pass" and parity.sqnr_db >= 20, parity
    assert parity.top1_agreement == 1.0
    # not the fp32 file under another name: the int8 weights change the numbers
    fp32 = open_runtime(made["fp32"].path).run([spec.example_inputs(seed=11)[0].numpy()])[0]
    int8 = rt.run([spec.example_inputs(seed=11)[0].numpy()])[0]
    assert 0 < np.max(np.abs(fp32 - int8)) < 0.05


def test_runtime_threads_and_bench_runner(cnn):
    _, made = cnn
    threads = torch.get_num_threads()
    try:
        assert open_runtime(made["fp32"].path, threads=1).threads == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    result = bench(made["dynamic-int8"].path, runs=3, warmup=1)
    assert result["runtime"] == "pytorch-mobile" and result["format"] == "torchscript"
    assert result["inputs"] == [{"name": "image", "shape": [1, 3, 32, 32], "dtype": "float32"}]
    assert 0 < result["latency_ms"]["p50"] < 1000


def test_lstm_dynamic_int8_quantizes_the_lstm(tmp_path, torch_globals):
    spec = tiny_lstm()
    exported = TorchScriptExporter().export(spec, tmp_path, "dynamic-int8")
    assert exported.details["quantized_modules"] == {"LSTM": 1, "Linear": 1}
    assert "aten::quantized_lstm.input" in exported.details["quantized_operators"]
    _, parity = run_against_eager(spec, exported.path, "dynamic-int8")
    assert parity.status == "pass" and parity.sqnr_db >= 20, parity


def test_transformer_works_with_the_mha_fast_path_off(tmp_path, torch_globals):
    spec = tiny_transformer()
    exported = TorchScriptExporter().export(spec, tmp_path, "dynamic-int8")
    assert any("fast path off" in n for n in exported.notes)
    assert exported.details["quantized_modules"] == {"Linear": 5}   # 2 layers x FFN(2) + the head
    assert exported.details["float_modules"] == {"Embedding": 1, "MultiheadAttention": 2}
    rt, parity = run_against_eager(spec, exported.path, "dynamic-int8")
    assert [(i.name, i.dtype) for i in rt.inputs] == [("tokens", "int64")]
    assert parity.status == "pass" and parity.sqnr_db >= 20, parity
    assert parity.top1_agreement == 1.0


def test_the_fast_path_failure_the_exporter_avoids():
    """Why the exporter turns the MHA fast path off: with it on, the dynamically quantized encoder fails (torch
    2.13). If this starts to pass, torch fixed it and the note in export/torchscript.py can go."""
    spec = tiny_transformer()
    engine, fastpath = torch.backends.quantized.engine, torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.quantized.engine = "qnnpack"
        torch.backends.mha.set_fastpath_enabled(True)
        q = torch.ao.quantization.quantize_dynamic(spec.module, {nn.Linear}, dtype=torch.qint8)
        with pytest.raises(AttributeError, match="'function' object has no attribute 'device'"), torch.no_grad():
            q(*spec.example_inputs())
    finally:
        torch.backends.quantized.engine = engine
        torch.backends.mha.set_fastpath_enabled(fastpath)


class _RoundSTE(torch.autograd.Function):
    """A straight-through rounding (quantization-aware training style): a Python function TorchScript keeps as a
    Python call, which a mobile file cannot hold."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _WithPythonFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(_RoundSTE.apply(x))


@pytest.mark.parametrize("precision", ["fp32", "dynamic-int8"])
def test_a_model_torchscript_cannot_hold_is_a_clear_error(tmp_path, torch_globals, precision):
    spec = ModelSpec(_WithPythonFunction(), (InputSpec("x", (1, 8)),))
    with pytest.raises(EdgeshipError) as e:
        TorchScriptExporter().export(spec, tmp_path, precision)
    assert "neither traces nor scripts" in e.value.message and "_RoundSTE" in e.value.message
    assert "--formats executorch --precision int8" in e.value.hint and "XNNPACK quantizer" in e.value.hint
    assert list(tmp_path.iterdir()) == []                          # nothing half-written


def test_dynamic_int8_without_linear_layers_is_a_clear_error(tmp_path, torch_globals):
    spec = ModelSpec(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), (InputSpec("x", (1, 3, 8, 8)),))
    with pytest.raises(EdgeshipError, match="nn.Linear, nn.LSTM and nn.GRU weights, and this model has none") as e:
        TorchScriptExporter().export(spec, tmp_path, "dynamic-int8")
    assert "executorch" in e.value.hint


def test_a_ptl_without_edgeship_metadata_is_refused(tmp_path):
    path = tmp_path / "foreign.ptl"
    torch.jit.script(nn.Linear(2, 2))._save_for_lite_interpreter(str(path))
    with pytest.raises(ValueError, match="no input/output description"):
        open_runtime(path)


@pytest.mark.slow
def test_pipeline_export_verifies_and_reports_fp16_as_not_offered(tmp_path):
    from edgeship.pipeline import ExportOptions, run_export
    out = tmp_path / "dist"
    report = run_export(tiny_cnn(), out, ExportOptions(["torchscript"], ["fp32", "int8", "fp16"], verify_samples=3))
    by_key = {a["key"]: a for a in report["artifacts"]}
    assert set(by_key) == {"torchscript:fp32", "torchscript:dynamic-int8", "torchscript:fp16"}
    assert by_key["torchscript:fp16"]["status"] == "failed" and "no fp16 export" in by_key["torchscript:fp16"]["error"]
    for key in ("torchscript:fp32", "torchscript:dynamic-int8"):
        assert by_key[key]["parity"]["status"] == "pass", by_key[key]
        assert by_key[key]["parity"]["runtime"] == "pytorch-mobile"
    manifest = manifest_mod.load(out)
    arts = {a["precision"]: a for a in manifest["artifacts"]}
    assert set(arts) == {"fp32", "dynamic-int8"}
    assert all(a["format"] == "torchscript" and a["runtime"] == "pytorch-mobile" for a in arts.values())
    assert arts["dynamic-int8"]["path"] == "torchscript/model.dynamic-int8.ptl"
    assert arts["fp32"]["inputs"] == [{"name": "image", "shape": [1, 3, 32, 32], "dtype": "float32", "quantization": None}]
