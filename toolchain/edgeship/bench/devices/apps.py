"""The app-benchmark capability: a demo app on the device runs an artifact packaged in it (``--via app``).

A device that has one returns it from its ``app`` property. The formats an app runs come from the format registry
(``FormatSpec.apps``: the app targets of ``edgeship package`` that can run a format).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from edgeship.errors import EdgeshipError
from edgeship_runtime.formats import FORMATS

if TYPE_CHECKING:
    from .base import Device


@runtime_checkable
class AppBench(Protocol):
    name: str           # "android-demo": report.json's ``tool``
    target: str         # the app target of ``edgeship package`` (a key of FormatSpec.apps): "android", "ios"

    def why_not(self, fmt: str) -> str | None:
        """None when the app can run ``fmt``, else why not."""
        ...

    def run(self, device: "Device", model: str, *, runs: int, warmup: int, threads: int | None,
            timeout_s: float) -> dict[str, Any]:
        """Benchmark ``model`` (an artifact path of the packaged manifest); the runner's JSON keys."""
        ...


class _DemoApp:
    name = "demo"
    target = ""

    def formats(self) -> tuple[str, ...]:
        return tuple(f.key for f in FORMATS.values() if self.target in f.apps)

    def why_not(self, fmt: str) -> str | None:
        return None if fmt in self.formats() else f"the {self.name} app has no {fmt} runtime"


class AndroidDemoApp(_DemoApp):
    """android-demo's BenchmarkActivity over adb (``am start``, then ``run-as`` reads its JSON): see
    :func:`edgeship.bench.native.run_app`."""
    name = "android-demo"
    target = "android"

    def run(self, device: "Device", model: str, *, runs: int, warmup: int, threads: int | None,
            timeout_s: float) -> dict[str, Any]:
        from .. import native
        return native.run_app(device, model, runs=runs, warmup=warmup, threads=threads, timeout_s=timeout_s)


IOS_HOWTO = ("by hand on a Mac: xcrun devicectl device process launch --device UDID dev.edgeship.demo -benchmark YES "
             "-model model.mlpackage -runs 100 -warmup 10, then xcrun devicectl device copy from --device UDID "
             "--domain-type appDataContainer --domain-identifier dev.edgeship.demo --source Documents/bench/result.json "
             "--destination result.json (ios-demo/README.md)")


def ios_unsupported(what: str) -> EdgeshipError:
    return EdgeshipError(f"{what} needs macOS with Xcode's `xcrun devicectl`, which edgeship does not drive yet",
                         hint=f"bench in the ios-demo app {IOS_HOWTO}")


class IosDemoApp(_DemoApp):
    """ios-demo's benchmark mode (ios-demo/EdgeshipDemo/Benchmark.swift). A stub: edgeship does not drive
    ``xcrun devicectl`` yet, so :meth:`run` raises EdgeshipError with the manual steps. Implementing it means:
    ``devicectl device process launch`` with the launch arguments, poll ``devicectl device copy from`` for
    Documents/bench/result.json (the runner's keys, or {"error", "hint"}), delete it, on macOS only."""
    name = "ios-demo"
    target = "ios"

    def run(self, device: "Device", model: str, *, runs: int, warmup: int, threads: int | None,
            timeout_s: float) -> dict[str, Any]:
        raise ios_unsupported(f"benchmarking {model} in the ios-demo app on {device.id}")
