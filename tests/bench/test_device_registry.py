"""Devices as transport + capabilities: the scheme registry, capabilities decided by what a device is (power source,
app), the iOS stub, and the Device protocol the harness types its parameters with. No device is contacted here; the
toy scheme that benches end to end is in test_harness.py."""
from __future__ import annotations

import pytest

from edgeship.bench import native
from edgeship.bench.devices import (DEVICES, AdbDevice, AndroidDemoApp, AppBench, Device, DeviceInfo, IosDemoApp,
                                    IosDevice, LocalDevice, SshDevice, parse_device, register_device,
                                    unregister_device)
from edgeship.bench.energy import AndroidBatterySource, PiPmicSource, Unavailable, power_source
from edgeship.bench.methods import METHODS, DemoApp
from edgeship.errors import EdgeshipError


def _info(model=None, vcgencmd=None) -> DeviceInfo:
    return DeviceInfo(id="ssh://board", kind="ssh", os="Linux 6.6", arch="aarch64", model=model,
                      extra={"vcgencmd": vcgencmd})


def test_every_builtin_kind_follows_the_device_protocol():
    for dev in (LocalDevice(), SshDevice("ssh://board"), AdbDevice("SERIAL"), IosDevice("UDID")):
        assert isinstance(dev, Device), dev
        assert dev.kind in DEVICES and parse_device(dev.id).__class__ is dev.__class__


def test_only_a_raspberry_pi_gets_the_pi_power_probe():
    board = SshDevice("ssh://board")
    plain = board.power_source(_info(model="Jetson Orin Nano"))
    assert isinstance(plain, Unavailable) and "not a Raspberry Pi" in plain.unavailable_reason()
    assert "no vcgencmd" in plain.unavailable_reason() and "--power-cmd" in plain.unavailable_reason()
    assert isinstance(board.power_source(_info(model="Raspberry Pi 5 Model B Rev 1.0")), PiPmicSource)
    assert isinstance(board.power_source(_info(vcgencmd="/usr/bin/vcgencmd")), PiPmicSource)
    assert isinstance(board.power_source(None), PiPmicSource)      # nothing known yet: the source's probe decides
    # energy.power_source asks the device, with what the harness learnt of it
    assert isinstance(power_source(board, None, _info()), Unavailable)
    assert isinstance(power_source(AdbDevice("SERIAL")), AndroidBatterySource)
    assert "no power sensor" in power_source(LocalDevice()).unavailable_reason()


def test_the_app_capability():
    assert LocalDevice().app is None and SshDevice("ssh://board").app is None
    android = AdbDevice("SERIAL").app
    assert isinstance(android, AndroidDemoApp) and isinstance(android, AppBench)
    assert set(android.formats()) == set(native.APP_FORMATS)        # the registry agrees with Runners.kt's table
    assert android.why_not("tflite") is None and "has no coreml runtime" in android.why_not("coreml")
    with pytest.raises(EdgeshipError, match="needs an adb device"):
        DemoApp().check(LocalDevice())
    DemoApp().check(AdbDevice("SERIAL"))
    assert set(METHODS) == {"python", "tool", "app", "browser"}      # browser: the web page (--device browser)


def test_ios_is_a_documented_stub():
    dev = parse_device("ios:00008110-001A")
    assert isinstance(dev, IosDevice) and dev.id == "ios:00008110-001A" and dev.python is None
    app = dev.app
    assert isinstance(app, IosDemoApp) and app.why_not("coreml") is None and app.why_not("onnx")
    for call in (dev.info, lambda: app.run(dev, "model.mlpackage", runs=1, warmup=0, threads=None, timeout_s=1),
                 lambda: dev.run(["true"], 1)):
        with pytest.raises(EdgeshipError, match="xcrun devicectl") as e:
            call()
        assert "macOS" in e.value.message and "Documents/bench/result.json" in e.value.hint
    with pytest.raises(EdgeshipError, match="UDID"):
        parse_device("ios:")
    with pytest.raises(EdgeshipError) as e:
        parse_device("bogus")
    assert "ios" not in e.value.hint            # not offered: it does not work yet


def test_register_device_checks():
    with pytest.raises(ValueError, match="already registered"):
        register_device("ssh", LocalDevice)
    with pytest.raises(ValueError, match="scheme"):
        register_device("Bad Scheme", LocalDevice)
    with pytest.raises(ValueError, match="built-in"):
        unregister_device("adb")
    register_device("lazy", "edgeship.bench.devices.local:LocalDevice")      # "module:Class", imported when used
    try:
        with pytest.raises(EdgeshipError, match="unknown device"):
            parse_device("lazy:x")                # LocalDevice.from_spec accepts only "local"
    finally:
        unregister_device("lazy")
    assert "lazy" not in DEVICES
