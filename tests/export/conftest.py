"""Fixtures shared by the export tests."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real_models():
    """bench/real_models.py (real pretrained networks and their real inputs); facenet-pytorch must be installed."""
    if importlib.util.find_spec("facenet_pytorch") is None:
        if os.environ.get("CI") or os.environ.get("EDGESHIP_REQUIRE_SYSTEM_TOOLS"):
            pytest.fail("facenet-pytorch is not installed: make setup installs it (pip install --no-deps facenet-pytorch==2.6.0)")
        pytest.skip("facenet-pytorch is not installed (make setup installs it)")
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import real_models
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return real_models
