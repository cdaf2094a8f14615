"""One conformance suite over every exporter × model × precision: export with the real converter, run in the
real runtime, meet the tolerance; manifest and report agree with the files; exports are deterministic where the
format allows (and the report says where not)."""
from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pytest

from edgeship import manifest as manifest_mod
from edgeship._io import sha256_path
from edgeship.examples import EXAMPLES
from edgeship.export import EXPORTERS, effective_precisions, get_exporter
from edgeship.pipeline import ExportOptions, run_export
from edgeship.verify import tolerance

MODELS = ("tiny_cnn", "tiny_transformer", "tiny_lstm")
PRECISIONS = ("fp32", "fp16")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Export each model once per test worker (tests are grouped per model, see xdist_group)."""
    cache = {}

    def get(model: str) -> tuple[Path, dict]:
        if model not in cache:
            out = tmp_path_factory.mktemp(model) / "dist"
            opts = ExportOptions(list(EXPORTERS), PRECISIONS, verify_samples=3, check_determinism=(model == "tiny_cnn"))
            report = run_export(EXAMPLES[model](), out, opts)
            cache[model] = (out, report)
        return cache[model]
    return get


def _artifact(report: dict, fmt: str, precision: str) -> dict:
    return next(a for a in report["artifacts"] if a["key"] == f"{fmt}:{precision}")


def made(fmt: str) -> list[str]:
    """The precisions ``fmt`` makes for PRECISIONS: every format makes both, except TorchScript (PyTorch Mobile),
    which has no fp16 and reports that request failed."""
    return [p for p in effective_precisions(fmt, PRECISIONS) if p in get_exporter(fmt).precisions]


CASES = [pytest.param(m, f, p, marks=pytest.mark.xdist_group(m), id=f"{m}-{f}-{p}")
         for m in MODELS for f in EXPORTERS for p in made(f)]


@pytest.mark.parametrize("model,fmt,precision", CASES)
def test_export_runs_in_its_runtime_within_tolerance(exported, model, fmt, precision):
    out, report = exported(model)
    art = _artifact(report, fmt, precision)
    assert art["status"] == "ok", f"{art['key']} failed: {art.get('error')}"
    path = out / art["path"]
    assert path.exists() and art["size_bytes"] > 1000
    parity = art["parity"]
    metric, threshold = tolerance(art["precision"])
    assert parity["metric"] == metric and parity["threshold"] == threshold
    if fmt == "coreml" and platform.system() != "Darwin":
        assert parity["status"] == "not run" and "macOS" in parity["reason"]
        return
    assert parity["status"] == "pass", parity
    assert parity["value"] >= threshold
    assert parity["samples"] == 3
    if precision == "fp32":
        assert parity["max_abs"] < 1e-4
    if report["model"]["task"].endswith("classification"):
        assert parity["top1_agreement"] == 1.0


@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.xdist_group(m)) for m in MODELS])
def test_manifest_describes_every_artifact(exported, model):
    out, report = exported(model)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest_mod.validate(manifest)
    assert manifest["schema_version"] == manifest_mod.SCHEMA_VERSION
    assert manifest["tools"]["torch"].startswith("2.13") and manifest["tools"]["executorch"]
    spec = EXAMPLES[model]()
    assert [i["name"] for i in manifest["inputs"]] == [i.name for i in spec.inputs]
    assert sorted(f"{a['format']}:{a['precision']}" for a in manifest["artifacts"]) == sorted(
        f"{f}:{p}" for f in EXPORTERS for p in made(f))
    for art in manifest["artifacts"]:
        assert sha256_path(out / art["path"]) == art["sha256"]
        assert len(art["inputs"]) == len(spec.inputs)
        for got, want in zip(art["inputs"], spec.inputs):
            assert int(np.prod(got["shape"])) == int(np.prod(want.shape)), (art["path"], got, want)
    coreml = [a for a in manifest["artifacts"] if a["format"] == "coreml"]
    assert all(a["min_os"]["ios"] for a in coreml)
    assert (out / "report.html").read_text().count("<img") >= 1
    if spec.labels:
        assert (out / "labels.txt").read_text().splitlines() == spec.labels


@pytest.mark.xdist_group("tiny_cnn")
def test_determinism_is_reported_per_format(exported):
    _, report = exported("tiny_cnn")
    for key in ("onnx:fp32", "tflite:fp32", "executorch:fp32"):
        assert _artifact(report, *key.split(":"))["deterministic"] is True, f"{key} was not byte-identical when exported twice"
    assert all(a["deterministic"] in (True, False) for a in report["artifacts"] if a["status"] == "ok")
    for a in report["artifacts"]:
        if a["deterministic"] is False:
            assert "not byte-identical when exported twice" in a["notes"]


@pytest.mark.xdist_group("tiny_transformer")
def test_executorch_reports_what_stayed_off_the_delegate(exported):
    _, report = exported("tiny_transformer")
    art = _artifact(report, "executorch", "fp32")
    assert art["details"]["delegates"] >= 1
    assert art["details"]["portable_nodes"] == sum(art["details"]["portable_ops"].values()) > 0
    assert "embedding" in art["details"]["portable_ops"]
