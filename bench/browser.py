"""The same models in the browser (headless Chromium: onnxruntime-web and LiteRT.js, wasm, 1 and 2 threads) and
natively on this machine (onnxruntime and LiteRT through the python runner), from one run: bench/browser.md.

    make bench-browser            # or: .venv/bin/python bench/browser.py [--runs 100] [--models tiny_cnn,...]

Each model is exported once (.onnx and .tflite, fp32 and int8); both devices bench the same files with the same
harness (edgeship.bench.harness.bench_folder), alternating rounds; the ratio is browser p50 / native p50 for the same
file and thread count.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "browser"
MODELS = ("tiny_cnn", "tiny_transformer", "mobilenet_like")


def main(argv=None) -> int:
    from edgeship import api
    from edgeship.bench.devices import parse_device
    from edgeship.bench.harness import BenchOptions, bench_folder
    from edgeship_runtime.bench import cpu_features

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--md", type=Path, default=HERE / "browser.md")
    a = p.parse_args(argv)

    t0 = time.time()
    browser, local = parse_device("browser"), parse_device("local")
    rows = []
    for name in a.models.split(","):
        folder = OUT / name
        api.export(f"example:{name}", folder, formats="onnx,tflite", precisions=("fp32", "int8"), verify_samples=3,
                   force=True)
        opts = BenchOptions(runs=a.runs, warmup=a.warmup, threads=(1, 2), rounds=2, energy="off")
        got = {}
        for dev in (local, browser):
            for e in bench_folder(folder, dev, opts):
                got[(dev.id, e["artifact"], e.get("threads"))] = e
        arts = sorted({k[1] for k in got})
        for art in arts:
            for t in (1, 2):
                n = got.get(("local", art, t)) or got.get(("local", art, None))
                b = got.get((browser.id, art, t)) or got.get((browser.id, art, None))
                if n is None and b is None:
                    continue
                rows.append({"model": name, "artifact": art, "threads": t, "native": _slim(n), "browser": _slim(b),
                             "ratio": (b["latency_ms"]["p50"] / n["latency_ms"]["p50"]
                                       if _ok(n) and _ok(b) else None)})
        print(f"{name}: done ({time.time() - t0:.0f} s)", flush=True)
    info = browser.info()
    browser.close()
    meta = {"cpu": info.cpu, "cpu_flags": cpu_features()["flags"], "cores": info.extra.get("cpu_count"),
            "browser": info.extra.get("browser"), "runtimes": {k: v for k, v in info.runtimes.items() if v},
            "python": platform.python_version(), "runs": a.runs, "warmup": a.warmup, "seconds": round(time.time() - t0)}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "browser.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    a.md.write_text(_markdown(meta, rows))
    print(a.md.read_text())
    return 0


def _ok(e) -> bool:
    return e is not None and e["status"] == "ok"


def _slim(e):
    if e is None:
        return None
    if e["status"] != "ok":
        return {"status": e["status"], "reason": e.get("reason")}
    return {"status": "ok", "runtime": f"{e['runtime']} {e.get('runtime_version') or ''}".strip(),
            "p50_ms": e["latency_ms"]["p50"], "p90_ms": e["latency_ms"]["p90"], "cv": e["cv"],
            "load_ms": e["load_ms"], "first_run_ms": e["first_run_ms"]}


def _cell(x) -> str:
    if x is None:
        return "—"
    if x["status"] != "ok":
        return f"{x['status']}¹"
    return f"{x['p50_ms']:.3f}"


def _markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        "# Browser vs native latency (bench/browser.py)",
        "",
        f"One run, {meta['seconds']} s: {meta['runs']} timed runs after {meta['warmup']} warm-up, 2 alternating rounds "
        f"(the median round's p50 kept). {meta['browser']} headless, wasm (SIMD; threads through cross-origin "
        f"isolation); native = the python runner on the same files. CPU: {meta['cpu']}, {meta['cores']} cores, "
        f"flags {' '.join(meta['cpu_flags'])}. Runtimes: "
        + ", ".join(f"{k}: {v}" for k, v in meta["runtimes"].items()) + "; native onnxruntime and ai-edge-litert "
        "as pinned in pyproject.toml.",
        "",
        "p50 in ms; ratio = browser / native for the same file and thread count (> 1: the browser is slower).",
        "",
        "| model | artifact | threads | native p50 | browser p50 | ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    notes = {}
    for r in rows:
        for side in ("native", "browser"):
            x = r[side]
            if x is not None and x["status"] != "ok":
                notes[f"{r['model']} {r['artifact']} ({side})"] = x["reason"]
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}×"
        lines.append(f"| {r['model']} | {r['artifact']} | {r['threads']} | {_cell(r['native'])} | "
                     f"{_cell(r['browser'])} | {ratio} |")
    if notes:
        lines += ["", "¹ not measured:"]
        seen = set()
        for k, why in notes.items():
            if why in seen:
                continue
            seen.add(why)
            lines.append(f"- {k}: {why}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
