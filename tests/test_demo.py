"""`make demo` meets the compression targets it advertises (README "The demo (measured)").

The real demo command (edgeship.demo.DEMO: train a teacher on digits, distill, prune, int8, four formats, accuracy
in each runtime), written to a temporary folder, then its report.json checked against the targets:
int8 within 1 point of fp32 in every runtime that runs here, int8 files <= 0.3x fp32 in every format, the distilled
student (the better of distilled and no-teacher twin, chosen on validation data) >= 97% of the teacher's
accuracy with <= 25% of its parameters, and
structured pruning >= 1.7x fewer MACs, smaller files in every format, within 2 points after fine-tuning.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeship.demo import DEMO

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("demo")]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "digits"
    argv = list(DEMO)
    argv[argv.index("--out") + 1] = str(out)
    r = subprocess.run([sys.executable, "-m", "edgeship.cli", *argv, "--json"], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "report.json").read_text())["compression"] == json.loads(r.stdout)["compression"]
    return out


@pytest.fixture(scope="module")
def report(report_dir) -> dict:
    return json.loads((report_dir / "report.json").read_text())


def _stage(report: dict, name: str) -> dict:
    return next(s for s in report["compression"]["stages"] if s["stage"] == name)


def _artifacts(report: dict) -> dict[str, dict]:
    return {a["key"]: a for a in report["artifacts"]}


def test_int8_keeps_accuracy_in_every_runtime(report):
    arts = _artifacts(report)
    ran = [a for a in arts.values() if a["accuracy"]["status"] == "ok"]
    assert {a["format"] for a in ran} == {"onnx", "tflite", "executorch"}   # Core ML: needs macOS
    for a in ran:
        assert a["parity"]["status"] == "pass", a["key"]
        if a["precision"] == "int8":
            fp32 = arts[f"{a['format']}:fp32"]["accuracy"]["top1"]
            assert a["accuracy"]["top1"] >= fp32 - 0.01, (a["key"], a["accuracy"], fp32)
    coreml = arts["coreml:w8"]
    assert coreml["accuracy"]["status"] == "not run" and "macOS" in coreml["accuracy"]["reason"]


def test_int8_files_are_at_most_0_3_of_fp32_in_every_format(report):
    arts = _artifacts(report)
    quantized = {"onnx": "int8", "tflite": "int8", "executorch": "int8", "coreml": "w8"}
    for fmt, precision in quantized.items():
        ratio = arts[f"{fmt}:{precision}"]["size_bytes"] / arts[f"{fmt}:fp32"]["size_bytes"]
        assert ratio <= 0.30, f"{fmt}: int8 / fp32 file size {ratio:.3f}"


def _shipped_student(report: dict) -> dict:
    choice = report["compression"]["student"]
    return _stage(report, "distill" if choice["shipped"] == "distilled" else "student-without-teacher")


def test_the_better_student_ships_and_keeps_the_teacher_accuracy(report):
    """The demo trains the student with and without the teacher and ships the better one on the validation split.
    Which one wins at a 99% ceiling is one digit of noise that differs between CPUs (AVX2: distilled; AVX-512: often
    the twin), so the test asks what holds on any CPU: a choice was made on validation data and said, and the
    shipped student keeps >= 97% of the teacher's accuracy with <= 25% of its parameters. What the teacher adds is
    measured over seeds by `make bench-distill` and tests/compress/test_distill.py."""
    teacher, student, twin = _stage(report, "train"), _stage(report, "distill"), _stage(report, "student-without-teacher")
    choice = report["compression"]["student"]
    assert choice["shipped"] in ("distilled", "baseline") and "validation" in choice["why"], choice
    assert student["parameters"] == twin["parameters"] <= 0.25 * teacher["parameters"]
    assert _shipped_student(report)["accuracy"] >= 0.97 * teacher["accuracy"]


def test_structured_pruning_shrinks_what_ships(report):
    student, pruned = _shipped_student(report), _stage(report, "prune-structured")
    assert pruned["macs_ratio"] >= 1.7 and pruned["macs"] * 1.7 <= student["macs"]
    assert pruned["params_ratio"] >= 1.9   # the demo prunes 30% of the channels: about half the parameters
    assert pruned["accuracy"] >= student["accuracy"] - 0.02
    arts = _artifacts(report)
    rows = {r["format"]: r for r in pruned["shipped"]}
    assert set(rows) == {"onnx", "tflite", "executorch", "coreml"}
    for fmt, r in rows.items():
        # the scratch export of the pruned model is the file that shipped
        assert r["size_after"] == arts[f"{fmt}:fp32"]["size_bytes"], fmt
        assert r["size_before"] >= 1.8 * r["size_after"], r
        if fmt == "coreml":
            assert r["latency"].startswith("not run") and "macOS" in r["latency"]
        else:   # timed in its runtime; speed itself is a benchmark's job (make bench), not a test's
            assert r["p50_ms_before"] > 0 and r["p50_ms_after"] > 0 and r["rounds"] == 3


def test_report_html_shows_the_stages_and_what_pruning_shipped(report_dir):
    html = (report_dir / "report.html").read_text()
    assert "Compression stages" in html and "prune-structured: fp32 files before → after" in html
    assert html.count("<td>executorch</td>") >= 1 and "needs macOS" in html
