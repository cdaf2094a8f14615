"""edgeship.data: the digits split and preprocessing, image folders, .npz, factories, and the input checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from edgeship.data import DataSource, digits_images, load_data, preprocess_images
from edgeship.errors import EdgeshipError
from edgeship.examples import digits_cnn, tiny_cnn, tiny_transformer
from edgeship.model import InputSpec, ModelSpec


@pytest.fixture(scope="module")
def digits_spec():
    return digits_cnn()


def _image_spec(shape=(1, 3, 4, 6), layout="NCHW", preprocess=None, labels=None):
    c = shape[1] if layout == "NCHW" else shape[3]
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(len(labels) if labels else 3))
    spec = ModelSpec(module, (InputSpec("image", shape, layout=layout),), task="image-classification",
                     labels=labels or ["a", "b", "c"], preprocess=preprocess)
    spec.module(*spec.example_inputs())  # materialize the lazy layer
    assert c in (1, 3)
    return spec


# -- digits --------------------------------------------------------------------------------------------------
def test_digits_split_is_fixed_disjoint_and_stratified(digits_spec):
    parts = {s: load_data("digits", digits_spec, s) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [1077, 360, 360]
    full = load_data("digits", digits_spec, "all")
    assert len(full) == 1797 and full.num_classes == 10
    # disjoint and complete: match rows of the full set
    keys = {s: {p.tobytes() + bytes([int(y)]) for p, y in zip(parts[s].arrays()[0], parts[s].y)} for s in parts}
    assert not (keys["train"] & keys["test"]) and not (keys["val"] & keys["test"])
    for s in parts:
        counts = np.bincount(parts[s].y, minlength=10)
        assert counts.max() - counts.min() <= 5, (s, counts)   # stratified: about n/10 per class
    again = load_data("digits", digits_spec, "test")
    np.testing.assert_array_equal(again.arrays()[0], parts["test"].arrays()[0])
    np.testing.assert_array_equal(again.y, parts["test"].y)


def test_digits_values_follow_the_digits_cnn_preprocess(digits_spec):
    from sklearn.datasets import load_digits
    raw = load_digits()
    x, y = load_data("digits", digits_spec).arrays()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    # ink p in 0..16 -> rendered 255 - p*255/16 -> invert -> /255 -> (v - 0.5) / 0.5  ==  p/8 - 1
    np.testing.assert_allclose(x[:, 0], raw.images / 8.0 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(y, raw.target)
    # with no model, the digits_cnn preprocessing is the default
    np.testing.assert_array_equal(load_data("digits").arrays()[0], x)


def test_an_app_rendering_a_digit_gets_the_same_tensor(tmp_path, digits_spec):
    """Save the digits as dark-on-white PNGs in class folders, load them as an image folder: same tensors."""
    images, y = digits_images("val")
    order = np.argsort(y, kind="stable")
    for i, (im, label) in enumerate(zip(images, y)):
        d = tmp_path / str(label)
        d.mkdir(exist_ok=True)
        Image.fromarray(np.round(im).astype(np.uint8), mode="L").save(d / f"{i:04d}.png")
    folder = load_data(str(tmp_path), digits_spec)
    ref = load_data("digits", digits_spec, "val")
    assert len(folder) == len(ref) == 360
    # the folder is read class by class; the digits source keeps the split order
    fx, fy = folder.arrays()
    rx, ry = ref.arrays()
    np.testing.assert_array_equal(fy, ry[order])
    np.testing.assert_allclose(fx, rx[order], atol=2 * 0.5 / 255 + 1e-6)   # uint8 rounding of the PNG only


def test_digits_resized_for_another_image_model():
    spec = tiny_cnn()   # 1x3x32x32, RGB, ImageNet mean/std
    src = load_data("digits", spec, "test")
    x, _ = src.arrays()
    assert x.shape == (360, 3, 32, 32)
    np.testing.assert_allclose(x[:, 0] * 0.229 + 0.485, x[:, 1] * 0.224 + 0.456, atol=1e-5)   # gray in all channels
    # digits_cnn's invert is not in tiny_cnn's preprocess: the paper stays white (the largest value)
    assert np.isclose(x[:, 0].max(), (1 - 0.485) / 0.229, atol=1e-5)


# -- image folders -------------------------------------------------------------------------------------------
def test_folder_color_order_resize_normalize_and_layout(tmp_path):
    colors = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (10, 20, 30)}
    for name, rgb in colors.items():
        (tmp_path / name).mkdir()
        for k in range(2):
            Image.new("RGB", (17, 9), rgb).save(tmp_path / name / f"{k}.png")
    pre = {"color_order": "BGR", "value_range": [-1, 1], "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 2.0]}
    spec = _image_spec((1, 4, 6, 3), layout="NHWC", preprocess=pre)
    src = load_data(str(tmp_path), spec)
    x, y = src.arrays()
    assert x.shape == (6, 4, 6, 3) and src.input_shape == (1, 4, 6, 3)
    np.testing.assert_array_equal(y, [0, 0, 1, 1, 2, 2])
    for row, label in zip(x, y):
        bgr = np.array(colors["abc"[label]][::-1], dtype=np.float64)
        want = (bgr / 255 * 2 - 1 - np.array(pre["mean"])) / np.array(pre["std"])
        np.testing.assert_allclose(row, np.broadcast_to(want, (4, 6, 3)), atol=1e-5)


def test_folder_labels_follow_model_label_names(tmp_path):
    for name in ("c", "a"):
        (tmp_path / name).mkdir()
        Image.new("L", (8, 8), 0).save(tmp_path / name / "x.png")
    spec = _image_spec((1, 1, 8, 8), labels=["z", "c", "a"])
    src = load_data(str(tmp_path), spec)
    assert sorted(src.y.tolist()) == [1, 2] and src.num_classes == 3


def test_folder_without_subfolders_is_unlabelled(tmp_path):
    for k in range(3):
        Image.new("RGB", (5, 5), (k * 50, 0, 0)).save(tmp_path / f"{k}.jpg")
    src = load_data(str(tmp_path), _image_spec())
    assert src.y is None and len(src) == 3
    (x, y), = list(src)
    assert y is None and x.shape == (3, 3, 4, 6)


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(EdgeshipError, match="empty"):
        load_data(str(tmp_path), _image_spec())
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(EdgeshipError, match="no images"):
        load_data(str(tmp_path), _image_spec())


# -- npz and factories ---------------------------------------------------------------------------------------
def test_npz_batches_calibration_and_arrays(tmp_path, digits_spec):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 1, 8, 8)).astype(np.float64)   # cast to the model's float32
    y = rng.integers(0, 10, 50)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    src = load_data(str(tmp_path / "d.npz"), digits_spec, batch_size=16)
    assert len(src) == 50 and src.num_classes == 10 and src.input_shape == (1, 1, 8, 8)
    batches = list(src)
    assert [len(b[0]) for b in batches] == [16, 16, 16, 2]
    assert all(b[0].dtype == torch.float32 and b[1].dtype == torch.int64 for b in batches)
    np.testing.assert_allclose(torch.cat([b[0] for b in batches]).numpy(), x, rtol=1e-6)
    shuffled = torch.cat([b[1] for b in src.batches(shuffle=True, seed=3)]).numpy()
    assert sorted(shuffled.tolist()) == sorted(y.tolist()) and not np.array_equal(shuffled, y)
    np.testing.assert_array_equal(shuffled, torch.cat([b[1] for b in src.batches(shuffle=True, seed=3)]).numpy())
    cal = src.calibration(8)
    assert len(cal) == 8 and all(isinstance(c, tuple) and len(c) == 1 and c[0].shape == (1, 1, 8, 8) for c in cal)
    rows = {r.tobytes() for r in x.astype(np.float32)}
    assert all(c[0][0].numpy().tobytes() in rows for c in cal)
    assert len(src.calibration(500)) == 50
    ax, ay = src.arrays()
    assert ax.shape == (50, 1, 8, 8) and ay.tolist() == y.tolist()
    assert len(load_data(str(tmp_path / "d.npz"), digits_spec, "test")) == 10


def test_npz_with_one_array_per_input_name(tmp_path):
    spec = tiny_transformer()
    tokens = np.random.default_rng(0).integers(0, 1000, (7, 32))
    np.savez(tmp_path / "t.npz", tokens=tokens)
    src = load_data(str(tmp_path / "t.npz"), spec)
    (x, y), = list(src)
    assert y is None and x.dtype == torch.int64 and x.shape == (7, 32)
    assert src.calibration(2)[0][0].shape == (1, 32)


def test_factory_batches_with_and_without_labels(tmp_path, digits_spec):
    (tmp_path / "mydata.py").write_text(
        "import torch\n"
        "def labelled():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    return [(torch.randn(4, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 3])) for _ in range(5)]\n"
        "def images_only():\n"
        "    for _ in range(3):\n"
        "        yield torch.zeros(2, 1, 8, 8)\n"
        "def by_split(split='all'):\n"
        "    n = {'train': 6, 'val': 2, 'test': 2, 'all': 10}[split]\n"
        "    return [(torch.zeros(n, 1, 8, 8), torch.zeros(n, dtype=torch.long))]\n")
    src = load_data(f"{tmp_path}/mydata.py:labelled", digits_spec, batch_size=8)
    assert len(src) == 20 and src.y.tolist() == [0, 1, 2, 3] * 5
    assert len(load_data(f"{tmp_path}/mydata.py:labelled", digits_spec, "train")) == 12
    src = load_data(f"{tmp_path}/mydata.py:images_only", digits_spec)
    assert len(src) == 6 and src.y is None
    assert len(load_data(f"{tmp_path}/mydata.py:by_split", digits_spec, "train")) == 6


def test_from_arrays_and_repr():
    src = DataSource.from_arrays(torch.zeros(3, 2), torch.tensor([0, 1, 1]), batch_size=2)
    assert src.num_classes == 2 and src.num_batches() == 2 and "n=3" in repr(src)


# -- errors before any long work -----------------------------------------------------------------------------
def test_shape_mismatch_names_both_shapes(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(EdgeshipError) as e:
        load_data(str(tmp_path / "d.npz"), tiny_cnn())
    assert "1x1x8x8" in str(e.value) and "1x3x32x32" in str(e.value)


def test_labels_out_of_range_for_the_model(tmp_path, digits_spec):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 1, 8, 8), np.float32), y=np.array([0, 9, 10]))
    with pytest.raises(EdgeshipError, match="out of range.*10 classes"):
        load_data(str(tmp_path / "d.npz"), digits_spec)
    np.savez(tmp_path / "n.npz", x=np.zeros((3, 1, 8, 8), np.float32), y=np.array([0, -1, 1]))
    with pytest.raises(EdgeshipError, match="negative"):
        load_data(str(tmp_path / "n.npz"), digits_spec)


def test_folder_with_more_classes_than_the_model(tmp_path):
    for name in ("w", "x", "y", "z"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 6), 0).save(tmp_path / name / "i.png")
    with pytest.raises(EdgeshipError, match="out of range"):
        load_data(str(tmp_path), _image_spec())   # 3 classes


@pytest.mark.parametrize("ref", ["mnist", "no/such/folder", "missing.npz", "cifar10:train"])
def test_unknown_data_reference(ref, digits_spec):
    with pytest.raises(EdgeshipError) as e:
        load_data(ref, digits_spec)
    assert ref.split(":")[0] in str(e.value)


def test_unknown_split_and_bad_batch_size(digits_spec):
    with pytest.raises(EdgeshipError, match="split"):
        load_data("digits", digits_spec, "validation")
    with pytest.raises(EdgeshipError, match="batch size"):
        load_data("digits", digits_spec, batch_size=0)


def test_preprocess_images_invert_and_range():
    img = np.array([[0.0, 255.0]])
    out = preprocess_images(img[None], {"color_order": "GRAY", "value_range": [0, 1], "mean": [0.5], "std": [0.5],
                                        "invert": True})
    np.testing.assert_allclose(out.reshape(-1), [1.0, -1.0])
