"""The demo apps against the contracts, without an Android SDK or Xcode (neither exists on these machines).

* The example manifests the apps ship (Kotlin core tests, EdgeshipKit resources / SwiftUI previews) follow the schema.
* Light consistency of the sources with the schema: every JSON key the Kotlin parser reads (ManifestKeys' string
  constants) and the Swift decoder reads (CodingKeys raw values in Manifest.swift) is a property name somewhere in
  manifest.schema.json, and the keys an app cannot work without appear in both. A typo or a renamed schema key fails.
* The benchmark JSON the apps write has the Python runner's keys (Kotlin: run for real; Swift: its CodingKeys).
* The Gradle version catalog pins every version, and the runtime AARs match pyproject.toml's Python runtime pins.
* The Xcode project parses and points at the folder `edgeship package --app ios` writes and at EdgeshipKit.
* With a Kotlin compiler present (Debian: apt-get install kotlin junit4), the pure-Kotlin core module is compiled, its
  JUnit tests run, and its preprocessing / statistics / top-k are compared with raspberrypi/classify.py and numpy.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from edgeship import manifest as manifest_mod

from package_support import REPO

ANDROID = REPO / "android-demo"
IOS = REPO / "ios-demo"
KOTLIN_CORE = ANDROID / "core" / "src"
EXAMPLES = [KOTLIN_CORE / "test" / "resources" / "manifest.example.json",
            IOS / "EdgeshipKit" / "Sources" / "EdgeshipKit" / "Resources" / "manifest.example.json"]
# what a classification app cannot work without
NEEDED_KEYS = {"schema_version", "name", "labels", "inputs", "outputs", "artifacts", "shape", "dtype", "layout",
               "preprocess", "color_order", "value_range", "mean", "std", "invert", "meaning", "format",
               "precision", "path", "sha256", "runtime"}
BENCH_KEYS = {"runtime", "runtime_version", "format", "model", "threads", "load_ms", "first_run_ms", "warmup", "runs",
              "latency_ms", "cv", "batch", "items_per_s", "peak_rss_mb", "load_rss_delta_mb", "inputs", "notes",
              "python", "platform", "cpu_features"}


_ROOT = object()


def schema_keys(node=_ROOT) -> set[str]:
    """Every property name anywhere in the manifest schema."""
    node = manifest_mod.schema() if node is _ROOT else node
    keys: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "properties" and isinstance(v, dict):
                keys |= set(v)
            keys |= schema_keys(v)
    elif isinstance(node, list):
        for v in node:
            keys |= schema_keys(v)
    return keys


def kotlin_manifest_keys() -> set[str]:
    text = (KOTLIN_CORE / "main" / "kotlin" / "dev" / "edgeship" / "core" / "Manifest.kt").read_text()
    body = text[text.index("object ManifestKeys"):]
    body = body[:body.index("\n}\n")]
    return set(re.findall(r'const val \w+ = "([^"]+)"', body))


def swift_coding_keys(path: Path, type_names: tuple[str, ...] | None = None) -> set[str]:
    """Raw values of `case x = "key"` inside `enum CodingKeys` blocks (optionally only in the named types)."""
    text = path.read_text()
    keys: set[str] = set()
    for m in re.finditer(r"(?:struct|class|enum) (\w+)[^{]*\{", text):
        if type_names and m.group(1) not in type_names:
            continue
        rest = text[m.end():]
        ck = re.search(r"enum CodingKeys: String, CodingKey \{(.*?)\n\s*\}", rest, re.S)
        if ck:
            block = ck.group(1)
            keys |= set(re.findall(r'case \w+ = "([^"]+)"', block))
            # `case a, b, c` without raw values: the names are the keys
            for names in re.findall(r"case ([a-z]\w*(?:, *\w+)*)\s*$", block, re.M):
                keys |= {n.strip() for n in names.split(",")}
    return keys


@pytest.mark.parametrize("path", EXAMPLES, ids=["android", "ios"])
def test_example_manifests_follow_the_schema(path):
    manifest = json.loads(path.read_text())
    manifest_mod.validate(manifest, str(path))
    manifest_mod.check_version(manifest, str(path))
    assert manifest["inputs"][0]["preprocess"], "the example should exercise preprocessing"


def test_example_manifests_carry_the_apps_formats():
    android, ios = (json.loads(p.read_text()) for p in EXAMPLES)
    assert {a["format"] for a in android["artifacts"]} == {"tflite", "executorch", "onnx"}
    assert {a["format"] for a in ios["artifacts"]} == {"coreml"}
    assert all("/" not in a["path"] for a in ios["artifacts"]), "iOS bundles flatten resources"


def test_kotlin_reads_only_schema_keys():
    keys = kotlin_manifest_keys()
    assert keys, "no ManifestKeys constants found"
    unknown = keys - schema_keys()
    assert not unknown, f"Manifest.kt reads keys the schema does not have: {sorted(unknown)}"
    assert NEEDED_KEYS <= keys, f"Manifest.kt never reads {sorted(NEEDED_KEYS - keys)}"
    # and every constant is used by the parser, not only declared
    text = (KOTLIN_CORE / "main" / "kotlin" / "dev" / "edgeship" / "core" / "Manifest.kt").read_text()
    for const in re.findall(r"const val (\w+) =", text):
        assert len(re.findall(rf"\b{const}\b", text)) >= 2 or const == "CREATED", f"ManifestKeys.{const} is never read"


def test_swift_reads_only_schema_keys():
    keys = swift_coding_keys(IOS / "EdgeshipKit" / "Sources" / "EdgeshipKit" / "Manifest.swift")
    assert keys, "no CodingKeys found"
    unknown = keys - schema_keys()
    assert not unknown, f"Manifest.swift decodes keys the schema does not have: {sorted(unknown)}"
    assert NEEDED_KEYS <= keys, f"Manifest.swift never decodes {sorted(NEEDED_KEYS - keys)}"


def test_both_apps_refuse_the_next_major_version():
    major = int(manifest_mod.SCHEMA_VERSION.split(".")[0])
    kt = (KOTLIN_CORE / "main" / "kotlin" / "dev" / "edgeship" / "core" / "Manifest.kt").read_text()
    swift = (IOS / "EdgeshipKit" / "Sources" / "EdgeshipKit" / "Manifest.swift").read_text()
    assert re.search(rf"const val SUPPORTED_MAJOR = {major}\b", kt)
    assert re.search(rf"static let supportedMajor = {major}\b", swift)
    pi = (REPO / "raspberrypi" / "classify.py").read_text()
    assert re.search(rf"^SCHEMA_MAJOR = {major}\b", pi, re.M)


def test_swift_bench_json_has_the_runners_keys():
    keys = swift_coding_keys(IOS / "EdgeshipKit" / "Sources" / "EdgeshipKit" / "Bench.swift", ("BenchResult",))
    assert keys == BENCH_KEYS
    assert swift_coding_keys(IOS / "EdgeshipKit" / "Sources" / "EdgeshipKit" / "Bench.swift",
                             ("LatencyStats",)) == {"mean", "std", "p50", "p90", "p99", "min", "max"}


def test_gradle_pins_every_version_and_matches_the_python_runtimes():
    catalog = tomllib.loads((ANDROID / "gradle" / "libs.versions.toml").read_text())
    for name, version in catalog["versions"].items():
        assert re.fullmatch(r"\d+(\.\d+)+", version), f"{name} = {version!r} is not a pinned version"
    pyproject = (REPO / "pyproject.toml").read_text()
    pins = dict(re.findall(r'"([a-z-]+)==([\d.]+)"', pyproject))
    assert catalog["versions"]["onnxruntime"] == pins["onnxruntime"]
    assert catalog["versions"]["executorch"] == pins["executorch"]
    assert catalog["versions"]["litert"] == pins["ai-edge-litert"]
    libs = {v["module"] if "module" in v else f"{v['group']}:{v['name']}" for v in catalog["libraries"].values()}
    assert {"org.pytorch:executorch-android", "com.microsoft.onnxruntime:onnxruntime-android",
            "com.google.ai.edge.litert:litert"} <= libs
    app = (ANDROID / "app" / "build.gradle.kts").read_text()
    for ref in ("libs.litert", "libs.executorch.android", "libs.onnxruntime.android", 'project(":core")'):
        assert ref in app
    assert "edgeship-android-demo" in (ANDROID / "settings.gradle.kts").read_text()
    assert not re.search(r'version\s*=?\s*"[^"]*\+"', app), "a dynamic version in app/build.gradle.kts"


def test_android_app_uses_the_core_and_reads_the_packaged_folder():
    src = ANDROID / "app" / "src" / "main" / "java" / "dev" / "edgeship" / "demo"
    store = (src / "ModelStore.kt").read_text()
    assert 'ASSET_DIR = "model"' in store and 'MANIFEST_FILE = "manifest.json"' in store
    from edgeship.package import APPS
    assert APPS["android"].model_dir == "app/src/main/assets/" + "model"
    bench = (src / "BenchmarkActivity.kt").read_text()
    for extra in ('"model"', '"runs"', '"warmup"', '"threads"'):
        assert f"getStringExtra({extra})" in bench or f"getIntExtra({extra}" in bench, extra
    assert '"bench"' in bench and '"result.json"' in bench
    manifest_xml = (ANDROID / "app" / "src" / "main" / "AndroidManifest.xml").read_text()
    assert 'android:name=".BenchmarkActivity"' in manifest_xml and 'android:exported="true"' in manifest_xml
    runners = (src / "Runners.kt").read_text()
    for cls in ("org.tensorflow.lite.Interpreter", "org.pytorch.executorch.Module", "ai.onnxruntime.OrtSession"):
        assert f"import {cls}" in runners


def test_xcode_project_is_consistent():
    openstep = pytest.importorskip("openstep_parser")
    with open(IOS / "EdgeshipDemo.xcodeproj" / "project.pbxproj") as f:
        proj = openstep.OpenStepDecoder.ParseFromFile(f)
    objects = proj["objects"]
    by_isa: dict[str, list[dict]] = {}
    for obj in objects.values():
        by_isa.setdefault(obj["isa"], []).append(obj)
    assert proj["rootObject"] in objects

    def refs(node):
        if isinstance(node, str) and re.fullmatch(r"[0-9A-F]{24}", node):
            yield node
        elif isinstance(node, dict):
            for v in node.values():
                yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)
    dangling = {r for r in refs(objects) if r not in objects}
    assert not dangling, f"the project references missing objects {dangling}"
    (group,) = by_isa["PBXFileSystemSynchronizedRootGroup"]
    assert (IOS / group["path"]).is_dir()
    from edgeship.package import APPS
    assert APPS["ios"].model_dir == f"{group['path']}/Model", "packaging must write inside the synchronized folder"
    (pkg,) = by_isa["XCLocalSwiftPackageReference"]
    assert (IOS / pkg["relativePath"] / "Package.swift").is_file()
    (target,) = by_isa["PBXNativeTarget"]
    settings = [objects[c]["buildSettings"] for c in objects[target["buildConfigurationList"]]["buildConfigurations"]]
    for s in settings:
        assert s["PRODUCT_BUNDLE_IDENTIFIER"] == "dev.edgeship.demo"
        assert s["INFOPLIST_KEY_NSCameraUsageDescription"]
        assert s["COREML_CODEGEN_LANGUAGE"] == "None"     # models are loaded by name from manifest.json
    bench = (IOS / "EdgeshipDemo" / "Benchmark.swift").read_text()
    assert "devicectl device copy from" in bench and "Documents/bench/result.json" in bench


# ---------------------------------------------------------------------------------------------------------------
# the Kotlin core, compiled and run for real where a Kotlin compiler exists

def _kotlin_tools():
    kotlinc = shutil.which("kotlinc")
    junit = next((p for p in (Path("/usr/share/java/junit4.jar"),) if p.is_file()), None)
    hamcrest = Path("/usr/share/java/hamcrest-core.jar")
    stdlib = next((p for p in (Path("/usr/share/java/kotlin-stdlib.jar"),) if p.is_file()), None)
    if not (kotlinc and junit and stdlib and hamcrest.is_file() and shutil.which("java")):
        if os.environ.get("EDGESHIP_REQUIRE_KOTLIN") == "1":
            pytest.fail("kotlinc/junit4 missing but EDGESHIP_REQUIRE_KOTLIN=1 (apt-get install kotlin junit4)")
        pytest.skip("no Kotlin compiler here (Debian: apt-get install kotlin junit4)")
    return kotlinc, junit, hamcrest, stdlib


@pytest.fixture(scope="module")
def kotlin_core(tmp_path_factory):
    kotlinc, junit, hamcrest, stdlib = _kotlin_tools()
    out = tmp_path_factory.mktemp("kotlin-core")
    proc = subprocess.run([kotlinc, str(KOTLIN_CORE / "main" / "kotlin"), str(KOTLIN_CORE / "test" / "kotlin"),
                           "-cp", str(junit), "-d", str(out)], capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 0 and not errors, proc.stderr[-4000:]
    shutil.copytree(KOTLIN_CORE / "test" / "resources", out, dirs_exist_ok=True)
    cp = os.pathsep.join(map(str, (out, junit, hamcrest, stdlib)))

    def run(*args: str) -> str:
        p = subprocess.run(["java", "-cp", cp, *args], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        return p.stdout
    return run


@pytest.mark.slow
def test_kotlin_core_unit_tests_pass(kotlin_core):
    out = kotlin_core("org.junit.runner.JUnitCore", "dev.edgeship.core.ManifestTest", "dev.edgeship.core.PreprocessingTest",
                      "dev.edgeship.core.BenchTest")
    assert re.search(r"OK \((\d+) tests\)", out), out


@pytest.mark.slow
@pytest.mark.parametrize("pp,layout,channels", [
    ({"color_order": "RGB", "value_range": [0, 1], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, "NCHW", 3),
    ({"color_order": "BGR", "value_range": [-1, 1]}, "NHWC", 3),
    ({"color_order": "GRAY", "value_range": [0, 1], "mean": [0.5], "std": [0.5], "invert": True}, "NCHW", 1),
], ids=["rgb-imagenet-nchw", "bgr-nhwc", "gray-invert"])
def test_kotlin_preprocessing_matches_the_pi(kotlin_core, tmp_path, monkeypatch, pp, layout, channels):
    from PIL import Image
    from skimage import data
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(REPO / "raspberrypi"))
    import classify

    h, w = 24, 32
    rgb = np.asarray(Image.fromarray(data.chelsea()).resize((w, h), Image.BILINEAR), dtype=np.uint8)
    shape = [1, channels, h, w] if layout == "NCHW" else [1, h, w, channels]
    manifest = json.loads(EXAMPLES[0].read_text())
    manifest["inputs"] = [{"name": "image", "shape": shape, "dtype": "float32", "layout": layout, "preprocess": pp}]
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    (tmp_path / "px.rgb").write_bytes(rgb.tobytes())
    kotlin_core("dev.edgeship.core.CrossCheck", "preprocess", str(tmp_path / "m.json"), str(tmp_path / "px.rgb"),
                str(w), str(h), str(tmp_path / "t.f32"))
    got = np.fromfile(tmp_path / "t.f32", dtype="<f4").reshape(shape)
    pixels = np.asarray(Image.fromarray(rgb).convert("L")) if channels == 1 else rgb
    want = classify.normalize(pixels, pp, channels, layout)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


@pytest.mark.slow
def test_kotlin_stats_topk_and_bench_json_match_python(kotlin_core, export_dir, monkeypatch):
    rng = np.random.default_rng(0)
    ms = rng.gamma(4.0, 2.0, size=37)
    stats = json.loads(kotlin_core("dev.edgeship.core.CrossCheck", "stats", *map(repr, ms.tolist())))
    from edgeship_runtime.bench import _stats
    want = _stats(ms)
    assert stats.keys() == want.keys()
    for k in want:
        assert stats[k] == pytest.approx(want[k], rel=1e-12), k

    logits = rng.normal(size=12).astype(np.float32)
    top = json.loads(kotlin_core("dev.edgeship.core.CrossCheck", "topk", "5", "logits", *map(repr, logits.tolist())))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(REPO / "raspberrypi"))
    import classify
    ref = classify.top_k(logits, "logits", 5)
    assert [t[0] for t in top] == [i for i, _ in ref]
    assert [t[1] for t in top] == pytest.approx([s for _, s in ref], rel=1e-6)

    # the real runner's JSON on a real model vs the app's: the same keys, the same latency keys
    proc = subprocess.run([sys.executable, "-m", "edgeship_runtime.bench", str(export_dir / "onnx" / "model.onnx"),
                           "--runs", "3", "--warmup", "1"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "runtimes")})
    runner = json.loads(proc.stdout)
    assert "error" not in runner, runner
    app = json.loads(kotlin_core("dev.edgeship.core.CrossCheck", "benchjson"))
    assert set(app) == set(runner) == BENCH_KEYS
    assert set(app["latency_ms"]) == set(runner["latency_ms"])
    assert set(app["inputs"][0]) == set(runner["inputs"][0])
