"""Real architectures (Hugging Face transformers classes from small configs, bench/architectures.py) in every format:
one per modality — a CNN with BatchNorm (ResNet), a text encoder given token ids, a padding mask and segment ids
(BERT), an audio encoder (Whisper's) — exported with the real converters, run in the real runtimes, within the
tolerance. ``make architectures`` runs all eleven models and writes bench/architectures.md."""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeship.export import EXPORTERS
from edgeship.model import load
from edgeship.pipeline import ExportOptions, run_export
from edgeship.verify import degenerate_reference, tolerance

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURES = ROOT / "bench" / "architectures.py"
FORMATS = ("onnx", "tflite", "executorch", "coreml")
PRECISIONS = {"resnet": ("fp32", "fp16"), "bert": ("fp32",), "whisper_encoder": ("fp32",)}
SAMPLES = 3


def _spec(model: str):
    return load(f"{ARCHITECTURES}:{model}")


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Export each model once per test worker (its cases share an xdist_group)."""
    cache = {}

    def get(model: str) -> dict:
        if model not in cache:
            out = tmp_path_factory.mktemp(model) / "dist"
            cache[model] = run_export(_spec(model), out, ExportOptions(FORMATS, PRECISIONS[model], verify_samples=SAMPLES))
        return cache[model]
    return get


CASES = [pytest.param(m, f, p, marks=[pytest.mark.xdist_group(f"arch-{m}"), pytest.mark.slow], id=f"{m}-{f}-{p}")
         for m, precisions in PRECISIONS.items() for f in FORMATS for p in precisions]


def test_every_format_is_in_the_suite():
    assert set(FORMATS) <= set(EXPORTERS)


@pytest.mark.parametrize("model,fmt,precision", CASES)
def test_architecture_runs_in_its_runtime_within_tolerance(exported, model, fmt, precision):
    report = exported(model)
    art = next(a for a in report["artifacts"] if a["key"] == f"{fmt}:{precision}")
    assert art["status"] == "ok", f"{art['key']} failed: {art.get('error')}"
    assert art["size_bytes"] > 10_000
    parity = art["parity"]
    metric, threshold = tolerance(precision)
    assert (parity["metric"], parity["threshold"]) == (metric, threshold)
    if fmt == "coreml" and platform.system() != "Darwin":
        assert parity["status"] == "not run" and "macOS" in parity["reason"]
        return
    assert parity["status"] == "pass", parity
    assert parity["samples"] == SAMPLES and parity["value"] >= threshold
    if precision == "fp32":
        assert parity["cosine"] >= 0.9999 and parity["max_abs"] < 1e-3
    if parity["top1_agreement"] is not None:
        assert parity["top1_agreement"] == 1.0


@pytest.mark.parametrize("model", ["resnet", "mobilenet_v2", "bert", "gpt2", "whisper_encoder", "wav2vec2"])
def test_references_depend_on_the_input(model):
    """The factories are built so that a parity pass means something: outputs neither zero, denormal nor the same
    for every input, and the integer inputs cover the model's real ranges (not 0..9)."""
    spec = _spec(model)
    refs = [[t.numpy() for t in spec.reference(spec.example_inputs(seed))] for seed in range(SAMPLES)]
    assert degenerate_reference(refs) is None
    assert min(float(np.std(r[0])) for r in refs) > 1e-3
    for i in spec.inputs:
        if i.name == "input_ids":
            assert i.range == (0, 1000)
        elif i.name == "token_type_ids":
            assert i.range == (0, 2)
        elif i.name == "attention_mask":
            assert i.kind == "mask"


def test_batchnorm_statistics_are_not_the_defaults():
    """Folding BatchNorm into the convolutions is tested only if its statistics and affine are not 0/1."""
    bns = [m for m in _spec("resnet").module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) >= 10
    for bn in bns:
        assert not bn.training
        assert bn.running_mean.abs().max() > 1e-3 and (bn.running_var - 1).abs().max() > 1e-2
        assert (bn.weight - 1).abs().max() > 1e-2 and bn.bias.abs().max() > 1e-3
