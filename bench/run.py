"""`make bench`: the project's benchmark on this host (a script and its output, not a timed test).

Models built in code: MobileNetV2 (1x3x224x224) and a MiniLM-sized encoder (6 layers, hidden 384, 128 tokens).
For each: export every format x precision that runs here (timed, with the export's peak memory), then measure
latency of every artifact with the device-side runner and of PyTorch eager fp32, in one run, in alternating order
over several rounds, at each thread count; report medians and ratios. Writes bench/results.md (and .json).

    python bench/run.py [--models mobilenet_v2,minilm_encoder] [--threads 1,2] [--runs 50] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EAGER = r"""
import json, sys, time, torch
from edgeship.examples import EXAMPLES
name, threads, runs, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
spec = EXAMPLES[name]()
x = spec.example_inputs()
with torch.inference_mode():
    for _ in range(warmup):
        spec.module(*x)
    ts = []
    for _ in range(runs):
        t = time.perf_counter_ns(); spec.module(*x); ts.append((time.perf_counter_ns() - t) / 1e6)
ts.sort()
print(json.dumps({"p50": ts[len(ts) // 2], "min": ts[0], "runs": runs}))
"""


def export_model(name: str, formats: str, precisions: str, out: Path) -> dict:
    """Export in a child process; its wall time and peak RSS (ru_maxrss of the child) are the export's cost."""
    argv = [sys.executable, "-m", "edgeship.cli", "export", f"example:{name}", "--formats", formats,
            "--precision", precisions, "--out", str(out), "--force", "--json", "--samples", "3"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    out_text, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    try:
        report = json.loads(out_text)
    except json.JSONDecodeError:
        raise SystemExit(f"export of {name} failed:\n{err[-3000:]}")
    return {"report": report, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "exit": os.waitstatus_to_exitcode(status)}


def eager_p50(name: str, threads: int, runs: int, warmup: int) -> float:
    r = subprocess.run([sys.executable, "-c", EAGER, name, str(threads), str(runs), str(warmup)],
                       capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])["p50"]


def runner_p50(path: Path, manifest: Path, threads: int, runs: int, warmup: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtimes")}
    r = subprocess.run([sys.executable, "-m", "edgeship_runtime.bench", str(path), "--manifest", str(manifest),
                        "--runs", str(runs), "--warmup", str(warmup), "--threads", str(threads)],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if "error" in out:
        raise RuntimeError(out["error"])
    return out


def profile_compare(int8: Path, fp32: Path, threads: int, runs: int) -> dict | None:
    """`edgeship profile INT8 --compare FP32`: per op kind, the int8 time against the fp32 time (same runtime)."""
    argv = [sys.executable, "-m", "edgeship.cli", "profile", str(int8), "--compare", str(fp32), "--threads",
            str(threads), "--runs", str(runs), "--warmup", "3", "--json"]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    try:
        return json.loads(r.stdout)["compare"]
    except (json.JSONDecodeError, KeyError):
        print(f"profile of {int8} failed: {r.stderr[-1500:]}", flush=True)
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mobilenet_v2,minilm_encoder")
    ap.add_argument("--formats", default="onnx,tflite,executorch")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "out"))
    ap.add_argument("--results", default=str(HERE / "results.md"))
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    from edgeship.bench.devices import local_cpu_model
    results: dict = {"host": {"machine": platform.machine(), "cpu": local_cpu_model(), "cores": os.cpu_count(),
                              "python": platform.python_version(), "cpu_features": _cpu_features()}, "models": {}}
    for name in a.models.split(","):
        print(f"[{name}] exporting all four formats, fp32, with verification ...", flush=True)
        all4 = export_model(name, "onnx,tflite,executorch,coreml", "fp32", Path(a.out) / f"{name}-all4")
        print(f"[{name}] exporting {a.formats} x {a.precisions} ...", flush=True)
        exp = export_model(name, a.formats, a.precisions, Path(a.out) / name)
        folder = Path(a.out) / name
        arts = [x for x in exp["report"]["artifacts"] if x["status"] == "ok"]
        lat: dict[str, dict[int, list[float]]] = {}
        for rnd in range(a.rounds):
            order = arts if rnd % 2 == 0 else arts[::-1]
            for t in threads:
                print(f"[{name}] round {rnd + 1}/{a.rounds}, {t} thread(s)", flush=True)
                lat.setdefault("pytorch-eager:fp32", {}).setdefault(t, []).append(eager_p50(name, t, a.runs, a.warmup))
                for art in order:
                    r = runner_p50(folder / art["path"], folder / "manifest.json", t, a.runs, a.warmup)
                    lat.setdefault(art["key"], {}).setdefault(t, []).append(r["latency_ms"]["p50"])
        why = {}
        for fmt in a.formats.split(","):
            paths = {x["precision"]: folder / x["path"] for x in arts if x["format"] == fmt}
            if "int8" in paths and "fp32" in paths:
                print(f"[{name}] profiling {fmt} int8 against fp32, 1 thread", flush=True)
                why[fmt] = profile_compare(paths["int8"], paths["fp32"], 1, a.runs)
        results["models"][name] = {
            "export_all4_s": all4["wall_s"], "export_all4_peak_rss_mb": all4["peak_rss_mb"],
            "export_all4": [{k: x.get(k) for k in ("key", "status", "size_bytes", "export_s", "parity", "error")} for x in all4["report"]["artifacts"]],
            "export_s": exp["wall_s"], "export_peak_rss_mb": exp["peak_rss_mb"],
            "artifacts": [{k: x.get(k) for k in ("key", "status", "size_bytes", "export_s", "parity", "error", "notes")} for x in exp["report"]["artifacts"]],
            "latency_p50_ms": {k: {t: statistics.median(v) for t, v in d.items()} for k, d in lat.items()},
            "rounds": a.rounds, "runs": a.runs, "warmup": a.warmup, "profile_int8_vs_fp32": why,
        }
    Path(a.results).with_suffix(".json").write_text(json.dumps(results, indent=2))
    md = render(results, threads, " ".join(sys.argv[1:]))
    tmp = Path(a.results + ".tmp")
    tmp.write_text(md)
    tmp.replace(a.results)
    print(md)


def _cpu_features() -> dict:
    sys.path.insert(0, str(ROOT / "runtimes"))
    from edgeship_runtime.bench import cpu_features
    return cpu_features()


def render(results: dict, threads: list[int], args: str) -> str:
    h = results["host"]
    lines = [f"# edgeship bench results", "",
             f"Host: {h['cpu']}, {h['cores']} cores, {h['machine']}, Python {h['python']}. "
             f"Command: `python bench/run.py {args}`. Latency: p50 of the runner's timed runs, median over rounds "
             f"(alternating order); eager = PyTorch fp32 in a separate process with the same thread count.", "",
             f"CPU flags: {' '.join((h.get('cpu_features') or {}).get('flags') or []) or 'unknown'}; int8 dot-product "
             f"instructions (VNNI / AMX / Arm dotprod, i8mm): "
             f"{', '.join((h.get('cpu_features') or {}).get('int8_dot_flags') or []) or 'none'}.", ""]
    for name, m in results["models"].items():
        lat = m["latency_p50_ms"]
        eager = lat["pytorch-eager:fp32"]
        lines += [f"## {name}", "",
                  f"Export to all four formats with verification: {m['export_all4_s']:.1f} s wall, peak RSS "
                  f"{m['export_all4_peak_rss_mb']:.0f} MB (one process). "
                  f"Bench export ({len(m['artifacts'])} artifacts): {m['export_s']:.1f} s, peak RSS {m['export_peak_rss_mb']:.0f} MB.", "",
                  "| artifact | size | parity | " + " | ".join(f"p50 ms ({t} thr) | × eager | × fp32 same runtime" for t in threads) + " |",
                  "|---|---|---|" + "---|---|---|" * len(threads)]
        sizes = {x["key"]: x for x in m["artifacts"]}
        for key in ["pytorch-eager:fp32"] + [x["key"] for x in m["artifacts"] if x["status"] == "ok"]:
            art = sizes.get(key, {})
            size = f"{art['size_bytes'] / 1e6:.2f} MB" if art.get("size_bytes") else "—"
            par = art.get("parity") or {}
            ptxt = "—" if not par else (f"cos {par['value']:.5f}" if par.get("metric") == "cosine" else f"SQNR {par.get('value', 0):.1f} dB") + f" {par.get('status')}"
            cells = []
            for t in threads:
                p50 = lat[key][t]
                fp32 = lat.get(key.split(":")[0] + ":fp32", {}).get(t)
                cells += [f"{p50:.2f}", f"{p50 / eager[t]:.2f}", "—" if fp32 is None or key.endswith("fp32") else f"{fp32 / p50:.2f}× faster" if p50 < fp32 else f"{p50 / fp32:.2f}× slower"]
            lines.append(f"| {key} | {size} | {ptxt} | " + " | ".join(cells) + " |")
        lines += render_why(m.get("profile_int8_vs_fp32") or {})
        failed = [x for x in m["artifacts"] + m["export_all4"] if x["status"] != "ok"]
        for x in failed:
            lines.append(f"\n{x['key']} failed: {x.get('error')}")
        lines.append("")
    return "\n".join(lines) + "\n"


def render_why(why: dict, top: int = 6) -> list[str]:
    """Per runtime, the op kinds that decide int8's speed-up (from its own profiler, 1 thread)."""
    lines = []
    for fmt, cmp in why.items():
        if not cmp:
            continue
        sp = cmp.get("speedup")
        lines += ["", f"Why, {fmt} ({cmp['runtime']}, 1 thread, `edgeship profile <int8> --compare <fp32>`): "
                      f"int8 {sp:.2f}× the fp32 speed in the profiled runs." if sp else ""]
        if not cmp.get("per_op_times"):
            kinds = ", ".join(f"{r['kind']} ({'/'.join(r['this_dtypes'])})" for r in cmp["rows"][:top])
            lines.append(f"No per-op times from this runtime here (LiteRT's Python API has none; benchmark_model gives "
                         f"them). The int8 file's ops (input dtypes): {kinds}. LiteRT runs them in XNNPACK, the "
                         "kernel library whose int8 and float ops the ExecuTorch table times one by one.")
            continue
        lines += ["", "| op kind | calls | fp32 ms | int8 ms | speed-up | int8 dtype |", "|---|---|---|---|---|---|"]
        for r in cmp["rows"][:top]:
            x = f"{r['speedup']:.2f}×" if r.get("speedup") else "—"
            lines.append(f"| {r['kind']} | {r['calls']} | {r['baseline_ms']:.3f} | {r['this_ms']:.3f} | {x} | "
                         f"{', '.join(k for k in r['this_dtypes'] if k != '—') or '—'} |")
    return lines


if __name__ == "__main__":
    main()
