"""The trap from STACK.md: a model still carrying torch.nn.utils.prune hooks, exported to ExecuTorch, gives
wrong outputs with no error. The parity gate must catch it, and `run_export` must not fall into it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn.utils import prune

from edgeship import verify
from edgeship.examples import tiny_cnn
from edgeship.pipeline import ExportOptions, export_artifact, run_export

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pruning_trap")]


def _hooked():
    spec = tiny_cnn()
    for m in spec.module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            prune.l1_unstructured(m, "weight", amount=0.5)
    return spec


def test_parity_gate_catches_pruning_hooks_in_executorch(tmp_path):
    spec = _hooked()
    inputs = [spec.example_inputs(s) for s in range(3)]
    feeds = [[t.numpy() for t in x] for x in inputs]
    refs = [[t.numpy() for t in spec.reference(x)] for x in inputs]
    exported, _ = export_artifact(spec, "executorch", "fp32", tmp_path)   # no safety net: the raw exporter
    parity = verify.check_artifact(exported.path, "executorch", "fp32", feeds, refs, classifier=True)
    assert parity.status == "fail", parity
    assert parity.value < verify.tolerance("fp32")[1]


def test_run_export_makes_pruning_permanent_first(tmp_path):
    spec = _hooked()
    report = run_export(spec, tmp_path / "out", ExportOptions(["executorch"], ("fp32",), verify_samples=3))
    assert report["artifacts"][0]["parity"]["status"] == "pass"
    assert "made permanent" in report["notes"][0]
    assert any(hasattr(m, "weight_orig") for m in spec.module.modules())   # the user's model keeps its hooks
