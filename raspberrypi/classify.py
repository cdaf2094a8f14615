#!/usr/bin/env python3
"""Classify image files or camera frames with the model in this bundle; prints the top-5 labels and the latency.
A detector (manifest task detection, exported with --task detect) prints its boxes after NMS instead.

    ./classify.sh photo.jpg [more.jpg ...]          # image files
    ./classify.sh --camera                          # Pi camera (picamera2) when present, else OpenCV /dev/video0
    ./classify.sh --model onnx photo.jpg            # pick an artifact by format, file name or path
    ./classify.sh --json photo.jpg                  # one JSON object per image

Everything model-specific comes from manifest.json (input shape, layout, colour order, normalisation, labels).
Needs numpy, pillow and one runtime (ai-edge-litert/tflite-runtime, onnxruntime or executorch) - install.sh
puts them in .venv. Never imports torch.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))        # the bundle ships edgeship_runtime beside this file

SCHEMA_MAJOR = 1                         # the newest manifest MAJOR version this script understands
PREFERENCE = ("tflite", "onnx", "executorch")
RUNTIME_MODULES = {"tflite": ("ai_edge_litert", "tflite_runtime"), "onnx": ("onnxruntime",), "executorch": ("executorch",)}


class BundleError(Exception):
    """A problem the user can fix; printed without a traceback."""


# ---------------------------------------------------------------------------------------------------------------
# manifest

def load_manifest(bundle: Path) -> dict:
    path = bundle / "manifest.json"
    if not path.is_file():
        raise BundleError(f"{bundle} has no manifest.json - is this a bundle made by 'edgeship package --app pi'?")
    manifest = json.loads(path.read_text())
    version = str(manifest.get("schema_version", ""))
    major = version.split(".")[0]
    if not major.isdigit():
        raise BundleError(f"{path} has no valid schema_version ({version!r})")
    if int(major) > SCHEMA_MAJOR:
        raise BundleError(f"{path} has schema_version {version}, newer than this classify.py understands "
                          f"({SCHEMA_MAJOR}.x): package the model again with the edgeship that made it")
    for key in ("inputs", "outputs", "artifacts"):
        if not manifest.get(key):
            raise BundleError(f"{path} has no {key}")
    return manifest


def load_labels(bundle: Path, manifest: dict) -> list[str] | None:
    if not manifest.get("labels"):
        return None
    path = bundle / manifest["labels"]
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else None


def runtime_installed(fmt: str) -> bool:
    import importlib.util
    return any(importlib.util.find_spec(m) is not None for m in RUNTIME_MODULES.get(fmt, ()))


def choose_artifact(manifest: dict, want: str | None = None, precision: str | None = None) -> dict:
    """The artifact named by ``want`` (path, file name or format), else the preferred one whose runtime is installed."""
    arts = [a for a in manifest["artifacts"] if a["format"] in RUNTIME_MODULES]
    if precision:
        arts = [a for a in arts if a["precision"] == precision]
    if want:
        hits = [a for a in arts if want in (a["path"], Path(a["path"]).name, a["format"])]
        if not hits:
            have = ", ".join(f"{a['path']} ({a['format']}/{a['precision']})" for a in manifest["artifacts"])
            raise BundleError(f"no artifact matches {want!r}; the bundle has: {have}")
        return hits[0]
    ordered = sorted(arts, key=lambda a: (PREFERENCE.index(a["format"]), a["precision"] != "fp32"))
    for a in ordered:
        if runtime_installed(a["format"]):
            return a
    raise BundleError("no runtime for this bundle's artifacts is installed "
                      f"({', '.join(sorted({a['format'] for a in arts})) or 'none runnable here'}): run ./install.sh")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# preprocessing: decode -> colour order -> resize to H x W -> [0,255] to value_range (invert first) -> (x-mean)/std -> layout

def input_geometry(inp: dict) -> tuple[int, int, int, str]:
    """(channels, height, width, layout) of an image input."""
    shape, layout = list(inp["shape"]), inp.get("layout") or "NCHW"
    if len(shape) != 4 or layout not in ("NCHW", "NHWC"):
        raise BundleError(f"input {inp['name']!r} (shape {shape}, layout {layout}) is not an image input; "
                          "classify.py handles NCHW/NHWC image models")
    if layout == "NCHW":
        return shape[1], shape[2], shape[3], layout
    return shape[3], shape[1], shape[2], layout


def preprocess(image, inp: dict) -> np.ndarray:
    """A PIL image -> the float32 tensor the manifest's input wants (batch 1)."""
    from PIL import Image

    channels, height, width, layout = input_geometry(inp)
    pp = inp.get("preprocess") or {}
    order = pp.get("color_order") or ("GRAY" if channels == 1 else "RGB")
    image = image.convert("L" if order == "GRAY" else "RGB").resize((width, height), Image.BILINEAR)
    x = np.asarray(image, dtype=np.float32)
    return normalize(x, pp, channels, layout)


def normalize(pixels: np.ndarray, pp: dict, channels: int, layout: str) -> np.ndarray:
    """HxW (gray) or HxWx3 RGB pixels in [0,255] -> 1xCxHxW / 1xHxWxC float32 per the manifest's preprocess."""
    x = np.asarray(pixels, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    order = pp.get("color_order") or ("GRAY" if channels == 1 else "RGB")
    if order == "BGR":
        x = x[:, :, ::-1]
    if pp.get("invert"):
        x = 255.0 - x
    lo, hi = pp.get("value_range") or [0.0, 1.0]
    x = lo + x * np.float32((hi - lo) / 255.0)
    mean = np.asarray(pp.get("mean") or [0.0], dtype=np.float32)
    std = np.asarray(pp.get("std") or [1.0], dtype=np.float32)
    x = (x - mean) / std
    if x.shape[2] != channels:
        raise BundleError(f"the image has {x.shape[2]} channel(s), the model wants {channels}")
    if layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None], dtype=np.float32)


def adapt_layout(x: np.ndarray, want_shape) -> np.ndarray:
    """An NCHW tensor for an artifact whose own input is NHWC (or the reverse): transpose; otherwise unchanged."""
    want = tuple(int(d) if d and int(d) > 0 else 1 for d in (want_shape or ()))
    if len(want) != 4 or want == x.shape:
        return x
    if want == (x.shape[0], x.shape[2], x.shape[3], x.shape[1]):
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    if want == (x.shape[0], x.shape[3], x.shape[1], x.shape[2]):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x


def top_k(output: np.ndarray, meaning: str | None, k: int = 5) -> list[tuple[int, float]]:
    """(class index, score) best first; logits become softmax probabilities."""
    v = np.asarray(output, dtype=np.float64).reshape(-1)
    if meaning == "logits":
        e = np.exp(v - v.max())
        v = e / e.sum()
    idx = np.argsort(-v, kind="stable")[:k]
    return [(int(i), float(v[i])) for i in idx]


# ---------------------------------------------------------------------------------------------------------------
# running

class Classifier:
    def __init__(self, bundle: Path, want: str | None = None, precision: str | None = None, threads: int | None = None):
        from edgeship_runtime import open_runtime

        self.bundle = bundle
        self.manifest = load_manifest(bundle)
        self.labels = load_labels(bundle, self.manifest)
        self.artifact = choose_artifact(self.manifest, want, precision)
        self.input = self.manifest["inputs"][0]
        input_geometry(self.input)
        t0 = time.perf_counter()
        self.rt = open_runtime(bundle / self.artifact["path"], threads=threads)
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self.meaning = self.manifest["outputs"][0].get("meaning")

    def classify(self, image, k: int = 5) -> dict:
        t0 = time.perf_counter()
        x = adapt_layout(preprocess(image, self.input), self.rt.inputs[0].shape)
        t1 = time.perf_counter()
        out = self.rt.run({self.rt.inputs[0].name: x})
        t2 = time.perf_counter()
        if self.manifest.get("detection"):
            return {"latency_ms": round((t2 - t1) * 1e3, 3), "preprocess_ms": round((t1 - t0) * 1e3, 3),
                    "detections": self.detect(out, image.size)}
        top = top_k(out[0], self.meaning, k)
        return {"latency_ms": round((t2 - t1) * 1e3, 3), "preprocess_ms": round((t1 - t0) * 1e3, 3),
                "top": [{"index": i, "label": self.label(i), "score": round(s, 6)} for i, s in top]}

    def detect(self, outputs, image_size) -> list[dict]:
        """task detection: the raw boxes and scores decoded + NMS'd by edgeship_runtime.detect (numpy) as the
        manifest's detection section says; boxes in the input's pixels ("box") and in the photo's ("image_box")."""
        from edgeship_runtime.detect import decode_manifest

        det = self.manifest["detection"]
        dets = decode_manifest(self.manifest, outputs)
        _, height, width, _ = input_geometry(self.input)
        sx, sy = (image_size[0], image_size[1]) if det.get("coordinates") == "normalized" else \
            (image_size[0] / width, image_size[1] / height)
        rows = dets.to_list(det.get("labels") or self.labels)
        for r in rows:
            x1, y1, x2, y2 = r["box"]
            r["image_box"] = [round(x1 * sx, 1), round(y1 * sy, 1), round(x2 * sx, 1), round(y2 * sy, 1)]
        return rows

    def label(self, i: int) -> str:
        return self.labels[i] if self.labels and i < len(self.labels) else f"class {i}"

    def describe(self) -> str:
        return f"{self.rt.name} {self.rt.version}, {self.artifact['path']} ({self.artifact['precision']})"


def camera_frames(device: str | None, frames: int | None):
    """RGB PIL images from the Pi camera (picamera2) when present, else OpenCV / V4L2."""
    from PIL import Image

    try:
        from picamera2 import Picamera2  # type: ignore
    except ImportError:
        Picamera2 = None
    count = 0
    if Picamera2 is not None and device in (None, "picamera"):
        cam = Picamera2()
        cam.configure(cam.create_preview_configuration(main={"format": "RGB888", "size": (640, 480)}))
        cam.start()
        try:
            while frames is None or count < frames:
                # picamera2's "RGB888" is B,G,R in memory (OpenCV order)
                yield Image.fromarray(cam.capture_array()[:, :, ::-1].copy())
                count += 1
        finally:
            cam.stop()
        return
    try:
        import cv2  # type: ignore
    except ImportError as e:
        raise BundleError("no camera library: install python3-picamera2 (Pi camera) or opencv-python-headless "
                          "(USB webcam), e.g. ./install.sh --camera") from e
    cap = cv2.VideoCapture(int(device) if device and device.isdigit() else (device or 0))
    if not cap.isOpened():
        raise BundleError(f"cannot open camera {device or 0}")
    try:
        while frames is None or count < frames:
            ok, frame = cap.read()
            if not ok:
                raise BundleError("the camera returned no frame")
            yield Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            count += 1
    finally:
        cap.release()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="*", type=Path, help="image files (anything Pillow decodes)")
    ap.add_argument("--bundle", type=Path, default=HERE, help="bundle folder with manifest.json (default: this script's)")
    ap.add_argument("--model", help="artifact to use: a format (tflite, onnx, executorch), file name or path")
    ap.add_argument("--precision", help="only artifacts of this precision (fp32, fp16, int8)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--camera", nargs="?", const="", default=None, metavar="DEVICE",
                    help="classify camera frames: picamera2 if present, else OpenCV device (index or path)")
    ap.add_argument("--frames", type=int, default=None, help="stop after N camera frames")
    ap.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    ap.add_argument("--print-model", action="store_true", help="print the artifact path that would be used and exit")
    ap.add_argument("--verify", action="store_true", help="check every artifact's sha256 against the manifest and exit")
    args = ap.parse_args(argv)

    try:
        bundle = args.bundle.resolve()
        if args.verify:
            return verify(bundle)
        if args.print_model:
            print(choose_artifact(load_manifest(bundle), args.model, args.precision)["path"])
            return 0
        if not args.images and args.camera is None:
            ap.error("give image files, or --camera")
        clf = Classifier(bundle, args.model, args.precision, args.threads)
        if not args.json:
            print(f"model: {clf.manifest['name']}  ({clf.describe()}, loaded in {clf.load_ms:.1f} ms)")
        if args.camera is not None:
            source = ((f"frame {i}", img) for i, img in enumerate(camera_frames(args.camera or None, args.frames)))
        else:
            source = ((str(p), _open_image(p)) for p in args.images)
        for name, image in source:
            result = clf.classify(image, args.top)
            if args.json:
                print(json.dumps({"image": name, "model": clf.artifact["path"], "runtime": clf.rt.name,
                                  "runtime_version": clf.rt.version, **result}), flush=True)
            else:
                print(f"{name}: {result['latency_ms']:.2f} ms (+{result['preprocess_ms']:.1f} ms preprocessing)")
                for d in result.get("detections", ()):
                    print(f"  {d['score']:.4f}  {d.get('label', d['class'])}  {d['image_box']}")
                for rank, t in enumerate(result.get("top", ()), 1):
                    print(f"  {rank}. {t['score']:.4f}  {t['label']}")
                sys.stdout.flush()
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def verify(bundle: Path) -> int:
    manifest = load_manifest(bundle)
    bad = 0
    for a in manifest["artifacts"]:
        p = bundle / a["path"]
        if not p.is_file():
            print(f"missing: {a['path']}", file=sys.stderr)
            bad += 1
        elif sha256_file(p) != a["sha256"]:
            print(f"sha256 mismatch: {a['path']} (copy it again)", file=sys.stderr)
            bad += 1
        else:
            print(f"ok: {a['path']}")
    return 1 if bad else 0


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except FileNotFoundError as e:
        raise BundleError(f"{path}: no such file") from e
    except UnidentifiedImageError as e:
        raise BundleError(f"{path}: not an image Pillow can read") from e


if __name__ == "__main__":
    sys.exit(main())
