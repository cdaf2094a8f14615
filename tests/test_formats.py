"""The format registry (edgeship_runtime.formats): a toy format registered from the test suite alone exports,
verifies, benches locally, shows in doctor and packages; and every per-format table agrees with the registry."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import edgeship_runtime
from edgeship import doctor, manifest as manifest_mod
from edgeship.bench import native
from edgeship.bench import profile as host_profile
from edgeship.errors import EdgeshipError
from edgeship.export import (DEFAULT_FORMATS, EXPORTERS, available, default_formats, exporter_class, get_exporter,
                             parse_formats, register_exporter, register_format, unregister_format)
from edgeship.model import InputSpec, ModelSpec
from edgeship.package import APPS
from edgeship_runtime import formats as registry
from edgeship_runtime import profile as runtime_profile
from edgeship_runtime import runtime_class
from edgeship_runtime.base import Runtime
from edgeship_runtime.formats import FORMATS, FormatSpec, Probe

from support.toy_npz_export import NpzExporter

SUPPORT = Path(__file__).parent / "support"
BUILTIN = ("onnx", "tflite", "executorch", "coreml", "torchscript")
NPZ = FormatSpec("npz", (".npz",), "toy_npz_runtime:NpzRuntime", probes=(Probe("numpy", "numpy"),),
                 runtime_pip=("numpy",), converter_pip=("numpy",), apps={"pi": 3})


@pytest.fixture
def npz_format(monkeypatch):
    """The toy format, registered for one test: its runtime module importable here and in the runners it starts."""
    monkeypatch.syspath_prepend(str(SUPPORT))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(SUPPORT), os.environ.get("PYTHONPATH")) if p))
    register_format(NPZ, NpzExporter)
    try:
        yield NPZ
    finally:
        unregister_format("npz")
    assert "npz" not in FORMATS and "npz" not in EXPORTERS and registry.exported_env() == {}


def linear_spec() -> ModelSpec:
    torch.manual_seed(0)
    layer = nn.Linear(8, 3).eval()
    return ModelSpec(layer, (InputSpec("x", (1, 8)),), task="classification", labels=["a", "b", "c"], name="toy")


@pytest.mark.slow
def test_a_toy_format_registered_from_the_tests_goes_end_to_end(npz_format, tmp_path, monkeypatch):
    from edgeship.bench.devices import parse_device
    from edgeship.bench.harness import BenchOptions, bench_folder
    from edgeship.package import package
    from edgeship.pipeline import ExportOptions, run_export

    # the registry and the exporter table know it; it is not a default format
    assert parse_formats("npz") == ["npz"] and "npz" not in DEFAULT_FORMATS and "npz" not in parse_formats(None)
    assert isinstance(get_exporter("npz"), NpzExporter) and available("npz") == (True, None)
    assert edgeship_runtime.format_of("x/model.npz") == "npz" and runtime_class("npz").name == "numpy-npz"
    assert json.loads(registry.exported_env()[registry.ENV_VAR])[0]["key"] == "npz"

    # export + verify in its own runtime
    spec, out = linear_spec(), tmp_path / "toy"
    report = run_export(spec, out, ExportOptions(["npz"], ["fp32"], verify_samples=3))
    [art] = report["artifacts"]
    assert (art["format"], art["status"], art["parity"]["status"]) == ("npz", "ok", "pass"), art
    assert art["parity"]["max_abs"] < 1e-5
    manifest = manifest_mod.load(out)       # validates: the schema's format enum has the registered key
    [entry] = manifest["artifacts"]
    assert (entry["format"], entry["path"], entry["runtime"]) == ("npz", "npz/model.npz", "numpy-npz")
    assert manifest["tools"]["numpy"] == np.__version__
    rt = edgeship_runtime.open_runtime(out / "npz" / "model.npz")
    x = spec.example_inputs(seed=5)[0]
    np.testing.assert_allclose(rt.run({"x": x.numpy()})[0], spec.module(x).detach().numpy(), rtol=1e-5, atol=1e-6)

    # bench on the local device: a subprocess runner that learns the format from EDGESHIP_FORMATS
    [bench] = bench_folder(out, parse_device("local"), BenchOptions(runs=3, warmup=1, threads=(1,), energy="off"))
    assert (bench["format"], bench["status"], bench["runtime"]) == ("npz", "ok", "numpy-npz"), bench
    assert bench["latency_ms"]["p50"] > 0

    # doctor lists it, with the versions of its packages
    rows = {r["format"]: r for r in doctor.diagnose()["formats"]}
    assert rows["npz"]["export"] and rows["npz"]["run"] and f"numpy {np.__version__}" in rows["npz"]["versions"]

    # packaged into the Pi bundle (apps={"pi": 3}: after the built-in formats), not into the Android app
    assert APPS["pi"].formats == ("tflite", "onnx", "executorch", "npz") and "npz" not in APPS["android"].formats
    res = package(out, "pi", dest=tmp_path / "toy-pi")
    assert [a["path"] for a in res.artifacts] == ["npz/model.npz"]
    manifest_mod.validate(json.loads((res.dest / "manifest.json").read_text()))
    assert (res.dest / "npz" / "model.npz").read_bytes() == (out / "npz" / "model.npz").read_bytes()
    with pytest.raises(EdgeshipError, match="no artifact usable by the Android demo"):
        package(out, "android", dest=tmp_path / "android-model")


def test_registering_refuses_what_would_make_the_tables_disagree(npz_format):
    with pytest.raises(ValueError, match="already registered"):
        registry.register(NPZ)
    with pytest.raises(ValueError, match="already has an exporter"):
        register_exporter("npz", NpzExporter)
    with pytest.raises(ValueError, match="not in the format registry"):
        register_exporter("safetensors", "x.y:Exporter")
    with pytest.raises(ValueError, match="suffix .onnx already belongs to 'onnx'"):
        registry.register(FormatSpec("onnx2", (".onnx",), "x:Y"))
    with pytest.raises(ValueError, match="built-in"):
        unregister_format("onnx")
    with pytest.raises(EdgeshipError, match="unknown format safetensors") as e:
        parse_formats("npz,safetensors")
    assert e.value.hint.endswith("torchscript, npz")


def tables() -> dict:
    """Every per-format table outside the registry, as {table: what it says per format}."""
    schema_file = json.loads(manifest_mod.SCHEMA_PATH.read_text())
    return {
        "exporters": sorted(EXPORTERS),
        "native tools": {k: t.binary for k, t in native.TOOLS.items()},
        "app formats": {name: app.formats for name, app in APPS.items()},
        "android app formats (native)": tuple(native.APP_FORMATS),
        "profilable (host)": tuple(host_profile.PROFILABLE),
        "profilers (runtime)": sorted(runtime_profile.PROFILERS),
        "schema enum (file)": schema_file["$defs"]["artifact"]["properties"]["format"]["enum"],
        "schema enum (loaded)": manifest_mod.schema()["$defs"]["artifact"]["properties"]["format"]["enum"],
        "default formats": tuple(DEFAULT_FORMATS),
        "doctor rows": [r["format"] for r in doctor.diagnose()["formats"]],
    }


def expected() -> dict:
    """What the registry says those tables must be."""
    apps = sorted({a for f in FORMATS.values() for a in f.apps})
    return {
        "exporters": sorted(FORMATS),
        "native tools": {f.key: f.native_tool for f in FORMATS.values() if f.native_tool},
        "app formats": {a: tuple(k for _, k in sorted((f.apps[a], f.key) for f in FORMATS.values() if a in f.apps))
                        for a in apps},
        "android app formats (native)": registry.app_formats("android"),
        "profilable (host)": tuple(f.key for f in FORMATS.values() if f.profilable),
        "profilers (runtime)": sorted(f.key for f in FORMATS.values() if f.profilable),
        "schema enum (file)": list(BUILTIN),
        "schema enum (loaded)": list(FORMATS),
        "default formats": tuple(f.key for f in FORMATS.values() if f.default),
        "doctor rows": list(FORMATS),
    }


def test_every_per_format_table_agrees_with_the_registry():
    assert tuple(FORMATS) == BUILTIN       # a new built-in format: add it here and in the schema file's enum
    got, want = tables(), expected()
    assert {k: v for k, v in got.items() if v != want[k]} == {}, "tables that disagree with FORMATS"
    assert sorted(APPS) == sorted({a for f in FORMATS.values() for a in f.apps})
    for key, spec in FORMATS.items():
        exporter = exporter_class(key)
        runtime = runtime_class(key)
        assert issubclass(runtime, Runtime) and f"{runtime.__module__}:{runtime.__name__}" == spec.runtime
        assert (exporter.format, exporter.suffix, exporter.runtime) == (key, spec.suffixes[0], runtime.name), key
        assert spec.converter_pip and spec.runtime_pip and spec.probes, key
        assert set(spec.converter_pip + spec.runtime_pip) <= set(manifest_mod.tool_packages()), key
        if spec.native_tool:
            tool = native.TOOLS[key]
            assert (tool.format, tool.runtime) == (key, runtime.name), key
    # the recipe's default formats are the registry's
    from edgeship.recipe import ExportSection
    assert list(ExportSection().formats) == list(DEFAULT_FORMATS) == default_formats()
    # --force replaces a folder holding only what edgeship writes: its files and one folder per registered format,
    # read from the registry itself (not a list of its own)
    from edgeship.outdir import WRITTEN
    assert not set(FORMATS) & WRITTEN


def test_a_registered_format_joins_every_table(npz_format):
    """The tables are read at each use: a format registered after import is in all of them."""
    registry.register(FormatSpec("npz", (".npz",), NPZ.runtime, probes=NPZ.probes, runtime_pip=("numpy",),
                                 converter_pip=("numpy",), apps={"pi": 3, "android": 5}, profilable=False,
                                 default=True), replace=True)
    got, want = tables(), expected()
    want["schema enum (file)"] = list(BUILTIN)
    want["profilers (runtime)"] = sorted(runtime_profile.PROFILERS)   # npz is not profilable: nothing to add
    assert {k: v for k, v in got.items() if v != want[k]} == {}
    assert "npz" in DEFAULT_FORMATS and parse_formats(None)[-1] == "npz"
    assert native.APP_FORMATS[-1] == "npz" and APPS["android"].formats[-1] == "npz"
    assert "npz" not in host_profile.PROFILABLE and "npz" not in native.TOOLS
