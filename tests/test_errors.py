"""Errors that point the right way (#13 points 5 and 7): the exact message a user gets, from real converters and
real models, each without a traceback unless --debug."""
from __future__ import annotations

import json

import pytest
from test_cli import run

from edgeship.pipeline import DATA_DEPENDENT_HINT

# NMS-like post-processing: how many boxes pass the threshold decides the control flow (line 6), which torch.export
# cannot trace. Every converter used to blame the first op in its log (aten.gt.Scalar) and keep colour codes.
DETECTOR = '''\
import torch


def batched_nms(boxes, scores, k: int = 4):
    keep = torch.nonzero(scores > 0.5).squeeze(1)
    if keep.numel() < k:
        return boxes[:k]
    return boxes[keep[:k]]


class Detector(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x):
        out = self.head(x)
        return batched_nms(out[:, :4], out[:, 4].sigmoid())


def detector():
    return Detector(), (torch.randn(16, 8),)
'''
GUARD = ("GuardOnDataDependentSymNode: Could not guard on data-dependent expression u0 < 4 "
         "(at detector.py:6 in batched_nms)")


@pytest.mark.slow
def test_converter_failure_quotes_the_root_cause(tmp_path):
    (tmp_path / "detector.py").write_text(DETECTOR)
    r = run("export", "detector.py:detector", "--formats", "onnx,executorch,tflite", "--out", "o", "--json", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stdout + r.stderr and "\x1b[" not in r.stdout
    rows = json.loads(r.stdout)["artifacts"]
    assert {a["format"]: a["error"] for a in rows} == {f: f"the {f} converter failed: {GUARD}"
                                                       for f in ("onnx", "executorch", "tflite")}
    assert {a["hint"] for a in rows} == {DATA_DEPENDENT_HINT}


@pytest.mark.slow
def test_debug_shows_the_traceback_of_an_executorch_int8_failure(tmp_path):
    (tmp_path / "detector.py").write_text(DETECTOR)
    args = ("export", "detector.py:detector", "--formats", "executorch", "--precision", "int8", "--out", "o")
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert f"executorch:int8: the executorch converter failed: {GUARD} hint: {DATA_DEPENDENT_HINT}" in " ".join(r.stdout.split())
    assert "Traceback" not in r.stdout + r.stderr
    r = run("--debug", *args, "--force", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    tb = r.stderr[r.stderr.index("the executorch converter raised (int8):"):]
    assert tb.splitlines()[1] == "Traceback (most recent call last):"
    assert 'detector.py", line 6, in batched_nms' in tb
    assert "torch.fx.experimental.symbolic_shapes.GuardOnDataDependentSymNode: Could not guard" in tb
