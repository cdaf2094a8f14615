"""Detection in the apps and the Pi kit: their decoders read the manifest's detection section and give the Python
reference's boxes.

* The fixture both apps test against (raw outputs + the boxes edgeship_runtime.detect makes of them) is what
  tests/package/detect_fixture.py builds now: a decoder change that is not carried to the apps fails here.
* The keys Detection.kt (DetectionKeys) and Detection.swift (CodingKeys) read are the schema's.
* Kotlin (where kotlinc exists): the core is compiled and DetectionTest runs against the fixture.
* Swift: no toolchain here; `swift test` in ios-demo/EdgeshipKit runs DetectionTests where Swift is installed.
* The Pi's classify.py on a P-Net export (real photo) prints the boxes facenet-pytorch's first stage gives.
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from package_support import REPO
from test_app_sources import IOS, KOTLIN_CORE, kotlin_core, schema_keys, swift_coding_keys  # noqa: F401 (fixture)

sys.path.insert(0, str(REPO / "tests" / "package"))
import detect_fixture  # noqa: E402

DETECTION_KT = KOTLIN_CORE / "main" / "kotlin" / "dev" / "edgeship" / "core" / "Detection.kt"
DETECTION_SWIFT = IOS / "EdgeshipKit" / "Sources" / "EdgeshipKit" / "Detection.swift"


def _needs_facenet():
    if importlib.util.find_spec("facenet_pytorch") is None:
        pytest.skip("facenet-pytorch is not installed (make setup installs it)")


def test_schema_section_keys():
    schema = json.loads((REPO / "toolchain" / "edgeship" / "schemas" / "manifest.schema.json").read_text())
    section = set(schema["$defs"]["detection"]["properties"]) | set(schema["$defs"]["detection"]["properties"]["grid"]["properties"])
    body = DETECTION_KT.read_text()
    body = body[body.index("object DetectionKeys"):]
    kt = set(re.findall(r'const val \w+ = "([^"]+)"', body[:body.index("\n}\n")]))
    swift = swift_coding_keys(DETECTION_SWIFT)
    needed = {"boxes", "scores", "box_format", "score_threshold", "iou_threshold", "max_detections", "score_activation",
              "background_class", "class_agnostic", "grid", "stride", "cell", "offset", "nms_on", "anchors", "box_weights"}
    for keys, where in ((kt, "Detection.kt"), (swift, "Detection.swift")):
        assert keys <= section, f"{where} reads keys the schema's detection section lacks: {sorted(keys - section)}"
        assert needed <= keys, f"{where} never reads {sorted(needed - keys)}"
    assert "detection" in schema_keys()
    assert 'const val DETECTION = "detection"' in (DETECTION_KT.parent / "Manifest.kt").read_text()
    assert 'case detection = "detection"' in (DETECTION_SWIFT.parent / "Manifest.swift").read_text()


def test_app_fixtures_are_what_the_python_reference_gives_now():
    _needs_facenet()
    want = detect_fixture.dumps(detect_fixture.build())
    for path in detect_fixture.COPIES:
        assert path.read_text() == want, f"{path} is stale: run .venv/bin/python tests/package/detect_fixture.py"
    cases = json.loads(want)["cases"]
    assert {c["detection"]["box_format"] for c in cases} == {"grid", "anchor_deltas", "cxcywh", "xyxy"}
    assert all(c["expected"] for c in cases)


@pytest.mark.slow
def test_kotlin_detection_matches_the_python_reference(kotlin_core):
    out = kotlin_core("org.junit.runner.JUnitCore", "dev.edgeship.core.DetectionTest", "dev.edgeship.core.ManifestTest")
    assert re.search(r"OK \((\d+) tests\)", out), out


@pytest.mark.slow
def test_pi_classify_prints_the_boxes_of_facenets_first_stage(tmp_path, monkeypatch):
    _needs_facenet()
    import torch
    from PIL import Image
    from skimage import data

    out = tmp_path / "pnet"
    proc = subprocess.run([sys.executable, "-m", "edgeship.cli", "export", f"{REPO / 'bench/real_models.py'}:mtcnn_pnet_detect",
                           "--task", "detect", "-f", "onnx", "--out", str(out)], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(REPO / "raspberrypi"))
    import classify

    photo = Image.fromarray(data.astronaut())
    clf = classify.Classifier(out, "onnx")
    got = clf.classify(photo)["detections"]

    sys.path.insert(0, str(REPO / "tests" / "export"))
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import real_models
        from test_detect import compare, facenet_reference
    finally:
        sys.path.remove(str(REPO / "tests" / "export"))
        sys.path.remove(str(REPO / "bench"))
    x = classify.preprocess(photo, clf.input)
    spec = real_models.mtcnn_pnet_detect()
    with torch.no_grad():
        reg, probs = spec.module(torch.from_numpy(x))
    want = facenet_reference(real_models, reg, probs, spec.detection.score_threshold)
    from edgeship.detect import Detections
    mine = Detections(np.array([d["box"] for d in got], np.float32).reshape(-1, 4), np.array([d["score"] for d in got]),
                      np.ones(len(got), np.int64))
    same, worst = compare(mine, want)
    assert len(got) >= 3 and same and worst >= 0.99, (len(got), len(want), worst)
    assert all(d["label"] == "face" for d in got)
    sx = 512 / 320
    assert got[0]["image_box"][0] == pytest.approx(got[0]["box"][0] * sx, abs=0.1)
