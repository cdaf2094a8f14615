"""A model file as a user writes one: factories that return a plain nn.Module.

    edgeship export examples/models.py:mobilenet_like --input image:1x3x224x224 --out dist/mnl
"""
import torch
from torch import nn

from edgeship.examples import MobileNetV2


def mobilenet_like() -> nn.Module:
    """A narrow MobileNetV2 (width 0.5) with 10 classes; give its input with --input image:1x3xHxW."""
    torch.manual_seed(0)
    return MobileNetV2(num_classes=10, width=0.5)


def mobilenet_like_with_inputs():
    """The same, with its example inputs: no --input needed."""
    return mobilenet_like(), (torch.randn(1, 3, 224, 224),)
