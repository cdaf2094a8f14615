"""`edgeship doctor`: which formats can export and run here, and why not."""
from __future__ import annotations

import importlib
import platform
import re
import sys
from importlib import metadata

from edgeship_runtime.formats import FORMATS

from .errors import clip
from .export import EXPORTERS, available


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def runtime_available(fmt: str) -> tuple[bool, str | None]:
    """Whether artifacts of ``fmt`` can run (predict) on this host, and if not, why (the format's runtime package,
    then its ``platforms`` in the format registry)."""
    from edgeship_runtime import RuntimeUnavailable, runtime_class

    cls = runtime_class(fmt)
    try:
        cls.import_backend()
    except RuntimeUnavailable as e:
        return False, str(e)
    if not FORMATS[fmt].runs_on(sys.platform):
        try:
            cls.check_platform()          # the runtime's own words, where it has them
        except RuntimeUnavailable as e:
            return False, e.message
        return False, f"{fmt} runs only on {', '.join(FORMATS[fmt].platforms or ())} (this is {sys.platform})"
    return True, None


def matching_torchvision(torch_version: str) -> str | None:
    """The torchvision release series built for ``torch_version``: torch 2.N pairs with torchvision 0.(N+15)."""
    m = re.match(r"2\.(\d+)", torch_version or "")
    return f"0.{int(m.group(1)) + 15}" if m else None


def check_torchvision() -> dict | None:
    """torchvision next to this torch: None when it is not installed (edgeship never needs it), else whether it
    imports and matches, and the pip command that fixes it. A build for another torch (PyPI's only torchvision for
    torch 2.13 is a CUDA build) fails at import with 'operator torchvision::nms does not exist' (#13)."""
    have, torch_v = _version("torchvision"), _version("torch") or ""
    if have is None:
        return None
    want = matching_torchvision(torch_v)
    local = torch_v.partition("+")[2]              # "cpu", "cu121", or "" (PyPI's default build)
    problem = None
    try:
        importlib.import_module("torchvision")
    except Exception as e:  # noqa: BLE001 - any failure to import is the finding
        problem = f"import torchvision fails: {type(e).__name__}: {clip(str(e), 160)}"
    if problem is None and want and not re.match(re.escape(want) + r"(\.|$)", have):
        problem = f"torchvision {have} is not built for torch {torch_v} (that is torchvision {want}.x)"
    elif problem is None and "+" in have and have.partition("+")[2] != local:
        problem = f"torchvision {have} and torch {torch_v} are different builds"
    fix = None
    if problem:
        index = f" --index-url https://download.pytorch.org/whl/{local}" if local else ""
        pin = f"=={want}.*" if want else ""
        fix = (f"pip install --force-reinstall --no-deps 'torchvision{pin}'{index}, or pip uninstall torchvision "
               "if no model of yours needs it (edgeship itself never imports it)")
    return {"version": have, "ok": problem is None, "problem": problem, "fix": fix}


def diagnose() -> dict:
    rows = []
    for fmt in EXPORTERS:
        ok, reason = available(fmt)
        run_ok, run_reason = runtime_available(fmt)
        spec = FORMATS[fmt]
        pkgs = dict.fromkeys(spec.converter_pip + spec.runtime_pip)
        versions = ", ".join(f"{p} {_version(p)}" for p in pkgs if _version(p))
        rows.append({"format": fmt, "export": ok, "export_reason": reason, "run": run_ok, "run_reason": run_reason,
                     "versions": versions or "—"})
    return {"formats": rows, "python": platform.python_version(), "platform": platform.platform(),
            "torch": _version("torch"), "torchvision": check_torchvision(), "browser": browser_status()}


def browser_status() -> dict:
    """The browser device (--device browser): Chromium, Playwright, the page's web runtimes, what it runs and why not."""
    from .bench.devices.browser import BrowserDevice, playwright_problem
    dev = BrowserDevice.from_spec("browser")
    info = dev.info()
    problems = [p for p in (None if dev.executable else "no Chromium: apt-get install -y chromium",
                            playwright_problem()) if p]
    return {"device": dev.id, "chromium": info.extra.get("browser"), "executable": dev.executable,
            "ok": not problems and any(info.runtimes.values()), "problems": problems,
            "runs": {k: v for k, v in info.runtimes.items() if v}, "cannot_run": info.missing}
