"""Shared test setup. Hardware that is not here is opt-in: pytest --device adb:SERIAL / --device ssh://pi@host."""
from __future__ import annotations

import os
import warnings

import pytest

warnings.filterwarnings("ignore", module="coremltools")


def pytest_addoption(parser):
    parser.addoption("--device", action="append", default=[],
                     help="real hardware to run the device tests on: adb:SERIAL or ssh://user@host[:port] (repeatable)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--device"):
        return
    skip = pytest.mark.skip(reason="needs real hardware: run with --device adb:SERIAL or --device ssh://user@host")
    for item in items:
        if "device" in item.keywords:
            item.add_marker(skip)


def require_system_tools() -> bool:
    """CI sets EDGESHIP_REQUIRE_SYSTEM_TOOLS=1 after installing sshd and adb: a missing tool then fails, not skips."""
    return os.environ.get("EDGESHIP_REQUIRE_SYSTEM_TOOLS") == "1"
