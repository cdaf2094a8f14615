"""`edgeship sweep` as a user runs it: the real CLI in a subprocess, real training and pruning on the digits."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

EDGESHIP = [sys.executable, "-m", "edgeship.cli"]


def run(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(EDGESHIP + list(args), capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.mark.slow
def test_sweep_writes_the_curve_with_accuracy(tmp_path):
    out = tmp_path / "sweep"
    r = run("sweep", "example:digits_cnn", "--prune", "0,0.5", "--eval", "digits", "--train-epochs", "2",
            "--finetune-epochs", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "pruning sweep" in r.stdout and "sweep.png" in r.stdout
    png = (out / "sweep.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "sweep" and report["method"] == "structured" and report["plot"] == "sweep.png"
    assert report["tools"]["torch"].startswith("2.13")
    base, half = report["sweep"]
    assert (base["sparsity"], half["sparsity"]) == (0.0, 0.5)
    for row in (base, half):
        assert isinstance(row["accuracy"], float) and 0.0 <= row["accuracy"] <= 1.0
    assert base["accuracy"] > 0.5                     # trained: far above chance (0.1) on the held-out digits
    assert half["params"] < base["params"] and half["macs"] < base["macs"]   # structured pruning really shrinks
    assert half["real_sparsity"] > 0.3
    html = (out / "report.html").read_text()
    assert "<img src='sweep.png'" in html and "0.50" in html
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "sweep.png"]


@pytest.mark.parametrize("prune,fragment", [
    ("0,1.0", "sparsity must be in [0, 1), got 1.0"),
    ("0,half", "is not a comma-separated list of numbers"),
])
def test_sweep_bad_sparsity_is_a_clear_error(tmp_path, prune, fragment):
    r = run("sweep", "example:digits_cnn", "--prune", prune, "--eval", "digits", "--out", "o", cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert fragment in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert not (tmp_path / "o").exists()
