"""The fleet bench: one export folder benched on several devices at once.

    edgeship bench dist/m --device ssh://pi@pi5-a --device adb:R58M1          # or --fleet fleet.yaml
    entries, fleet = bench_fleet(folder, [Member("pi5", dev, opts), ...], reference="pi5")

One worker thread per device: devices run concurrently, each device serially (one model at a time, so runs on a
device do not disturb each other); the work of a thread is mostly waiting on ssh/adb, so threads are enough. A device
that cannot be reached, drops mid-run or fails is recorded (its entries failed, with the reason) and the others
finish. Every device's entries go into report.json once, at the end, from this thread, with a ``fleet`` section: each
device's outcome and the cross-device comparison (each artifact's p50 on every device, and its ratio to the
reference device's). report.html shows the comparison as a table and a plot.

fleet.yaml names the devices, each with its own options (validated like recipes: an error names the key and its
line)::

    reference: pi5                 # optional: the device the others are compared to (default: the first)
    devices:
      pi5:   {device: ssh://pi@pi5-a, threads: 4, affinity: 4-7, energy: auto}
      pi4:   {device: ssh://pi@pi4-b, python: /opt/venv/bin/python3, ssh_config: ~/.ssh/lab_config}
      phone: {device: adb:R58M1, threads: [1, 4]}
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import manifest as manifest_mod
from .. import report as report_mod
from ..errors import EdgeshipError
from .devices import Device, parse_device
from .harness import BenchOptions, _p50, bench_folder, select_artifacts

log = logging.getLogger(__name__)
Event = Callable[[str, str, dict], None]
MAX_DEVICES = 256


@dataclass
class FleetEntry:
    """One device of fleet.yaml: its ``--device`` text and the options it overrides."""
    device: str
    threads: int | list[int] | None = None
    affinity: str | None = None
    energy: str | None = None             # auto | off
    power_cmd: str | None = None
    python: str | None = None
    ssh_config: str | None = None
    adb_server_port: int | None = None    # an adb server on another port than 5037


@dataclass
class Member:
    """A device in a fleet run: its name, the Device, and the bench options it runs with."""
    name: str
    device: Device
    opts: BenchOptions


@dataclass
class Fleet:
    entries: dict[str, FleetEntry]
    reference: str | None = None


# -- fleet.yaml ---------------------------------------------------------------------------------------------------
def load_fleet(path: str | Path) -> Fleet:
    """Read and validate fleet.yaml (size, YAML safety and error style as recipes: edgeship.recipe)."""
    from ..recipe import read_text
    p = Path(path).expanduser()
    if not p.is_file():
        raise EdgeshipError(f"fleet file {p} does not exist", hint="write one: see `edgeship bench --help` / the README's Bench section")
    return parse_fleet(read_text(p, what="fleet file"), str(p))


def parse_fleet(text: str, where: str = "fleet.yaml") -> Fleet:
    from ..recipe import _build, _line, load_yaml
    data, node = load_yaml(text, where)
    if not isinstance(data, dict) or node is None:
        raise EdgeshipError(f"{where} must be a mapping with a devices: section",
                            hint="devices:\n  pi5: {device: ssh://pi@pi5-a, threads: 4}")
    keys = {k.value: (k, v) for k, v in node.value}
    for k in data:
        if k not in ("devices", "reference"):
            raise EdgeshipError(f"{where} {_line(keys[k][0])}: unknown key '{k}'", hint="known keys: devices, reference")
    if "devices" not in data:
        raise EdgeshipError(f"{where}: no devices: section", hint="devices:\n  pi5: {device: ssh://pi@pi5-a}")
    dnode = keys["devices"][1]
    devices = data["devices"]
    if not isinstance(devices, dict) or not devices:
        raise EdgeshipError(f"{where} {_line(dnode)}: 'devices' must be a mapping of names to device options",
                            hint="devices:\n  pi5: {device: ssh://pi@pi5-a, threads: 4}")
    if len(devices) > MAX_DEVICES:
        raise EdgeshipError(f"{where} {_line(dnode)}: {len(devices)} devices; at most {MAX_DEVICES}")
    seen: set[str] = set()
    for knode, _ in dnode.value:
        if knode.value in seen:
            raise EdgeshipError(f"{where} {_line(knode)}: device '{knode.value}' is named twice")
        seen.add(knode.value)
    dkeys = {k.value: (k, v) for k, v in dnode.value}
    entries: dict[str, FleetEntry] = {}
    for name, opts in devices.items():
        knode, vnode = dkeys[name]
        if not isinstance(name, str) or not name.strip():
            raise EdgeshipError(f"{where} {_line(knode)}: a device name must be text, got {name!r}")
        if isinstance(opts, str):          # pi5: ssh://pi@pi5-a
            opts = {"device": opts}
            vnode = None
        if not isinstance(opts, dict):
            raise EdgeshipError(f"{where} {_line(vnode)}: 'devices.{name}' must be a --device text or a mapping of "
                                f"options, got {type(opts).__name__}")
        if "device" not in opts:
            raise EdgeshipError(f"{where} {_line(vnode or knode)}: 'devices.{name}' has no device:",
                                hint="e.g. device: ssh://pi@pi5-a, adb:SERIAL or local")
        entry = _build(FleetEntry, opts, vnode, where, f"devices.{name}")
        line = _line(_value_node(vnode, "device") or vnode or knode)
        _check_entry(entry, name, where, vnode, knode)
        try:
            parse_device(entry.device, ssh_config=entry.ssh_config, python=entry.python,
                         adb_server_port=entry.adb_server_port)
        except EdgeshipError as e:
            raise EdgeshipError(f"{where} {line}: 'devices.{name}.device': {e.message}", e.hint) from None
        entries[name] = entry
    ref = data.get("reference")
    if ref is not None and ref not in entries:
        raise EdgeshipError(f"{where} {_line(keys['reference'][1])}: reference '{ref}' is not one of the devices",
                            hint=f"the devices: {', '.join(entries)}")
    return Fleet(entries, ref)


def _value_node(node, key: str):
    if node is None or not isinstance(getattr(node, "value", None), list):
        return None
    return next((v for k, v in node.value if getattr(k, "value", None) == key), None)


def _check_entry(e: FleetEntry, name: str, where: str, vnode, knode) -> None:
    from ..recipe import _line

    def fail(key: str, msg: str):
        raise EdgeshipError(f"{where} {_line(_value_node(vnode, key) or vnode or knode)}: 'devices.{name}.{key}' {msg}")
    threads = [e.threads] if isinstance(e.threads, int) else e.threads
    if threads is not None and (not threads or any(t < 1 for t in threads)):
        fail("threads", f"must be a count >= 1 or a list of them, got {e.threads!r}")
    if e.energy is not None and e.energy not in ("auto", "off"):
        fail("energy", f"must be auto or off, got {e.energy!r}")
    if e.adb_server_port is not None and not 0 < e.adb_server_port < 65536:
        fail("adb_server_port", f"must be a TCP port, got {e.adb_server_port}")


def members_from(fleet: Fleet | None, devices: Sequence[str | Device], opts: BenchOptions, *,
                 ssh_config: str | Path | None = None, python: str | None = None) -> list[Member]:
    """The fleet's devices (with their options over ``opts``), then each ``--device`` (named by its id)."""
    out: list[Member] = []
    for name, e in (fleet.entries.items() if fleet else ()):
        threads = [e.threads] if isinstance(e.threads, int) else e.threads
        o = dataclasses.replace(opts, **{k: v for k, v in (("threads", threads), ("affinity", e.affinity),
                                                            ("energy", e.energy), ("power_cmd", e.power_cmd))
                                         if v is not None})
        dev = parse_device(e.device, ssh_config=e.ssh_config or ssh_config, python=e.python or python,
                           adb_server_port=e.adb_server_port)
        out.append(Member(name, dev, o))
    for d in devices:
        dev = parse_device(d, ssh_config=ssh_config, python=python) if isinstance(d, str) else d
        out.append(Member(dev.id, dev, opts))
    names = [m.name for m in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise EdgeshipError(f"device {', '.join(twice)} is given twice", hint="bench each device once")
    if not out:
        raise EdgeshipError("no device to bench", hint="--device DEVICE (repeatable) or --fleet fleet.yaml")
    return out


# -- the run ------------------------------------------------------------------------------------------------------
def bench_fleet(folder: Path, members: Sequence[Member], reference: str | None = None,
                on_event: Event | None = None) -> tuple[list[dict], dict]:
    """Bench ``folder`` on every member at once (one thread each); returns every entry (in member order, each with
    ``device_name``) and report.json's ``fleet`` section, both also written to report.json."""
    folder = Path(folder)
    manifest = manifest_mod.load(folder)
    report_mod.load(folder)                                   # refused before any device is touched
    for m in members:
        select_artifacts(manifest, m.opts)
    ref = _reference(members, reference)
    lock = threading.Lock()

    def emit(key: str, stage: str, info: dict) -> None:
        if on_event is not None:
            with lock:
                on_event(key, stage, info)

    def work(m: Member) -> tuple[list[dict], dict]:
        t0 = time.perf_counter()
        emit(m.name, "device-start", {"device": m.device.id})
        status, reason = "ok", None
        try:
            entries = bench_folder(folder, m.device, m.opts, lambda k, s, i: emit(f"{m.name} {k}", s, {**i, "device": m.name}),
                                   append=False)
        except Exception as e:  # noqa: BLE001 - one device failing must not stop the others
            reason = e.message + (f" (hint: {e.hint})" if e.hint else "") if isinstance(e, EdgeshipError) else \
                f"{type(e).__name__}: {e}"
            log.warning("fleet: %s failed: %s", m.name, reason)
            entries = [_failed_entry(m, a, reason) for a in select_artifacts(manifest, m.opts)]
            status = "failed"
        else:
            bad = [e for e in entries if e["status"] == "failed"]
            if entries and len(bad) == len(entries):
                status, reason = "failed", bad[0].get("reason")
        for e in entries:
            e["device_name"] = m.name
        row = {"name": m.name, "device": m.device.id, "status": status, "reason": reason, "entries": len(entries),
               "wall_s": round(time.perf_counter() - t0, 3)}
        emit(m.name, "device-done", row)
        return entries, row

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(members), thread_name_prefix="edgeship-fleet") as pool:
        results = list(pool.map(work, members))
    entries = [e for es, _ in results for e in es]
    fleet = {"created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(), "reference": ref,
             "wall_s": round(time.perf_counter() - t0, 3), "devices": [row for _, row in results],
             "comparison": compare(entries, [m.name for m in members], ref,
                                   uniform=len({tuple(m.opts.threads) for m in members}) == 1)}
    report = report_mod.load(folder)
    report.setdefault("bench", []).extend(entries)
    report["fleet"] = fleet
    report_mod.write(folder, report)
    emit("fleet", "done", fleet)
    return entries, fleet


def _reference(members: Sequence[Member], reference: str | None) -> str:
    if reference is None:
        return members[0].name
    for m in members:
        if reference in (m.name, m.device.id):
            return m.name
    raise EdgeshipError(f"--reference {reference!r} is not one of the devices benched",
                        hint=f"choose one of: {', '.join(m.name for m in members)}")


def _failed_entry(m: Member, art: dict, reason: str) -> dict:
    return {"artifact": f"{art['format']}:{art['precision']}", "path": art["path"], "format": art["format"],
            "precision": art["precision"], "size_bytes": art.get("size_bytes"), "device": m.device.id,
            "device_kind": getattr(m.device, "kind", None), "device_info": None, "via": m.opts.via,
            "status": "failed", "reason": reason,
            "timestamp": datetime.now(timezone.utc).replace(microsecond=0).isoformat()}


def compare(entries: Sequence[dict], names: Sequence[str], reference: str, uniform: bool = True) -> list[dict]:
    """One row per artifact (× thread count when every device ran the same ones, × input size): its p50 on every
    device (None: not measured there) and the ratio to the reference device's p50. Where the devices ran different
    thread counts, each device's fastest is taken."""
    rows: dict[tuple, dict[str, Any]] = {}
    for e in entries:
        if e.get("status") != "ok" or (e.get("latency_ms") or {}).get("p50") is None:
            continue
        key = (e["artifact"], e.get("threads") if uniform else None, (e.get("size") or {}).get("label"))
        cell = rows.setdefault(key, {})
        p50 = _p50(e)
        name = e.get("device_name") or e["device"]
        cell[name] = p50 if cell.get(name) is None else min(cell[name], p50)
    out = []
    for (art, threads, size), cell in rows.items():
        p50 = {n: cell.get(n) for n in names}
        base = p50.get(reference)
        ratio = {n: (round(v / base, 4) if v is not None and base else None) for n, v in p50.items()}
        out.append({"artifact": art, "threads": threads, "size": size, "p50_ms": p50, "ratio": ratio})
    return out


# -- edgeship devices --fleet -------------------------------------------------------------------------------------
def check_fleet(members: Sequence[Member], timeout_s: float = 60.0) -> list[dict]:
    """Connect to every device at once and read what it can run: one row per device (state ok | failed)."""
    def probe(m: Member) -> dict:
        t0 = time.perf_counter()
        row: dict[str, Any] = {"name": m.name, "device": m.device.id, "kind": getattr(m.device, "kind", None)}
        try:
            info = m.device.info()
            row.update(state="ok", os=info.os, arch=info.arch, model=info.model,
                       runtimes={k: v for k, v in info.runtimes.items()}, missing=info.missing)
        except Exception as e:  # noqa: BLE001 - one unreachable device must not hide the others
            row.update(state="failed", error=e.message if isinstance(e, EdgeshipError) else f"{type(e).__name__}: {e}")
        row["seconds"] = round(time.perf_counter() - t0, 3)
        return row
    with ThreadPoolExecutor(max_workers=max(1, len(members)), thread_name_prefix="edgeship-probe") as pool:
        return list(pool.map(probe, members))
