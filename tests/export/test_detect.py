"""Detection models (--task detect): raw boxes and scores are exported, decode + NMS run on the device.

* The numpy decode + NMS (edgeship_runtime.detect, what the Pi and the bench runner use) against an independent
  plain-torch reference with torchvision's NMS semantics (edgeship.detect.torch_*), for every box format.
* MTCNN's P-Net (real weights from the facenet-pytorch wheel) on real photos: the numpy decode of PyTorch's outputs
  against facenet-pytorch's own first stage (its generateBoundingBox, imported from the package, + batched NMS), and
  the exported .onnx / .tflite / .pte run in onnxruntime / LiteRT / ExecuTorch, decoded with the runtime's numpy
  code from the manifest alone: the same number of boxes and IoU >= 0.99 for every matched box.
* A model with NMS inside forward() is refused before any export, with a message that points to --task detect.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeship import manifest as manifest_mod
from edgeship.detect import (DetectionSpec, Detections, match, nms, torch_batched_nms, torch_decode, torch_nms)
from edgeship.errors import EdgeshipError
from edgeship_runtime import detect as rt_detect

ROOT = Path(__file__).resolve().parents[2]
MIN_IOU = 0.99
PHOTOS = (("eval", 6), ("calib", 6))      # bench/real_models.py's P-Net inputs: 12 real photo crops, 240x320


def _cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeship.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


# ---------------------------------------------------------------------------------------------------------------
# numpy decode + NMS against the plain-torch reference

def test_nms_matches_torch_reference():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(1, 60))
        xy = rng.uniform(0, 100, size=(n, 2))
        wh = rng.uniform(1, 40, size=(n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
        scores = rng.uniform(size=n).astype(np.float32)
        thr = float(rng.uniform(0.2, 0.8))
        want = torch_nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy()
        np.testing.assert_array_equal(nms(boxes, scores, thr), want)
        classes = rng.integers(0, 3, size=n)
        want = torch_batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes), thr).numpy()
        np.testing.assert_array_equal(rt_detect.batched_nms(boxes, scores, classes, thr), want)


def _same(a: Detections, b: Detections, atol: float = 1e-4) -> None:
    assert len(a) == len(b)
    np.testing.assert_allclose(a.boxes, b.boxes, rtol=0, atol=atol)
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a.classes, b.classes)


@pytest.mark.parametrize("fmt,activation,agnostic", [("xyxy", "none", False), ("cxcywh", "sigmoid", False),
                                                     ("anchor_deltas", "softmax", False), ("cxcywh", "sigmoid", True)])
def test_box_formats_match_torch_reference(fmt, activation, agnostic):
    rng = np.random.default_rng(1)
    n, c = 300, 4
    if fmt == "xyxy":
        xy = rng.uniform(0, 200, size=(n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 60, size=(n, 2))], axis=1)
    elif fmt == "cxcywh":
        boxes = np.concatenate([rng.uniform(0, 200, size=(n, 2)), rng.uniform(5, 60, size=(n, 2))], axis=1)
    else:
        boxes = rng.normal(0, 1, size=(n, 4))
    anchors = np.concatenate([rng.uniform(0, 200, size=(n, 2)), rng.uniform(10, 50, size=(n, 2))], axis=1)
    scores = rng.normal(0, 2, size=(1, n, c)) if activation != "none" else rng.uniform(size=(1, n, c))
    spec = DetectionSpec("boxes", "scores", fmt, score_threshold=0.5, iou_threshold=0.45, max_detections=50,
                         score_activation=activation, background_class=0 if activation == "softmax" else None,
                         class_agnostic=agnostic, anchors=anchors if fmt == "anchor_deltas" else None,
                         box_weights=(10, 10, 5, 5) if fmt == "anchor_deltas" else None)
    outs = {"boxes": boxes[None].astype(np.float32), "scores": scores.astype(np.float32)}
    got = spec.decode(outs)
    want = torch_decode({k: torch.from_numpy(v) for k, v in outs.items()}, spec)
    assert len(got) > 3, "the case should keep several boxes"
    # anchors are written to the manifest rounded to 1e-6: decode from the manifest section too
    _same(got, want, atol=1e-3 if fmt == "anchor_deltas" else 1e-4)
    _same(rt_detect.decode(outs, json.loads(json.dumps(spec.to_dict()))), want, atol=1e-3)


def test_spec_errors_are_clear():
    with pytest.raises(EdgeshipError, match="unknown box_format 'yolo'"):
        DetectionSpec("b", "s", "yolo")
    with pytest.raises(EdgeshipError, match="needs grid"):
        DetectionSpec("b", "s", "grid")
    with pytest.raises(EdgeshipError, match="needs anchors"):
        DetectionSpec("b", "s", "anchor_deltas")
    spec = DetectionSpec("boxes", "scores", "xyxy")
    with pytest.raises(EdgeshipError, match=r"boxes output 'boxes' is not one of the model's outputs \(output_0, output_1\)"):
        spec.section(["output_0", "output_1"])
    with pytest.raises(rt_detect.DetectionSpecError, match="has no detection section"):
        rt_detect.decode_manifest({"name": "m", "outputs": []}, [])


# ---------------------------------------------------------------------------------------------------------------
# MTCNN P-Net, real weights, real photos

@pytest.fixture(scope="module")
def photos(real_models):
    return [x for split, n in PHOTOS for (x,) in real_models.real_inputs("mtcnn_pnet", n, split)]


def facenet_reference(real_models, reg: torch.Tensor, probs: torch.Tensor, threshold: float) -> Detections:
    """facenet-pytorch's detect_face first stage at one scale (scale 1): its own generateBoundingBox, then its
    batched_nms(0.5) per scale and batched_nms(0.7) across scales (torchvision's, here the plain-torch equivalent:
    torchvision is not installed), then the regression it applies to the kept boxes (before rerec/pad for R-Net)."""
    df = real_models._import_without("facenet_pytorch.models.utils.detect_face", ("torchvision",))
    boxes, image_inds = df.generateBoundingBox(reg, probs[:, 1], 1.0, threshold)
    pick = torch_batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.5)
    boxes, image_inds = boxes[pick], image_inds[pick]
    pick = torch_batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes = boxes[pick]
    regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    out = torch.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                       boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh], dim=1)
    return Detections(out.numpy(), boxes[:, 4].numpy(), np.ones(len(boxes), dtype=np.int64))


def compare(got: Detections, want: Detections) -> tuple[bool, float | None]:
    """(same count and every box matched, the smallest IoU of the matched pairs)."""
    pairs = match(got, want)
    worst = min((p[2] for p in pairs), default=None)
    return len(got) == len(want) == len(pairs), worst


def test_pnet_numpy_decode_matches_facenet_post_processing(real_models, photos):
    spec = real_models.mtcnn_pnet_detect()
    total = 0
    for x in photos:
        with torch.no_grad():
            reg, probs = spec.module(torch.from_numpy(x))
        want = facenet_reference(real_models, reg, probs, spec.detection.score_threshold)
        got = spec.detection.decode([reg, probs], ["regression", "scores"])
        _same(got, want, atol=1e-4)
        total += len(got)
    assert total >= 50, f"the photos should give face proposals, got {total}"


@pytest.mark.slow
def test_pnet_task_detect_in_every_runtime_matches_pytorch_post_processing(real_models, photos, tmp_path):
    """Export from the CLI, then on the device side: open each artifact, decode with the manifest's section."""
    from edgeship_runtime import open_runtime

    out = tmp_path / "pnet"
    proc = _cli("export", f"{ROOT / 'bench/real_models.py'}:mtcnn_pnet_detect", "--task", "detect",
                "-f", "onnx,tflite,executorch", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = manifest_mod.load(out)
    assert manifest["task"] == "detection"
    det = manifest["detection"]
    assert det["box_format"] == "grid" and det["grid"] == {"stride": 2.0, "cell": 12.0, "offset": 1.0, "nms_on": "cells"}
    assert (det["boxes"], det["scores"]) == ("regression", "scores")
    assert [o["meaning"] for o in manifest["outputs"]] == ["other", "other"]
    assert {a["format"] for a in manifest["artifacts"]} == {"onnx", "tflite", "executorch"}

    spec = real_models.mtcnn_pnet_detect()
    refs = []
    for x in photos:
        with torch.no_grad():
            reg, probs = spec.module(torch.from_numpy(x))
        refs.append(facenet_reference(real_models, reg, probs, det["score_threshold"]))
    figures = {}
    for art in manifest["artifacts"]:
        rt = open_runtime(out / art["path"])
        counts, worst = [], 1.0
        for x, want in zip(photos, refs):
            got = rt_detect.decode_manifest(manifest, rt.run([x]))
            same, w = compare(got, want)
            assert same, (art["format"], len(got), len(want))
            worst = min(worst, w) if w is not None else worst
            counts.append(len(got))
        figures[art["format"]] = (sum(counts), worst)
        assert worst >= MIN_IOU, (art["format"], worst)
    assert all(n == sum(len(r) for r in refs) for n, _ in figures.values())
    print("P-Net --task detect on", len(photos), "photos: boxes (PyTorch) =", sum(len(r) for r in refs),
          {f: {"boxes": n, "min_iou": round(w, 6)} for f, (n, w) in figures.items()})


# ---------------------------------------------------------------------------------------------------------------
# a model with NMS inside forward()

class ThresholdInForward(nn.Module):
    """Boxes whose score passes a threshold: the output's length depends on the values (as after NMS)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x):
        y = self.head(x).flatten(2)[0].T          # N x 5: 4 box values + 1 score
        keep = torch.nonzero(y[:, 4] > 0.0).flatten()
        return y[keep, :4], y[keep, 4]


def test_variable_size_outputs_point_to_task_detect(tmp_path):
    src = tmp_path / "nms_model.py"
    src.write_text("import torch\nfrom torch import nn\n\n" + _source(ThresholdInForward) +
                   "\n\ndef build():\n    torch.manual_seed(0)\n    return ThresholdInForward(), (torch.zeros(1, 3, 8, 8),)\n")
    out = tmp_path / "out"
    proc = _cli("export", f"{src}:build", "-f", "onnx", "--out", str(out), timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "outputs vary in size with the values, as a detector's do after a score threshold or NMS" in text, text
    assert "--task detect" in text, text
    assert "all input arrays must have the same shape" not in text and "Traceback" not in text, text
    assert not out.exists()


def _source(cls) -> str:
    import inspect
    import textwrap
    return textwrap.dedent(inspect.getsource(cls))
