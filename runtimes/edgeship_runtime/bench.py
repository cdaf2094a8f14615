"""Benchmark one model file in its runtime and print one JSON object on stdout.

    python -m edgeship_runtime.bench MODEL [--manifest manifest.json] [--runs N] [--warmup M] [--threads T]
                                           [--inputs x.npz] [--seed S] [--json-out FILE] [--shape NAME=1x128 ...]

Inputs are random (fixed seed) from the runtime's input info, or from the manifest's input specs when --manifest is
given (integer inputs in [0, 100) unless the spec gives ``low``/``high``), or read from an .npz (--inputs).
``--shape NAME=DIMS`` sets an input's shape (a size of its dynamic dimensions; the runtime resizes to it), and the
result gives ``batch`` (the first input's first dimension) and ``items_per_s`` (batch / p50).
Errors print {"error": ..., "hint": ...} and exit 2. Native libraries' chatter is sent to stderr so that stdout
holds the JSON alone.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import format_of, runtime_class
from .base import Runtime

INT_HIGH = 100  # random integer inputs (token ids, class ids) are drawn from [0, INT_HIGH)


class _UsageError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # a usage error is a JSON error too
        raise _UsageError(message)


def _proc_status_kb(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _maxrss_mb() -> Optional[float]:
    try:
        import resource
    except ImportError:
        return None
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB elsewhere


def peak_rss_mb() -> Optional[float]:
    """Peak resident set size of this process: VmHWM on Linux, ru_maxrss elsewhere."""
    hwm = _proc_status_kb("VmHWM")
    return hwm / 1024 if hwm is not None else _maxrss_mb()


def rss_mb() -> Optional[float]:
    """Current resident set size (VmRSS) on Linux; elsewhere the peak (the best getrusage can say)."""
    rss = _proc_status_kb("VmRSS")
    return rss / 1024 if rss is not None else _maxrss_mb()


# CPU features that decide whether int8 can beat float: dot-product instructions that multiply-accumulate four
# int8 pairs into int32 in one step (x86 VNNI / AMX, Arm dot product / i8mm). Without them x86 int8 kernels widen to
# int16 (vpmaddwd) or use vpmaddubsw, whose throughput is close to float FMA.
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8", "asimddp", "i8mm", "dotprod")
ISA_FLAGS = ("sse4_2", "avx", "fma", "avx2", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx_vnni_int8",
             "amx_int8", "neon", "asimd", "asimddp", "i8mm", "asimdhp", "fphp", "sve")


def cpu_features(cpuinfo: str = "/proc/cpuinfo") -> Dict[str, Any]:
    """The ISA flags (of ISA_FLAGS) this CPU reports, and whether it has int8 dot-product instructions.
    ``int8_dot`` is None where the flags cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return {"flags": [], "int8_dot": None, "source": None}
    flags: set = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags |= set(value.split())
    have = [f for f in ISA_FLAGS if f in flags]
    dot = [f for f in INT8_DOT_FLAGS if f in flags]
    return {"flags": have, "int8_dot": bool(dot), "int8_dot_flags": dot, "source": cpuinfo}


def random_inputs(specs: Sequence[Dict[str, Any]], seed: int = 0) -> Dict[str, np.ndarray]:
    """Random arrays for specs {name, shape (None = dynamic, taken as 1), dtype[, low, high]}."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for s in specs:
        shape = tuple(1 if d is None else int(d) for d in s["shape"])
        dtype = np.dtype(s["dtype"])
        if dtype.kind == "f":
            a = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            a = rng.integers(0, 2, shape).astype(bool)
        else:
            a = rng.integers(int(s.get("low", 0)), int(s.get("high", INT_HIGH)), shape).astype(dtype)
        feeds[s["name"]] = a
    return feeds


def _input_specs(rt: Runtime, manifest: Optional[Path]) -> List[Dict[str, Any]]:
    if manifest is None:
        return [{"name": i.name, "shape": i.shape, "dtype": i.dtype} for i in rt.inputs]
    specs = json.loads(manifest.read_text())["inputs"]
    if len(specs) != len(rt.inputs):
        raise ValueError(f"{manifest} lists {len(specs)} input(s), {rt.path.name} takes {len(rt.inputs)}")
    return specs


def _stats(ms: np.ndarray) -> Dict[str, float]:
    return {"mean": float(ms.mean()), "std": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
            "p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "min": float(ms.min()), "max": float(ms.max())}


def parse_shapes(items: Optional[Sequence[str]]) -> Dict[str, List[int]]:
    """``["tokens=1x128", ...]`` -> {"tokens": [1, 128]}."""
    out: Dict[str, List[int]] = {}
    for item in items or ():
        name, sep, dims = item.partition("=")
        try:
            shape = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            shape = []
        if not sep or not name or not shape or min(shape) < 1:
            raise ValueError(f"--shape {item!r}: write NAME=DIMS, e.g. tokens=1x128")
        out[name] = shape
    return out


def bench(model: Path, *, runs: int = 50, warmup: int = 5, threads: Optional[int] = None,
          manifest: Optional[Path] = None, inputs: Optional[Path] = None, seed: int = 0,
          shapes: Optional[Dict[str, List[int]]] = None) -> Dict[str, Any]:
    """Load ``model``, run it ``warmup`` then ``runs`` times, and return the result dict the CLI prints.
    ``shapes``: {input name: shape} for random inputs of another size than the manifest's (dynamic dimensions)."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"--runs must be >= 1 and --warmup >= 0, got {runs} and {warmup}")
    if not model.exists():
        raise FileNotFoundError(f"model file not found: {model}")
    cls = runtime_class(format_of(model))
    cls.check_platform()  # fail fast (Core ML off macOS) before a slow import
    cls.import_backend()  # import cost is not load cost
    rss0 = rss_mb()
    t0 = time.perf_counter_ns()
    rt = cls(model, threads=threads)
    load_ms = (time.perf_counter_ns() - t0) / 1e6
    rss1 = rss_mb()
    if inputs is not None:
        with np.load(inputs) as z:
            feeds: Dict[str, np.ndarray] = {k: z[k] for k in z.files}
    else:
        specs = _input_specs(rt, manifest)
        unknown = sorted(set(shapes or {}) - {sp["name"] for sp in specs})
        if unknown:
            raise ValueError(f"--shape names no input {unknown}; the inputs are {[sp['name'] for sp in specs]}")
        feeds = random_inputs([dict(sp, shape=(shapes or {}).get(sp["name"], sp["shape"])) for sp in specs], seed)
    prepared = rt.prepare(feeds)

    # time the runtime, not our casting: the prepared arrays already have the dtypes the runtime wants
    t0 = time.perf_counter_ns()
    rt.run(prepared)
    first_run_ms = (time.perf_counter_ns() - t0) / 1e6
    for _ in range(warmup):
        rt.run(prepared)
    times = np.empty(runs)
    for k in range(runs):
        t0 = time.perf_counter_ns()
        rt.run(prepared)
        times[k] = (time.perf_counter_ns() - t0) / 1e6
    lat = _stats(times)
    batch = int(prepared[0].shape[0]) if prepared and prepared[0].ndim else 1
    return {
        "runtime": rt.name, "runtime_version": rt.version, "format": format_of(model), "model": str(model),
        "threads": rt.threads, "load_ms": load_ms, "first_run_ms": first_run_ms, "warmup": warmup, "runs": runs,
        "latency_ms": lat, "cv": lat["std"] / lat["mean"] if lat["mean"] > 0 else 0.0,
        "batch": batch, "items_per_s": batch * 1000.0 / lat["p50"] if lat["p50"] > 0 else None,
        "peak_rss_mb": peak_rss_mb(),
        "load_rss_delta_mb": None if rss0 is None or rss1 is None else rss1 - rss0,
        "inputs": [{"name": i.name, "shape": list(a.shape), "dtype": str(a.dtype)} for i, a in zip(rt.inputs, prepared)],
        "notes": rt.notes, "python": platform.python_version(), "platform": platform.platform(),
        "cpu_features": cpu_features(),
    }


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def runner_parser(prog: str, runs: int, warmup: int) -> "_Parser":
    """The arguments every device-side runner takes (bench, profile)."""
    p = _Parser(prog=prog)
    p.add_argument("model", type=Path)
    p.add_argument("--manifest", type=Path)
    p.add_argument("--runs", type=int, default=runs)
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--threads", type=int)
    p.add_argument("--inputs", type=Path, help=".npz with one array per input (by name, else in order)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", type=Path, help="also write the JSON here (atomically)")
    return p


def run_json_command(p: "_Parser", argv: Optional[Sequence[str]], job) -> int:
    """Parse ``argv``, run ``job(args) -> dict`` and print its JSON as the one line of stdout (also to --json-out);
    any failure prints {"error", "hint"} and returns 2. Native code's prints go to stderr meanwhile."""
    if argv is None and any(h in sys.argv[1:] for h in ("-h", "--help")):
        p.print_help()
        return 0
    stdout = os.dup(1)  # keep the real stdout for the JSON
    sys.stdout.flush()
    os.dup2(2, 1)
    try:
        a = p.parse_args(argv)
        text, code = json.dumps(job(a)), 0
        if a.json_out is not None:
            _write_atomic(a.json_out, text + "\n")
    except Exception as e:  # noqa: BLE001 -- every failure becomes a JSON error for the host to read
        if isinstance(e, _UsageError):
            error, hint = f"usage error: {e}", p.format_usage().strip()
        else:
            error, hint = f"{type(e).__name__}: {getattr(e, 'message', None) or e}", getattr(e, "hint", None)
        text, code = json.dumps({"error": error, "hint": hint}), 2
    finally:
        sys.stdout.flush()
        os.dup2(stdout, 1)
        os.close(stdout)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = runner_parser("python -m edgeship_runtime.bench", runs=50, warmup=5)
    p.add_argument("--shape", action="append", help="NAME=DIMS: an input's shape (a size of its dynamic dimensions)")
    p.description = __doc__.splitlines()[0]
    return run_json_command(p, argv, lambda a: bench(a.model, runs=a.runs, warmup=a.warmup, threads=a.threads,
                                                     manifest=a.manifest, inputs=a.inputs, seed=a.seed,
                                                     shapes=parse_shapes(a.shape)))


if __name__ == "__main__":
    sys.exit(main())
