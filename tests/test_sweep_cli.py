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


def test_lowrank_sweep_factorizes_each_point_and_refuses_both_axes(tmp_path):
    """--lowrank: one point per energy kept (1.0 leaves the model whole), fewer parameters as it drops, rows keyed
    by energy in report.json (schema-checked on write), sweep.png drawn; --prune with --lowrank is refused."""
    out = tmp_path / "s"
    r = run("sweep", "example:digits_cnn", "--lowrank", "1.0,0.8,0.5", "--eval", "digits", "--out", str(out),
            "--finetune-epochs", "1", "--train-epochs", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "report.json").read_text())
    rows = {row["energy"]: row for row in report["sweep"]}
    assert report["method"] == "lowrank" and set(rows) == {1.0, 0.8, 0.5} and (out / "sweep.png").is_file()
    assert rows[1.0]["layers_factorized"] == 0 and rows[0.5]["layers_factorized"] >= 1
    assert rows[0.5]["params"] < rows[1.0]["params"] and rows[0.5]["macs"] < rows[1.0]["macs"]
    assert "energy" in r.stdout and "low-rank sweep" in r.stdout
    bad = run("sweep", "example:digits_cnn", "--lowrank", "0.9", "--prune", "0.5", "--eval", "digits",
              "--out", str(tmp_path / "t"))
    assert bad.returncode != 0 and "not both" in bad.stdout + bad.stderr and not (tmp_path / "t").exists()
