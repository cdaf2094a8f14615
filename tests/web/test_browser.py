"""--device browser end to end: real headless Chromium, real onnxruntime-web and LiteRT.js (web-demo/vendor/),
real exports. Parity (fp32 by cosine, int8 by SQNR) of a CNN and a transformer encoder, a bench run whose rows
validate against report.schema.json, packaging into web-demo/, and the bad inputs the issue names."""
from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from edgeship.bench.browser_bench import device_parities, verify_on_device
from edgeship.bench.devices.browser import PageError, StaticServer, memory_hint
from edgeship.errors import EdgeshipError

SCHEMA = Path(__file__).resolve().parents[2] / "toolchain/edgeship/schemas/report.schema.json"


@pytest.mark.parametrize("name", ["tiny_cnn", "tiny_transformer"])
def test_parity_in_the_browser(browser, fresh, name):
    folder = fresh(name)
    events = []
    report = verify_on_device(folder, browser, on_event=lambda k, e, p: events.append((k, e)))
    got = device_parities(report, browser.id)
    assert got["onnx:fp32"]["status"] == "pass" and got["onnx:fp32"]["metric"] == "cosine"
    assert got["onnx:fp32"]["value"] >= 0.9999 and got["onnx:fp32"]["runtime"] == "onnxruntime-web"
    assert got["tflite:fp32"]["status"] == "pass" and got["tflite:fp32"]["runtime"] == "LiteRT.js"
    assert got["onnx:int8"]["status"] == "pass" and got["onnx:int8"]["metric"] == "sqnr_db"
    assert got["onnx:int8"]["sqnr_db"] >= 20
    for p in got.values():
        assert p["samples"] == 3 or p["status"] == "fail"
    if name == "tiny_transformer":   # dynamic-range int8: int32 ids in, float out
        assert got["tflite:int8"]["status"] == "pass" and got["tflite:int8"]["sqnr_db"] >= 20
    else:                            # static int8 has int8 tensors in and out, which LiteRT.js 2.5 cannot take
        assert got["tflite:int8"]["status"] == "fail"
        assert "Element type INT8 is not supported" in got["tflite:int8"]["reason"]
        assert "ship the int8 .onnx" in got["tflite:int8"]["reason"]
    # the host's parity is kept beside the browser's, and report.json still validates
    on_disk = json.loads((folder / "report.json").read_text())
    assert all(a["parity"]["status"] == "pass" for a in on_disk["artifacts"])
    jsonschema.validate(on_disk, json.loads(SCHEMA.read_text()))


def test_bench_rows_validate(browser, fresh):
    from edgeship.bench.harness import BenchOptions, bench_folder
    folder = fresh("tiny_transformer")
    rows = bench_folder(folder, browser, BenchOptions(runs=10, warmup=2, threads=(1, 2), formats=["onnx", "tflite"],
                                                      precisions=["fp32"]))
    assert len(rows) == 4
    schema = json.loads(SCHEMA.read_text())
    report = json.loads((folder / "report.json").read_text())
    jsonschema.validate(report, schema)
    for r in rows:
        assert r["status"] == "ok", r.get("reason")
        assert r["device"] == "browser:chromium" and r["device_kind"] == "browser" and r["via"] == "browser"
        assert r["runtime"] in ("onnxruntime-web", "LiteRT.js") and r["runtime_version"]
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert r["load_ms"] > 0 and r["first_run_ms"] > 0 and r["cv"] >= 0 and r["runs"] == 10
        assert r["peak_rss_mb"] > 0 and any("measureUserAgentSpecificMemory" in n or "performance.memory" in n
                                            for n in r["notes"])
    assert sorted((r["format"], r["threads"]) for r in rows) == [("onnx", 1), ("onnx", 2), ("tflite", 1), ("tflite", 2)]


def test_formats_without_a_browser_runtime_are_skipped_with_the_reason(browser):
    info = browser.info()
    assert info.runtimes["onnx"].startswith("onnxruntime-web") and info.runtimes["tflite"].startswith("LiteRT.js")
    assert info.runtimes["executorch"] is None and "no browser runtime" in info.missing["executorch"]
    assert info.runtimes["coreml"] is None and "no browser runtime" in info.missing["coreml"]
    from edgeship.bench.browser_bench import BrowserPage
    from edgeship.bench.harness import BenchOptions
    why = BrowserPage().why_not({"format": "executorch"}, browser, info, BenchOptions())
    assert ".pte" in why


def test_package_web(exports, tmp_path):
    from edgeship.package import package
    app = tmp_path / "web-demo"
    app.mkdir()
    (app / "index.html").write_text('<meta name="generator" content="edgeship-web-demo">')
    res = package(exports["tiny_cnn"], "web", app_root=app)
    model = app / "model"
    assert res.dest == model.absolute()
    manifest = json.loads((model / "manifest.json").read_text())
    assert [a["format"] for a in manifest["artifacts"]][:2] == ["onnx", "onnx"]     # onnx first: the page's pick
    assert {a["format"] for a in manifest["artifacts"]} == {"onnx", "tflite"}
    assert (model / "labels.txt").is_file() and (model / "onnx/model.onnx").is_file()
    package(exports["tiny_cnn"], "web", app_root=app)                               # again: its own files, fine
    (model / "notes.txt").write_text("mine")
    other = tmp_path / "other"
    other.mkdir()
    (other / "index.html").write_text('<meta name="generator" content="edgeship-web-demo">')
    (other / "model").mkdir()
    (other / "model" / "manifest.json").write_text("{}")                           # a user's file
    with pytest.raises(EdgeshipError):
        package(exports["tiny_cnn"], "web", app_root=other)
    assert (other / "model" / "manifest.json").read_text() == "{}"
    package(exports["tiny_cnn"], "web", app_root=other, force=True)
    assert (model / "notes.txt").read_text() == "mine"
    with pytest.raises(EdgeshipError, match="not the edgeship web demo"):
        package(exports["tiny_cnn"], "web", app_root=tmp_path)


# ------------------------------------------------------------------------------------------------------ bad input

def test_no_chromium_says_which_package(tmp_path):
    from edgeship.bench.devices import parse_device
    dev = parse_device(f"browser:{tmp_path / 'no-such-chrome'}")
    with pytest.raises(EdgeshipError) as e:
        dev.check()
    assert "apt-get install -y chromium" in e.value.hint


def test_server_headers_mime_and_a_taken_port(tmp_path):
    (tmp_path / "a.wasm").write_bytes(b"\0asm")
    (tmp_path / "m.mjs").write_text("export {}")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with StaticServer({"/": tmp_path}, port=port) as srv:
            assert srv.port != port and "was taken" in srv.notes[0]
            with urllib.request.urlopen(f"{srv.url}/a.wasm") as r:
                assert r.headers["Content-Type"] == "application/wasm"
                assert r.headers["Cross-Origin-Opener-Policy"] == "same-origin"
                assert r.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
            with urllib.request.urlopen(f"{srv.url}/m.mjs") as r:
                assert r.headers["Content-Type"] == "text/javascript"
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(f"{srv.url}/%2e%2e/%2e%2e/etc/passwd")
            assert srv.httpd.server_address[0] == "127.0.0.1"


def test_a_page_that_never_reports_times_out_with_its_console(browser):
    with browser.page() as page:
        page.evaluate("() => { console.log('about to hang'); window.edgeship.hang = () => new Promise(() => {}); }")
        with pytest.raises(EdgeshipError) as e:
            browser.call(page, "hang", {"args": []}, 1.5, "answer")
    assert "within 1.5 s" in e.value.message and "about to hang" in e.value.message


def test_a_rejected_artifact_fails_alone_with_the_runtime_message(browser, fresh):
    folder = fresh("tiny_transformer")
    bad = folder / "onnx" / "model.onnx"
    bad.write_bytes(b"not an onnx file" * 10)
    # the manifest's sha256 now differs: refused before the browser sees it; the others still run
    report = verify_on_device(folder, browser)
    got = device_parities(report, browser.id)
    assert got["onnx:fp32"]["status"] == "fail" and "sha256" in got["onnx:fp32"]["reason"]
    assert got["tflite:fp32"]["status"] == "pass"
    # the runtime's own message for a file it cannot parse
    with browser.tempdir() as d:
        Path(d, "bad.onnx").write_bytes(b"not an onnx file" * 10)
        prefix = browser.publish(d)
        with browser.page() as page, pytest.raises(PageError) as e:
            browser.call(page, "runEncoded", {"args": [prefix + "bad.onnx", {"format": "onnx"}, [[]], {}]}, 60, "run")
    assert "onnxruntime-web could not load bad.onnx" in e.value.message


def test_a_model_too_big_for_wasm_memory_says_so(browser, tmp_path):
    """A graph whose one tensor needs 8 GiB: onnxruntime-web's wasm heap cannot hold it; the message says so plainly."""
    import onnx
    from onnx import TensorProto, helper
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [2 * 1024 ** 3])
    node = helper.make_node("ConstantOfShape", ["s"], ["y"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    g = helper.make_graph([helper.make_node("Constant", [], ["s"], value=shape), node], "big", [],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "big.onnx")
    with browser.tempdir() as d:
        Path(d, "big.onnx").write_bytes((tmp_path / "big.onnx").read_bytes())
        prefix = browser.publish(d)
        with browser.page() as page, pytest.raises(PageError) as e:
            browser.call(page, "runEncoded", {"args": [prefix + "big.onnx", {"format": "onnx"}, [[]], {}]}, 120, "run")
    assert "could not load big.onnx" in e.value.message and memory_hint(e.value.message), e.value.message


def test_memory_hint_words():
    assert memory_hint("RangeError: WebAssembly.Memory(): could not allocate memory")
    assert memory_hint("Error: failed to run: Out of memory") and memory_hint("no such op Foo") is None


def test_cli_verify_device(browser, fresh, monkeypatch, capsys):
    import sys
    from edgeship import cli
    folder = fresh("tiny_transformer")
    monkeypatch.setattr(sys, "argv", ["edgeship", "verify", str(folder), "--device", "browser"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    out = capsys.readouterr().out
    assert e.value.code == 0 and "onnxruntime-web" in out and "LiteRT.js" in out


def test_encode_roundtrip():
    from edgeship.bench.devices.browser import decode, encode
    for a in (np.arange(6, dtype=np.int64).reshape(2, 3), np.linspace(0, 1, 5, dtype=np.float32)):
        assert np.array_equal(decode(encode(a)), a)


# ------------------------------------------------------------------------------------------------ the page itself

LABELS = ["tabby", "tiger cat", "lynx", "Egyptian cat", "Persian cat", "fox", "dog", "owl", "car", "house"]
PREPROCESS = {"color_order": "RGB", "value_range": [0, 1], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _photo_classifier(out: Path) -> Path:
    """A seeded CNN classifier with labels and preprocessing, exported to .onnx by edgeship."""
    import torch
    from torch import nn

    from edgeship import api
    from edgeship.model import InputSpec, ModelSpec
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, len(LABELS)))
    with torch.no_grad():
        m[-1].weight.mul_(40.0)       # spread the logits: a clear top-1
    spec = ModelSpec(m.eval(), (InputSpec("image", (1, 3, 64, 64), layout="NCHW"),), task="image-classification",
                     labels=LABELS, preprocess=PREPROCESS, name="photo_cnn")
    api.export(spec, out, formats="onnx", verify_samples=2)
    return out


@pytest.mark.slow
def test_screenshot_the_page_shows_top5_for_a_real_photo(chromium, tmp_path):
    """web-demo/ with a packaged classifier classifies scikit-image's cat photo: the top-5 labels are on the page
    and its top-1 is onnxruntime's on the very input the page preprocessed. The screenshot is kept in tmp_path
    (EDGESHIP_WEB_SCREENSHOT=PATH also copies it there, e.g. web-demo/screenshot.png for the README)."""
    import os
    import shutil

    import onnxruntime as ort
    from PIL import Image
    from skimage import data

    from edgeship.bench.devices.browser import WEB_DEMO, BrowserDevice, decode
    from edgeship.package import package

    app = tmp_path / "web-demo"
    app.mkdir()
    for f in ("index.html", "app.js", "runtime.js"):
        shutil.copy(WEB_DEMO / f, app / f)
    shutil.copytree(WEB_DEMO / "vendor", app / "vendor")
    Image.fromarray(data.chelsea()).save(app / "chelsea.png")
    folder = _photo_classifier(tmp_path / "photo_cnn")
    package(folder, "web", app_root=app)

    dev = BrowserDevice(chromium, web_root=app)
    try:
        with dev.page(query="image=chelsea.png") as page:
            assert page.evaluate("window.edgeshipError") is None, dev.console_tail()
            top5 = page.evaluate("window.edgeshipTop5")
            shown = page.inner_text("#top5")
            latency = page.inner_text("#latency")
            shot = tmp_path / "screenshot.png"
            page.set_viewport_size({"width": 900, "height": 560})
            page.screenshot(path=str(shot), full_page=True)
            x = decode(page.evaluate("window.edgeshipLastInput"))
    finally:
        dev.close()
    assert len(top5) == 5 and all(t["label"] in shown for t in top5)
    assert "ms per inference" in latency and "onnxruntime-web" in latency
    assert x.shape == (1, 3, 64, 64)
    sess = ort.InferenceSession(str(folder / "onnx" / "model.onnx"))
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert LABELS[int(np.argmax(logits))] == top5[0]["label"]
    assert shot.stat().st_size > 10_000
    if os.environ.get("EDGESHIP_WEB_SCREENSHOT"):
        shutil.copy(shot, os.environ["EDGESHIP_WEB_SCREENSHOT"])
