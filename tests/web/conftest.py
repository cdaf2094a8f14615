"""Fixtures for the browser tests: real headless Chromium (Debian's) driven with Playwright, the real web runtimes
(onnxruntime-web, LiteRT.js from web-demo/vendor/, `make web-setup`) and real exports of the tiny models."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from support.tools import REQUIRE_ENV, need_tool, require_tools

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "web-demo"


def _need(ok: bool, why: str) -> None:
    if ok:
        return
    if require_tools():
        pytest.fail(f"{why} — {REQUIRE_ENV}=1 says it must be here", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def chromium() -> str:
    from edgeship.bench.devices.browser import find_chromium, playwright_problem, vendor_versions
    exe = find_chromium() or need_tool("chromium", package="chromium")
    _need(playwright_problem() is None, "Playwright for Python is not installed: pip install -e '.[web]'")
    _need(bool(vendor_versions()), "web-demo/vendor/ is missing: make web-setup")
    return exe


@pytest.fixture(scope="module")
def browser(chromium):
    from edgeship.bench.devices import parse_device
    dev = parse_device("browser")
    yield dev
    dev.close()


def _export(name: str, out: Path) -> Path:
    from edgeship import api
    api.export(f"example:{name}", out, formats="onnx,tflite", precisions=("fp32", "int8"), verify_samples=3)
    return out


@pytest.fixture(scope="session")
def exports(tmp_path_factory, chromium) -> dict[str, Path]:
    """tiny_cnn and tiny_transformer exported to .onnx and .tflite, fp32 and int8 (about 20 s on 2 cores)."""
    root = tmp_path_factory.mktemp("web-exports")
    return {name: _export(name, root / name) for name in ("tiny_cnn", "tiny_transformer")}


@pytest.fixture
def fresh(tmp_path, exports):
    """A throw-away copy of an export (tests write report.json)."""
    def copy(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(exports[name], dest)
        return dest
    return copy
