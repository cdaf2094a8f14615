"""Cross-layer equalization (compress.equalize): exact in float, and the ranges really move between layers."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

from edgeship.compress.equalize import equalize
from edgeship.compress.quantize import export_graph


class Net(nn.Module):
    """Every case equalize handles, with trained-network-like channel ranges (0.01 to 10 per channel):
    conv -> BN -> ReLU -> depthwise; depthwise -> PReLU -> max pool -> conv; a conv feeding two heads;
    a conv followed by a per-channel multiply and add (onnx2torch's learnable affine); Linear -> ReLU -> Linear;
    and, left alone, a pair through ReLU6 (not scale-equivariant)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.act = nn.PReLU(8)
        self.c2 = nn.Conv2d(8, 16, 1)
        self.scale = nn.Parameter(torch.rand(1, 16, 1, 1, generator=g) * 4 - 2, requires_grad=False)
        self.shift = nn.Parameter(torch.randn(1, 16, 1, 1, generator=g), requires_grad=False)
        self.c3 = nn.Conv2d(16, 16, 3, padding=1)
        self.head_a, self.head_b = nn.Conv2d(16, 4, 1), nn.Conv2d(16, 2, 1)
        self.c4 = nn.Conv2d(16, 8, 1)
        self.c5 = nn.Conv2d(8, 8, 1)
        self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 5)
        with torch.no_grad():
            for m in (self.c1, self.dw, self.c2, self.c3, self.fc1):
                m.weight.mul_(torch.logspace(-2, 1, m.weight.shape[0])[torch.randperm(m.weight.shape[0], generator=g)]
                              .view(-1, *([1] * (m.weight.dim() - 1))))
            self.bn1.running_mean.normal_(generator=g)
            self.bn1.running_var.uniform_(0.5, 2.0, generator=g)
            self.bn1.weight.uniform_(0.1, 3.0, generator=g)

    def forward(self, x):
        x = torch.relu(self.bn1(self.c1(x)))
        x = nn.functional.max_pool2d(self.act(self.dw(x)), 2)
        x = self.c2(x) * self.scale + self.shift
        x = torch.relu(self.c3(x))
        a, b = self.head_a(x), self.head_b(x)
        y = self.c5(nn.functional.relu6(self.c4(x)))
        y = torch.relu(self.fc1(y.mean((2, 3))))
        return a, b, self.fc2(y)


def _flat(outs) -> np.ndarray:
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    return np.concatenate([o.detach().double().numpy().ravel() for o in outs])


def _cosine(a, b) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _weight(gm, layer: str) -> torch.Tensor:
    """The conv weight of ``layer`` as the exported graph holds it."""
    names = [n.target for n in gm.graph.nodes if n.op == "get_attr" and n.target.startswith(layer + ".")]
    return next(w for w in (functools.reduce(getattr, t.split("."), gm) for t in names) if w.dim() == 4)


def test_equalization_leaves_the_float_function_unchanged_and_moves_the_ranges():
    model = Net().eval()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    before = export_graph(model, (x[:1],))
    eq, report = equalize(model, (x[:1],))
    assert report.batch_norms_folded == 1 and report.affine_folded == 2
    assert report.pairs == 5     # c1->dw, dw->c2 (PReLU, max pool), c3->two heads, fc1->fc2; not c4->c5 (ReLU6)
    for k in range(4):
        ref, got = _flat(model(x[k:k + 1])), _flat(eq(x[k:k + 1]))
        assert _cosine(ref, got) >= 0.99999, k
        assert np.abs(ref - got).max() <= 1e-4 * np.abs(ref).max()
    c1, dw = _weight(eq, "c1"), _weight(eq, "dw")
    r1, r2 = c1.flatten(1).abs().amax(1), dw.flatten(1).abs().amax(1)
    # equalized: both near sqrt(r1 * r2) (not exactly: dw is also the first layer of the next pair)
    assert float(torch.maximum(r1 / r2, r2 / r1).max()) < 1.5
    spread = lambda w: float(w.flatten(1).abs().amax(1).max() / w.flatten(1).abs().amax(1).min())  # noqa: E731
    c1_before = _weight(before, "c1")
    assert spread(c1) < spread(c1_before) / 10                      # the 1000x channel spread is mostly gone
    assert not any("mul" in str(n.target) or "batch_norm" in str(n.target) for n in eq.graph.nodes
                   if n.op == "call_function" and n.target is not torch.ops.aten.mean.dim)
    assert float(model.c1.weight.abs().amax()) == pytest.approx(float(c1_before.abs().amax()))   # model untouched


def test_a_weight_shared_by_two_layers_is_not_rescaled():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    model = Tied().eval()
    x = torch.randn(1, 6)
    eq, report = equalize(model, (x,))
    assert report.pairs == 0
    assert _cosine(_flat(model(x)), _flat(eq(x))) >= 0.99999
