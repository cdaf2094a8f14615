"""The shared part of edgeship_runtime: format lookup, feed mapping, dtype casting, (de)quantization."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from edgeship_runtime import FORMATS, RuntimeUnavailable, TensorInfo, format_of, open_runtime, runtime_class
from edgeship_runtime.base import cast, dequantize, quantize


def test_format_of_by_suffix(tmp_path):
    assert format_of("a/model.onnx") == "onnx"
    assert format_of("model.int8.tflite") == "tflite"
    assert format_of("model.PTE") == "executorch"
    assert format_of(tmp_path / "model.w8.mlpackage") == "coreml"
    with pytest.raises(ValueError, match=r"known suffixes are .onnx, .tflite, .pte"):
        format_of("model.pt")


def test_registry_is_lazy_and_complete():
    assert set(FORMATS) == {"onnx", "tflite", "executorch", "coreml", "torchscript"}
    for key, spec in FORMATS.items():
        cls = runtime_class(key)
        assert f"{cls.__module__}:{cls.__name__}" == spec.runtime
        assert cls.name == {"onnx": "onnxruntime", "tflite": "litert", "torchscript": "pytorch-mobile"}.get(key, key)
    with pytest.raises(ValueError, match="known formats: onnx, tflite, executorch, coreml"):
        runtime_class("tensorrt")


def test_open_runtime_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        open_runtime(tmp_path / "missing.onnx")
    (tmp_path / "m.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="cannot tell the format"):
        open_runtime(tmp_path / "m.bin")


def test_missing_runtime_package_says_what_to_install(models, monkeypatch):
    path = models["two"].path("tflite")
    for mod in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime", "tflite_runtime.interpreter"):
        monkeypatch.setitem(sys.modules, mod, None)  # makes `import mod` raise ImportError
    with pytest.raises(RuntimeUnavailable) as e:
        open_runtime(path)
    assert isinstance(e.value, ImportError)
    assert e.value.hint == "pip install ai-edge-litert"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(RuntimeUnavailable, match="onnxruntime is not installed") as e:
        open_runtime(models["two"].path("onnx"))
    assert e.value.hint == "pip install onnxruntime"


def test_quantize_rounds_half_away_from_zero_and_saturates():
    x = np.array([0.0, 0.25, -0.25, 0.5, 1.0, 1000.0, -1000.0], dtype=np.float32)
    q = quantize(x, scale=0.5, zero_point=3, dtype="int8")
    assert q.dtype == np.int8
    assert q.tolist() == [3, 4, 2, 4, 5, 127, -128]
    assert quantize(x, 0.5, 128, "uint8").tolist() == [128, 129, 127, 129, 130, 255, 0]


def test_dequantize_and_float16_outputs():
    info = TensorInfo("y", (3,), "int8", (0.1, -2))
    out = dequantize(np.array([-2, 8, 127], dtype=np.int8), info)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 1.0, 12.9], rtol=1e-6)
    half = dequantize(np.array([1.5], dtype=np.float16), TensorInfo("y", (1,), "float16"))
    assert half.dtype == np.float32 and half[0] == 1.5
    plain = np.array([1, 2], dtype=np.int64)
    assert dequantize(plain, TensorInfo("i", (2,), "int64")) is plain


def test_cast_rules():
    i32 = TensorInfo("tokens", (2,), "int32")
    assert cast(np.array([1, 99], dtype=np.int64), i32).dtype == np.int32
    with pytest.raises(ValueError, match=r"tokens.*outside -2147483648..2147483647"):
        cast(np.array([1, 2**40], dtype=np.int64), i32)
    with pytest.raises(ValueError, match="expects int32, got float32"):
        cast(np.array([1.0, 2.0], dtype=np.float32), i32)
    f32 = TensorInfo("x", (2,), "float32")
    assert cast(np.array([1.0, 2.0]), f32).dtype == np.float32           # float64 -> float32
    q = cast(np.array([0.1, -0.1], dtype=np.float32), TensorInfo("x", (2,), "int8", (0.05, 0)))
    assert q.dtype == np.int8 and q.tolist() == [2, -2]


def test_tensor_info_to_dict():
    t = TensorInfo("x", (None, 3), "int8", (0.5, -1))
    assert t.to_dict() == {"name": "x", "shape": [None, 3], "dtype": "int8",
                           "quantization": {"scale": 0.5, "zero_point": -1}}
    assert t.describe() == "x:?x3:int8 q(scale=0.5, zp=-1)"


# --- feed mapping, on a real runtime (onnxruntime; the two-input model keeps its argument names) ----------

@pytest.fixture(scope="module")
def two_onnx(models):
    return models["two"], open_runtime(models["two"].path("onnx"))


def test_feeds_by_name_ignore_dict_order(two_onnx):
    m, rt = two_onnx
    x, y = m.example["x"], m.example["y"]
    ref = m.reference()
    np.testing.assert_allclose(rt.run({"y": y, "x": x})[0], ref, atol=1e-5)


def test_feeds_by_position_when_names_differ(two_onnx):
    m, rt = two_onnx
    x, y = m.example["x"], m.example["y"]
    ref = m.reference()
    np.testing.assert_allclose(rt.run({"first": x, "second": y})[0], ref, atol=1e-5)
    np.testing.assert_allclose(rt.run([x, y])[0], ref, atol=1e-5)
    np.testing.assert_allclose(rt.run((x, y))[0], ref, atol=1e-5)
    swapped = rt.run([y, x])[0]  # the model is asymmetric: a swapped feed is visibly wrong
    assert np.abs(swapped - ref).max() > 1e-2


def test_feed_count_and_shape_errors_name_what_is_expected(two_onnx):
    m, rt = two_onnx
    x = m.example["x"]
    with pytest.raises(ValueError, match=r"takes 2 input\(s\) \(x:1x8:float32, y:1x8:float32\), got 1"):
        rt.run({"x": x})
    with pytest.raises(ValueError, match=r"takes 2 input\(s\).*got 3"):
        rt.run([x, x, x])
    with pytest.raises(ValueError, match=r"input 'y' expects shape \[1, 8\] \(float32\), got \[1, 7\]"):
        rt.run({"x": x, "y": x[:, :7]})
    with pytest.raises(ValueError, match=r"expects shape \[1, 8\].*got \[8\]"):
        rt.run([x, x[0]])


def test_single_array_feed_and_integer_to_float(models):
    m = models["cnn"]
    rt = open_runtime(m.path("onnx"))
    img = (np.arange(3 * 32 * 32).reshape(1, 3, 32, 32) % 7).astype(np.uint8)
    out = rt.run(img)[0]  # one array for a one-input model; uint8 -> float32
    np.testing.assert_allclose(out, m.reference({"image": img.astype(np.float32)}), atol=1e-4)
