"""Skip, or fail under CI, when a system tool the tests drive for real is missing."""
from __future__ import annotations

import os
import shutil

import pytest

REQUIRE_ENV = "EDGESHIP_REQUIRE_SYSTEM_TOOLS"


def require_tools() -> bool:
    """CI sets EDGESHIP_REQUIRE_SYSTEM_TOOLS=1 after scripts/install-system-deps.sh: a missing tool then fails."""
    return os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0", "false", "no")


def need_tool(name: str, *, path: str | None = None, package: str = "") -> str:
    """The tool's path; otherwise skip (or fail when EDGESHIP_REQUIRE_SYSTEM_TOOLS=1) with a clear reason."""
    found = path if path and os.access(path, os.X_OK) else shutil.which(name)
    if found:
        return found
    why = (f"{path or name} is not installed (Debian package {package or name}); "
           f"run scripts/install-system-deps.sh")
    if require_tools():
        pytest.fail(f"{why} — {REQUIRE_ENV}=1 says it must be here", pytrace=False)
    pytest.skip(why)
    raise AssertionError("unreachable")


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
