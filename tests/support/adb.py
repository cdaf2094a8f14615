"""A private adb server (the real adb binary) with fake devices (FakeAdbd) connected over loopback.

    from support.adb import adb_lab          # the pytest fixture (module scope)

    def test_x(adb_lab):
        fake, dev = adb_lab.add_device(shell_v2=True, python=True)    # FakeAdbd, AdbDevice
        dev.run(["getprop", "ro.product.model"], 10).stdout             # "EdgeshipTest\\n"

The adb server listens on a free port of its own (``adb -P PORT``; the AdbDevice gets ``server_port=``),
so tests never touch a user's server on 5037; it runs with HOME in a temp folder (its adbkey goes
there) and is killed at teardown (``adb -P PORT kill-server``). Each fake device is attached with
``adb connect 127.0.0.1:FAKEPORT``, as a phone on Wi-Fi would be.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from edgeship.bench.devices import AdbDevice

from .fake_adbd import FakeAdbd
from .tools import free_port, need_tool


class AdbLab:
    def __init__(self, root: Path, adb: str):
        self.root = Path(root)
        self.adb = adb
        self.port = free_port()
        self.home = self.root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "HOME": str(self.home), "ANDROID_SDK_HOME": str(self.home),
                    "ANDROID_USER_HOME": str(self.home / ".android")}
        self.env.pop("ANDROID_ADB_SERVER_PORT", None)
        self.fakes: list[FakeAdbd] = []

    def adb_cmd(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([self.adb, "-P", str(self.port), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def start(self) -> "AdbLab":
        cp = self.adb_cmd("start-server", timeout=60)
        if cp.returncode != 0:
            raise RuntimeError(f"adb start-server failed: {cp.stderr}")
        return self

    def add_device(self, *, shell_v2: bool = True, python: bool = False,
                   props: dict[str, str] | None = None) -> tuple[FakeAdbd, AdbDevice]:
        fake = FakeAdbd(self.root / f"device{len(self.fakes)}", shell_v2=shell_v2, python=python, props=props).start()
        self.fakes.append(fake)
        self.connect(fake)
        return fake, AdbDevice(fake.serial, adb=self.adb, server_port=self.port)

    def connect(self, fake: FakeAdbd, timeout: float = 20) -> None:
        cp = self.adb_cmd("connect", fake.serial)
        if "connected" not in cp.stdout:
            raise RuntimeError(f"adb connect {fake.serial} failed: {cp.stdout} {cp.stderr}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.adb_cmd("-s", fake.serial, "get-state").stdout.strip() == "device":
                return
            time.sleep(0.1)
        raise RuntimeError(f"{fake.serial} did not come online")

    def stop(self) -> None:
        for fake in self.fakes:
            fake.stop()
        try:
            self.adb_cmd("kill-server", timeout=20)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture(scope="module")
def adb_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdbLab]:
    adb = need_tool("adb", package="adb")
    lab = AdbLab(tmp_path_factory.mktemp("adb"), adb).start()
    try:
        yield lab
    finally:
        lab.stop()
