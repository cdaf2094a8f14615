"""Detection post-processing on the device: decode a detector's raw (pre-NMS) outputs and run NMS, in numpy.

A model exported with ``edgeship export … --task detect`` returns the network's raw boxes and scores; the
manifest's ``detection`` section says how to turn them into boxes (toolchain/edgeship/detect.py writes it, the
JSON Schema documents every key). This module is that recipe for Python devices (the Raspberry Pi kit, the bench
runner); android-demo's Detection.kt and ios-demo's Detection.swift are the same steps in Kotlin and Swift.

    from edgeship_runtime import open_runtime
    from edgeship_runtime.detect import decode_manifest
    outs = open_runtime("dist/pnet/onnx/model.onnx").run({"image": x})
    dets = decode_manifest(manifest, outs)          # Detections: boxes (K, 4) xyxy, scores (K,), classes (K,)

Box formats (``box_format``):

* ``grid``: a fully convolutional detector's regression map on a grid of cells (MTCNN's P-Net). Outputs
  ``boxes`` 1x4xHxW (dx1, dy1, dx2, dy2) and ``scores`` 1xCxHxW. The cell at row i, column j is
  ``x1 = stride*j + offset, y1 = stride*i + offset, x2 = x1 + cell - 1, y2 = y1 + cell - 1``; the regressed box
  is ``x1 + dx1*w, y1 + dy1*h, x2 + dx2*w, y2 + dy2*h`` with ``w = x2 - x1, h = y2 - y1``. ``nms_on: cells``
  runs NMS on the cells and regresses the kept ones (facenet-pytorch's order), ``boxes`` regresses first.
* ``xyxy`` / ``cxcywh``: boxes Nx4 (or 1xNx4) in that form, scores NxC (or 1xNxC, or N for one class).
* ``anchor_deltas``: SSD / Faster R-CNN deltas over ``anchors`` (N rows of cx, cy, w, h) with ``box_weights``
  (wx, wy, ww, wh): ``cx = ax + dx/wx*aw, cy = ay + dy/wy*ah, w = aw*exp(dw/ww), h = ah*exp(dh/wh)``
  (dw/ww and dh/wh clamped at log(1000/16), as torchvision's BoxCoder does).

Scores: ``score_activation`` (none, sigmoid, softmax over the class axis) is applied first; the
``background_class`` channel is never a detection; a score counts when ``score >= score_threshold``. NMS is
greedy, best score first, and drops a box whose IoU with a kept one is ``> iou_threshold``; IoU is
``inter / (area_a + area_b - inter)`` with ``area = (x2 - x1) * (y2 - y1)`` (torchvision.ops.nms). Per class
unless ``class_agnostic`` (then each box keeps its best class). The result is sorted by score, best first, and
cut to ``max_detections``.

numpy and the standard library only (never torch, never edgeship).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

BOX_FORMATS = ("grid", "xyxy", "cxcywh", "anchor_deltas")
ACTIVATIONS = ("none", "sigmoid", "softmax")
DELTA_CLIP = math.log(1000.0 / 16)          # torchvision.models.detection._utils.BoxCoder.bbox_xform_clip

Outputs = Union[Mapping[str, np.ndarray], Sequence[np.ndarray]]


class DetectionSpecError(ValueError):
    """The manifest's detection section (or the outputs given for it) cannot be decoded; the message says why."""


@dataclass
class Detections:
    """Boxes after NMS, best score first: ``boxes`` (K, 4) x1, y1, x2, y2 in the input's pixels (or 0..1 when
    the section's ``coordinates`` is ``normalized``); ``scores`` (K,); ``classes`` (K,) score channel indices."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return int(len(self.scores))

    def to_list(self, labels: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
        out = []
        for b, s, c in zip(self.boxes.tolist(), self.scores.tolist(), self.classes.tolist()):
            d = {"box": [round(v, 3) for v in b], "score": round(float(s), 6), "class": int(c)}
            if labels is not None and 0 <= c < len(labels):
                d["label"] = labels[c]
            out.append(d)
        return out


def check(det: Mapping[str, Any], output_names: Optional[Sequence[str]] = None) -> None:
    """Raise DetectionSpecError when ``det`` (a manifest detection section) is not decodable."""
    if not isinstance(det, Mapping):
        raise DetectionSpecError(f"the detection section is a {type(det).__name__}, not an object")
    for key in ("boxes", "scores", "box_format", "score_threshold", "iou_threshold", "max_detections"):
        if key not in det:
            raise DetectionSpecError(f"the detection section has no {key!r}")
    fmt = det["box_format"]
    if fmt not in BOX_FORMATS:
        raise DetectionSpecError(f"unknown box_format {fmt!r}; known: {', '.join(BOX_FORMATS)}")
    if det.get("score_activation", "none") not in ACTIVATIONS:
        raise DetectionSpecError(f"unknown score_activation {det.get('score_activation')!r}; known: {', '.join(ACTIVATIONS)}")
    if not 0.0 <= float(det["iou_threshold"]) <= 1.0:
        raise DetectionSpecError(f"iou_threshold must be in 0..1, got {det['iou_threshold']}")
    if int(det["max_detections"]) < 1:
        raise DetectionSpecError(f"max_detections must be >= 1, got {det['max_detections']}")
    if output_names is not None:
        for role in ("boxes", "scores"):
            if det[role] not in output_names:
                raise DetectionSpecError(f"the detection section's {role} output {det[role]!r} is not one of the "
                                         f"model's outputs ({', '.join(output_names)})")
    if fmt == "grid":
        g = det.get("grid")
        if not isinstance(g, Mapping) or not all(k in g for k in ("stride", "cell")):
            raise DetectionSpecError("box_format 'grid' needs grid: {stride, cell[, offset, nms_on]}")
        if g.get("nms_on", "cells") not in ("cells", "boxes"):
            raise DetectionSpecError(f"grid.nms_on must be 'cells' or 'boxes', got {g.get('nms_on')!r}")
    if fmt == "anchor_deltas":
        anchors = det.get("anchors")
        if anchors is None or np.asarray(anchors).ndim != 2 or np.asarray(anchors).shape[1] != 4:
            raise DetectionSpecError("box_format 'anchor_deltas' needs anchors: N rows of [cx, cy, w, h]")
        if len(det.get("box_weights") or (1, 1, 1, 1)) != 4:
            raise DetectionSpecError("box_weights must be 4 numbers (wx, wy, ww, wh)")


# ---------------------------------------------------------------------------------------------------------------
# NMS

def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a) x len(b)) of xyxy boxes, torchvision's definition (no +1)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes greedy NMS keeps, best score first (ties: the earlier box first)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[:, k].astype(np.float64) for k in range(4))
    area = (x2 - x1) * (y2 - y1)
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        union = area[i] + area[rest] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            ov = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
        order = rest[ov <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """NMS within each class; the kept indices sorted by score, best first (torchvision.ops.batched_nms)."""
    classes = np.asarray(classes).reshape(-1)
    keep = [idx[nms(boxes[idx], scores[idx], iou_threshold)] for c in np.unique(classes)
            for idx in [np.nonzero(classes == c)[0]]]
    if not keep:
        return np.zeros(0, dtype=np.int64)
    keep = np.concatenate(keep)
    return keep[np.argsort(-np.asarray(scores)[keep], kind="stable")]


# ---------------------------------------------------------------------------------------------------------------
# decoding

def _activate(x: np.ndarray, how: str, axis: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if how == "sigmoid":
        return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)
    if how == "softmax":
        e = np.exp(x.astype(np.float64) - x.max(axis=axis, keepdims=True))
        return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)
    return x


def _named(outputs: Outputs, output_names: Optional[Sequence[str]]) -> Dict[str, np.ndarray]:
    if isinstance(outputs, Mapping):
        return {k: np.asarray(v) for k, v in outputs.items()}
    outputs = list(outputs)
    if output_names is None:
        raise DetectionSpecError("outputs given as a list need their names (the manifest's outputs, in order)")
    if len(outputs) != len(output_names):
        raise DetectionSpecError(f"{len(outputs)} outputs given, the manifest lists {len(output_names)}")
    return {n: np.asarray(o) for n, o in zip(output_names, outputs)}


def _classes(n: int, det: Mapping[str, Any]) -> List[int]:
    bg = det.get("background_class")
    return [c for c in range(n) if c != bg]


def _grid(reg: np.ndarray, sc: np.ndarray, det: Mapping[str, Any]):
    g = det["grid"]
    stride, cell, offset = float(g["stride"]), float(g["cell"]), float(g.get("offset", 0))
    if reg.ndim != 4 or reg.shape[0] != 1 or reg.shape[1] != 4:
        raise DetectionSpecError(f"grid boxes must be 1x4xHxW, got {'x'.join(map(str, reg.shape))}")
    if sc.ndim != 4 or sc.shape[0] != 1 or sc.shape[2:] != reg.shape[2:]:
        raise DetectionSpecError(f"grid scores must be 1xCxHxW with the boxes' HxW {reg.shape[2:]}, got {sc.shape}")
    sc = _activate(sc, det.get("score_activation", "none"), axis=1)[0]
    reg = np.asarray(reg, dtype=np.float32)[0]
    thr = np.float32(det["score_threshold"])
    cells, deltas, scores, classes = [], [], [], []
    for c in _classes(sc.shape[0], det):
        ys, xs = np.nonzero(sc[c] >= thr)            # row-major, as torch.nonzero
        x1 = (stride * xs + offset).astype(np.float32)
        y1 = (stride * ys + offset).astype(np.float32)
        cells.append(np.stack([x1, y1, x1 + np.float32(cell - 1), y1 + np.float32(cell - 1)], axis=1))
        deltas.append(reg[:, ys, xs].T)
        scores.append(sc[c, ys, xs])
        classes.append(np.full(len(ys), c, dtype=np.int64))
    cells, deltas = np.concatenate(cells).reshape(-1, 4), np.concatenate(deltas).reshape(-1, 4)
    scores, classes = np.concatenate(scores), np.concatenate(classes)
    w = cells[:, 2] - cells[:, 0]
    h = cells[:, 3] - cells[:, 1]
    boxes = cells + deltas * np.stack([w, h, w, h], axis=1)
    nms_boxes = cells if g.get("nms_on", "cells") == "cells" else boxes
    return boxes.astype(np.float32), nms_boxes, scores, classes


def _flat_boxes_scores(b: np.ndarray, s: np.ndarray, det: Mapping[str, Any]):
    b = np.asarray(b, dtype=np.float32)
    s = np.asarray(s, dtype=np.float32)
    if b.ndim == 3 and b.shape[0] == 1:
        b = b[0]
    if b.ndim != 2 or b.shape[1] != 4:
        raise DetectionSpecError(f"boxes must be Nx4 (or 1xNx4), got {'x'.join(map(str, b.shape))}")
    n = b.shape[0]
    if s.ndim == 3 and s.shape[0] == 1:
        s = s[0]
    if s.ndim == 2 and s.shape[0] == 1 and s.shape[1] == n and n != 1:
        s = s.reshape(n, 1)
    if s.ndim == 1:
        s = s.reshape(-1, 1)
    if s.ndim != 2 or s.shape[0] != n:
        raise DetectionSpecError(f"scores must be NxC (or 1xNxC, or N) with the boxes' N={n}, got {s.shape}")
    s = _activate(s, det.get("score_activation", "none"), axis=1)
    fmt = det["box_format"]
    if fmt == "cxcywh":
        cx, cy, w, h = b.T
        b = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    elif fmt == "anchor_deltas":
        a = np.asarray(det["anchors"], dtype=np.float32)
        if a.shape != (n, 4):
            raise DetectionSpecError(f"{len(a)} anchors for {n} boxes")
        wx, wy, ww, wh = (np.float32(v) for v in (det.get("box_weights") or (1, 1, 1, 1)))
        cx = a[:, 0] + b[:, 0] / wx * a[:, 2]
        cy = a[:, 1] + b[:, 1] / wy * a[:, 3]
        w = a[:, 2] * np.exp(np.minimum(b[:, 2] / ww, DELTA_CLIP))
        h = a[:, 3] * np.exp(np.minimum(b[:, 3] / wh, DELTA_CLIP))
        b = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    b = b.astype(np.float32)
    thr = np.float32(det["score_threshold"])
    cls = _classes(s.shape[1], det)
    if det.get("class_agnostic"):
        sub = s[:, cls]
        best = np.argmax(sub, axis=1)
        score = sub[np.arange(n), best]
        keep = np.nonzero(score >= thr)[0]
        return b[keep], b[keep], score[keep], np.asarray(cls, dtype=np.int64)[best[keep]]
    boxes, scores, classes = [], [], []
    for c in cls:
        keep = np.nonzero(s[:, c] >= thr)[0]
        boxes.append(b[keep])
        scores.append(s[keep, c])
        classes.append(np.full(len(keep), c, dtype=np.int64))
    boxes = np.concatenate(boxes).reshape(-1, 4) if boxes else np.zeros((0, 4), np.float32)
    scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    classes = np.concatenate(classes) if classes else np.zeros(0, np.int64)
    return boxes, boxes, scores, classes


def decode(outputs: Outputs, det: Mapping[str, Any], output_names: Optional[Sequence[str]] = None) -> Detections:
    """The detections in one image's raw outputs (batch 1): decode, score threshold, NMS, best first.

    ``outputs``: {output name: array}, or the outputs in the manifest's order with ``output_names``."""
    named = _named(outputs, output_names)
    check(det, list(named))
    b, s = named[det["boxes"]], named[det["scores"]]
    if det["box_format"] == "grid":
        boxes, nms_boxes, scores, classes = _grid(np.asarray(b), np.asarray(s), det)
    else:
        boxes, nms_boxes, scores, classes = _flat_boxes_scores(b, s, det)
    if det.get("class_agnostic"):
        keep = nms(nms_boxes, scores, float(det["iou_threshold"]))
    else:
        keep = batched_nms(nms_boxes, scores, classes, float(det["iou_threshold"]))
    keep = keep[: int(det["max_detections"])]
    return Detections(boxes[keep].astype(np.float32), scores[keep].astype(np.float32), classes[keep])


def decode_manifest(manifest: Mapping[str, Any], outputs: Outputs) -> Detections:
    """:func:`decode` with the manifest's detection section and output names."""
    det = manifest.get("detection")
    if not det:
        raise DetectionSpecError(f"manifest {manifest.get('name')!r} has no detection section: export the model "
                                 "with --task detect and a detection spec (edgeship.detect)")
    return decode(outputs, det, [o["name"] for o in manifest["outputs"]])


def match(a: Detections, b: Detections) -> List[tuple]:
    """Greedy one-to-one matching of two detection sets by IoU (same class), best IoU first:
    [(index in a, index in b, IoU)]. What tests and reports use to compare a runtime's boxes with PyTorch's."""
    if not len(a) or not len(b):
        return []
    m = iou(a.boxes, b.boxes)
    m = np.where(a.classes[:, None] == b.classes[None, :], m, -1.0)
    pairs, used_a, used_b = [], set(), set()
    for flat in np.argsort(-m, axis=None, kind="stable"):
        i, j = divmod(int(flat), m.shape[1])
        if m[i, j] < 0:
            break
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        pairs.append((i, j, float(m[i, j])))
    return pairs
