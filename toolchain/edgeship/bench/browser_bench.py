"""Measuring and verifying artifacts in a browser (``--device browser``): the web-demo page runs them.

* :class:`BrowserPage` (``--via browser``, the default for a browser device): the bench method. The artifacts and the
  manifest are copied into the device's temp folder, which the device's server publishes; each job opens a fresh page
  (a thread count is fixed per page in both wasm runtimes) and calls ``window.edgeship.bench``, which returns the JSON
  of ``python -m edgeship_runtime.bench`` (load, first run, p50/p90/p99, min/max, CV; memory is the page's, read with
  ``performance.measureUserAgentSpecificMemory`` where the page is cross-origin isolated, else ``performance.memory``).
* :func:`verify_on_device`: the reference inputs (reference.npz) through each artifact in the page, against the
  PyTorch outputs, with verify.py's tolerances; the result goes into report.json under the artifact's
  ``parity.devices[DEVICE]`` (the host runtime's parity stays as it was).

A runtime that rejects an artifact (an op it lacks, a dtype LiteRT.js cannot take, too little wasm memory) fails that
artifact with the runtime's message; the others still run.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Sequence

from .. import manifest as manifest_mod
from .. import report as report_mod
from .. import verify
from ..errors import EdgeshipError
from .devices import Device, DeviceInfo

if TYPE_CHECKING:
    from .harness import BenchOptions

Event = Callable[[str, str, dict], None]


def remote_path(d: str, rel: str) -> str:
    from .methods import remote_path as rp    # methods imports this module (METHODS): import it when used
    return rp(d, rel)


def _browser(device: Device, what: str):
    from .devices.browser import BrowserDevice
    if not isinstance(device, BrowserDevice):
        raise EdgeshipError(f"{what} runs artifacts in a web browser: it needs --device browser, not {device.id}",
                            hint="--device browser (headless Chromium on this host)")
    return device


def _failure(device, fmt: str, path: str, e) -> str:
    from .devices.browser import memory_hint
    msg = f"in {device.id}: {e.message}"
    hint = memory_hint(e.message)
    if "element type int8" in e.message.lower():
        hint = ("LiteRT.js takes float32, int32 and uint8 tensors only, and this static-int8 .tflite has int8 inputs "
                "or outputs: ship the int8 .onnx to browsers (onnxruntime-web runs it)")
    return msg + (f" (hint: {hint})" if hint else "")


class BrowserPage:
    key, what, pushes = "browser", "page", True

    def __init__(self) -> None:
        self.prefix: str | None = None

    def check(self, device: Device) -> None:
        _browser(device, "--via browser").check()

    def why_not(self, art: dict, device: Device, info: DeviceInfo, opts: "BenchOptions") -> str | None:
        fmt = art["format"]
        if not info.runtimes.get(fmt):
            return info.missing.get(fmt) or f"no browser runtime for {fmt}"
        return None

    def prepare(self, device: Device, d: str, folder: Path, arts: Sequence[dict], opts: "BenchOptions") -> None:
        device.push(folder / "manifest.json", f"{d}/manifest.json")
        self.prefix = _browser(device, "--via browser").publish(d)

    def job(self, device: Device, d: str, art: dict, opts: "BenchOptions", threads: int | None,
            point: dict | None) -> Callable[[], dict]:
        dev = _browser(device, "--via browser")
        url = self.prefix + remote_path("", art["path"]).lstrip("/")

        def job() -> dict:
            import json
            from .devices.browser import PageError
            manifest = json.loads(Path(d, "manifest.json").read_text())
            shapes = (point or {}).get("shapes")
            args = {"args": [url, art, manifest, {"runs": opts.runs, "warmup": opts.warmup, "threads": threads,
                                                  "shapes": shapes}]}
            with dev.page(timeout_s=min(opts.timeout_s, 120)) as page:
                try:
                    out = dev.call(page, "bench", args, opts.timeout_s, f"finish benchmarking {art['path']}")
                except PageError as e:
                    return {"error": _failure(dev, art["format"], art["path"], e)}
            notes = list(out.get("notes") or []) + list(dev.notes)
            if opts.affinity:
                notes.append(f"--affinity {opts.affinity} does not apply to a browser (its threads are its own)")
            out["notes"] = notes
            out["tool"] = f"{dev.info().extra.get('browser') or 'chromium'} headless"
            return out
        return job


def verify_on_device(folder: Path, device: Device, on_event: Event | None = None, timeout_s: float = 600.0) -> dict:
    """Run the reference inputs of ``folder`` through each artifact the browser can run, compare with the PyTorch
    outputs (verify.compare: the same tolerances as on the host) and record the result in report.json as
    ``parity.devices[device.id]`` of each artifact. Returns report.json. Artifacts the browser cannot run are
    reported through ``on_event`` as skipped and left as they were."""
    from ..refdata import load_verification
    from .devices.browser import PageError, decode, encode

    on_event = on_event or (lambda *a: None)
    dev = _browser(device, "edgeship verify --device")
    dev.check()                      # Chromium, Playwright and web-demo/vendor/ are there, or a clear error
    folder = Path(folder)
    manifest, feeds, refs = load_verification(folder)
    report = report_mod.load(folder)
    info = dev.info()
    classifier = manifest["task"].endswith("classification")
    by_key = {a["key"]: a for a in report["artifacts"] if isinstance(a, dict) and isinstance(a.get("key"), str)}
    samples = [[encode(x) for x in f] for f in feeds]
    runnable = [a for a in manifest["artifacts"] if info.runtimes.get(a["format"])]
    for a in manifest["artifacts"]:
        if a not in runnable:
            on_event(f"{a['format']}:{a['precision']}", "skipped",
                     {"reason": info.missing.get(a["format"]) or f"no browser runtime for {a['format']}"})
    with dev.tempdir() as d:
        prefix = dev.publish(d) if runnable else ""
        for art in runnable:
            key = f"{art['format']}:{art['precision']}"
            on_event(key, "verify", {"path": art["path"], "device": dev.id})
            entry = by_key.setdefault(key, {"key": key, "format": art["format"], "precision": art["precision"],
                                            "status": "ok"})
            problem = manifest_mod.artifact_problem(folder, art)
            metric, threshold = verify.tolerance(art["precision"])
            if problem:
                parity = verify.Parity("fail", metric, threshold, reason=problem)
            else:
                dev.push(folder / art["path"], remote_path(d, art["path"]))
                url = prefix + remote_path("", art["path"]).lstrip("/")
                try:
                    with dev.page() as page:
                        out = dev.call(page, "runEncoded", {"args": [url, art, samples, {}]}, timeout_s,
                                       f"finish running {art['path']}")
                    gots = [[decode(o) for o in s] for s in out["outputs"]]
                    parity = verify.compare(refs, gots, art["precision"], classifier)
                    parity.runtime, parity.runtime_version = out.get("runtime"), out.get("runtime_version")
                except PageError as e:
                    parity = verify.Parity("fail", metric, threshold,
                                           reason=_failure(dev, art["format"], art["path"], e))
            d_parity = {**parity.to_dict(), "device": dev.id, "browser": info.extra.get("browser")}
            if not isinstance(entry.get("parity"), dict):
                entry["parity"] = verify.not_run(art["precision"], "not verified on the host").to_dict()
            entry["parity"].setdefault("devices", {})[dev.id] = d_parity
            on_event(key, "done", {"parity": d_parity, "device": dev.id})
    report["artifacts"] = list(by_key.values())
    report_mod.write(folder, report)
    return report


def device_parities(report: dict, device_id: str) -> dict[str, dict]:
    """{artifact key: its parity on ``device_id``} from a report.json that verify_on_device wrote into."""
    out = {}
    for a in report.get("artifacts") or []:
        p = ((a.get("parity") or {}).get("devices") or {}).get(device_id)
        if p is not None:
            out[a["key"]] = p
    return out
