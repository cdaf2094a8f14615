"""Devices a benchmark runs on: the host, a Linux board over SSH, an Android phone over adb.

    dev = parse_device("ssh://pi@raspberrypi.local")     # or "local", "adb", "adb:R58M123ABC"
    dev.info()                                           # DeviceInfo: os, arch, cpu, python, runtimes
    with dev.tempdir() as d:                             # removed afterwards, also after errors
        dev.push(Path("runtimes/edgeship_runtime"), f"{d}/edgeship_runtime")   # files or whole folders
        cp = dev.run([dev.python, "-m", "edgeship_runtime.bench", "model.onnx"], timeout_s=300,
                     cwd=d, env={"PYTHONPATH": d})
        dev.pull(f"{d}/out.json", Path("out.json"))

A device is a transport and capabilities (:class:`Device`, in base.py):

* the transport, the same verbs everywhere (:class:`Transport`): ``push(local, remote)`` puts ``local`` (a file or a
  folder, recursively; ``__pycache__`` folders are skipped) at exactly the path ``remote``, creating parent folders
  and merging into an existing folder; ``pull(remote, local)`` brings ``remote`` to exactly ``local`` through a
  temporary name and a rename, and refuses to replace an existing ``local`` unless ``force=True``;
  ``run(argv, timeout_s, cwd=, env=, check=)`` returns a CompletedProcess with the command's exit status, stdout and
  stderr (a timeout or a lost connection raises EdgeshipError and stops the command on the device); ``tempdir()``,
  ``stream(argv)`` and ``cleanup()``.
* capabilities, decided by what the device is (:class:`Capabilities`): ``info()`` (what it runs: the probe reads
  the format registry), ``power_source(info)`` for energy (a phone's fuel gauge, a Raspberry Pi 5's PMIC, else
  none) and ``app`` (a demo app's benchmark mode for ``--via app``: android-demo over adb; iOS is a stub).

``--device`` text is parsed through a registry from scheme to class (registry.py): ``register_device("toy",
ToyDevice)`` makes ``--device toy://...`` a ToyDevice. Modules: base (contract, shared helpers), probe, local,
remote (what ssh and adb share: a remote POSIX shell), ssh, adb, ios (stub), apps (the app capability), registry.
"""
from __future__ import annotations

from .adb import AdbDevice
from .apps import AndroidDemoApp, AppBench, IosDemoApp
from .base import Capabilities, Device, DeviceBase, DeviceEntry, DeviceInfo, Transport
from .ios import IosDevice
from .local import LocalDevice, local_cpu_model
from .probe import PROBE_PY, probe_argv, probe_records
from .registry import DEVICES, device_class, list_devices, parse_device, register_device, unregister_device
from .remote import RemoteShellDevice
from .ssh import SshDevice, is_raspberry_pi, ssh_config_hosts

__all__ = ["Device", "Transport", "Capabilities", "DeviceBase", "DeviceInfo", "DeviceEntry", "LocalDevice",
           "SshDevice", "AdbDevice", "IosDevice", "RemoteShellDevice", "AppBench", "AndroidDemoApp", "IosDemoApp",
           "parse_device", "list_devices", "register_device", "unregister_device", "device_class", "DEVICES",
           "ssh_config_hosts", "local_cpu_model", "is_raspberry_pi", "PROBE_PY", "probe_records", "probe_argv"]
