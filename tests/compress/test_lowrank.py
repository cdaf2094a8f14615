"""Low-rank factorization (compress.lowrank): the SVD split is exact at full rank, the rank follows the energy,
per-layer options take precedence name > type > global, and a factorized model ships a smaller file."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeship.compress.lowrank import choose_rank, factorize, rank_for_energy, singular_values, split, summary
from edgeship.errors import EdgeshipError


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


@pytest.mark.parametrize("layer,x", [
    (nn.Linear(48, 32), torch.randn(4, 48)),
    (nn.Conv2d(24, 40, 1), torch.randn(2, 24, 9, 9)),
    (nn.Conv2d(8, 20, 3, stride=2, padding=1), torch.randn(2, 8, 15, 15)),
    (nn.Conv2d(6, 16, 3, padding=2, dilation=2, bias=False), torch.randn(1, 6, 12, 12)),
], ids=["linear", "conv1x1", "conv3x3-stride2", "conv3x3-dilated-nobias"])
def test_full_rank_split_reproduces_the_layer(layer, x):
    torch.manual_seed(0)
    full = min(layer.weight.shape[0], layer.weight[0].numel())
    pair = split(layer, full)
    assert isinstance(pair, nn.Sequential) and len(pair) == 2
    assert pair[0].bias is None and (pair[1].bias is not None) == (layer.bias is not None)
    if isinstance(layer, nn.Conv2d):
        assert pair[0].kernel_size == layer.kernel_size and pair[1].kernel_size == (1, 1)
        assert pair[0].stride == layer.stride and pair[0].padding == layer.padding
    with torch.no_grad():
        ref, got = layer(x), pair(x)
    assert got.shape == ref.shape
    assert cosine(ref, got) >= 0.99999
    assert torch.allclose(ref, got, atol=1e-4)


def _known_spectrum(s: list[float], m: int = 24, n: int = 16) -> nn.Linear:
    """A Linear whose weight is U diag(s) V^T with orthonormal U, V: singular values exactly ``s``."""
    g = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(m, len(s), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(s), generator=g, dtype=torch.float64))
    layer = nn.Linear(n, m).double()
    layer.weight.data = u @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.T
    return layer


S = [4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125]
# squared: 16, 4, 1, 0.25, ... of 21.333: the first r keep 75.0%, 93.75%, 98.44%, 99.61%, 99.904%, 99.977%, 99.995%


@pytest.mark.parametrize("energy,rank", [(0.5, 1), (0.74, 1), (0.76, 2), (0.9, 2), (0.95, 3), (0.98, 3), (0.99, 4),
                                         (0.999, 5), (0.9995, 6), (0.9999, 7), (1.0, 8)])
def test_rank_for_a_given_energy_on_known_singular_values(energy, rank):
    layer = _known_spectrum(S)
    s = singular_values(layer)
    assert torch.allclose(s[:len(S)], torch.tensor(S, dtype=torch.float64), atol=1e-9)
    assert rank_for_energy(s, energy) == rank
    assert choose_rank(s, {"energy": energy}) == rank


def test_factorize_keeps_the_leading_singular_values():
    layer = _known_spectrum(S, m=64, n=48)
    model = nn.Sequential(layer)
    out, rows = factorize(model, energy=0.9)
    (row,) = rows
    assert row["factorized"] and row["rank"] == 2 and row["full_rank"] == 48
    assert row["energy_kept"] == pytest.approx(20 / sum(x * x for x in S))
    assert row["params_after"] == 2 * 48 + 2 * 64 + 64 and row["params_before"] == 64 * 48 + 64
    a, b = out[0]
    product = b.weight.detach() @ a.weight.detach()
    assert torch.allclose(torch.linalg.svdvals(product)[:3], torch.tensor([4.0, 2.0, 0.0], dtype=torch.float64), atol=1e-9)
    assert isinstance(model[0], nn.Linear), "the input model is left as it was"


def test_rank_ratio_rounds_up_and_skips_layers_that_would_not_shrink():
    s = torch.ones(10, dtype=torch.float64)
    assert choose_rank(s, {"rank_ratio": 0.25}) == 3 and choose_rank(s, {"rank_ratio": 1.0}) == 10
    assert choose_rank(s, {"rank": 50}) == 10
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(64, 8))
    _, rows = factorize(model, rank_ratio=0.5)    # 8 x (16 + 16) = 256 = 16 x 16: no saving; 4 x 72 < 8 x 64
    assert [r["factorized"] for r in rows] == [False, True]
    assert "saves nothing" in rows[0]["reason"]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 64, 3, padding=1)
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.pw = nn.Conv2d(64, 64, 1)
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 128)
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        x = self.pw(torch.relu(self.dw(torch.relu(self.conv(x))))).mean(dim=(2, 3))
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_per_layer_options_name_over_type_over_global_and_none_skips():
    torch.manual_seed(0)
    model = Net().eval()
    layers = {"Linear": {"rank": 4}, "fc2": {"rank": 16}, "head": None, "Conv2d": {"energy": 0.5}, "pw": {"rank_ratio": 0.25}}
    out, rows = factorize(model, rank_ratio=0.5, layers=layers)
    by = {r["name"]: r for r in rows}
    assert by["fc1"]["rank"] == 4 and by["fc1"]["factorized"]                  # type
    assert by["fc2"]["rank"] == 16 and by["fc2"]["factorized"]                 # name beats type
    assert not by["head"]["factorized"] and "None" in by["head"]["reason"]     # None skips
    assert by["pw"]["rank"] == 16 and by["pw"]["factorized"]                   # name: 0.25 x 64
    assert by["conv"]["rank"] == rank_for_energy(singular_values(model.conv), 0.5)
    assert not by["dw"]["factorized"] and "grouped" in by["dw"]["reason"]
    assert isinstance(out.fc1, nn.Sequential) and isinstance(out.head, nn.Linear) and isinstance(out.dw, nn.Conv2d)
    assert isinstance(out.pw[0], nn.Conv2d) and out.pw[0].kernel_size == (1, 1) and out.pw[1].kernel_size == (1, 1)
    assert out.conv[0].kernel_size == (3, 3) and out.conv[0].out_channels == by["conv"]["rank"]
    with torch.no_grad():
        y = out(torch.randn(2, 16, 8, 8))
    assert y.shape == (2, 10)
    # only the named layers, when no global option is given
    _, rows = factorize(model, layers={"fc2": {"rank": 8}})
    assert [r["name"] for r in rows if r["factorized"]] == ["fc2"]
    total = summary(rows)
    assert total["factorized"] == 1 and total["params_after"] < total["params_before"]


@pytest.mark.parametrize("kwargs", [dict(energy=0.9, rank_ratio=0.5), dict(energy=1.5), dict(rank_ratio=0.0),
                                    dict(energy=0.9, layers={"fc1": {"energy": 0.9, "rank": 3}}),
                                    dict(energy=0.9, layers={"fc1": {"bits": 3}}), dict(energy=0.9, layers={"fc1": 0.5}),
                                    dict(energy=0.9, layers={"nope": None})])
def test_bad_options_are_errors(kwargs):
    with pytest.raises(EdgeshipError):
        factorize(Net(), **kwargs)


def test_transformer_encoder_factorizes_its_feed_forward_and_still_runs_in_eval():
    """nn.TransformerEncoderLayer's inference fast path reads linear1.weight; the factorized layers keep it on the
    plain path. MultiheadAttention's out_proj (read as a bare weight) is left as is."""
    from edgeship.examples import tiny_transformer

    spec = tiny_transformer()
    model = spec.module.eval()
    out, rows = factorize(model, energy=1.0, layers={"Linear": {"rank": 16}, "head": None})
    by = {r["name"]: r for r in rows}
    assert by["encoder.layers.0.linear1"]["factorized"] and by["encoder.layers.1.linear2"]["factorized"]
    assert not by["encoder.layers.0.self_attn.out_proj"]["factorized"]
    assert "MultiheadAttention" in by["encoder.layers.0.self_attn.out_proj"]["reason"]
    x = spec.example_inputs()
    with torch.no_grad():
        ref, plain, got = model(*x), out.train()(*x), out.eval()(*x)   # train mode: never the fast path (dropout 0)
    assert got.shape == ref.shape and torch.allclose(plain, got, atol=1e-5)
    assert cosine(ref, got) > 0.5      # random weights at rank 16 of 64 keep only part of the function


def test_factorized_model_ships_a_smaller_onnx_file(tmp_path):
    """Both Linears 256x256 at rank 32: 2 x 32 x 512 parameters instead of 256 x 256: the .onnx file shrinks, and
    onnxruntime runs the factorized graph to the factorized PyTorch module's outputs."""
    import dataclasses

    from edgeship.export import get_exporter
    from edgeship.model import InputSpec, ModelSpec
    from edgeship_runtime import open_runtime

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256)).eval()
    spec = ModelSpec(model, (InputSpec("x", (1, 256)),), name="mlp")
    small, rows = factorize(model, rank_ratio=0.125)
    assert all(r["rank"] == 32 and r["factorized"] for r in rows)
    exporter = get_exporter("onnx")
    big = exporter.export(spec, tmp_path / "big", "fp32").path
    low = exporter.export(dataclasses.replace(spec, module=small), tmp_path / "low", "fp32").path
    assert low.stat().st_size < 0.3 * big.stat().st_size
    x = torch.randn(1, 256)
    with torch.no_grad():
        ref = small(x).numpy()
    got = open_runtime(low).run([x.numpy()])[0]
    assert np.allclose(ref, got, atol=1e-5)
