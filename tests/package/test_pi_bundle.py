"""The Raspberry Pi bundle for real: unpack the .tar.gz, run its install.sh into a fresh venv (onnxruntime, numpy and
pillow from PyPI; apt skipped), classify a real photo with ./classify.sh, and compare with PyTorch on the same
preprocessed image. Plus classify.py's pieces in-process, and install.sh's refusals."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeship.package import package

from package_support import LABELS, REPO, tiny_cnn


@pytest.fixture
def classify_mod(monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)     # no __pycache__ in raspberrypi/
    monkeypatch.syspath_prepend(str(REPO / "raspberrypi"))
    import classify
    return classify


def _photo(tmp_path: Path, name: str = "chelsea.png") -> Path:
    """A real photo shipped by scikit-image (the Pi venv does not need skimage: the file is copied)."""
    import skimage
    src = Path(skimage.__file__).parent / "data" / name
    assert src.is_file(), src
    return Path(shutil.copy(src, tmp_path / name))


def _torch_reference(classify, photo: Path, manifest: dict) -> np.ndarray:
    from PIL import Image
    x = classify.preprocess(Image.open(photo), manifest["inputs"][0])
    with torch.no_grad():
        return torch.softmax(tiny_cnn()(torch.from_numpy(x)), dim=-1)[0].numpy()


@pytest.mark.slow
def test_pi_bundle_installs_and_classifies_a_photo(export_dir, tmp_path, classify_mod):
    res = package(export_dir, "pi", dest=tmp_path / "out" / "pi-bundle")
    unpacked = tmp_path / "pi"
    unpacked.mkdir()
    with tarfile.open(res.archive) as tar:
        tar.extractall(unpacked, filter="data")
    bundle = unpacked / "pi-bundle"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["EDGESHIP_PI_NO_APT"] = "1"
    proc = subprocess.run(["./install.sh", "--runtime", "onnx", "--python", sys.executable], cwd=bundle, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ready: ./classify.sh" in proc.stdout and "ok: onnx/model.onnx" in proc.stdout
    venv_py = bundle / ".venv" / "bin" / "python"
    freeze = subprocess.run([str(venv_py), "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout.lower()
    assert "onnxruntime==" in freeze and "numpy==" in freeze and "pillow==" in freeze
    for absent in ("torch", "skimage", "scikit-image", "edgeship", "ai-edge-litert", "executorch"):
        assert f"\n{absent}==" not in "\n" + freeze, f"{absent} should not be in the Pi venv"

    photo = _photo(tmp_path)
    proc = subprocess.run(["./classify.sh", "--json", str(photo)], cwd=bundle, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["runtime"] == "onnxruntime" and result["model"] == "onnx/model.onnx"
    assert result["latency_ms"] > 0 and len(result["top"]) == 5

    ref = _torch_reference(classify_mod, photo, res.manifest)
    assert result["top"][0]["index"] == int(ref.argmax())
    assert result["top"][0]["label"] == LABELS[int(ref.argmax())]
    got = {t["index"]: t["score"] for t in result["top"]}
    order = np.argsort(-ref)[:5]
    assert list(got) == order.tolist()
    np.testing.assert_allclose([got[i] for i in order], ref[order], atol=1e-5)
    assert ref.max() - np.sort(ref)[-2] > 0.05, "top-1 is a near tie: the comparison would prove little"

    # the human-readable form and the benchmark wrapper (the same runner the harness uses)
    proc = subprocess.run(["./classify.sh", str(photo)], cwd=bundle, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and f"1. {got[order[0]]:.4f}  {LABELS[order[0]]}" in proc.stdout, proc.stdout
    proc = subprocess.run(["./bench.sh", "--runs", "5", "--warmup", "1"], cwd=bundle, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bench = json.loads(proc.stdout)
    assert bench["runtime"] == "onnxruntime" and bench["runs"] == 5 and bench["latency_ms"]["p50"] > 0
    assert bench["inputs"][0]["shape"] == [1, 3, 64, 64]


def test_install_refuses_a_runtime_the_bundle_lacks(export_dir, tmp_path):
    res = package(export_dir, "pi", dest=tmp_path / "bundle")
    env = {**os.environ, "EDGESHIP_PI_NO_APT": "1"}
    proc = subprocess.run(["./install.sh", "--runtime", "tflite", "--python", sys.executable], cwd=res.dest, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "no tflite artifact" in proc.stderr and "onnx" in proc.stderr
    proc = subprocess.run(["./install.sh", "--runtime", "cuda"], cwd=res.dest, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "unknown runtime cuda" in proc.stderr
    assert not (res.dest / ".venv").exists()
    proc = subprocess.run(["./classify.sh", "x.jpg"], cwd=res.dest, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "run ./install.sh first" in proc.stderr


def test_classify_refuses_a_newer_manifest(export_dir, tmp_path, classify_mod):
    res = package(export_dir, "pi", dest=tmp_path / "bundle")
    m = json.loads((res.dest / "manifest.json").read_text())
    m["schema_version"] = "2.1"
    (res.dest / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(classify_mod.BundleError, match="schema_version 2.1, newer than"):
        classify_mod.load_manifest(res.dest)
    env = {**os.environ, "EDGESHIP_PI_NO_APT": "1"}
    proc = subprocess.run(["./install.sh", "--python", sys.executable], cwd=res.dest, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "schema_version '2.1'" in proc.stderr


def test_classify_in_process_with_this_venvs_onnxruntime(export_dir, tmp_path, classify_mod, capsys):
    """classify.py's own path (manifest, preprocessing, edgeship_runtime, top-5) without installing anything."""
    photo = _photo(tmp_path, "astronaut.png")
    res = package(export_dir, "pi", dest=tmp_path / "bundle")
    assert classify_mod.main(["--bundle", str(res.dest), "--json", "--model", "onnx", str(photo)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ref = _torch_reference(classify_mod, photo, res.manifest)
    assert result["top"][0]["index"] == int(ref.argmax())
    assert result["top"][0]["score"] == pytest.approx(float(ref.max()), abs=1e-5)
    assert classify_mod.main(["--bundle", str(res.dest), "--verify"]) == 0
    assert classify_mod.main(["--bundle", str(res.dest), "--model", "tflite", str(photo)]) == 2
    assert "no artifact matches 'tflite'" in capsys.readouterr().err
    with open(res.dest / "onnx" / "model.onnx", "ab") as f:
        f.write(b"\0")
    assert classify_mod.main(["--bundle", str(res.dest), "--verify"]) == 1


def test_preprocess_follows_the_manifest(classify_mod):
    from PIL import Image
    img = Image.fromarray(np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], dtype=np.uint8))
    inp = {"name": "x", "shape": [1, 2, 2, 3], "dtype": "float32", "layout": "NHWC",
           "preprocess": {"color_order": "BGR", "value_range": [-1, 1], "mean": [0, 0, 0], "std": [1, 1, 1]}}
    x = classify_mod.preprocess(img, inp)
    assert x.shape == (1, 2, 2, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0, 0], [-1, -1, 1])     # red, in B,G,R order
    np.testing.assert_allclose(x[0, 1, 0], [1, -1, -1])     # blue
    gray = {"name": "x", "shape": [1, 1, 2, 2], "dtype": "float32", "layout": "NCHW",
            "preprocess": {"color_order": "GRAY", "value_range": [0, 1], "mean": [0.5], "std": [0.5], "invert": True}}
    g = classify_mod.preprocess(img, gray)
    assert g.shape == (1, 1, 2, 2)
    assert g[0, 0, 1, 1] == pytest.approx(-1.0)               # white inverted -> 0 -> (0 - .5)/.5
    nhwc = classify_mod.adapt_layout(np.zeros((1, 3, 4, 5), np.float32), [1, 4, 5, 3])
    assert nhwc.shape == (1, 4, 5, 3)
    assert classify_mod.adapt_layout(nhwc, [1, 4, 5, 3]) is nhwc
    top = classify_mod.top_k(np.array([[1.0, 3.0, 2.0]]), "logits", 2)
    assert [i for i, _ in top] == [1, 2] and sum(s for _, s in classify_mod.top_k(np.zeros(4), "logits", 4)) == pytest.approx(1)
