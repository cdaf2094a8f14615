"""An iPhone over USB (``ios:UDID``): a documented stub.

iOS has no shell a benchmark can use; the way in is the ios-demo app's benchmark mode, launched and read back with
Xcode's ``xcrun devicectl`` on a Mac (ios-demo/EdgeshipDemo/Benchmark.swift). edgeship does not drive devicectl yet:
every verb of this device raises EdgeshipError with the manual steps, so ``--device ios:UDID`` says what is missing
instead of "unknown device". Its only capability is the app (:class:`~edgeship.bench.devices.apps.IosDemoApp`,
also a stub). Implementing it: ``info`` from ``devicectl device info details``, ``app.run`` as described there,
and no python runner nor native tools (``python`` stays None, ``run`` refuses).
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, ContextManager, Sequence

from edgeship.errors import EdgeshipError

from .apps import IosDemoApp, ios_unsupported
from .base import DeviceBase, DeviceInfo


class IosDevice(DeviceBase):
    kind = "ios"
    usage = None            # not offered in messages: it does not work yet

    def __init__(self, udid: str):
        if not udid:
            raise EdgeshipError("ios: needs the device's UDID after the colon",
                                hint="ios:UDID (xcrun devicectl list devices)")
        self.udid = udid
        self.id = f"ios:{udid}"
        self.python = None

    @classmethod
    def from_spec(cls, text: str, **_options: Any) -> "IosDevice":
        return cls(text.partition(":")[2])

    def __repr__(self) -> str:
        return f"IosDevice({self.udid!r})"

    def info(self, *, deep: bool = False) -> DeviceInfo:
        raise ios_unsupported(f"probing {self.id}")

    def push(self, local: Path, remote: str) -> None:
        raise ios_unsupported(f"copying files to {self.id}")

    def pull(self, remote: str, local: Path, *, force: bool = False) -> None:
        raise ios_unsupported(f"copying files from {self.id}")

    def run(self, argv: Sequence[str], timeout_s: float, *, cwd: str | None = None,
            env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess:
        raise ios_unsupported(f"running commands on {self.id}")

    def tempdir(self) -> ContextManager[str]:
        raise ios_unsupported(f"a folder on {self.id}")

    def stream(self, argv: Sequence[str]) -> subprocess.Popen:
        raise ios_unsupported(f"running commands on {self.id}")

    def cleanup(self) -> bool:
        return True

    @property
    def app(self) -> IosDemoApp:
        return IosDemoApp()
