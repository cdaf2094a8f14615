"""Dynamic dimensions (#13.3): --input tokens:1x(8..512):int64 / image:(1..8)x3x224x224, exported once, verified at
MIN, example and MAX in each runtime that supports them, recorded in the manifest, and benched per size."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeship.errors import EdgeshipError
from edgeship.model import InputSpec, ModelSpec, example_size, parse_input

EDGESHIP = [sys.executable, "-m", "edgeship.cli"]


class TinyEncoder(nn.Module):
    """A text encoder that takes any sequence length up to its position table (512)."""

    def __init__(self, vocab: int = 100, dim: int = 32, max_len: int = 512):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, max_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 2, 64, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 3)

    def forward(self, tokens):
        h = self.encoder(self.embed(tokens) + self.pos[:, : tokens.shape[1]])
        return self.head(h.mean(dim=1))


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                               nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x):
        return self.f(x)


# --- syntax -------------------------------------------------------------------------------------------------------

def test_parse_dynamic_dimensions():
    tokens = parse_input("tokens:1x(8..512):int64")
    assert tokens.shape == (1, 64) and tokens.dynamic == {1: (8, 512)} and tokens.text == "1x(8..512)"
    assert tokens.at("min").shape == (1, 8) and tokens.at("max").shape == (1, 512)
    assert tokens.to_dict()["dynamic"] == {"1": [8, 512]}
    image = parse_input("image:(1..8)x3x224x224")
    assert image.shape == (4, 3, 224, 224) and image.dynamic == {0: (1, 8)} and image.layout == "NCHW"
    # the factory's ways: dynamic={axis: (MIN, MAX)} with the example in shape, or a (MIN, MAX) tuple in shape
    assert InputSpec("tokens", (1, 128), "int64", dynamic={1: (8, 512)}).shape == (1, 128)
    assert InputSpec("image", ((1, 8), 3, 32, 32)).dynamic == {0: (1, 8)}
    assert [example_size(*r) for r in ((8, 512), (1, 8), (1, 2), (32, 128), (1, 16))] == [64, 4, 2, 64, 4]


@pytest.mark.parametrize("text,fragment", [
    ("tokens:1x(512..8):int64", "the dynamic range 512..8 is empty: MIN must be less than MAX"),
    ("tokens:1x(0..8):int64", "the dynamic range 0..8 is below 1"),
    ("tokens:1x(8..8):int64", "is a single size: write it as a fixed dimension (8)"),
    ("tokens:1x(8..):int64", "cannot parse the shape '1x(8..)'"),
])
def test_bad_dynamic_syntax(text, fragment):
    with pytest.raises(EdgeshipError) as e:
        parse_input(text)
    assert fragment in e.value.message
    assert "(MIN..MAX)" in e.value.hint


def test_bad_factory_dynamic():
    with pytest.raises(EdgeshipError, match="the example size 4 is outside its dynamic range 8..512"):
        InputSpec("tokens", (1, 4), "int64", dynamic={1: (8, 512)})
    with pytest.raises(EdgeshipError, match="has no such axis"):
        InputSpec("tokens", (1, 4), "int64", dynamic={2: (8, 512)})


def run(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(EDGESHIP + list(args), capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.mark.parametrize("inp,fragment", [
    ("image:(8..1)x3x32x32", "input 'image', dimension 0: the dynamic range 8..1 is empty"),
    # tiny_transformer adds a fixed 32-long position table: torch.export says the model fixes the length
    ("tokens:1x(16..64):int64", "tokens dimension 1 (16..64) cannot be dynamic: the model fixes it to 32 "
                                "(torch.export: seq = 32)"),
])
def test_cli_refuses_dynamic_dimensions_the_model_cannot_take(tmp_path, inp, fragment):
    model = "example:tiny_cnn" if inp.startswith("image") else "example:tiny_transformer"
    r = run("export", model, "--input", inp, "--formats", "onnx", "--out", "o", cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert fragment in r.stdout + r.stderr, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert not (tmp_path / "o").exists()


# --- export, verification at MIN / example / MAX, manifest --------------------------------------------------------

def _sizes(artifact: dict) -> dict[str, tuple[list[int], str]]:
    return {r["size"]: (next(iter(r["shapes"].values())), r["status"]) for r in artifact["parity"]["sizes"]}


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory):
    from edgeship.pipeline import ExportOptions, run_export
    torch.manual_seed(0)
    spec = ModelSpec(TinyEncoder(), (InputSpec("tokens", (1, (8, 512)), "int64", high=100),),
                     task="text-classification", name="encoder")
    out = tmp_path_factory.mktemp("dyn") / "encoder"
    report = run_export(spec, out, ExportOptions(["onnx", "executorch", "tflite", "coreml"], ["fp32"], verify_samples=3))
    return out, report


@pytest.mark.slow
def test_text_encoder_exported_once_runs_at_8_64_512(encoder_folder):
    out, report = encoder_folder
    arts = {a["format"]: a for a in report["artifacts"]}
    for fmt in ("onnx", "executorch"):   # verified in onnxruntime and ExecuTorch's runtime at each size
        a = arts[fmt]
        assert a["status"] == "ok" and a["parity"]["status"] == "pass", a
        assert _sizes(a) == {"min": ([1, 8], "pass"), "example": ([1, 64], "pass"), "max": ([1, 512], "pass")}
        assert all(r["cosine"] >= 0.9999 for r in a["parity"]["sizes"])
        assert a["details"]["dynamic"] == {"tokens": {"1": [8, 512]}}
    # TFLite: fixed at the example size, said so, never a pass at the other sizes
    t = arts["tflite"]
    assert t["parity"]["status"] == "pass" and t["details"]["fixed_shapes"] == {"tokens": [1, 64]}
    assert any("tflite: fixed shapes only in litert-torch" in n for n in t["notes"])
    assert _sizes(t) == {"min": ([1, 8], "not run"), "example": ([1, 64], "pass"), "max": ([1, 512], "not run")}
    # Core ML: RangeDim in the package; prediction needs macOS
    c = arts["coreml"]
    assert c["status"] == "ok" and c["parity"]["status"] == "not run"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [1, 64] and manifest["inputs"][0]["dynamic"] == {"1": [8, 512]}
    ins = {a["format"]: a["inputs"][0] for a in manifest["artifacts"]}
    assert ins["onnx"]["shape"] == [1, None] and ins["onnx"]["dynamic"] == {"1": [8, 512]}
    assert ins["executorch"]["shape"] == [1, 512] and ins["executorch"]["dynamic"] == {"1": [8, 512]}   # the bound
    assert ins["coreml"]["shape"] == [1, None] and ins["coreml"]["dynamic"] == {"1": [8, 512]}
    assert ins["tflite"]["shape"] == [1, 64] and "dynamic" not in ins["tflite"]


@pytest.mark.slow
def test_device_runner_resizes_and_verify_rechecks_sizes(encoder_folder):
    from edgeship.pipeline import verify_folder
    from edgeship_runtime import open_runtime
    out, _ = encoder_folder
    for path in ("onnx/model.onnx", "executorch/model.pte"):
        rt = open_runtime(out / path)
        for n in (8, 200, 512):
            assert rt.run([np.arange(n, dtype=np.int64).reshape(1, n) % 100])[0].shape == (1, 3)
    with pytest.raises(ValueError, match="did not take inputs of shape input_0:1x513|expects shape"):
        open_runtime(out / "executorch/model.pte").run([np.zeros((1, 513), np.int64)])
    report = verify_folder(out)
    onnx = next(a for a in report["artifacts"] if a["format"] == "onnx")
    assert [r["status"] for r in onnx["parity"]["sizes"]] == ["pass", "pass", "pass"]


@pytest.fixture(scope="module")
def cnn_folder(tmp_path_factory):
    from edgeship.pipeline import ExportOptions, run_export
    torch.manual_seed(0)
    spec = ModelSpec(TinyCNN(), (InputSpec("image", ((1, 8), 3, 32, 32), layout="NCHW"),), name="cnn")
    out = tmp_path_factory.mktemp("dyn") / "cnn"
    report = run_export(spec, out, ExportOptions(["onnx", "executorch", "tflite"], ["fp32", "int8"], verify_samples=3))
    return out, report


@pytest.mark.slow
def test_cnn_at_batch_1_4_8_fp32_and_int8(cnn_folder):
    _, report = cnn_folder
    for a in report["artifacts"]:
        assert a["status"] == "ok" and a["parity"]["status"] == "pass", a
        want = {"min": [1, 3, 32, 32], "example": [4, 3, 32, 32], "max": [8, 3, 32, 32]}
        sizes = _sizes(a)
        assert {k: v[0] for k, v in sizes.items()} == want
        expect = "pass" if a["format"] != "tflite" else "not run"
        assert sizes["min"][1] == sizes["max"][1] == expect, (a["key"], sizes)


@pytest.mark.slow
def test_bench_reports_throughput_per_batch(cnn_folder):
    from edgeship.bench.devices import parse_device
    from edgeship.bench.harness import BenchOptions, bench_folder
    out, _ = cnn_folder
    entries = bench_folder(out, parse_device("local"), BenchOptions(runs=5, warmup=1, threads=(1,), batch=[1, 4, 8],
                                                                     precisions=["fp32"], energy="off"))
    rows = {(e["format"], (e["size"] or {}).get("batch")): e for e in entries}
    for fmt in ("onnx", "executorch"):
        for b in (1, 4, 8):
            e = rows[(fmt, b)]
            assert e["status"] == "ok" and e["batch"] == b and e["inputs"][0]["shape"][0] == b
            assert e["items_per_s"] == pytest.approx(b * 1000 / e["latency_ms"]["p50"])
    assert rows[("tflite", 4)]["status"] == "ok"
    assert rows[("tflite", 8)]["status"] == "skipped"
    assert "fixed shape: takes image 4x3x32x32 only, not 8x3x32x32" in rows[("tflite", 8)]["reason"]
    with pytest.raises(EdgeshipError, match="--batch 16: outside the range 1..8"):
        bench_folder(out, parse_device("local"), BenchOptions(batch=[16], energy="off"))
    with pytest.raises(EdgeshipError, match="--seq: the folder's inputs .* have no dynamic dimension beyond axis 0"):
        bench_folder(out, parse_device("local"), BenchOptions(seq=[32], energy="off"))
