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


# -- hostile values and files (issue #11, item 13) -----------------------------------------------------------
def _bad(value, at):
    x = np.zeros((6, 1, 8, 8), np.float32)
    x[at] = value
    return x


@pytest.mark.parametrize("x,fragments", [
    (_bad(np.nan, (2, 0, 3, 4)), ["array 'x'", "1 non-finite value(s) of 384", "1 NaN", "x[2, 0, 3, 4]"]),
    (_bad(-np.inf, (5, 0, 7, 7)), ["array 'x'", "1 inf", "x[5, 0, 7, 7]"]),
    (np.full((6, 1, 8, 8), np.nan, np.float16), ["384 non-finite", "384 NaN", "x[0, 0, 0, 0]"]),
    (np.where(np.arange(384).reshape(6, 1, 8, 8) == 70, 1j, 0).astype(np.complex64),
     ["is complex (complex64)", "384 complex", "1 with a nonzero imaginary part", "x[1, 0, 0, 6]"]),
    (np.zeros((6, 1, 8, 8), bool), ["384 booleans", "x.astype(np.float32)"]),
    (np.full((6, 1, 8, 8), "0"), ["holds strings (dtype <U1)"]),
    (np.array([[1.0], "a"], dtype=object), ["holds Python objects"]),
])
def test_inputs_must_be_real_finite_numbers(x, fragments):
    with pytest.raises(EdgeshipError) as e:
        DataSource.from_arrays(x, name="mine")
    assert "data 'mine'" in str(e.value)
    for f in fragments:
        assert f in str(e.value)


@pytest.mark.parametrize("y,fragment", [
    (np.array([0, 1, np.nan, 2, 3, np.inf]), "array 'y' has 2 non-finite value(s) of 6 (1 NaN, 1 inf); the first at y[2]"),
    (np.array(["0", "1", "2", "3", "4", "5"]), "array 'y' holds strings"),
    (np.ones(6, bool), "array 'y' holds 6 booleans"),
])
def test_labels_must_be_numbers(y, fragment):
    with pytest.raises(EdgeshipError) as e:
        DataSource.from_arrays(np.zeros((6, 2), np.float32), y)
    assert fragment in str(e.value)


def test_factory_values_are_checked_with_the_input_names(tmp_path):
    spec = ModelSpec(torch.nn.Identity(), (InputSpec("a", (1, 2)), InputSpec("b", (1, 2))))
    (tmp_path / "f.py").write_text("import numpy as np\n"
                                   "def two():\n    return [((np.zeros((3, 2)), np.array([[0, 1], [2, np.inf], [3, 3]])), None)]\n")
    with pytest.raises(EdgeshipError, match=r"array 'x\[1\]' has 1 non-finite .* the first at x\[1\]\[1, 1\]"):
        load_data(f"{tmp_path}/f.py:two", spec)


def test_npz_with_strings_objects_or_no_zip_is_refused(tmp_path, digits_spec):
    x = np.zeros((5, 1, 8, 8), np.float32)
    np.savez(tmp_path / "s.npz", x=x.astype(str))
    with pytest.raises(EdgeshipError, match="array 'x' holds strings"):
        load_data(str(tmp_path / "s.npz"), digits_spec)
    np.savez(tmp_path / "o.npz", x=np.array([x, None], dtype=object))   # needs pickle: never loaded
    with pytest.raises(EdgeshipError, match="Object arrays cannot be loaded when allow_pickle=False"):
        load_data(str(tmp_path / "o.npz"), digits_spec)
    (tmp_path / "z.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(EdgeshipError, match="cannot read .*z.npz: BadZipFile"):
        load_data(str(tmp_path / "z.npz"), digits_spec)
    np.save(tmp_path / "plain.npy", x)
    (tmp_path / "plain.npy").rename(tmp_path / "plain.npz")
    with pytest.raises(EdgeshipError, match="single .npy array, not an .npz"):
        load_data(str(tmp_path / "plain.npz"), digits_spec)


def test_npz_past_the_size_limit_is_refused_before_reading(tmp_path, digits_spec, monkeypatch):
    import edgeship.data as data_mod
    np.savez_compressed(tmp_path / "d.npz", x=np.zeros((100, 1, 8, 8), np.float32))
    monkeypatch.setattr(data_mod, "MAX_NPZ_BYTES", 10_000)
    with pytest.raises(EdgeshipError, match="unpacks to 25,728 bytes, past the limit of 10,000"):
        load_data(str(tmp_path / "d.npz"), digits_spec)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (with a valid CRC) but whose pixel data is a few bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("size,fragment", [
    ((60000, 60000), "is 3,600,000,000 pixels"),       # Pillow raises DecompressionBombError
    ((10000, 10000), "is 10,000 x 10,000 pixels"),     # Pillow would only warn, then decode 100 M pixels
])
def test_decompression_bomb_images_are_refused_undecoded(tmp_path, size, fragment):
    Image.new("RGB", (6, 4)).save(tmp_path / "ok.png")
    (tmp_path / "bomb.png").write_bytes(_png_claiming(*size))
    with pytest.raises(EdgeshipError) as e:
        load_data(str(tmp_path), _image_spec())
    assert "bomb.png" in str(e.value) and fragment in str(e.value) and "decompression bomb" in str(e.value)
    assert e.value.hint


@pytest.mark.parametrize("content,fragment", [
    (b"GIF89a but no more", "cannot read image"),
    (_png_claiming(8, 8)[:-20], "cannot read image"),
])
def test_unreadable_images_name_the_file(tmp_path, content, fragment):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (6, 4)).save(tmp_path / "a" / "ok.png")
    (tmp_path / "a" / "broken.gif").write_bytes(content)
    with pytest.raises(EdgeshipError) as e:
        load_data(str(tmp_path), _image_spec(labels=["a"]))
    assert fragment in str(e.value) and "broken.gif" in str(e.value)


def test_huge_labels_do_not_allocate_in_the_split():
    from edgeship.data import split_indices
    y = np.array([0, 10**12] * 10)                    # bincount would want 8 TB
    assert len(split_indices(20, y, "test")) == 4


@pytest.mark.parametrize("ref,fragment", [("d" * 300, "cannot be opened: File name too long"),
                                          ("d" * 5000, "is 5,000 characters long")])
def test_absurd_data_references_are_short_errors(ref, fragment):
    with pytest.raises(EdgeshipError) as e:
        load_data(ref)
    assert fragment in str(e.value) and len(str(e.value)) < 400
