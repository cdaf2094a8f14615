"""`python -m edgeship_runtime.bench` as a subprocess: the JSON it prints, its inputs, its errors."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgeship_runtime.bench import INT_HIGH, random_inputs

KEYS = {"runtime", "runtime_version", "format", "model", "threads", "load_ms", "first_run_ms", "warmup", "runs",
        "latency_ms", "cv", "peak_rss_mb", "load_rss_delta_mb", "inputs", "notes", "python", "platform", "cpu_features",
        "batch", "items_per_s"}


def bench(*args, check_rc=0) -> dict:
    p = subprocess.run([sys.executable, "-m", "edgeship_runtime.bench", *map(str, args)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == check_rc, p.stdout + p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must hold one JSON line, got: {p.stdout!r}"
    return json.loads(lines[0])


def check_result(r: dict, *, runtime: str, runs: int, warmup: int, inputs: list) -> None:
    assert set(r) == KEYS
    assert r["runtime"] == runtime and r["runtime_version"]
    cpu = r["cpu_features"]   # read from this Linux host's /proc/cpuinfo
    assert cpu["source"] == "/proc/cpuinfo" and cpu["flags"] and cpu["int8_dot"] in (True, False)
    assert r["runs"] == runs and r["warmup"] == warmup
    lat = r["latency_ms"]
    assert set(lat) == {"mean", "std", "p50", "p90", "p99", "min", "max"}
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"] and lat["std"] >= 0
    assert r["cv"] == pytest.approx(lat["std"] / lat["mean"])
    assert r["load_ms"] > 0 and r["first_run_ms"] > 0
    assert r["peak_rss_mb"] > 10 and r["load_rss_delta_mb"] is not None and r["load_rss_delta_mb"] >= 0
    assert r["inputs"] == inputs
    assert r["python"] == ".".join(map(str, sys.version_info[:3])) and r["platform"]


def test_onnx(models, tmp_path):
    path = models["cnn"].path("onnx")
    out = tmp_path / "sub" / "bench.json"
    r = bench(path, "--runs", 7, "--warmup", 2, "--threads", 1, "--json-out", out)
    check_result(r, runtime="onnxruntime", runs=7, warmup=2,
                 inputs=[{"name": "image", "shape": [1, 3, 32, 32], "dtype": "float32"}])
    assert r["threads"] == 1 and r["model"] == str(path) and r["format"] == "onnx"
    assert json.loads(out.read_text()) == r
    assert [p.name for p in out.parent.iterdir()] == ["bench.json"]  # no temp file left behind


def test_tflite_with_manifest_and_npz(models, tmp_path):
    m = models["transformer"]
    path = m.path("tflite")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"inputs": [{"name": "tokens", "shape": [1, 16], "dtype": "int64",
                                                "layout": "NT"}]}))
    r = bench(path, "--manifest", manifest, "--runs", 5, "--warmup", 0)
    check_result(r, runtime="litert", runs=5, warmup=0,
                 inputs=[{"name": "args_0", "shape": [1, 16], "dtype": "int32"}])  # int64 spec, cast for LiteRT
    npz = tmp_path / "x.npz"
    np.savez(npz, tokens=m.example["tokens"])
    r = bench(path, "--inputs", npz, "--runs", 3, "--warmup", 1)
    check_result(r, runtime="litert", runs=3, warmup=1,
                 inputs=[{"name": "args_0", "shape": [1, 16], "dtype": "int32"}])
    manifest.write_text(json.dumps({"inputs": [{"name": "a", "shape": [1], "dtype": "int64"}] * 2}))
    err = bench(path, "--manifest", manifest, check_rc=2)
    assert "lists 2 input(s), transformer.tflite takes 1" in err["error"]


@pytest.mark.slow
def test_executorch(models):
    r = bench(models["two"].path("executorch"), "--runs", 5, "--warmup", 1, "--threads", 1)
    check_result(r, runtime="executorch", runs=5, warmup=1,
                 inputs=[{"name": "input_0", "shape": [1, 8], "dtype": "float32"},
                         {"name": "input_1", "shape": [1, 8], "dtype": "float32"}])
    assert r["threads"] == 1


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_coreml_on_linux_is_an_error_with_a_hint(models):
    err = bench(models["transformer"].path("coreml"), check_rc=2)
    assert set(err) == {"error", "hint"}
    assert err["error"].startswith("RuntimeUnavailable: Core ML prediction needs macOS")
    assert "Mac" in err["hint"]


def test_errors_are_json(tmp_path, models):
    err = bench(tmp_path / "nope.onnx", check_rc=2)
    assert err["error"].startswith("FileNotFoundError: model file not found") and err["hint"] is None
    err = bench(models["cnn"].path("onnx"), "--runs", "x", check_rc=2)
    assert "invalid int value: 'x'" in err["error"] and err["hint"].startswith("usage:")
    err = bench(models["cnn"].path("onnx"), "--runs", 0, check_rc=2)
    assert "--runs must be >= 1" in err["error"]
    npz = tmp_path / "bad.npz"
    np.savez(npz, image=np.zeros((1, 3, 16, 16), np.float32))
    err = bench(models["cnn"].path("onnx"), "--inputs", npz, check_rc=2)
    assert "expects shape [1, 3, 32, 32]" in err["error"]


def test_random_inputs_are_seeded_and_bounded():
    specs = [{"name": "image", "shape": [1, 3, 4, 4], "dtype": "float32"},
             {"name": "tokens", "shape": [2, 500], "dtype": "int64"},
             {"name": "ids", "shape": [None, 300], "dtype": "int32", "low": 5, "high": 9},
             {"name": "mask", "shape": [8], "dtype": "bool"}]
    a, b, c = random_inputs(specs, seed=0), random_inputs(specs, seed=0), random_inputs(specs, seed=1)
    assert list(a) == ["image", "tokens", "ids", "mask"]
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["image"], c["image"])
    assert a["image"].dtype == np.float32 and a["image"].std() > 0.5
    assert a["tokens"].dtype == np.int64 and a["tokens"].min() == 0 and a["tokens"].max() == INT_HIGH - 1
    assert a["ids"].shape == (1, 300) and a["ids"].min() == 5 and a["ids"].max() == 8
    assert a["mask"].dtype == np.bool_
