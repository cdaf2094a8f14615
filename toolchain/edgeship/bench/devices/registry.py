"""``--device`` text -> a Device: one registry from scheme (the text before the first ``:``) to class.

    register_device("toy", ToyDevice)            # or "mypkg.toy:ToyDevice", imported when first used
    parse_device("toy://x")                      # ToyDevice.from_spec("toy://x", ssh_config=..., python=..., ...)

A registered class follows :class:`~edgeship.bench.devices.base.Device` (subclass
:class:`~edgeship.bench.devices.base.DeviceBase` for the defaults); ``from_spec`` builds it from the text,
``discover`` lists the ones ``edgeship devices`` shows, ``usage`` is how messages name it.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Union

from edgeship.errors import EdgeshipError

from .base import Device, DeviceEntry, _redact_url

DeviceClass = Union[type, str]

_BUILTIN: dict[str, str] = {          # the order of `edgeship devices` and of the hint for an unknown device
    "local": "edgeship.bench.devices.local:LocalDevice",
    "adb": "edgeship.bench.devices.adb:AdbDevice",
    "ssh": "edgeship.bench.devices.ssh:SshDevice",
    "ios": "edgeship.bench.devices.ios:IosDevice",      # a stub that says what it needs (macOS, xcrun devicectl)
    "browser": "edgeship.bench.devices.browser:BrowserDevice",   # headless Chromium: onnxruntime-web, LiteRT.js
}
DEVICES: dict[str, DeviceClass] = dict(_BUILTIN)
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")


def register_device(scheme: str, cls: DeviceClass, replace: bool = False) -> None:
    """Make ``--device SCHEME...`` build ``cls`` (a class, or "module:Class" imported when first used)."""
    if not _SCHEME.match(scheme or ""):
        raise ValueError(f"a device scheme is lower-case letters, digits, '+', '.', '-', such as 'toy', not {scheme!r}")
    if scheme in DEVICES and not replace:
        raise ValueError(f"device scheme {scheme!r} is already registered (pass replace=True to replace it)")
    DEVICES[scheme] = cls


def unregister_device(scheme: str) -> None:
    """Remove a scheme added with :func:`register_device` (built-in schemes stay)."""
    if scheme in _BUILTIN:
        raise ValueError(f"{scheme!r} is a built-in device scheme")
    DEVICES.pop(scheme, None)


def device_class(scheme: str) -> type:
    cls = DEVICES[scheme]
    if isinstance(cls, str):
        module, _, name = cls.partition(":")
        cls = DEVICES[scheme] = getattr(importlib.import_module(module), name)
    return cls


def _usage() -> str:
    names = [u for s in DEVICES if (u := getattr(device_class(s), "usage", None))]
    return ", ".join(names[:-1]) + (" or " if len(names) > 1 else "") + names[-1]


def parse_device(text: str, *, ssh_config: str | Path | None = None, python: str | None = None,
                 adb: str | None = None, adb_server_port: int | None = None) -> Device:
    """``local`` | ``ssh://[user@]host[:port]`` | ``adb`` | ``adb:SERIAL`` | a registered scheme -> a Device."""
    t = (text or "").strip()
    scheme = t.partition(":")[0]
    if not t or scheme not in DEVICES:
        raise EdgeshipError(f"unknown device {_redact_url(text)!r}",
                            hint=f"use {_usage()} (see `edgeship devices`)")
    return device_class(scheme).from_spec(t, ssh_config=ssh_config, python=python, adb=adb,
                                          adb_server_port=adb_server_port)


def list_devices(*, ssh_config: str | Path | None = None, adb: str | None = None,
                 adb_server_port: int | None = None) -> list[DeviceEntry]:
    """What each registered kind discovers: the host, every device `adb devices` lists (when adb is installed), the
    Host entries of the ssh config."""
    out: list[DeviceEntry] = []
    for scheme in list(DEVICES):
        out += device_class(scheme).discover(ssh_config=ssh_config, adb=adb, adb_server_port=adb_server_port)
    return out
