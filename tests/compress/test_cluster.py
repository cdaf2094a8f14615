"""Weight clustering (compress.cluster): at most 2^bits values per layer in PyTorch, kept through fine-tuning, and
read back from every exported format; the clustered file downloads in less than half the bytes."""
from __future__ import annotations

import dataclasses
import platform

import numpy as np
import pytest
import torch
from torch import nn

from edgeship.compress.cluster import (cluster, cluster_tensor, distinct_values, finetune, fold_layernorm, kmeans_1d,
                                       shared_centroids)
from edgeship.errors import EdgeshipError
from edgeship._io import size_path as file_size
from edgeship.sizes import download_size


class Net(nn.Module):
    """Weights dominate: two 256x256 Linears (and a small conv) hold ~97% of the bytes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 4 * 4, 256)
        self.fc2 = nn.Linear(256, 256)
        self.head = nn.Linear(256, 10)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4).flatten(1)
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def net() -> nn.Module:
    torch.manual_seed(0)
    return Net().eval()


def test_kmeans_finds_separated_clusters_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([-3.0, -1.0, 0.5, 2.0])
    x = centers[torch.randint(0, 4, (4000,), generator=g)] + 0.01 * torch.randn(4000, generator=g)
    for init in ("quantile", "linear"):
        c, idx = kmeans_1d(x, 4, init=init)
        assert torch.allclose(c.float(), centers, atol=0.01)
        assert float((c[idx].float() - x).abs().max()) < 0.1
        c2, idx2 = kmeans_1d(x, 4, init=init)
        assert torch.equal(c, c2) and torch.equal(idx, idx2)
    few = torch.tensor([1.0, 2.0, 2.0, 1.0])
    c, idx = kmeans_1d(few, 16)
    assert c.tolist() == [1.0, 2.0] and torch.equal(c[idx].float(), few)
    with pytest.raises(EdgeshipError):
        kmeans_1d(x, 4, init="random")


def test_cluster_tensor_per_group_of_output_channels():
    w = torch.randn(12, 30)
    got = cluster_tensor(w, bits=2, group_size=4)
    assert got.dtype == w.dtype and got.shape == w.shape
    for g in range(3):
        assert torch.unique(got[4 * g:4 * g + 4]).numel() <= 4
    assert torch.unique(got).numel() > 4


def test_at_most_2_to_the_bits_values_per_layer_with_per_layer_options():
    model = net()
    out, rows = cluster(model, bits=4, layers={"Conv2d": {"bits": 6}, "head": None, "fc2": 3})
    by = {r["name"]: r for r in rows}
    assert set(by) == {"conv", "fc1", "fc2", "head"}
    assert by["fc1"]["bits"] == 4 and by["fc1"]["distinct_after"] <= 16 and by["fc1"]["distinct_before"] > 1000
    assert by["fc2"]["bits"] == 3 and by["fc2"]["distinct_after"] <= 8                      # name, a bare number
    assert by["conv"]["bits"] == 6 and 16 < by["conv"]["distinct_after"] <= 64              # type
    assert not by["head"]["clustered"] and "None" in by["head"]["reason"]
    assert torch.unique(out.fc1.weight).numel() <= 16 and torch.unique(out.fc2.weight).numel() <= 8
    assert torch.equal(out.head.weight, model.head.weight)
    assert torch.unique(model.fc1.weight).numel() > 1000, "the input model is left as it was"
    assert torch.unique(out.fc1.bias).numel() > 16, "biases are not clustered"
    assert by["fc1"]["sqnr_db"] > 15 and by["conv"]["sqnr_db"] > by["fc1"]["sqnr_db"]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref, got = model(x), out(x)
    assert float(nn.functional.cosine_similarity(ref.flatten(), got.flatten(), dim=0)) > 0.98


@pytest.mark.parametrize("kwargs", [dict(bits=0), dict(bits=9), dict(bits=4, group_size=0),
                                    dict(bits=4, layers={"fc1": {"nbits": 4}}), dict(bits=4, layers={"nope": None})])
def test_bad_options_are_errors(kwargs):
    with pytest.raises(EdgeshipError):
        cluster(net(), **kwargs)


def test_shared_centroids_keep_the_values_shared_while_training():
    model, rows = cluster(net(), bits=4, layers={"head": None})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, target = torch.randn(8, 3, 8, 8), torch.randn(8, 10)
    with shared_centroids(model, rows) as tied:
        assert tied == ["conv.weight", "fc1.weight", "fc2.weight"]
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(5):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), target).backward()
            opt.step()
            assert torch.unique(model.fc1.weight.detach()).numel() <= 16
    assert not any("parametrizations" in n for n, _ in model.named_parameters())
    nn.functional.mse_loss(model(x), target).backward()      # plain weights again, gradients of their own shape
    assert model.fc1.weight.grad.shape == model.fc1.weight.shape
    for name in ("conv.weight", "fc1.weight", "fc2.weight"):
        w = dict(model.named_parameters())[name]
        assert torch.unique(w.detach()).numel() <= 16
        assert not torch.equal(w, before[name]), f"{name} did not train"
        # the same weights share a value before and after: the assignment did not change
        _, old = torch.unique(before[name], return_inverse=True)
        _, new = torch.unique(w.detach(), return_inverse=True)
        pairs = torch.unique(torch.stack([old.flatten(), new.flatten()], 1), dim=0)
        assert len(pairs) == len(torch.unique(old)) == len(torch.unique(new))
    assert torch.unique(model.head.weight.detach()).numel() > 16


def test_finetune_with_the_training_loop_keeps_2_to_the_bits_values(digits, teacher):
    """2 bits (4 values per layer) costs the trained digits CNN accuracy; fine-tuning the shared centroids with the
    existing loop wins it back, and every clustered layer still holds at most 4 values."""
    from edgeship.compress.train import TrainConfig, evaluate

    model, rows = cluster(teacher.module, bits=2)
    before = evaluate(model, digits["val"])
    result = finetune(model, digits["train"], digits["val"], TrainConfig(epochs=3, lr=1e-3, patience=None), rows=rows)
    assert result.epochs_run == 3
    assert evaluate(model, digits["val"]) >= max(before + 0.02, 0.95)   # measured: 0.883 -> 0.986
    for r in rows:
        if r["clustered"]:
            w = dict(model.named_modules())[r["name"]].weight
            assert torch.unique(w.detach()).numel() <= 4, r["name"]


def test_download_size_is_deterministic_and_zips_directories(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "a.bin").write_bytes(bytes(100_000))
    (tmp_path / "pkg" / "sub" / "b.bin").write_bytes(np.random.default_rng(0).bytes(10_000))
    assert file_size(tmp_path / "pkg") == 110_000
    size = download_size(tmp_path / "pkg")
    assert 10_000 < size < 11_000 and size == download_size(tmp_path / "pkg")
    assert download_size(tmp_path / "pkg" / "a.bin") < 1_000


FORMATS = ["onnx", "tflite", "executorch", "coreml"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_clustered_export_holds_2_to_the_bits_values_and_downloads_smaller(fmt, tmp_path):
    """Export the 4-bit clustered model and the original: every weight tensor read back from the clustered file holds
    <= 16 values (Core ML: palettized with the clustered values as its LUTs), and it downloads (zip deflate 9) in
    less than half the original's bytes."""
    from edgeship.export import get_exporter
    from edgeship.model import InputSpec, ModelSpec

    model = net()
    spec = ModelSpec(model, (InputSpec("image", (1, 3, 8, 8), layout="NCHW"),), name="net")
    clustered, _ = cluster(model, bits=4)
    exporter = get_exporter(fmt)
    ref = exporter.export(spec, tmp_path / "ref", "fp32").path
    got = exporter.export(dataclasses.replace(spec, module=clustered), tmp_path / "clustered", "fp32").path
    if fmt == "coreml":
        from edgeship.compress.cluster import lut_sizes, palettize_mlpackage
        import coremltools as ct
        got = palettize_mlpackage(got, tmp_path / "palettized.mlpackage")
        luts = lut_sizes(ct.models.MLModel(str(got), skip_model_load=True))
        assert len(luts) == 4 and max(luts.values()) <= 16
        assert file_size(got) < 0.25 * file_size(ref)
    counts = distinct_values(got)
    assert len(counts) == 4, counts                       # conv, fc1, fc2, head weights
    assert max(counts.values()) <= 16, counts
    assert min(distinct_values(ref).values()) > 16
    assert download_size(got) < 0.5 * download_size(ref), (download_size(got), download_size(ref))
    if fmt != "coreml" or platform.system() == "Darwin":
        from edgeship_runtime import open_runtime
        x = torch.rand(1, 3, 8, 8)
        with torch.no_grad():
            want = clustered(x).numpy()
        assert np.allclose(open_runtime(got).run([x.numpy()])[0], want, atol=1e-4)


# -- LayerNorm gains folded into the Linears that read them (what LiteRT's converter would do after clustering) --
class PreNormBlock(nn.Module):
    """A pre-norm encoder block built by hand: q/k/v/o and the feed-forward as plain Linears."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        h = self.norm1(x)
        split = lambda y: y.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        att = torch.softmax(split(self.q(h)) @ split(self.k(h)).transpose(-1, -2) / (d // self.heads) ** 0.5, -1)
        x = x + self.o((att @ split(self.v(h))).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(torch.relu(self.fc1(self.norm2(x))))


class NormIntoResidual(nn.Module):
    """norm1's output feeds a Linear and the residual add: folding it would change the add. norm2 feeds only fc2."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x):
        h = self.norm1(x)
        h = h + self.fc1(h)
        return self.fc2(self.norm2(h))


def _random_affine(model: nn.Module) -> nn.Module:
    """Trained-looking LayerNorms: gains far from 1 (some negative), biases far from 0."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_((torch.rand(m.weight.shape, generator=g) * 2.5 - 0.5))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return model.eval()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def _encoder_layer(norm_first: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True, norm_first=norm_first)


@pytest.mark.parametrize("name, make, folded", [
    ("TransformerEncoderLayer norm_first", lambda: _encoder_layer(True),
     # torch.export emits self-attention's packed q/k/v projection as one linear on in_proj_weight
     [("norm1", ["self_attn.in_proj_weight"]), ("norm2", ["linear1.weight"])]),
    ("TransformerEncoderLayer post-norm", lambda: _encoder_layer(False), []),   # both norms feed a residual / the output
    ("pre-norm block by hand", lambda: (torch.manual_seed(0), PreNormBlock())[1],
     [("norm1", ["q.weight", "k.weight", "v.weight"]), ("norm2", ["fc1.weight"])]),
])
def test_layernorm_fold_is_exact_and_only_into_linears(name, make, folded):
    import copy

    model = _random_affine(make())
    x = torch.randn(2, 5, 32)
    got = copy.deepcopy(model)
    done = fold_layernorm(got, (x[:1],))
    assert [(d["norm"], d["into"]) for d in done] == folded, name
    for _ in range(3):
        x = torch.randn(3, 7, 32)            # other shapes than the one exported
        with torch.no_grad():
            assert _cosine(model(x), got(x)) >= 0.99999, name
    for norm, _ in folded:
        ln = got.get_submodule(norm)
        assert torch.equal(ln.weight, torch.ones_like(ln.weight)) and torch.equal(ln.bias, torch.zeros_like(ln.bias))
        assert not ln.weight.requires_grad and not ln.bias.requires_grad, "a fine-tune must not grow a gain back"
    for norm in {"norm1", "norm2"} - {n for n, _ in folded}:
        assert torch.equal(got.get_submodule(norm).weight, model.get_submodule(norm).weight)


def test_layernorm_feeding_a_residual_is_left_alone_and_cluster_folds_with_example_args():
    model = _random_affine((torch.manual_seed(0), NormIntoResidual())[1])
    x = torch.randn(4, 32)
    out, rows = cluster(model, bits=4, example_args=(x,))
    by = {r["name"]: r for r in rows}
    assert by["fc2"]["folded_norm"] == "norm2" and by["fc1"]["folded_norm"] is None
    assert torch.equal(out.norm1.weight, model.norm1.weight) and torch.equal(out.norm1.bias, model.norm1.bias)
    assert torch.equal(out.norm2.weight, torch.ones(32))
    assert torch.unique(out.fc2.weight).numel() <= 16          # clustered after the fold: the gain is inside
    with torch.no_grad():
        assert _cosine(model(x), out(x)) > 0.98
    plain, prow = cluster(model, bits=4)                        # without inputs: no graph, no fold
    assert torch.equal(plain.norm2.weight, model.norm2.weight) and all(r["folded_norm"] is None for r in prow)


def test_layernorm_bias_goes_into_the_next_bias_of_a_low_rank_pair_or_a_new_bias():
    """A Linear without a bias (a low-rank pair's first factor) passes W beta on to the Linear after it; one whose
    output goes elsewhere gets a bias of its own. Exact either way."""
    import copy

    from edgeship.compress.lowrank import factorize

    class NoBias(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(16)
            self.a, self.b = nn.Linear(16, 8, bias=False), nn.Linear(16, 8, bias=False)
            self.c = nn.Linear(8, 4)

        def forward(self, x):
            h = self.norm(x)
            return self.c(torch.relu(self.a(h))) + self.b(h)[..., :4]

    torch.manual_seed(0)
    low, _ = factorize(PreNormBlock(64).eval(), rank_ratio=0.25)
    assert low.q[0].bias is None
    folded = {}
    for key, model, x in (("low-rank", _random_affine(low), torch.randn(2, 5, 64)),
                          ("no bias", _random_affine(NoBias()), torch.randn(3, 16))):
        got = folded[key] = copy.deepcopy(model)
        assert fold_layernorm(got, (x,)), key
        with torch.no_grad():
            assert _cosine(model(x), got(x)) >= 0.99999, key
    assert folded["low-rank"].q[0].bias is None, "W beta went into the second factor's bias"
    assert sum(p.numel() for p in folded["low-rank"].parameters()) == sum(p.numel() for p in low.parameters())
    assert folded["no bias"].a.bias is not None and folded["no bias"].b.bias is not None


@pytest.mark.slow
def test_clustered_transformer_encoder_in_tflite_holds_16_values_per_weight(tmp_path):
    """LiteRT's converter folds each LayerNorm's gain into the Linears after it (column j times gamma_j): clustered
    without the fold, a weight ships with hundreds of values; with it, every weight tensor holds <= 16."""
    from edgeship.export import get_exporter
    from edgeship.model import InputSpec, ModelSpec

    class Encoder(nn.Module):
        def __init__(self, dim: int = 32):
            super().__init__()
            self.embed = nn.Linear(8, dim)
            self.blocks = nn.Sequential(*(nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True,
                                                                     norm_first=True) for _ in range(2)),
                                        PreNormBlock(dim))
            self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

        def forward(self, x):
            return self.head(self.norm(self.blocks(self.embed(x))).mean(1))

    torch.manual_seed(0)
    model = _random_affine(Encoder())
    spec = ModelSpec(model, (InputSpec("tokens", (1, 6, 8)),), name="encoder")
    exporter = get_exporter("tflite")
    x = spec.example_inputs()
    clustered, rows = cluster(model, bits=4, example_args=x)
    assert sum(r["folded_norm"] is not None for r in rows) == 2 * 2 + 4     # in_proj, linear1; q, k, v, fc1
    got = exporter.export(dataclasses.replace(spec, module=clustered), tmp_path / "folded", "fp32").path
    counts = distinct_values(got)
    assert len(counts) >= 3 * 4 + 2 and max(counts.values()) <= 16, counts
    unfolded, _ = cluster(model, bits=4)
    before = exporter.export(dataclasses.replace(spec, module=unfolded), tmp_path / "unfolded", "fp32").path
    assert max(distinct_values(before).values()) > 16       # the converter's own fold: what the fold above prevents
    from edgeship_runtime import open_runtime
    with torch.no_grad():
        want = clustered(*x).numpy()
    assert np.allclose(open_runtime(got).run([x[0].numpy()])[0], want, atol=1e-4)
