"""Detection models: ship the network's raw (pre-NMS) boxes and scores; decode and NMS run in the app / on the device.

A factory says how its outputs decode by returning a ModelSpec with ``detection=``::

    from edgeship.detect import DetectionSpec
    from edgeship.model import InputSpec, ModelSpec

    def build():
        return ModelSpec(net, (InputSpec("image", (1, 3, 240, 320), layout="NCHW"),), task="detection",
                         output_names=("regression", "scores"),
                         detection=DetectionSpec.for_grid("regression", "scores", stride=2, cell=12, offset=1,
                                                          score_threshold=0.6, iou_threshold=0.5, background_class=0))

``edgeship export build.py:build --task detect`` then writes the spec into manifest.json's ``detection`` section
(schema: ``$defs/detection``). The decode + NMS itself lives in the device-side package
(:mod:`edgeship_runtime.detect`, numpy only), so the host, the Pi and the bench runner run the same code; Kotlin
(android-demo core ``Detection.kt``) and Swift (EdgeshipKit ``Detection.swift``) implement the same steps.
:func:`torch_nms` and :func:`torch_decode` are an independent plain-torch reference (torchvision's NMS semantics)
for tests and for models whose own post-processing needs torchvision, which is not installed here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from edgeship_runtime import detect as _rt
from edgeship_runtime.detect import (BOX_FORMATS, ACTIVATIONS, Detections, DetectionSpecError, batched_nms, decode,
                                     decode_manifest, iou, match, nms)

from .errors import EdgeshipError

__all__ = ["DetectionSpec", "Detections", "decode", "decode_manifest", "nms", "batched_nms", "iou", "match",
           "torch_nms", "torch_decode", "BOX_FORMATS", "VARIABLE_OUTPUT_HINT"]

VARIABLE_OUTPUT_HINT = ("a detector with NMS (torch.nonzero, torchvision.ops.nms, a score threshold) in forward() "
                        "cannot be exported: return the network's raw boxes and scores (before thresholding and NMS) "
                        "and export with --task detect, with a DetectionSpec from the factory (edgeship.detect) so the "
                        "manifest tells the app how to decode them; the app and the device runner then do the NMS")


@dataclass(frozen=True)
class DetectionSpec:
    """How a detector's raw outputs become boxes. ``boxes`` / ``scores`` name model outputs (ModelSpec.output_names,
    else output_0, output_1, ...). See :mod:`edgeship_runtime.detect` for the exact maths of every field."""

    boxes: str
    scores: str
    box_format: str                          # grid | xyxy | cxcywh | anchor_deltas
    score_threshold: float = 0.5
    iou_threshold: float = 0.5
    max_detections: int = 100
    score_activation: str = "none"           # none | sigmoid | softmax (over the class axis)
    background_class: int | None = None      # a score channel that is never a detection
    class_agnostic: bool = False             # one NMS over all classes (each box keeps its best class)
    grid: Mapping[str, Any] | None = None    # grid: {stride, cell, offset, nms_on: cells | boxes}
    anchors: Any = None                      # anchor_deltas: N x [cx, cy, w, h]
    box_weights: Sequence[float] | None = None   # anchor_deltas: (wx, wy, ww, wh), e.g. SSD (10, 10, 5, 5)
    coordinates: str = "pixels"              # pixels of the model input | normalized (0..1 of the input's W, H)
    reference: str | None = None             # the post-processing this reproduces, for people
    labels: tuple[str, ...] | None = field(default=None)   # class names, when the model's labels are not these

    def __post_init__(self):
        if self.coordinates not in ("pixels", "normalized"):
            raise EdgeshipError(f"DetectionSpec coordinates must be 'pixels' or 'normalized', got {self.coordinates!r}")
        try:
            _rt.check(self.to_dict())
        except DetectionSpecError as e:
            raise EdgeshipError(f"invalid DetectionSpec: {e}", hint="see edgeship_runtime/detect.py for every field") from None

    @classmethod
    def for_grid(cls, boxes: str, scores: str, *, stride: int, cell: int, offset: float = 0, nms_on: str = "cells",
             **kw) -> "DetectionSpec":
        """A regression map on a grid of cells (MTCNN P-Net: stride 2, cell 12, offset 1, NMS on the cells)."""
        return cls(boxes, scores, "grid", grid={"stride": stride, "cell": cell, "offset": offset, "nms_on": nms_on}, **kw)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DetectionSpec":
        keys = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - keys
        if unknown:
            raise EdgeshipError(f"unknown DetectionSpec key(s) {sorted(unknown)}", hint=f"known: {', '.join(sorted(keys))}")
        d = dict(d)
        if d.get("labels") is not None:
            d["labels"] = tuple(d["labels"])
        return cls(**d)

    def to_dict(self) -> dict:
        """The manifest's detection section."""
        d: dict[str, Any] = {"boxes": self.boxes, "scores": self.scores, "box_format": self.box_format,
                             "score_threshold": float(self.score_threshold), "iou_threshold": float(self.iou_threshold),
                             "max_detections": int(self.max_detections), "score_activation": self.score_activation,
                             "background_class": self.background_class, "class_agnostic": bool(self.class_agnostic),
                             "coordinates": self.coordinates}
        if self.grid is not None:
            d["grid"] = {"stride": float(self.grid["stride"]), "cell": float(self.grid["cell"]),
                         "offset": float(self.grid.get("offset", 0)), "nms_on": self.grid.get("nms_on", "cells")}
        if self.anchors is not None:
            d["anchors"] = np.asarray(self.anchors, dtype=np.float64).round(6).tolist()
        if self.box_weights is not None:
            d["box_weights"] = [float(w) for w in self.box_weights]
        if self.reference:
            d["reference"] = self.reference
        if self.labels:
            d["labels"] = list(self.labels)
        return d

    def section(self, output_names: Sequence[str]) -> dict:
        """The manifest section, checked against the model's output names."""
        d = self.to_dict()
        try:
            _rt.check(d, list(output_names))
        except DetectionSpecError as e:
            raise EdgeshipError(str(e), hint="name the outputs with ModelSpec(output_names=...) and use those names "
                                "in the DetectionSpec") from None
        return d

    def decode(self, outputs, output_names: Sequence[str] | None = None) -> Detections:
        """numpy decode + NMS of one image's outputs ({name: array}, or a list with ``output_names``)."""
        if isinstance(outputs, (list, tuple)):
            outputs = [o.detach().numpy() if isinstance(o, torch.Tensor) else np.asarray(o) for o in outputs]
        return decode(outputs, self.to_dict(), output_names)


# ---------------------------------------------------------------------------------------------------------------
# an independent reference in plain torch (torchvision.ops semantics; torchvision itself is not installed here)

def torch_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision.ops.nms in plain torch: indices kept, by decreasing score; a box is dropped when its IoU with a
    kept box is > iou_threshold; area = (x2 - x1) * (y2 - y1)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = torch.sort(scores, descending=True, stable=True).indices
    x1, y1, x2, y2 = boxes.double().unbind(1)
    area = (x2 - x1) * (y2 - y1)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = w * h
        union = area[i] + area - inter
        ov = torch.where(union > 0, inter / union.clamp(min=1e-300), torch.zeros_like(union))
        suppressed |= ov > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def torch_batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision.ops.batched_nms in plain torch (per class; result by decreasing score)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    keep = torch.cat([torch.nonzero(idxs == c).flatten()[torch_nms(boxes[idxs == c], scores[idxs == c], iou_threshold)]
                      for c in torch.unique(idxs)])
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


def torch_decode(outputs: Mapping[str, torch.Tensor], spec: DetectionSpec) -> Detections:
    """The box formats xyxy / cxcywh / anchor_deltas decoded in torch (as torchvision's SSD postprocess does),
    for checking :func:`decode`; grid models have their own package's reference (facenet's generateBoundingBox)."""
    if spec.box_format == "grid":
        raise EdgeshipError("torch_decode covers xyxy, cxcywh and anchor_deltas; compare a grid model with its own "
                            "package's post-processing")
    b = outputs[spec.boxes].float().reshape(-1, 4)
    s = outputs[spec.scores].float()
    s = s.reshape(b.shape[0], -1)
    if spec.score_activation == "sigmoid":
        s = torch.sigmoid(s)
    elif spec.score_activation == "softmax":
        s = torch.softmax(s, dim=1)
    if spec.box_format == "cxcywh":
        b = torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], dim=1)
    elif spec.box_format == "anchor_deltas":
        a = torch.as_tensor(np.asarray(spec.anchors), dtype=torch.float32)
        wx, wy, ww, wh = spec.box_weights or (1, 1, 1, 1)
        ctr = a[:, :2] + b[:, :2] / torch.tensor([wx, wy]) * a[:, 2:]
        wh_ = a[:, 2:] * torch.exp(torch.clamp(b[:, 2:] / torch.tensor([ww, wh]), max=math.log(1000.0 / 16)))
        b = torch.cat([ctr - wh_ / 2, ctr + wh_ / 2], dim=1)
    classes = [c for c in range(s.shape[1]) if c != spec.background_class]
    if spec.class_agnostic:
        sub = s[:, classes]
        score, best = sub.max(dim=1)
        m = score >= spec.score_threshold
        bb, ss, cc = b[m], score[m], torch.tensor(classes)[best[m]]
        keep = torch_nms(bb, ss, spec.iou_threshold)
    else:
        parts = [(b[s[:, c] >= spec.score_threshold], s[s[:, c] >= spec.score_threshold, c],
                  torch.full((int((s[:, c] >= spec.score_threshold).sum()),), c)) for c in classes]
        bb, ss, cc = (torch.cat(x) for x in zip(*parts))
        keep = torch_batched_nms(bb, ss, cc, spec.iou_threshold)
    keep = keep[: spec.max_detections]
    return Detections(bb[keep].numpy(), ss[keep].numpy(), cc[keep].numpy().astype(np.int64))


__all__ += ["torch_batched_nms", "ACTIVATIONS", "DetectionSpecError"]
