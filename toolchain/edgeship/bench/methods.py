"""How an artifact is measured on a device (``--via``): one strategy object per way, chosen per artifact.

* ``python`` (:class:`PythonRunner`): the runner (runtimes/edgeship_runtime, numpy + one runtime, no torch) is
  pushed as files with the artifacts and the manifest and run with the device's python; nothing of ours is installed
  there. Its environment carries the formats registered in this process (:func:`runner_env`), and the runtime
  modules of such formats that live outside edgeship_runtime are pushed beside it (:func:`runtime_sources`).
* ``tool`` (:class:`NativeTool`): the runtimes' native benchmark binaries, given by host path, are pushed with the
  artifacts, made executable and run; their output is parsed into the runner's JSON (:mod:`edgeship.bench.native`).
* ``app`` (:class:`DemoApp`): the device's app capability (``device.app``: android-demo over adb) runs the artifact
  packaged in its app; nothing is pushed.

A new way is a class with the :class:`BenchMethod` members, added to :data:`METHODS`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Protocol, Sequence

import edgeship_runtime
from edgeship_runtime import formats

from .._io import relative_parts
from ..errors import EdgeshipError
from . import native
from .devices import Device, DeviceInfo

if TYPE_CHECKING:
    from .harness import BenchOptions

RUNNER_DIR = Path(edgeship_runtime.__file__).parent
Job = Callable[[], dict]


def remote_path(d: str, rel: str) -> str:
    """``rel`` (a relative POSIX path from the manifest) inside the device temp folder ``d``, rebuilt from its parts.

    Defence in depth: ``manifest.load`` already refuses artifact paths that lead out of the export folder, but the
    path on the device is built here from ``rel``'s parts alone (``.`` and empty parts dropped), and anything that
    could climb out of ``d`` (``..``, an absolute path, a backslash, NUL) is refused, so no manifest can make the
    bench write outside its temp folder on any device."""
    parts = relative_parts(rel, f"artifact path {str(rel)[:200]!r} would leave the device's temp folder {d}",
                           hint="the manifest was edited by hand or tampered with: export the folder again")
    return f"{d}/{'/'.join(parts)}"


def parse_runner_output(stdout: str) -> dict:
    """The runner prints one JSON object (the last line that parses); an {"error": ...} object is a failure."""
    import json
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise ValueError("the runner printed no JSON result")


def runtime_sources() -> list[Path]:
    """The files or package folders of registered formats' runtime modules outside edgeship_runtime (found on this
    host's path), pushed into the device folder so the runner imports them there."""
    import importlib.util
    out = []
    for name in formats.added_runtime_modules():
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            raise EdgeshipError(f"the runtime module {name!r} of a registered format is not importable here",
                                hint="put it on PYTHONPATH, or register the format with a runtime module that is")
        origin = Path(spec.origin)
        out.append(origin.parent if spec.submodule_search_locations else origin)
    return out


def push_runner(device: Device, d: str) -> None:
    """Push the python runner into the device folder ``d``: edgeship_runtime and the registered formats' runtimes."""
    device.push(RUNNER_DIR, f"{d}/edgeship_runtime")
    for src in runtime_sources():
        device.push(src, f"{d}/{src.name}")


def runner_env(d: str) -> dict[str, str]:
    """The environment of a python runner started in the device folder ``d``: the pushed edgeship_runtime on its path,
    and the formats registered in this process (``edgeship_runtime.formats.register``) so the runner knows them."""
    return {**formats.exported_env(), "PYTHONPATH": d}


class BenchMethod(Protocol):
    key: ClassVar[str]          # the --via value
    what: ClassVar[str]         # names the measured process (energy notes)
    pushes: ClassVar[bool]      # works in a device temp folder holding the artifacts (their sha256 checked first)

    def check(self, device: Device) -> None:
        """Raise EdgeshipError when the device cannot be measured this way at all."""
    def why_not(self, art: dict, device: Device, info: DeviceInfo, opts: "BenchOptions") -> str | None:
        """None when ``art`` can be measured this way on the device, else why not (the entry is skipped)."""
    def prepare(self, device: Device, d: str, folder: Path, arts: Sequence[dict], opts: "BenchOptions") -> None:
        """Put what this way needs (not the artifacts) in the device folder ``d``."""
    def job(self, device: Device, d: str, art: dict, opts: "BenchOptions", threads: int | None,
            point: dict | None) -> Job:
        """One benchmark process on the device; returns the runner-style dict."""


class PythonRunner:
    key, what, pushes = "python", "runner", True

    def check(self, device: Device) -> None:
        pass

    def why_not(self, art: dict, device: Device, info: DeviceInfo, opts: "BenchOptions") -> str | None:
        fmt = art["format"]
        if not info.runtimes.get(fmt):
            return info.missing.get(fmt) or f"no {fmt} runtime on {device.id}"
        return None

    def prepare(self, device: Device, d: str, folder: Path, arts: Sequence[dict], opts: "BenchOptions") -> None:
        push_runner(device, d)
        device.push(folder / "manifest.json", f"{d}/manifest.json")

    @staticmethod
    def argv(device: Device, d: str, art: dict, opts: "BenchOptions", threads: int | None,
             point: dict | None = None) -> list[str]:
        argv = [device.python or "python3", "-m", "edgeship_runtime.bench", remote_path(d, art["path"]),
                "--manifest", f"{d}/manifest.json", "--runs", str(opts.runs), "--warmup", str(opts.warmup)]
        for name, shape in ((point or {}).get("shapes") or {}).items():
            argv += ["--shape", f"{name}={'x'.join(map(str, shape))}"]
        if threads:
            argv += ["--threads", str(threads)]
        if opts.affinity:
            argv = ["taskset", "-c", opts.affinity, *argv]
        return argv

    def job(self, device: Device, d: str, art: dict, opts: "BenchOptions", threads: int | None,
            point: dict | None) -> Job:
        def job() -> dict:
            cp = device.run(self.argv(device, d, art, opts, threads, point), timeout_s=opts.timeout_s, cwd=d,
                            env=runner_env(d))
            try:
                return parse_runner_output(cp.stdout)
            except ValueError:
                raise EdgeshipError(f"the runner failed on {device.id} (exit {cp.returncode}): "
                                    f"{(cp.stderr or cp.stdout).strip()[-800:]}",
                                    hint="run `edgeship devices` to see what the device can run") from None
        return job


class NativeTool:
    key, what, pushes = "tool", "benchmark tool", True

    def __init__(self) -> None:
        self.exes: dict[str, str] = {}     # format -> the pushed executable

    def check(self, device: Device) -> None:
        pass

    def why_not(self, art: dict, device: Device, info: DeviceInfo, opts: "BenchOptions") -> str | None:
        fmt = art["format"]
        if fmt not in (opts.tools or {}):
            known = native.TOOLS.get(fmt)
            return (f"no native benchmark tool given for {fmt}" + (f" (--tool {fmt}=/path/to/{known.binary})" if known
                                                                  else f": none is known for {fmt}"))
        return None

    def prepare(self, device: Device, d: str, folder: Path, arts: Sequence[dict], opts: "BenchOptions") -> None:
        for fmt in dict.fromkeys(a["format"] for a in arts):
            src, name = native.resolve_tool(fmt, Path(opts.tools[fmt]))
            dest = remote_path(d, f"tools/{fmt}")
            device.push(src, remote_path(d, f"tools/{fmt}/{name}") if src.is_file() else dest)
            self.exes[fmt] = remote_path(d, f"tools/{fmt}/{name}")
            device.run(["chmod", "755", self.exes[fmt]], 60, check=True)

    def job(self, device: Device, d: str, art: dict, opts: "BenchOptions", threads: int | None,
            point: dict | None) -> Job:
        fmt, exe = art["format"], self.exes[art["format"]]

        def job() -> dict:
            return native.run_tool(device, fmt, exe, remote_path(d, art["path"]), runs=opts.runs, warmup=opts.warmup,
                                   threads=threads, timeout_s=opts.timeout_s, cwd=d,
                                   env={"LD_LIBRARY_PATH": exe.rsplit("/", 1)[0]}, affinity=opts.affinity)
        return job


class DemoApp:
    key, what, pushes = "app", "app", False

    def check(self, device: Device) -> None:
        if getattr(device, "app", None) is None:
            raise EdgeshipError(f"--via app runs the android-demo app's benchmark mode: it needs an adb device, not "
                                f"{device.id}", hint="--device adb (the app installed with ./gradlew installDebug)")

    def why_not(self, art: dict, device: Device, info: DeviceInfo, opts: "BenchOptions") -> str | None:
        return device.app.why_not(art["format"])

    def prepare(self, device: Device, d: str, folder: Path, arts: Sequence[dict], opts: "BenchOptions") -> None:
        pass

    def job(self, device: Device, d: str, art: dict, opts: "BenchOptions", threads: int | None,
            point: dict | None) -> Job:
        def job() -> dict:
            return device.app.run(device, art["path"], runs=opts.runs, warmup=opts.warmup, threads=threads,
                                  timeout_s=opts.timeout_s)
        return job


from .browser_bench import BrowserPage  # noqa: E402 - it uses remote_path above; the web page (--device browser)

METHODS: dict[str, type] = {m.key: m for m in (PythonRunner, NativeTool, DemoApp, BrowserPage)}


def methods_for(arts: Sequence[dict], opts: "BenchOptions") -> dict[str, BenchMethod]:
    """{artifact path: its method}: today every artifact goes ``opts.via``; one instance per method."""
    made: dict[str, BenchMethod] = {}
    return {a["path"]: made.setdefault(opts.via, METHODS[opts.via]()) for a in arts}
