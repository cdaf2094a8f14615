"""The command line as a user meets it: clear errors without tracebacks, nothing lost, failures isolated per format."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EDGESHIP = [sys.executable, "-m", "edgeship.cli"]


def run(*args, cwd=None, prelude: str | None = None) -> subprocess.CompletedProcess:
    cmd = EDGESHIP + list(args)
    if prelude:   # run the CLI in a Python where `prelude` ran first
        cmd = [sys.executable, "-c", f"{prelude}\nimport sys\nsys.argv=['edgeship']+{list(args)!r}\nfrom edgeship.cli import main\nmain()"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600)


def assert_clean_error(r: subprocess.CompletedProcess, fragment: str, code: int = 2):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert fragment in r.stderr + r.stdout, r.stderr
    assert "Traceback" not in r.stderr + r.stdout


@pytest.mark.parametrize("args,fragment", [
    (["export", "missing.py:f", "--out", "o"], "does not exist"),
    (["export", "example:nope", "--out", "o"], "known examples"),
    (["export", "example:tiny_cnn", "--input", "image:1x3xQ", "--out", "o"], "cannot parse the shape"),
    (["export", "example:tiny_cnn", "--input", "image:1x3x7", "--out", "o"], "the model failed on inputs image:1x3x7"),
    (["export", "example:tiny_cnn", "--formats", "onnx,caffe", "--out", "o"], "known formats: onnx, tflite, executorch, coreml"),
    (["export", "example:tiny_cnn", "--precision", "int3", "--formats", "onnx", "--out", "o"], "unknown precision"),
    (["verify", "nowhere"], "not an edgeship export folder"),
])
def test_bad_input_is_a_clear_error(tmp_path, args, fragment):
    r = run(*args, cwd=tmp_path)
    assert_clean_error(r, fragment)
    assert not (tmp_path / "o").exists()


def test_existing_output_folder_is_not_touched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    r = run("export", "example:tiny_cnn", "--formats", "onnx", "--out", str(out))
    assert_clean_error(r, "exists and is not empty")
    r = run("export", "example:tiny_cnn", "--formats", "onnx", "--out", str(out), "--force")
    assert_clean_error(r, "not an edgeship output folder")
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "user data"


def test_missing_converter_names_the_package(tmp_path):
    r = run("export", "example:tiny_cnn", "--formats", "coreml", "--out", str(tmp_path / "o"),
            prelude="import sys; sys.modules['coremltools'] = None  # as if coremltools were not installed")
    assert r.returncode == 1, r.stderr
    assert "needs the Python package 'coremltools'" in r.stdout
    assert "pip install 'edgeship[coreml]'" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.slow
def test_unsupported_op_fails_only_its_formats_and_verify_catches_tampering(tmp_path):
    out = tmp_path / "fft"
    r = run("export", "example:fft_head", "--formats", "onnx,executorch,coreml", "--out", str(out))
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    report = json.loads((out / "report.json").read_text())
    by = {a["format"]: a for a in report["artifacts"]}
    assert by["onnx"]["status"] == "ok" and by["onnx"]["parity"]["status"] == "pass"
    assert by["executorch"]["status"] == "failed" and "executorch converter cannot handle op aten.abs" in by["executorch"]["error"]
    assert by["coreml"]["status"] == "failed" and "coreml converter cannot handle op fft_rfft" in by["coreml"]["error"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [a["format"] for a in manifest["artifacts"]] == ["onnx"]

    r = run("verify", str(out), "--json")
    assert r.returncode == 1   # the failed exports stay failed
    assert json.loads(r.stdout)["artifacts"][0]["parity"]["status"] == "pass"

    # change the artifact's weights behind the manifest's back: verify must fail, first on sha256 ...
    import onnx
    from onnx import numpy_helper
    path = out / "onnx" / "model.onnx"
    m = onnx.load(str(path))
    init = max(m.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(init).copy()
    init.CopyFrom(numpy_helper.from_array(w * -1.0, init.name))
    onnx.save(m, str(path))
    r = run("verify", str(out), "--json")
    onnx_entry = next(a for a in json.loads(r.stdout)["artifacts"] if a["format"] == "onnx")
    assert onnx_entry["parity"]["status"] == "fail" and "sha256" in onnx_entry["parity"]["reason"]
    # ... and on the numbers once the manifest is made to agree
    from edgeship._io import sha256_path
    manifest["artifacts"][0]["sha256"] = sha256_path(path)
    (out / "manifest.json").write_text(json.dumps(manifest))
    r = run("verify", str(out), "--json")
    onnx_entry = next(a for a in json.loads(r.stdout)["artifacts"] if a["format"] == "onnx")
    assert onnx_entry["parity"]["status"] == "fail" and "below the fp32 threshold" in onnx_entry["parity"]["reason"]


@pytest.mark.slow
def test_export_then_force_replaces_and_json(tmp_path):
    out = tmp_path / "o"
    r = run("export", "example:tiny_cnn", "--formats", "onnx", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert first["artifacts"][0]["parity"]["status"] == "pass"
    r = run("export", "example:tiny_cnn", "--formats", "tflite", "--out", str(out), "--force")
    assert r.returncode == 0, r.stderr
    assert "tflite" in r.stdout and "pass" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["labels.txt", "manifest.json", "reference.npz", "report.html",
                                                     "report.json", "tflite"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")]   # no staging or old folders left


def test_doctor_json():
    r = run("doctor", "--json")
    assert r.returncode == 0, r.stderr
    rows = {x["format"]: x for x in json.loads(r.stdout)["formats"]}
    assert rows["onnx"]["export"] and rows["onnx"]["run"]
    assert rows["coreml"]["export"] is True
    if sys.platform != "darwin":
        assert rows["coreml"]["run"] is False and "macOS" in rows["coreml"]["run_reason"]
