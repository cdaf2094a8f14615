"""Tiny torch models, exported once per test session with the plain converter calls from STACK.md.

Exports are made on first use and shared between pytest-xdist workers (a file lock per artifact in the
session's shared temp folder), so a test that needs only the ONNX CNN pays only for that export.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import pytest
import torch
from filelock import FileLock
from torch import nn

SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "executorch": ".pte", "coreml": ".mlpackage",
          "tflite-int8": ".int8.tflite"}


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(16, classes)

    def forward(self, image):
        return self.head(self.features(image))


class TinyTransformer(nn.Module):
    """A 2-layer nn.TransformerEncoder classifier over int64 token ids."""

    def __init__(self, vocab: int = 100, seq: int = 16, d: int = 32, classes: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, seq, d) * 0.1)
        layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens) + self.pos).mean(dim=1))


class TwoInputs(nn.Module):
    """Two same-shape float inputs used asymmetrically: feeding them swapped gives wrong numbers, not an error."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 3)
        self.b = nn.Linear(8, 3)

    def forward(self, x, y):
        return self.a(x) - 0.5 * torch.tanh(self.b(y))


@dataclass
class Model:
    name: str
    module: nn.Module
    example: Dict[str, np.ndarray]            # input name (forward() argument) -> array
    path: Callable[[str], Path] = field(repr=False, default=None)  # format key -> exported file

    def torch_args(self, feeds: Dict[str, np.ndarray] | None = None) -> Tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(np.asarray(a)) for a in (feeds or self.example).values())

    def reference(self, feeds: Dict[str, np.ndarray] | None = None) -> np.ndarray:
        with torch.no_grad():
            return self.module(*self.torch_args(feeds)).numpy()


def _build() -> Dict[str, Model]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cnn = SmallCNN().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        cnn.features[1].running_mean.uniform_(-0.5, 0.5)
        cnn.features[1].running_var.uniform_(0.5, 2.0)
    return {
        "cnn": Model("cnn", cnn, {"image": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}),
        "transformer": Model("transformer", TinyTransformer().eval(),
                             {"tokens": rng.integers(0, 100, (1, 16)).astype(np.int64)}),
        "two": Model("two", TwoInputs().eval(), {"x": rng.standard_normal((1, 8)).astype(np.float32),
                                                 "y": rng.standard_normal((1, 8)).astype(np.float32)}),
    }


def _export(model: Model, fmt: str, out: Path) -> None:
    args = model.torch_args()
    m = model.module
    if fmt == "onnx":
        torch.onnx.export(m, args, str(out), dynamo=True, external_data=False)
    elif fmt == "tflite":
        import litert_torch
        litert_torch.convert(m, args).export(str(out))
    elif fmt == "tflite-int8":  # static int8 with int8 inputs/outputs (litert-torch's PT2E quantizer)
        import litert_torch
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        q = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        gm = prepare_pt2e(torch.export.export(m, args).module(), q)
        gen = torch.Generator().manual_seed(1)
        for _ in range(8):
            gm(*(torch.randn(a.shape, generator=gen) for a in args))
        gm = convert_pt2e(gm, fold_quantize=False)
        litert_torch.convert(gm, args, quant_config=QuantConfig(pt2e_quantizer=q)).export(str(out))
    elif fmt == "executorch":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
        prog = to_edge_transform_and_lower(torch.export.export(m, args), partitioner=[XnnpackPartitioner()])
        out.write_bytes(prog.to_executorch().buffer)
    elif fmt == "coreml":
        import coremltools as ct
        ep = torch.export.export(m, args).run_decompositions({})
        ct.convert(ep, convert_to="mlprogram", compute_precision=ct.precision.FLOAT32,
                   minimum_deployment_target=ct.target.iOS16).save(str(out))
    else:
        raise KeyError(fmt)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Dict[str, Model]:
    """name -> Model; ``model.path(fmt)`` exports it on first use and returns the file."""
    shared = tmp_path_factory.getbasetemp()
    if shared.name.startswith("popen-gw"):  # pytest-xdist: the workers' folders share a parent
        shared = shared.parent
    shared = shared / "runtime-exports"
    shared.mkdir(exist_ok=True)
    built = _build()

    def path_for(model: Model) -> Callable[[str], Path]:
        def path(fmt: str) -> Path:
            out = shared / f"{model.name}{SUFFIX[fmt]}"
            with FileLock(str(out) + ".lock"):
                if not out.exists():
                    tmp = out.with_name("tmp-" + out.name)
                    _export(model, fmt, tmp)
                    tmp.rename(out)
            return out
        return path

    for m in built.values():
        m.path = path_for(m)
    return built
