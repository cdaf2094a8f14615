"""The device probe and the runners read the format registry (edgeship_runtime.formats): a format registered in the
test alone is probed on the device and known to the runner the harness starts there."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from edgeship_runtime import formats
from edgeship_runtime.formats import FormatSpec, Probe

from edgeship.bench.devices import PROBE_PY, LocalDevice, probe_argv, probe_records
from edgeship.bench.harness import runner_env


@pytest.fixture
def toy_formats():
    """Three toy formats: one whose runtime imports (json), one that runs nowhere here, one whose import fails."""
    specs = [FormatSpec("toyjson", (".toyjson",), "json:JSONDecoder", probes=(Probe("json"),)),
             FormatSpec("toyelsewhere", (".toyelse",), "json:JSONDecoder", probes=(Probe("json"),),
                        platforms=("darwin", "plan9") if sys.platform != "darwin" else ("plan9",)),
             FormatSpec("toymissing", (".toymiss",), "json:JSONDecoder",
                        probes=(Probe("no_such_module_xyz", "no-such-dist"), Probe("json", how="find", deep="json.nope")))]
    for s in specs:
        formats.register(s)
    try:
        yield specs
    finally:
        for s in specs:
            formats.unregister(s.key)


def test_probe_records_follow_the_registry():
    keys = [r["format"] for r in probe_records()]
    assert keys == list(formats.FORMATS)
    tfl = next(r for r in probe_records() if r["format"] == "tflite")
    assert [p[0] for p in tfl["probes"]] == [p.module for p in formats.FORMATS["tflite"].probes]
    coreml = next(r for r in probe_records() if r["format"] == "coreml")
    assert coreml["platforms"] == list(formats.FORMATS["coreml"].platforms)


def test_a_registered_format_is_probed(toy_formats):
    info = LocalDevice().info()
    assert list(info.runtimes)[:5] == ["onnx", "tflite", "executorch", "coreml", "torchscript"]
    import json as json_mod
    assert info.runtimes["toyjson"] == json_mod.__version__ and info.runtime_modules["toyjson"] == "json"
    assert "toyjson" not in info.missing
    assert info.runtimes["toyelsewhere"] is None and "runs only on" in info.missing["toyelsewhere"]
    assert "plan9" in info.missing["toyelsewhere"]
    # the first probe fails, the second (only located) wins; the failure of the first is forgotten
    assert info.runtimes["toymissing"] and info.runtime_modules["toymissing"] == "json"
    assert "toymissing" not in info.missing


def test_deep_probe_imports_the_deep_module(toy_formats):
    cp = subprocess.run([sys.executable, "-c", PROBE_PY, *probe_argv(deep=True)], capture_output=True, text=True,
                        timeout=300)
    line = next(x for x in cp.stdout.splitlines() if x.startswith("PYPROBE="))
    probe = json.loads(line[len("PYPROBE="):])
    assert probe["runtimes"]["toymissing"] is None
    assert "no_such_module_xyz" in probe["missing"]["toymissing"] and "json.nope" in probe["missing"]["toymissing"]


def test_the_runner_environment_carries_registered_formats(toy_formats, tmp_path):
    dev = LocalDevice()
    check = "import edgeship_runtime.formats as f; print(sorted(k for k in f.FORMATS if k.startswith('toy')))"
    cp = dev.run([dev.python, "-c", check], 60, cwd=str(tmp_path), env=runner_env(str(tmp_path)), check=True)
    assert cp.stdout.strip() == "['toyelsewhere', 'toyjson', 'toymissing']"
    assert runner_env("/x")["PYTHONPATH"] == "/x"


def test_no_registered_format_no_extra_environment():
    assert runner_env("/x") == {"PYTHONPATH": "/x"}
