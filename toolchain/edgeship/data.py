"""Data sources for calibration, evaluation and training: ``load_data(DATA, spec, split)``.

``DATA`` is one of

- ``digits``: scikit-learn's bundled handwritten digits (8x8 grayscale, 1797 images, 10 classes), the built-in
  real data set. Splits ``train``/``val``/``test`` are a fixed stratified 60/20/20 split (seed 0).
- a folder of images, one subfolder per class (``data/cat/*.jpg``, ``data/dog/*.png``); a folder with images and
  no subfolders is unlabelled (calibration only). Images are decoded with Pillow and preprocessed as the model's
  ``ModelSpec.preprocess`` says (see :func:`preprocess_images`).
- ``file.npz`` with an array ``x`` (and optionally ``y``); for models with several inputs, one array per input
  name instead of ``x``.
- ``file.py:factory``: a callable (no required arguments; it gets ``split=`` if it takes that keyword) returning
  an iterable of batches, each ``x`` or ``(x, y)`` (tensors or arrays; ``x`` a tuple for several inputs:
  yield ``((a, b), y)`` or ``((a, b), None)`` so two inputs are not read as ``(x, y)``). It may also return
  a :class:`DataSource`.

Everything is loaded into memory once (data sets here are calibration and fine-tuning sized) and checked
against the model before any long work starts: per-example shape, label range, emptiness, and values (inputs
must be real numbers, finite; NaN, inf, complex, bool, string and object arrays are refused up front, naming the
array, how many values are bad and where the first is). Image files are refused past Pillow's
``Image.MAX_IMAGE_PIXELS`` (a decompression bomb) before they are decoded; .npz files are read without pickle
and refused past ``MAX_NPZ_BYTES`` uncompressed.

Image preprocessing (the order every app must follow, the same as manifest.json's ``preprocess``):
decode -> color_order (RGB | BGR | GRAY) -> resize to the input H x W (Pillow bilinear) -> invert if asked
(x = 255 - x) -> scale [0, 255] to value_range -> (x - mean[c]) / std[c] -> layout (NCHW | NHWC) -> float32.

How the digits match an app: scikit-learn's digits store ink intensity 0..16 (0 = paper). We scale it to
0..255 (``p * 255 / 16``) and render it as an app's camera or canvas would see it: dark ink on white paper,
``v = 255 - p * 255 / 16``. That image then goes through exactly the preprocessing above with the model's
``preprocess`` (for ``example:digits_cnn``: GRAY, invert, value_range [0, 1], mean 0.5, std 0.5, so the model
sees ``p / 8 - 1``). An app that draws a black digit on white, resizes it to 8x8 and applies the manifest's
preprocess therefore feeds the model what it was trained on. :func:`digits_images` gives those renderings.
"""
from __future__ import annotations

import inspect
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .errors import QUOTE_CHARS, EdgeshipError, clip, quote
from .model import DTYPES, ModelSpec

log = logging.getLogger(__name__)

SPLITS = ("all", "train", "val", "test")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
SPLIT_SEED = 0
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})

# What the digits are preprocessed with when no model is given: example:digits_cnn's preprocess.
DIGITS_PREPROCESS = {"color_order": "GRAY", "value_range": [0, 1], "mean": [0.5], "std": [0.5], "invert": True}
DIGITS_LABELS = [str(i) for i in range(10)]
MAX_NPZ_BYTES = 4 << 30      # uncompressed: an .npz that unpacks past this is refused before it is read
MAX_REF_CHARS = 4096         # PATH_MAX: a DATA reference longer than this is no file, folder or factory


_KINDS = {"b": "booleans", "c": "complex numbers", "U": "strings", "S": "bytes", "O": "Python objects",
          "V": "raw records", "M": "dates", "m": "time deltas"}


def _index(flat: int, shape: tuple[int, ...]) -> str:
    return ", ".join(str(int(i)) for i in np.unravel_index(flat, shape))


def check_values(a: np.ndarray, array: str, data: str, labels: bool = False) -> None:
    """Refuse an array that is not real, finite numbers: name it, count the bad values, point at the first."""
    what = f"data {quote(data)}: array {array!r}"
    kind = a.dtype.kind
    if kind in "iu":
        return
    if kind == "f":
        bad = ~np.isfinite(a)
        n = int(np.count_nonzero(bad))
        if n:
            nan = int(np.count_nonzero(np.isnan(a)))
            raise EdgeshipError(f"{what} has {n:,} non-finite value(s) of {a.size:,} ({nan:,} NaN, {n - nan:,} inf); "
                                f"the first at {array}[{_index(int(np.argmax(bad)), a.shape)}]",
                                hint="drop or fix those examples (np.isfinite finds them): edgeship calibrates, trains "
                                     "and measures on finite numbers only")
        return
    if kind == "c":
        imag = a.imag != 0
        n = int(np.count_nonzero(imag))
        where = f"; the first nonzero imaginary part at {array}[{_index(int(np.argmax(imag)), a.shape)}]" if n else ""
        raise EdgeshipError(f"{what} is complex ({a.dtype}): {a.size:,} complex value(s), {n:,} with a nonzero "
                            f"imaginary part{where}", hint="models here take real numbers; save x.real (or "
                            "np.abs(x)) if that is what the model expects")
    if kind == "b":
        raise EdgeshipError(f"{what} holds {a.size:,} booleans (dtype bool); the first at {array}[{_index(0, a.shape)}]"
                            if a.size else f"{what} holds booleans (dtype bool)",
                            hint=f"convert it to numbers first: {array}.astype(np.{'int64' if labels else 'float32'})")
    raise EdgeshipError(f"{what} holds {_KINDS.get(kind, 'values of kind ' + repr(kind))} (dtype {a.dtype}), not numbers",
                        hint=("labels are integer class indices 0..num_classes-1" if labels else
                              "inputs are int or float arrays; decode or encode strings/objects to numbers before saving"))


@dataclass
class DataSource:
    """In-memory examples for one model: yields ``(x, y | None)`` batches of torch tensors.

    ``xs`` holds one array per model input, first axis = examples; ``x`` in a batch is a tensor for a
    single-input model and a tuple of tensors otherwise. ``y`` is int64 class indices or None (unlabelled).
    """

    xs: tuple[np.ndarray, ...]
    y: np.ndarray | None = None
    batch_size: int = 32
    num_classes: int | None = None
    labels: list[str] | None = None
    input_names: tuple[str, ...] | None = None
    name: str = "data"
    split: str = "all"

    def __post_init__(self):
        self.xs = tuple(np.ascontiguousarray(a) for a in self.xs)
        names = (self.input_names if self.input_names and len(self.input_names) == len(self.xs)
                 else ("x",) if len(self.xs) == 1 else tuple(f"x[{i}]" for i in range(len(self.xs))))
        for a, array in zip(self.xs, names):
            check_values(a, array, self.name)
        if not self.xs or len(self.xs[0]) == 0:
            raise EdgeshipError(f"data {quote(self.name)} has no examples")
        n = len(self.xs[0])
        if any(len(a) != n for a in self.xs):
            raise EdgeshipError(f"data {self.name!r}: the inputs have different numbers of examples "
                                f"({', '.join(str(len(a)) for a in self.xs)})")
        if self.y is not None:
            self.y = np.asarray(self.y).reshape(-1)
            check_values(self.y, "y", self.name, labels=True)
            if len(self.y) != n:
                raise EdgeshipError(f"data {self.name!r} has {n} examples but {len(self.y)} labels")
            if not np.issubdtype(self.y.dtype, np.integer):
                if not np.all(np.mod(self.y, 1) == 0):
                    raise EdgeshipError(f"data {self.name!r}: labels must be class indices (integers), got {self.y.dtype}")
            self.y = self.y.astype(np.int64)
            if len(self.y) and self.y.min() < 0:
                raise EdgeshipError(f"data {self.name!r} has a negative label ({int(self.y.min())})")
            if self.num_classes is None:
                self.num_classes = int(self.y.max()) + 1
        if self.batch_size < 1:
            raise EdgeshipError(f"batch size must be at least 1, got {self.batch_size}")

    @classmethod
    def from_arrays(cls, x: np.ndarray | Sequence[np.ndarray], y: np.ndarray | None = None, **kw) -> "DataSource":
        xs = (x,) if isinstance(x, (np.ndarray, torch.Tensor)) else tuple(x)
        xs = tuple(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a) for a in xs)
        if isinstance(y, torch.Tensor):
            y = y.detach().cpu().numpy()
        return cls(xs, y, **kw)

    # -- what the model sees ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.xs[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example of the (first) input, batch dimension 1: ``(1, 1, 8, 8)``."""
        return (1, *self.xs[0].shape[1:])

    @property
    def input_shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple((1, *a.shape[1:]) for a in self.xs)

    @property
    def labelled(self) -> bool:
        return self.y is not None

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor | None]]:
        return self.batches()

    def num_batches(self) -> int:
        return -(-len(self) // self.batch_size)

    def batches(self, shuffle: bool = False, seed: int = 0, batch_size: int | None = None
                ) -> Iterator[tuple[Any, torch.Tensor | None]]:
        """Batches in order, or shuffled with a fixed seed (the same seed gives the same order)."""
        bs = batch_size or self.batch_size
        idx = np.arange(len(self))
        if shuffle:
            idx = np.random.default_rng(seed).permutation(len(self))
        for s in range(0, len(idx), bs):
            sel = idx[s:s + bs]
            xb = tuple(torch.from_numpy(a[sel]) for a in self.xs)
            yb = torch.from_numpy(self.y[sel]) if self.y is not None else None
            yield (xb[0] if len(xb) == 1 else xb), yb

    def calibration(self, n: int = 64, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
        """Up to ``n`` examples (a fixed random sample), each a tuple of batch-1 tensors, one per input."""
        if n < 1:
            raise EdgeshipError(f"the number of calibration examples must be at least 1, got {n}")
        idx = np.random.default_rng(seed).permutation(len(self))[:n]
        return [tuple(torch.from_numpy(a[i:i + 1].copy()) for a in self.xs) for i in sorted(idx)]

    def arrays(self) -> tuple[np.ndarray | tuple[np.ndarray, ...], np.ndarray | None]:
        """``(x, y)`` as numpy; ``x`` a tuple when the model has several inputs."""
        return (self.xs[0] if len(self.xs) == 1 else self.xs), self.y

    def subset(self, indices: Sequence[int] | np.ndarray, split: str | None = None) -> "DataSource":
        idx = np.asarray(indices, dtype=np.int64)
        return DataSource(tuple(a[idx] for a in self.xs), None if self.y is None else self.y[idx], self.batch_size,
                          self.num_classes, self.labels, self.input_names, self.name, split or self.split)

    def take_split(self, split: str) -> "DataSource":
        """The fixed 60/20/20 split (stratified by label when possible, seed 0) of these examples."""
        _check_split(split)
        if split == "all":
            return self
        return self.subset(split_indices(len(self), self.y, split), split)

    def __repr__(self) -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.input_shapes)
        return (f"DataSource({self.name!r}, split={self.split!r}, n={len(self)}, inputs=[{shapes}], "
                f"labelled={self.labelled}, num_classes={self.num_classes})")


# -- splits ------------------------------------------------------------------------------------------------
def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise EdgeshipError(f"unknown data split {split!r}", hint=f"use one of {', '.join(SPLITS)}")


def split_indices(n: int, y: np.ndarray | None, split: str) -> np.ndarray:
    """Indices of ``split`` in a fixed 60/20/20 train/val/test split with seed 0, stratified when every class
    has at least 5 examples."""
    _check_split(split)
    if split == "all":
        return np.arange(n)
    if n < 5:
        raise EdgeshipError(f"cannot split {n} examples into train/val/test", hint="use split 'all' or give more data")
    from sklearn.model_selection import train_test_split
    stratify = None
    if y is not None:
        counts = np.unique(y, return_counts=True)[1]     # not bincount: a label of 10**12 would allocate terabytes
        stratify = y if counts.min() >= 5 else None
    idx = np.arange(n)
    test_frac = SPLIT_FRACTIONS[2]
    val_frac = SPLIT_FRACTIONS[1] / (SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1])
    rest, test = train_test_split(idx, test_size=test_frac, random_state=SPLIT_SEED, stratify=stratify)
    train, val = train_test_split(rest, test_size=val_frac, random_state=SPLIT_SEED,
                                  stratify=None if stratify is None else stratify[rest])
    return np.sort({"train": train, "val": val, "test": test}[split])


# -- image preprocessing ----------------------------------------------------------------------------------
def _image_geometry(spec: ModelSpec) -> tuple[int, int, int, str]:
    """(H, W, C, layout) of the model's first input, which must be an image (4-d float)."""
    inp = spec.inputs[0]
    if len(inp.shape) != 4 or not DTYPES[inp.dtype].is_floating_point:
        raise EdgeshipError(f"image data needs a model whose first input is a 4-d float image; "
                            f"input {inp.name!r} is {'x'.join(map(str, inp.shape))}:{inp.dtype}",
                            hint="give the data as .npz or file.py:factory instead")
    layout = inp.layout or "NCHW"
    if layout == "NHWC":
        _, h, w, c = inp.shape
    elif layout == "NCHW":
        _, c, h, w = inp.shape
    else:
        raise EdgeshipError(f"input {inp.name!r} has layout {layout!r}; images need NCHW or NHWC")
    return h, w, c, layout


def default_preprocess(channels: int) -> dict:
    return {"color_order": "GRAY" if channels == 1 else "RGB", "value_range": [0, 1],
            "mean": [0.0] * channels, "std": [1.0] * channels}


def preprocess_images(images: np.ndarray, preprocess: dict | None, layout: str = "NCHW",
                      channels: int | None = None) -> np.ndarray:
    """Resized images ``N x H x W x C`` (0..255, in the preprocess's color order) -> model input float32.

    Steps: invert (x = 255 - x) if asked, scale [0, 255] to value_range, (x - mean[c]) / std[c], layout.
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 3:
        x = x[..., None]
    c = x.shape[-1]
    p = preprocess or default_preprocess(channels or c)
    if p.get("invert"):
        x = 255.0 - x
    lo, hi = (float(v) for v in p.get("value_range", [0, 1]))
    x = x / 255.0 * (hi - lo) + lo
    mean = np.asarray(p.get("mean", [0.0]), dtype=np.float64)
    std = np.asarray(p.get("std", [1.0]), dtype=np.float64)
    if mean.size not in (1, c) or std.size not in (1, c):
        raise EdgeshipError(f"preprocess mean/std have {mean.size}/{std.size} values for {c} channels")
    if np.any(std == 0):
        raise EdgeshipError("preprocess std has a zero")
    x = (x - mean) / std
    if layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)


def _to_color(img, color_order: str):
    """A Pillow image in the given color order, as an H x W x C uint8 array (C = 1 or 3)."""
    if color_order == "GRAY":
        return np.asarray(img.convert("L"))[..., None]
    arr = np.asarray(img.convert("RGB"))
    return arr[..., ::-1] if color_order == "BGR" else arr


def load_image(path: Path, size_hw: tuple[int, int], color_order: str) -> np.ndarray:
    """Decode, convert to the color order, resize (Pillow bilinear) -> H x W x C float array in 0..255."""
    import warnings

    from PIL import Image
    try:
        with warnings.catch_warnings():     # Pillow warns past MAX_IMAGE_PIXELS; we refuse instead (_check_pixels)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)            # reads the header only; Pillow refuses > 2x MAX_IMAGE_PIXELS here
        with im:
            _check_pixels(path, im.size)     # and we refuse > 1x, before decoding
            im.load()
            im = im.convert("RGB") if im.mode not in ("L", "RGB") else im
            im = im.resize((size_hw[1], size_hw[0]), Image.BILINEAR) if im.size != (size_hw[1], size_hw[0]) else im
            return _to_color(im, color_order).astype(np.float32)
    except Image.DecompressionBombError as e:   # "Image size (N pixels) exceeds limit of M pixels, ..."
        import re
        found = re.search(r"\((\d+) pixels\)", str(e))
        _check_pixels(path, None, int(found.group(1)) if found else None)
        raise   # not reached: _check_pixels raises
    except EdgeshipError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken file can make any Pillow plugin raise anything
        raise EdgeshipError(f"cannot read image {path}: {type(e).__name__}: {clip(str(e))}",
                            hint="remove the file or convert it to PNG/JPEG") from e


def _check_pixels(path: Path, size: tuple[int, int] | None, pixels: int | None = None) -> None:
    """Refuse an image whose header claims more than Pillow's MAX_IMAGE_PIXELS (a decompression bomb)."""
    from PIL import Image
    limit = Image.MAX_IMAGE_PIXELS
    if size is not None and (limit is None or size[0] * size[1] <= limit):
        return
    dims = (f"{size[0]:,} x {size[1]:,} pixels" if size else f"{pixels:,} pixels" if pixels
            else f"more than {2 * (limit or 0):,} pixels")
    raise EdgeshipError(f"image {path} is {dims}, past the limit of {limit or 0:,} (a decompression bomb?); "
                        "it was not decoded",
                        hint="resize it to about the model's input size before using it as data, or remove it from the folder")


def _channel_count(color_order: str) -> int:
    return 1 if color_order == "GRAY" else 3


def _spec_preprocess(spec: ModelSpec, c: int) -> dict:
    p = dict(spec.preprocess or default_preprocess(c))
    p.setdefault("color_order", "GRAY" if c == 1 else "RGB")
    if p["color_order"] not in ("RGB", "BGR", "GRAY"):
        raise EdgeshipError(f"preprocess color_order {p['color_order']!r} is not RGB, BGR or GRAY")
    if _channel_count(p["color_order"]) != c:
        raise EdgeshipError(f"the model's input has {c} channels but its preprocess says color_order {p['color_order']}")
    return p


# -- digits ------------------------------------------------------------------------------------------------
def digits_images(split: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits rendered as an app would see them: float ``N x 8 x 8`` in 0..255, dark ink on white
    (``255 - p * 255 / 16``), and the labels. Round to uint8 to save them as PNG."""
    _check_split(split)
    from sklearn.datasets import load_digits
    d = load_digits()
    images = 255.0 - d.images.astype(np.float64) * (255.0 / 16.0)
    y = d.target.astype(np.int64)
    idx = split_indices(len(y), y, split)
    return images[idx], y[idx]


def _digits(spec: ModelSpec | None, split: str, batch_size: int) -> DataSource:
    images, y = digits_images(split)
    if spec is None:
        x = preprocess_images(images, DIGITS_PREPROCESS, "NCHW")
        names = None
    else:
        h, w, c, layout = _image_geometry(spec)
        p = _spec_preprocess(spec, c)
        if (h, w) != (8, 8):
            from PIL import Image
            images = np.stack([np.asarray(Image.fromarray(im.astype(np.float32), mode="F")
                                          .resize((w, h), Image.BILINEAR)) for im in images])
        images = images[..., None]
        if c == 3:
            images = np.repeat(images, 3, axis=-1)
        x = preprocess_images(images, p, layout)
        names = tuple(i.name for i in spec.inputs)
    return DataSource((x,), y, batch_size, 10, DIGITS_LABELS, names, "digits", split)


# -- folders -----------------------------------------------------------------------------------------------
def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _folder(path: Path, spec: ModelSpec | None, split: str, batch_size: int) -> DataSource:
    if spec is None:
        raise EdgeshipError(f"an image folder ({path}) needs the model, to know its input size and preprocessing",
                            hint="pass the ModelSpec (the CLI does this for you)")
    h, w, c, layout = _image_geometry(spec)
    p = _spec_preprocess(spec, c)
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    class_names = None
    if classes:
        class_names = classes
        index = _class_index(classes, spec)
        for cls in classes:
            found = sorted(f for f in (path / cls).rglob("*") if _is_image(f))
            files += found
            labels += [index[cls]] * len(found)
        if not files:
            raise EdgeshipError(f"the data folder {path} has class subfolders ({', '.join(classes[:10])}) but no images in them",
                                hint=f"put images ({', '.join(sorted(IMAGE_SUFFIXES))}) in one subfolder per class")
    else:
        files = sorted(f for f in path.iterdir() if _is_image(f))
        if not files:
            raise EdgeshipError(f"the data folder {path} is empty: no images and no class subfolders",
                                hint="put images in one subfolder per class (data/cat/1.jpg, data/dog/2.png), "
                                     "or images directly in the folder for calibration only")
    log.info("loading %d images from %s", len(files), path)
    y = np.asarray(labels, dtype=np.int64) if class_names else None
    idx = split_indices(len(files), y, split)
    images = np.stack([load_image(files[i], (h, w), p["color_order"]) for i in idx])
    x = preprocess_images(images, p, layout)
    n_cls = len(spec.labels) if spec.labels else (len(class_names) if class_names else None)
    return DataSource((x,), None if y is None else y[idx], batch_size, n_cls,
                      spec.labels or class_names, tuple(i.name for i in spec.inputs), str(path), split)


def _class_index(classes: list[str], spec: ModelSpec) -> dict[str, int]:
    """Subfolder name -> class index: by the model's label names when they all match, else in sorted order."""
    if spec.labels and all(c in spec.labels for c in classes):
        return {c: spec.labels.index(c) for c in classes}
    if spec.labels:
        log.warning("class folders %s are not all among the model's labels; using sorted folder order as class index",
                    classes[:10])
    return {c: i for i, c in enumerate(classes)}


# -- npz and factories -------------------------------------------------------------------------------------
def _npz(path: Path, spec: ModelSpec | None, split: str, batch_size: int) -> DataSource:
    hint = "save it with numpy.savez(path, x=inputs, y=labels): numeric arrays, no objects"
    try:
        z = np.load(path, allow_pickle=False)      # no pickle: an .npz must not run code (numpy's default; keep it)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise EdgeshipError(f"{path} is a single .npy array, not an .npz archive of named arrays", hint=hint)
        with z:
            unpacked = sum(i.file_size for i in z.zip.infolist())
            if unpacked > MAX_NPZ_BYTES:
                raise EdgeshipError(f"{path} unpacks to {unpacked:,} bytes, past the limit of {MAX_NPZ_BYTES:,}",
                                    hint="use a smaller sample, or a file.py:factory that yields batches")
            arrays = {k: z[k] for k in z.files}
    except EdgeshipError:
        raise
    except MemoryError as e:
        raise EdgeshipError(f"{path} holds an array too large for memory", hint=hint) from e
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, RuntimeError) as e:
        # object arrays need pickle ("Object arrays cannot be loaded when allow_pickle=False"); broken zips; bad headers
        raise EdgeshipError(f"cannot read {path}: {type(e).__name__}: {clip(str(e), 2 * QUOTE_CHARS)}",
                            hint=hint) from e
    y = arrays.get("y")
    if "x" in arrays:
        names = ("x",)
    elif spec is not None and all(i.name in arrays for i in spec.inputs):
        names = tuple(i.name for i in spec.inputs)
    else:
        want = "'x'" if spec is None else f"'x' or one per input ({', '.join(i.name for i in spec.inputs)})"
        raise EdgeshipError(f"{path} has arrays {quote(sorted(arrays))} but no {want}",
                            hint="save it with numpy.savez(path, x=inputs, y=labels)")
    src = DataSource(tuple(arrays[k] for k in names), y, batch_size, input_names=names, name=str(path))
    return src.take_split(split)


def _factory(ref: str, spec: ModelSpec | None, split: str, batch_size: int) -> DataSource:
    from .model import resolve
    fn = resolve(ref)
    if isinstance(fn, DataSource):
        return fn.take_split(split)
    if not callable(fn):
        raise EdgeshipError(f"{ref} is a {type(fn).__name__}, not a callable", hint="DATA file.py:factory names a function")
    takes_split = "split" in inspect.signature(fn).parameters
    try:
        result = fn(split=split) if takes_split else fn()
    except EdgeshipError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's factory failed
        raise EdgeshipError(f"calling the data factory {ref} failed: {type(e).__name__}: {e}") from e
    if isinstance(result, DataSource):
        src = result
    else:
        src = _collect(result, ref, batch_size)
    if not takes_split:
        src = src.take_split(split)
    return src


def _collect(batches, ref: str, batch_size: int) -> DataSource:
    if isinstance(batches, (torch.Tensor, np.ndarray)):
        raise EdgeshipError(f"the data factory {ref} returned one array, not an iterable of batches",
                            hint="return a list of batches (x or (x, y)), e.g. [(x, y)] for one batch")
    try:
        it = iter(batches)
    except TypeError:
        raise EdgeshipError(f"the data factory {ref} returned a {type(batches).__name__}, not an iterable of batches") from None
    xs_parts: list[list[np.ndarray]] = []
    ys: list[np.ndarray] = []
    has_y = None
    for b in it:
        if isinstance(b, dict):
            b = (b.get("x"), b.get("y")) if "x" in b else (tuple(b.values()), None)
        if isinstance(b, (tuple, list)) and len(b) == 2 and _looks_like_labels(b):
            x, y = b
        elif isinstance(b, (tuple, list)) and len(b) == 2 and b[1] is None:
            x, y = b[0], None
        else:
            x, y = b, None
        xt = (x,) if _is_array(x) else tuple(x)
        xt = tuple(_np(a) for a in xt)
        if not xs_parts:
            xs_parts = [[] for _ in xt]
        if len(xt) != len(xs_parts):
            raise EdgeshipError(f"the data factory {ref} yields batches with different numbers of inputs")
        for part, a in zip(xs_parts, xt):
            part.append(a)
        if has_y is None:
            has_y = y is not None
        elif has_y != (y is not None):
            raise EdgeshipError(f"the data factory {ref} yields some batches with labels and some without")
        if y is not None:
            ys.append(_np(y).reshape(-1))
    if not xs_parts:
        raise EdgeshipError(f"the data factory {ref} yielded no batches")
    try:
        xs = tuple(np.concatenate(p) for p in xs_parts)
    except ValueError as e:
        raise EdgeshipError(f"the data factory {ref} yields batches whose shapes do not match: {e}") from e
    return DataSource(xs, np.concatenate(ys) if ys else None, batch_size, name=ref)


def _is_array(a) -> bool:
    return isinstance(a, (torch.Tensor, np.ndarray))


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _looks_like_labels(b) -> bool:
    """In a 2-tuple batch, is the second element labels (1-d integer array as long as the batch)?"""
    x, y = b
    if not _is_array(y):
        return False
    y = _np(y)
    n = len(_np(x)) if _is_array(x) else len(_np(x[0]))
    return y.ndim == 1 and len(y) == n and (_np(x).ndim > 1 if _is_array(x) else True)


# -- the entry point ---------------------------------------------------------------------------------------
def load_data(ref: str, spec: ModelSpec | None = None, split: str = "all", batch_size: int = 32) -> DataSource:
    """Load ``DATA`` (``digits``, an image folder, ``file.npz`` or ``file.py:factory``) for ``spec``.

    With ``spec``, every example is checked against the model's inputs (shape per example and dtype; the
    data are cast to the input dtype) and labels against its number of classes, before any long work.
    """
    _check_split(split)
    if batch_size < 1:
        raise EdgeshipError(f"batch size must be at least 1, got {batch_size}")
    text = str(ref)
    path = Path(text)
    if len(text) > MAX_REF_CHARS:
        raise EdgeshipError(f"DATA {quote(text)} is {len(text):,} characters long: no file, folder or factory has such a name")
    try:
        is_dir = path.is_dir()
    except OSError as e:                   # a name too long for the file system, ...
        raise EdgeshipError(f"data {quote(text)} cannot be opened: {e.strerror}") from None
    if text == "digits":
        src = _digits(spec, split, batch_size)
    elif is_dir:
        src = _folder(path, spec, split, batch_size)
    elif path.suffix == ".npz":
        if not path.is_file():
            raise EdgeshipError(f"data file {quote(text)} does not exist")
        src = _npz(path, spec, split, batch_size)
    elif ":" in text and (text.rsplit(":", 1)[0].endswith(".py") or "/" not in text.rsplit(":", 1)[0]):
        src = _factory(text, spec, split, batch_size)
    else:
        hint = ("DATA is 'digits', a folder of images (one subfolder per class), a .npz with x (and y), "
                "or file.py:factory")
        if not path.exists() and (path.suffix or "/" in text):
            raise EdgeshipError(f"data {quote(text)} does not exist", hint=hint)
        raise EdgeshipError(f"unknown DATA {quote(text)}", hint=hint)
    if spec is not None:
        src = check_against(src, spec)
    log.info("%r", src)
    return src


def check_against(src: DataSource, spec: ModelSpec) -> DataSource:
    """Check shapes and labels against the model; cast inputs to the model's dtypes. Returns ``src``."""
    if len(src.xs) != len(spec.inputs):
        raise EdgeshipError(f"data {src.name!r} has {len(src.xs)} input array(s) but the model takes "
                            f"{len(spec.inputs)} ({', '.join(i.name for i in spec.inputs)})")
    cast = []
    for a, inp in zip(src.xs, spec.inputs):
        want = tuple(inp.shape[1:])
        if tuple(a.shape[1:]) != want:
            raise EdgeshipError(
                f"data {src.name!r} has examples of shape {_fmt(a.shape[1:])} (one example, batch 1: "
                f"{_fmt((1, *a.shape[1:]))}) but the model's input {inp.name!r} is {_fmt(inp.shape)}",
                hint="the data must match the model's input shape per example; for images, use an image folder "
                     "so they are resized and normalized for the model")
        cast.append(a.astype(torch.empty(0, dtype=DTYPES[inp.dtype]).numpy().dtype, copy=False))
    src.xs = tuple(cast)
    src.input_names = tuple(i.name for i in spec.inputs)
    if src.y is not None and (spec.labels or spec.task.endswith("classification")):
        n_cls = len(spec.labels) if spec.labels else spec.num_classes
        if n_cls is not None:
            bad = src.y[(src.y < 0) | (src.y >= n_cls)]
            if bad.size:
                raise EdgeshipError(f"data {src.name!r} has labels out of range for the model's {n_cls} classes "
                                    f"(e.g. {int(bad[0])}; labels found: {int(src.y.min())}..{int(src.y.max())})",
                                    hint="labels are class indices 0..num_classes-1 in the model's label order")
            src.num_classes = n_cls
            src.labels = src.labels if src.labels and len(src.labels) == n_cls else spec.labels
    return src


def _fmt(shape) -> str:
    return "x".join(str(int(d)) for d in shape) or "scalar"
