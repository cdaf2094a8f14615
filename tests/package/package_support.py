"""Helpers and fixtures for the edgeship package tests: a small *real* export folder, built here so these tests do not
depend on the exporters (the lead may swap ``make_export`` for ``edgeship export``), and throw-away copies of the apps."""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch
from torch import nn

from edgeship import manifest as manifest_mod
from edgeship._io import sha256_path, size_path

REPO = Path(__file__).resolve().parents[2]
LABELS = ["tabby", "tiger", "lynx", "dog", "fox", "bird", "fish", "car", "tree", "house"]
SIZE = 64
PREPROCESS = {"color_order": "RGB", "value_range": [0, 1], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def tiny_cnn() -> nn.Module:
    """A seeded 3-layer CNN, 1x3x64x64 -> 10 logits, with a well separated top-1 on natural photos."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, len(LABELS)))
    with torch.no_grad():  # spread the logits so top-1 is not a near tie
        m[-1].weight.mul_(40.0)
    return m.eval()


def artifact_entry(folder: Path, rel: str, fmt: str, precision: str, runtime: str, in_shape, out_shape,
                   in_name="image", out_name="logits", **extra) -> dict:
    path = folder / rel
    return {"format": fmt, "precision": precision, "path": rel, "sha256": sha256_path(path), "size_bytes": size_path(path),
            "runtime": runtime,
            "inputs": [{"name": in_name, "shape": list(in_shape), "dtype": "float32", "quantization": None}],
            "outputs": [{"name": out_name, "shape": list(out_shape), "dtype": "float32", "quantization": None}], **extra}


def write_manifest(folder: Path, artifacts: list[dict]) -> dict:
    manifest = {
        "schema_version": "1.0", "name": "tiny_cnn", "task": "image-classification",
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "tools": {"python": "3.11", "torch": torch.__version__.split("+")[0], "onnxruntime": _version("onnxruntime")},
        "labels": "labels.txt", "num_classes": len(LABELS),
        "inputs": [{"name": "image", "shape": [1, 3, SIZE, SIZE], "dtype": "float32", "layout": "NCHW", "preprocess": PREPROCESS}],
        "outputs": [{"name": "logits", "shape": [1, len(LABELS)], "dtype": "float32", "meaning": "logits"}],
        "artifacts": artifacts,
    }
    manifest_mod.validate(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def report_entry(art: dict, parity: str = "pass", reason: str | None = None) -> dict:
    """A report.json artifact row as `edgeship export` writes it (status ok, parity in its runtime)."""
    metric, threshold = ("cosine", 0.9999) if art["precision"] == "fp32" else ("cosine", 0.999)
    return {"key": f"{art['format']}:{art['precision']}", "format": art["format"], "precision": art["precision"],
            "status": "ok", "path": art["path"], "size_bytes": art["size_bytes"],
            "parity": {"status": parity, "metric": metric, "threshold": threshold,
                       "value": 1.0 if parity == "pass" else None, "samples": 4 if parity == "pass" else 0,
                       "reason": reason}}


def write_report(folder: Path, entries: list[dict]) -> None:
    report = {"schema_version": "1.0", "name": "tiny_cnn", "artifacts": entries, "bench": []}
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")


def _version(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def make_export(folder: Path) -> Path:
    """dist/tiny_cnn as `edgeship export --formats onnx` would lay it out: onnx/model.onnx, labels.txt, manifest.json."""
    folder.mkdir(parents=True)
    (folder / "onnx").mkdir()
    model = tiny_cnn()
    torch.onnx.export(model, (torch.zeros(1, 3, SIZE, SIZE),), str(folder / "onnx" / "model.onnx"), dynamo=True,
                      external_data=False, input_names=["image"], output_names=["logits"])
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    manifest = write_manifest(folder, [artifact_entry(folder, "onnx/model.onnx", "onnx", "fp32", "onnxruntime",
                                                      [1, 3, SIZE, SIZE], [1, len(LABELS)])])
    write_report(folder, [report_entry(a) for a in manifest["artifacts"]])
    return folder


@pytest.fixture(scope="session")
def _export_master(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("dist") / "tiny_cnn")


@pytest.fixture
def export_dir(_export_master, tmp_path) -> Path:
    """A fresh copy per test (tests may damage it)."""
    return Path(shutil.copytree(_export_master, tmp_path / "dist" / "tiny_cnn"))


@pytest.fixture(scope="session")
def _export_with_coreml(_export_master, tmp_path_factory) -> Path:
    """The same export plus a real Core ML .mlpackage (coremltools converts on Linux; it cannot predict here)."""
    ct = pytest.importorskip("coremltools")
    folder = Path(shutil.copytree(_export_master, tmp_path_factory.mktemp("dist-coreml") / "tiny_cnn"))
    ep = torch.export.export(tiny_cnn(), (torch.zeros(1, 3, SIZE, SIZE),)).run_decompositions({})
    mlmodel = ct.convert(ep, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16)
    (folder / "coreml").mkdir()
    mlmodel.save(str(folder / "coreml" / "model.mlpackage"))
    manifest = json.loads((folder / "manifest.json").read_text())
    spec = mlmodel.get_spec()
    manifest["artifacts"].append(artifact_entry(
        folder, "coreml/model.mlpackage", "coreml", "fp16", "coreml", [1, 3, SIZE, SIZE], [1, len(LABELS)],
        in_name=spec.description.input[0].name, out_name=spec.description.output[0].name, min_os={"ios": "16"}))
    write_manifest(folder, manifest["artifacts"])
    write_report(folder, [report_entry(a) if a["format"] != "coreml" else  # as on Linux: Core ML cannot predict here
                          report_entry(a, "not run", "needs macOS: Core ML prediction runs only there")
                          for a in manifest["artifacts"]])
    return folder


@pytest.fixture
def export_with_coreml(_export_with_coreml, tmp_path) -> Path:
    return Path(shutil.copytree(_export_with_coreml, tmp_path / "dist" / "tiny_cnn"))


def _copy_app(name: str, dst: Path) -> Path:
    ignore = shutil.ignore_patterns(".gradle", "build", ".build", "DerivedData", "xcuserdata", "model", "Model")
    return Path(shutil.copytree(REPO / name, dst / name, ignore=ignore))


@pytest.fixture
def android_app(tmp_path) -> Path:
    """A throw-away copy of android-demo (packaging into the repository's own copy is left to people)."""
    return _copy_app("android-demo", tmp_path / "apps")


@pytest.fixture
def ios_app(tmp_path) -> Path:
    return _copy_app("ios-demo", tmp_path / "apps")


def tree(folder: Path) -> dict[str, str]:
    """Every file under folder -> sha256, to prove what changed and what did not."""
    return {p.relative_to(folder).as_posix(): sha256_path(p) for p in sorted(folder.rglob("*")) if p.is_file()}
