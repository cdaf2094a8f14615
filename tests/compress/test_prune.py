"""Pruning: structured channel pruning shrinks the dense model, unstructured pruning leaves no hooks."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune as tprune

from edgeship.compress.prune import (count_macs, count_params, has_pruning_hooks, make_permanent, output_layers,
                                     plot_sweep, prune_structured, prune_unstructured, sweep, weight_sparsity)
from edgeship.compress.train import TrainConfig, evaluate
from edgeship.errors import EdgeshipError
from edgeship.examples import InvertedResidual, digits_cnn, tiny_cnn


@pytest.mark.slow
def test_structured_half_on_digits_is_smaller_faster_and_recovers(teacher, digits):
    before = evaluate(teacher.module, digits["test"])
    original = copy.deepcopy(teacher.module.state_dict())
    res = prune_structured(teacher, 0.5, train=digits["train"], val=digits["val"],
                           finetune=TrainConfig(epochs=8, lr=1e-3, patience=4))
    after = evaluate(res.module, digits["test"])
    assert res.macs_ratio >= 1.7, res.summary()
    assert res.params_after < res.params_before
    assert res.macs_after == count_macs(res.module, teacher.example_inputs())
    assert res.params_after == count_params(res.module)
    assert res.sparsity == pytest.approx(1 - res.params_after / res.params_before)
    # a smaller dense model: the conv widths really are halved, and the classifier keeps its 10 outputs
    convs = [m for m in res.module.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32]
    assert res.spec.check_runs()[0].shape == (1, 10)
    assert after >= before - 0.02, f"pruned+fine-tuned {after:.4f} vs unpruned {before:.4f}"
    # the teacher itself is untouched
    for k, v in teacher.module.state_dict().items():
        assert torch.equal(v, original[k]), k


def test_structured_on_mobilenet_style_residual_depthwise():
    spec = tiny_cnn()
    x = spec.example_inputs()
    res = prune_structured(spec, 0.5)
    out = res.spec.check_runs()[0]
    assert out.shape == (1, 10)
    assert res.params_after < res.params_before and res.macs_after < res.macs_before
    blocks = [m for m in res.module.modules() if isinstance(m, InvertedResidual)]
    for b in blocks:
        convs = [m for m in b.modules() if isinstance(m, nn.Conv2d)]
        for c in convs:
            if c.groups > 1:   # depthwise: groups == in == out after pruning
                assert c.groups == c.in_channels == c.out_channels
        if b.residual:         # the residual add still sees equal widths
            assert convs[0].in_channels == convs[-1].out_channels
    assert any(b.residual for b in blocks)
    # pruned channels are gone from the graph, not zeroed: no all-zero output channel remains
    for m in res.module.modules():
        if isinstance(m, nn.Conv2d):
            assert (m.weight.detach().abs().flatten(1).sum(1) > 0).all()
    # runs under torch.export (what the exporters do)
    ep = torch.export.export(res.module.eval(), x)
    torch.testing.assert_close(ep.module()(*x), res.module(*x))


def test_output_layers_are_kept():
    spec = digits_cnn()
    assert output_layers(spec.module, spec.example_inputs()) == [spec.module.classifier]


def test_unstructured_global_and_per_layer_leave_no_hooks():
    spec = digits_cnn()
    keys = set(spec.module.state_dict())
    for scope in ("global", "layer"):
        for target in (0.3, 0.5, 0.8):
            res = prune_unstructured(spec, target, scope=scope)
            assert not has_pruning_hooks(res.module)
            assert set(res.module.state_dict()) == keys      # no weight_orig / weight_mask left
            assert abs(res.sparsity - target) <= 0.01, (scope, target, res.sparsity)
            zeros = sum(int((m.weight == 0).sum()) for m in res.module.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
            total = sum(m.weight.numel() for m in res.module.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
            assert res.sparsity == pytest.approx(zeros / total)
            assert res.params_after == res.params_before and res.macs_after == res.macs_before
            if scope == "layer":
                for m in res.module.modules():
                    if isinstance(m, (nn.Conv2d, nn.Linear)):
                        assert abs(float((m.weight == 0).float().mean()) - target) <= 0.02
    assert weight_sparsity(spec.module) == 0.0     # the input spec was not touched


def test_unstructured_smallest_weights_go():
    spec = digits_cnn()
    res = prune_unstructured(spec, 0.5, scope="global")
    kept = torch.cat([m.weight.detach().abs().flatten() for m in res.module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])
    orig = torch.cat([m.weight.detach().abs().flatten() for m in spec.module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])
    threshold = orig.kthvalue(int(0.5 * orig.numel())).values
    assert (orig[kept == 0] <= threshold + 1e-12).all()
    assert torch.equal(kept[kept != 0], orig[kept != 0])


def test_iterative_unstructured_finetune_keeps_zeros(digits):
    spec = digits_cnn()
    small = digits["train"].subset(np.arange(200))
    res = prune_unstructured(spec, 0.6, steps=2, train=small, val=digits["val"], finetune=TrainConfig(epochs=1))
    assert not has_pruning_hooks(res.module)
    assert abs(res.sparsity - 0.6) <= 0.01
    assert [round(s["target_sparsity"], 2) for s in res.steps] == [0.3, 0.6]
    assert all("finetune" in s for s in res.steps)


def test_has_pruning_hooks_and_make_permanent():
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    assert not has_pruning_hooks(m)
    tprune.l1_unstructured(m[0], "weight", amount=0.5)
    tprune.random_unstructured(m[2], "weight", amount=0.5)
    tprune.l1_unstructured(m[2], "weight", amount=0.5)     # a PruningContainer
    assert has_pruning_hooks(m)
    assert make_permanent(m) == 2
    assert not has_pruning_hooks(m)
    assert set(m.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert int((m[2].weight == 0).sum()) == 6   # 4 then 2 of the remaining 4


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "half"])
@pytest.mark.parametrize("method", [prune_structured, prune_unstructured])
def test_sparsity_outside_range_is_an_error(bad, method):
    with pytest.raises(EdgeshipError, match=r"sparsity"):
        method(digits_cnn(), bad)


def test_unknown_ignored_layer_and_bare_module_without_inputs():
    with pytest.raises(EdgeshipError, match="not found"):
        prune_structured(digits_cnn(), 0.5, ignored_layers=["nope"])
    with pytest.raises(EdgeshipError, match="example_inputs"):
        prune_structured(digits_cnn().module, 0.5)


@pytest.mark.slow
def test_sweep_rows_and_plot(teacher, digits, tmp_path):
    val = digits["val"]
    rows = sweep(teacher, [0.0, 0.25, 0.5], digits["train"], val, finetune_epochs=1)
    assert [r.sparsity for r in rows] == [0.0, 0.25, 0.5]
    assert rows[0].accuracy == pytest.approx(evaluate(teacher.module, val))
    assert rows[0].macs > rows[1].macs > rows[2].macs and rows[0].params > rows[1].params > rows[2].params
    assert all(0.0 <= r.accuracy <= 1.0 for r in rows)
    un = sweep(teacher, [0.5], None, val, method="unstructured")
    assert un[0].macs == rows[0].macs and abs(un[0].real_sparsity - 0.5) <= 0.01
    path = plot_sweep(rows, tmp_path / "sweep.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list(tmp_path.glob(".*tmp"))


def test_structured_on_a_model_it_cannot_shrink_is_an_edgeship_error():
    from edgeship.examples import tiny_lstm
    with pytest.raises(EdgeshipError, match="structured pruning") as e:
        prune_structured(tiny_lstm(), 0.5)
    assert "unstructured" in e.value.hint
