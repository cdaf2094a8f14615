"""Opt-in: the harness on real hardware, e.g. `pytest tests/bench/test_real_device.py --device ssh://pi@raspberrypi.local`
or `--device adb:R58M123ABC` (skipped without --device). The same checks as the loopback tests, on the device."""
from __future__ import annotations

import pytest

from edgeship.bench.devices import parse_device
from edgeship.bench.harness import BenchOptions, bench_folder
from edgeship.examples import tiny_cnn
from edgeship.pipeline import ExportOptions, run_export

pytestmark = [pytest.mark.device, pytest.mark.slow]


def pytest_generate_tests(metafunc):
    if "device_url" in metafunc.fixturenames:
        urls = metafunc.config.getoption("--device") or ["(none)"]
        metafunc.parametrize("device_url", urls)


def test_bench_on_real_device(tmp_path, device_url):
    folder = tmp_path / "tiny"
    run_export(tiny_cnn(), folder, ExportOptions(["onnx", "tflite"], ("fp32",), verify_samples=2))
    device = parse_device(device_url)
    info = device.info()
    entries = bench_folder(folder, device, BenchOptions(runs=20, warmup=3))
    assert entries, "no bench entries"
    ran = [e for e in entries if e["status"] == "ok"]
    for e in entries:
        if e["status"] == "skipped":
            assert e["reason"], e
    assert ran or not any(info.runtimes.values()), entries
    for e in ran:
        lat = e["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert e["peak_rss_mb"] > 0 and e["load_ms"] > 0
        assert e["energy"]["available"] or e["energy"]["reason"]
