"""Built-in example models, defined in code (no downloaded weights). ``example:NAME`` on the command line.

Each factory returns a ModelSpec. The small ones keep tests fast; ``mobilenet_v2`` and ``minilm_encoder``
are the full-size shapes that ``make bench`` measures.
"""
from __future__ import annotations

import torch
from torch import nn

from .model import InputSpec, ModelSpec

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    # (expand, channels, repeats, stride) as in the paper
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 1000, width: float = 1.0, settings=None, last: int = 1280, in_ch: int = 3):
        super().__init__()
        c = lambda n: max(8, int(round(n * width / 8)) * 8)  # noqa: E731
        cin = c(32)
        layers: list[nn.Module] = [_conv_bn(in_ch, cin, 3, 2)]
        for t, ch, n, s in settings or self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c(ch), s if i == 0 else 1, t))
                cin = c(ch)
        layers.append(_conv_bn(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class TextClassifier(nn.Module):
    """Transformer encoder over token ids: embedding + learned positions, attention, LayerNorm, GELU, mean pool."""

    def __init__(self, vocab: int = 1000, dim: int = 64, heads: int = 4, layers: int = 2, seq: int = 32,
                 num_classes: int = 4, ffn: int | None = None):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, seq, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, ffn or 4 * dim, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens):
        h = self.encoder(self.embed(tokens) + self.pos)  # fixed sequence length (a slice here becomes an op Core ML lacks)
        return self.head(self.norm(h).mean(dim=1))


class LSTMClassifier(nn.Module):
    """A sequence model with an LSTM: features over time to class logits."""

    def __init__(self, features: int = 16, hidden: int = 32, num_classes: int = 5):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class DigitsCNN(nn.Module):
    """A small CNN for scikit-learn's 8x8 digits (1 channel)."""

    def __init__(self, width: int = 32, num_classes: int = 10):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(1, w, 3), _conv_bn(w, w, 3),
            _conv_bn(w, 2 * w, 3, stride=2), _conv_bn(2 * w, 2 * w, 3),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class WithUnsupportedOp(nn.Module):
    """A conv net whose head uses a complex FFT: some converters lack the op, which is what it is for."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.conv(x)).mean(dim=(2, 3))
        spec = torch.fft.rfft(y, dim=-1).abs()
        return self.head(torch.cat([spec, y[:, : 8 - spec.shape[-1]]], dim=-1))


def _seeded(fn):
    def factory(*args, **kwargs):
        torch.manual_seed(0)
        return fn(*args, **kwargs)
    factory.__name__ = fn.__name__
    factory.__doc__ = fn.__doc__
    return factory


@_seeded
def mobilenet_like(size: int = 96, num_classes: int = 10) -> ModelSpec:
    """A narrow MobileNetV2 (width 0.35, fewer blocks) on 1x3xSIZExSIZE images."""
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2), (6, 96, 1, 1)]
    m = MobileNetV2(num_classes, width=0.35, settings=settings, last=256)
    return ModelSpec(m, (InputSpec("image", (1, 3, size, size), layout="NCHW"),), task="image-classification",
                     labels=[f"class_{i}" for i in range(num_classes)], name="mobilenet_like",
                     preprocess={"color_order": "RGB", "value_range": [0, 1], "mean": IMAGENET_MEAN, "std": IMAGENET_STD})


@_seeded
def tiny_cnn() -> ModelSpec:
    """The test suite's CNN: MobileNetV2-style blocks at 1x3x32x32."""
    settings = [(1, 8, 1, 1), (4, 16, 2, 2), (4, 24, 1, 2)]
    m = MobileNetV2(10, width=1.0, settings=settings, last=64)
    return ModelSpec(m, (InputSpec("image", (1, 3, 32, 32), layout="NCHW"),), task="image-classification",
                     labels=[f"class_{i}" for i in range(10)], name="tiny_cnn",
                     preprocess={"color_order": "RGB", "value_range": [0, 1], "mean": IMAGENET_MEAN, "std": IMAGENET_STD})


@_seeded
def tiny_transformer() -> ModelSpec:
    """A 2-layer encoder classifier over 32 token ids (vocabulary 1000)."""
    m = TextClassifier()
    return ModelSpec(m, (InputSpec("tokens", (1, 32), "int64", layout="NT", high=1000),), task="text-classification",
                     labels=["a", "b", "c", "d"], name="tiny_transformer")


@_seeded
def tiny_lstm() -> ModelSpec:
    """An LSTM over 20 steps of 16 features."""
    return ModelSpec(LSTMClassifier(), (InputSpec("sequence", (1, 20, 16)),), task="classification", name="tiny_lstm")


@_seeded
def digits_cnn(width: int = 32) -> ModelSpec:
    """An (untrained) CNN for the 8x8 digits images; the demo trains it."""
    return ModelSpec(DigitsCNN(width), (InputSpec("image", (1, 1, 8, 8), layout="NCHW"),), task="image-classification",
                     labels=[str(i) for i in range(10)], name="digits_cnn",
                     preprocess={"color_order": "GRAY", "value_range": [0, 1], "mean": [0.5], "std": [0.5], "invert": True})


@_seeded
def fft_head() -> ModelSpec:
    """A model with an op (complex FFT) that some converters cannot handle."""
    return ModelSpec(WithUnsupportedOp(), (InputSpec("image", (1, 3, 16, 16), layout="NCHW"),), name="fft_head")


@_seeded
def mobilenet_v2() -> ModelSpec:
    """MobileNetV2 (width 1.0, 1000 classes) at 1x3x224x224, random weights: the bench model."""
    return ModelSpec(MobileNetV2(1000), (InputSpec("image", (1, 3, 224, 224), layout="NCHW"),), task="image-classification",
                     labels=[f"class_{i}" for i in range(1000)], name="mobilenet_v2",
                     preprocess={"color_order": "RGB", "value_range": [0, 1], "mean": IMAGENET_MEAN, "std": IMAGENET_STD})


@_seeded
def minilm_encoder() -> ModelSpec:
    """A MiniLM-sized encoder (6 layers, hidden 384, 12 heads, FFN 1536) over 128 tokens: the bench model."""
    m = TextClassifier(vocab=30522, dim=384, heads=12, layers=6, seq=128, num_classes=2, ffn=1536)
    return ModelSpec(m, (InputSpec("tokens", (1, 128), "int64", layout="NT", high=30522),), task="text-classification",
                     labels=["negative", "positive"], name="minilm_encoder")


EXAMPLES = {f.__name__: f for f in (mobilenet_like, tiny_cnn, tiny_transformer, tiny_lstm, digits_cnn, fft_head,
                                    mobilenet_v2, minilm_encoder)}
