"""The detection fixture the apps' decoders are tested against: raw detector outputs and the boxes the Python
reference (edgeship_runtime.detect) makes of them.

    .venv/bin/python tests/package/detect_fixture.py      # rewrite the committed copies after a decoder change

Cases: MTCNN P-Net's real outputs (facenet-pytorch weights) on two real photos (scikit-image's astronaut, camera)
at 48x64, so NMS has overlapping proposals to remove; and three synthetic generic heads (SSD-style anchor deltas
with softmax and a background class, YOLO-style cxcywh with sigmoid, class-agnostic; xyxy probabilities).
tests/package/test_detect_apps.py checks the committed copies equal what this builds, and runs the Kotlin test.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
COPIES = (REPO / "android-demo" / "core" / "src" / "test" / "resources" / "detection.fixture.json",
          REPO / "ios-demo" / "EdgeshipKit" / "Tests" / "EdgeshipKitTests" / "Resources" / "detection.fixture.json")
PNET_SIZE = (48, 64)
PNET_CROPS = {"astronaut": (0, 300, 80, 480), "camera": (0, 512, 0, 512)}


def _f32(a) -> list:
    return [float(v) for v in np.asarray(a, dtype=np.float32).ravel()]


def _case(name: str, det: dict, outputs: dict[str, np.ndarray]) -> dict:
    from edgeship_runtime.detect import decode
    got = decode(outputs, det)
    return {"name": name, "detection": det,
            "outputs": [{"name": k, "shape": list(v.shape), "data": _f32(v)} for k, v in outputs.items()],
            "expected": [{"box": _f32(b), "score": float(np.float32(s)), "class": int(c)}
                         for b, s, c in zip(got.boxes, got.scores, got.classes)]}


def _pnet_cases() -> list[dict]:
    import torch
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import real_models
    finally:
        sys.path.remove(str(REPO / "bench"))
    spec = real_models.mtcnn_pnet_detect(*PNET_SIZE)
    det = spec.detection.to_dict()
    cases = []
    for photo, (y0, y1, x0, x1) in PNET_CROPS.items():
        img = real_models._photo(photo)[y0:y1, x0:x1]
        x = real_models._mtcnn_norm(real_models._resize(img, *PNET_SIZE))
        with torch.no_grad():
            reg, probs = spec.module(torch.from_numpy(x))
        cases.append(_case(f"mtcnn_pnet/{photo}", det, {"regression": reg.numpy(), "scores": probs.numpy()}))
    return cases


def _synthetic_cases() -> list[dict]:
    from edgeship.detect import DetectionSpec
    rng = np.random.default_rng(7)
    n = 40
    anchors = np.concatenate([rng.uniform(10, 90, (n, 2)), rng.uniform(10, 40, (n, 2))], axis=1).astype(np.float32)
    ssd = DetectionSpec("boxes", "scores", "anchor_deltas", score_threshold=0.3, iou_threshold=0.45, max_detections=10,
                        score_activation="softmax", background_class=0, anchors=anchors, box_weights=(10, 10, 5, 5))
    yolo = DetectionSpec("boxes", "scores", "cxcywh", score_threshold=0.4, iou_threshold=0.5, max_detections=20,
                         score_activation="sigmoid", class_agnostic=True)
    xyxy = DetectionSpec("boxes", "scores", "xyxy", score_threshold=0.5, iou_threshold=0.3, max_detections=100)
    xy = rng.uniform(0, 80, (n, 2))
    # anchors travel through the manifest rounded to 1e-6: the fixture holds what the app reads
    ssd_det = json.loads(json.dumps(ssd.to_dict()))
    return [
        _case("ssd_anchor_deltas", ssd_det, {"boxes": rng.normal(0, 1, (1, n, 4)).astype(np.float32),
                                             "scores": rng.normal(0, 2, (1, n, 3)).astype(np.float32)}),
        _case("yolo_cxcywh_agnostic", yolo.to_dict(), {
            "boxes": np.concatenate([rng.uniform(0, 100, (n, 2)), rng.uniform(10, 50, (n, 2))], 1)[None].astype(np.float32),
            "scores": rng.normal(0, 2, (1, n, 3)).astype(np.float32)}),
        _case("xyxy_probabilities", xyxy.to_dict(), {
            "boxes": np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], 1).astype(np.float32),
            "scores": rng.uniform(0, 1, (n, 2)).astype(np.float32)}),
    ]


def build() -> dict:
    return {"generated_by": "tests/package/detect_fixture.py (edgeship_runtime.detect.decode)",
            "cases": _pnet_cases() + _synthetic_cases()}


def dumps(fixture: dict) -> str:
    return json.dumps(fixture, indent=None, separators=(",", ":")) + "\n"


if __name__ == "__main__":
    text = dumps(build())
    for path in COPIES:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)} ({len(text) // 1024} kB)")
