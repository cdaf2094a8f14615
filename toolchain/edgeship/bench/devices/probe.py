"""The device probe: a script run on the device's python (>= 3.7, no edgeship installed) that reports which
runtimes import there and their versions, one record per format of the registry
(:data:`edgeship_runtime.formats.FORMATS`), passed to it as a JSON argument."""
from __future__ import annotations

import json
from typing import Any

from edgeship_runtime.formats import FORMATS

from .base import DeviceInfo

# Run on the device's python: which runtimes import, and their versions. argv[1] is a JSON list of records, one
# per format of the registry (edgeship_runtime.formats.FORMATS; see probe_records): {"format", "platforms",
# "probes": [[module, dist, how, deep], ...]}; argv[2] == "deep" imports what is otherwise only located. Each check
# runs in its own interpreter (a broken wheel may crash), all at once; a format's first probe that succeeds wins.
# A format whose ``platforms`` exclude this sys.platform is not probed. Python >= 3.7, no edgeship needed.
PROBE_PY = r"""
import json, platform, subprocess, sys
C = ("import importlib,importlib.util as u,sys\nn,d,h=sys.argv[1:4]\n"
     "if h=='import': importlib.import_module(n)\n"
     "elif not all(u.find_spec(x) for x in n.split('+')): raise ImportError('No module named ' + n)\n"
     "v=None\ntry:\n import importlib.metadata as m\n v=m.version(d)\nexcept Exception:\n"
     " v=getattr(sys.modules.get(n.split('.')[0]),'__version__',None)\nprint(v or '')")
SPECS = json.loads(sys.argv[1])
deep = sys.argv[2:3] == ["deep"]
OS = {"darwin": "macOS", "linux": "Linux", "win32": "Windows"}
rt, mods, why, R = {}, {}, {}, []
for s in SPECS:
    f, plats = s["format"], s.get("platforms")
    if plats is not None and sys.platform not in plats:
        rt[f] = None; why[f] = f + " runs only on " + " or ".join(OS.get(x, x) for x in plats); continue
    if not s.get("probes"):
        rt[f] = None; why[f] = "no runtime probe is registered for " + f; continue
    for n, d, h, dp in s["probes"]:
        if deep and dp:
            n, h = dp, "import"
        R.append((f, n, d or "", h))
P = [(f, n, subprocess.Popen([sys.executable, "-c", C, n, d, h], stdout=subprocess.PIPE, stderr=subprocess.PIPE))
     for f, n, d, h in R]
for f, n, p in P:
    try:
        o, e = p.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        p.kill(); o, e = b"", b"import timed out"
    if f in mods:
        continue
    if p.returncode == 0:
        rt[f] = o.decode().strip() or "unknown"; mods[f] = n.split("+")[0]; why.pop(f, None)
    else:
        last = (e.decode(errors="replace").strip().splitlines() or ["exit status %s" % p.returncode])[-1]
        why[f] = (why[f] + "; " if f in why else "") + n + ": " + last
        rt[f] = None
rt = {s["format"]: rt.get(s["format"]) for s in SPECS}
print("PYPROBE=" + json.dumps({"python": sys.executable, "python_version": platform.python_version(),
      "system": platform.system(), "release": platform.release(), "machine": platform.machine(),
      "runtimes": rt, "modules": mods, "missing": why}))
"""


def probe_records() -> list[dict[str, Any]]:
    """The device probe's argument: what to import for each format of the registry, as JSON-able records."""
    return [{"format": f.key, "platforms": list(f.platforms) if f.platforms is not None else None,
             "probes": [[p.module, p.dist, p.how, p.deep] for p in f.probes]} for f in FORMATS.values()]


def probe_argv(deep: bool = False) -> list[str]:
    """The arguments after ``python -c PROBE_PY``."""
    return [json.dumps(probe_records(), separators=(",", ":"))] + (["deep"] if deep else [])


def _parse_probe(stdout: str) -> dict[str, Any] | None:
    for line in stdout.splitlines():
        if line.startswith("PYPROBE="):
            try:
                return json.loads(line[len("PYPROBE="):])
            except ValueError:
                return None
    return None


def _apply_probe(info: DeviceInfo, probe: dict[str, Any] | None, python: str | None, why_not: str) -> None:
    if probe is None:
        info.runtimes = {f: None for f in FORMATS}
        info.missing = {f: why_not for f in info.runtimes}
        return
    info.python = probe.get("python") or python
    info.python_version = probe.get("python_version")
    info.runtimes = dict(probe.get("runtimes", {}))
    info.runtime_modules = dict(probe.get("modules", {}))
    info.missing = dict(probe.get("missing", {}))


