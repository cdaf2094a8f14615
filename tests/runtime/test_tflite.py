"""LiteRtRuntime against PyTorch: names and positional order, int64 -> int32, static int8 in/out."""
from __future__ import annotations

import numpy as np
import pytest

from edgeship_runtime import TensorInfo, open_runtime
from edgeship_runtime.base import quantize
from edgeship_runtime.tflite import LiteRtRuntime, _natural_key


def test_cnn_matches_torch(models):
    m = models["cnn"]
    rt = open_runtime(m.path("tflite"), threads=2)
    assert isinstance(rt, LiteRtRuntime) and rt.name == "litert" and rt.threads == 2
    assert rt.inputs == [TensorInfo("args_0", (1, 3, 32, 32), "float32", None)]
    assert [(o.name, o.shape, o.dtype) for o in rt.outputs] == [("output_0", (1, 10), "float32")]
    out = rt.run(m.example)  # feed named "image": no match with args_0, so by position
    assert np.abs(out[0] - m.reference()).max() < 1e-4


def test_two_inputs_follow_forward_order(models):
    m = models["two"]
    rt = open_runtime(m.path("tflite"))
    assert [i.name for i in rt.inputs] == ["args_0", "args_1"]
    ref = m.reference()
    assert np.abs(rt.run(m.example)[0] - ref).max() < 1e-4                     # x, y by position
    assert np.abs(rt.run({"args_1": m.example["y"], "args_0": m.example["x"]})[0] - ref).max() < 1e-4
    assert np.abs(rt.run([m.example["y"], m.example["x"]])[0] - ref).max() > 1e-2  # the order matters


def test_transformer_casts_int64_tokens_to_int32(models):
    m = models["transformer"]
    rt = open_runtime(m.path("tflite"))
    assert rt.inputs == [TensorInfo("args_0", (1, 16), "int32", None)]
    assert rt.prepare(m.example)[0].dtype == np.int32
    assert np.abs(rt.run(m.example)[0] - m.reference()).max() < 1e-4
    with pytest.raises(ValueError, match="outside -2147483648..2147483647"):
        rt.run({"tokens": np.full((1, 16), 2**40, dtype=np.int64)})


@pytest.mark.slow  # PT2E calibration + conversion
def test_static_int8_quantizes_inputs_and_dequantizes_outputs(models):
    m = models["cnn"]
    rt = open_runtime(m.path("tflite-int8"))
    (inp,), (out,) = rt.inputs, rt.outputs
    assert inp.dtype == "int8" and inp.quantization is not None and inp.quantization[0] > 0
    assert out.dtype == "int8" and out.quantization is not None
    x = m.example["image"]
    y = rt.run({"image": x})[0]
    assert y.dtype == np.float32 and y.shape == (1, 10)
    # the float feed was quantized with the input's scale/zero point: same result as feeding int8 directly
    q = quantize(x, inp.quantization[0], inp.quantization[1], "int8")
    raw = rt._run([q])[0]
    assert raw.dtype == np.int8
    np.testing.assert_array_equal(y, (raw.astype(np.float32) - out.quantization[1]) * np.float32(out.quantization[0]))
    ref = m.reference()
    sqnr = 10 * np.log10((ref ** 2).sum() / ((y - ref) ** 2).sum())
    assert sqnr > 15, f"int8 SQNR {sqnr:.1f} dB"


def test_natural_order_of_signature_names():
    assert sorted(["args_10", "args_2", "args_0", "args_1"], key=_natural_key) == ["args_0", "args_1", "args_2", "args_10"]
