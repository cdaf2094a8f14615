"""The parity check cannot pass on nothing: degenerate references are inconclusive, with the reason."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeship import verify

RNG = np.random.default_rng(0)


def _samples(values):
    return [[np.asarray(v, np.float32)] for v in values]


@pytest.mark.parametrize("refs, words", [
    (_samples([np.zeros(10)] * 4), "all zeros"),
    (_samples([RNG.standard_normal(10) * 1e-41 for _ in range(4)]), "denormal"),
    (_samples([np.full(10, 1e-9)] * 4), "same for all 4 verification inputs"),
])
def test_a_degenerate_reference_is_inconclusive_whatever_the_artifact_gives(refs, words):
    for gots in (refs, _samples([np.zeros(10)] * 4), _samples([RNG.standard_normal(10) for _ in range(4)])):
        p = verify.compare(refs, gots, "fp32")
        assert p.status == "inconclusive" and words in p.reason and "--verify-data" in p.reason


def test_a_real_reference_still_passes_and_fails():
    refs = _samples([RNG.standard_normal(10) for _ in range(4)])
    assert verify.compare(refs, refs, "fp32").status == "pass"
    wrong = _samples([-np.asarray(r[0]) for r in refs])
    p = verify.compare(refs, wrong, "fp32")
    assert p.status == "fail" and "below the fp32 threshold" in p.reason


def test_a_sample_whose_reference_is_negligible_does_not_decide_the_cosine():
    """A text detector on a photo without text: PyTorch gives 1e-9 everywhere, a runtime's sigmoid gives 0.
    The worst-sample cosine leaves such a sample out (and says so); the others still decide."""
    text = [RNG.uniform(0, 1, 64) for _ in range(3)]
    refs = _samples(text + [np.full(64, 1e-9)])
    gots = _samples(text + [np.zeros(64)])
    p = verify.compare(refs, gots, "fp32")
    assert p.status == "pass" and "1 of 4 samples left out" in p.reason
    gots_bad = _samples([-t for t in text] + [np.zeros(64)])
    assert verify.compare(refs, gots_bad, "fp32").status == "fail"


@pytest.mark.slow
def test_export_of_a_model_with_a_zero_head_is_inconclusive_not_pass(tmp_path):
    """torchvision's ViT starts its head at zero: every output is 0, and the old check said PASS (cosine of two
    zero vectors taken as 1). The real CLI, the real onnxruntime: inconclusive, exit 1, the reason in the table."""
    model = tmp_path / "zero_head.py"
    model.write_text(
        "import torch\n"
        "from torch import nn\n"
        "def build():\n"
        "    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))\n"
        "    nn.init.zeros_(m[4].weight); nn.init.zeros_(m[4].bias)\n"
        "    return m.eval(), (torch.randn(1, 3, 16, 16),)\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "edgeship.cli", "export", f"{model}:build", "-f", "onnx",
                           "-p", "fp32", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "inconclusive" in proc.stdout and "all zeros" in proc.stdout.replace("\n", " ")
    art = json.loads((out / "report.json").read_text())["artifacts"][0]
    assert art["parity"]["status"] == "inconclusive"


def test_every_precision_is_one_typed_scheme_that_carries_its_tolerance():
    from edgeship.errors import EdgeshipError
    from edgeship.export import EXPORTERS, get_exporter
    from edgeship.recipe import QuantizeSection

    for fmt in EXPORTERS:   # every precision an exporter makes is a scheme
        assert get_exporter(fmt).precisions <= set(verify.SCHEMES), fmt
    assert {n: s.kind for n, s in verify.SCHEMES.items()} == {
        "fp32": "float", "fp16": "float", "int8": "static", "dynamic-int8": "dynamic",
        "w8": "weight-only", "w6": "weight-only", "w4": "weight-only"}
    assert verify.QUANTIZED == {n for n, s in verify.SCHEMES.items() if s.kind != "float"}
    assert verify.tolerance("w6") == ("sqnr_db", 15.0) and verify.scheme("w4").bits == 4
    with pytest.raises(EdgeshipError) as e:
        verify.scheme("int4")
    assert "unknown precision 'int4'" in str(e.value) and "fp32, fp16, int8" in e.value.hint
    with pytest.raises(EdgeshipError):
        QuantizeSection(precision="int4")


def test_top1_agreement_counts_every_row_of_a_batch():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((4, 5)).astype(np.float32)
    got = ref.copy()
    got[2] = -got[2]                      # one row of four now picks another class
    p = verify.compare([[ref], [ref]], [[ref], [got]], "int8", classifier=True)
    assert p.top1_agreement == pytest.approx(7 / 8)
