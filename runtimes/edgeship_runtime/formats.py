"""The format registry: one record per model format, pure data, on the device side (it is pushed to devices).

Everything that asks "what is this format?" reads :data:`FORMATS`: the suffix -> format lookup and the Runtime
class here; on the host, the exporter registry (``edgeship.export.EXPORTERS``, same keys), ``edgeship doctor``,
the device probe, manifest.json's tool versions and its schema, the app targets of ``edgeship package``, the
native benchmark tools, the profiler and the default ``--formats``. A test fails where a table disagrees.

A new format is one exporter file, one runtime file and one registration (on the host, with its exporter;
tests/test_formats.py does it for a toy ``.npz`` format)::

    from edgeship.export import register_format
    register_format(FormatSpec(key="npz", suffixes=(".npz",), runtime="mypkg.npz_runtime:NpzRuntime",
                               probes=(Probe("numpy", "numpy"),), runtime_pip=("numpy",), apps={"pi": 3}),
                    "mypkg.npz_export:NpzExporter")

A format registered in a host process reaches the runners it starts (a device's ``python -m edgeship_runtime.bench``)
through the environment variable :data:`ENV_VAR` (a JSON list of records; see :func:`exported_env`); its runtime
module must be importable there too.

Python >= 3.7, standard library only.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

__all__ = ["FormatSpec", "Probe", "FORMATS", "ENV_VAR", "register", "unregister", "format_for_suffix",
           "default_formats", "app_formats", "native_tools", "profilable", "KeyView", "exported_env",
           "added_runtime_modules"]

ENV_VAR = "EDGESHIP_FORMATS"
_OS_NAMES = {"darwin": "macOS", "linux": "Linux", "win32": "Windows"}


@dataclass(frozen=True)
class Probe:
    """One way to find a format's runtime on a device. ``module``: what to import (``a+b``: every one must be
    findable); ``dist``: the distribution whose version is reported; ``how``: "import" (import it) or "find"
    (only locate it: the import is slow, e.g. executorch's pybindings pull in torch); ``deep``: the module imported
    instead when the probe is asked to import everything."""

    module: str
    dist: Optional[str] = None
    how: str = "import"
    deep: Optional[str] = None

    def __post_init__(self):
        if self.how not in ("import", "find"):
            raise ValueError(f"Probe.how must be 'import' or 'find', not {self.how!r}")


@dataclass(frozen=True)
class FormatSpec:
    """What a format is, as data.

    key          the format key ("tflite"), also the exporter's key and the output sub-folder's name
    suffixes     file suffixes, the first one the exporter writes (".mlpackage" is a directory)
    runtime      "module:Class" of its :class:`edgeship_runtime.base.Runtime`
    probes       how a device finds its runtime, in order of preference (the first that imports wins)
    runtime_pip  pip packages that run it (doctor's versions; the device's install hint)
    converter_pip pip packages the host converter uses (doctor's and manifest.json's versions)
    platforms    sys.platform values where it can run (None: everywhere)
    native_tool  the file name of its native benchmark binary (edgeship.bench.native parses its output), or None
    profilable   whether ``edgeship profile`` can break it down per op
    apps         the app targets of ``edgeship package`` that can run it, by preference ({app: rank}, 0 best)
    default      whether ``--formats`` includes it when not given
    title        its name in messages ("Core ML"); the key when empty
    """

    key: str
    suffixes: Tuple[str, ...]
    runtime: str
    probes: Tuple[Probe, ...] = ()
    runtime_pip: Tuple[str, ...] = ()
    converter_pip: Tuple[str, ...] = ()
    platforms: Optional[Tuple[str, ...]] = None
    native_tool: Optional[str] = None
    profilable: bool = False
    apps: Dict[str, int] = field(default_factory=dict)
    default: bool = False
    title: str = ""

    def __post_init__(self):
        if not self.key or not self.key.isidentifier():
            raise ValueError(f"a format key is an identifier such as 'tflite', not {self.key!r}")
        if not self.suffixes or not all(s.startswith(".") and s == s.lower() for s in self.suffixes):
            raise ValueError(f"format {self.key!r}: suffixes are lower-case and start with '.', got {self.suffixes!r}")
        if ":" not in self.runtime:
            raise ValueError(f"format {self.key!r}: runtime is 'module:Class', got {self.runtime!r}")

    def runs_on(self, platform: str) -> bool:
        return self.platforms is None or platform in self.platforms

    def platform_problem(self, platform: str) -> Optional[str]:
        """None where its models can run on ``platform`` (a sys.platform value), else the reason to report."""
        if self.runs_on(platform):
            return None
        where = " or ".join(_OS_NAMES.get(p, p) for p in self.platforms or ())
        return f"needs {where}: {self.title or self.key} prediction runs only there"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FormatSpec":
        d = dict(d)
        d["suffixes"] = tuple(d["suffixes"])
        d["probes"] = tuple(Probe(**p) for p in d.get("probes", ()))
        for k in ("runtime_pip", "converter_pip"):
            d[k] = tuple(d.get(k, ()))
        if d.get("platforms") is not None:
            d["platforms"] = tuple(d["platforms"])
        return cls(**d)


_BUILTIN = (
    FormatSpec("onnx", (".onnx",), "edgeship_runtime.onnx:OnnxRuntime",
               probes=(Probe("onnxruntime", "onnxruntime"),), runtime_pip=("onnxruntime",),
               converter_pip=("onnx", "onnxscript", "onnxslim"), native_tool="onnxruntime_perf_test",
               profilable=True, apps={"android": 2, "pi": 1, "web": 0}, default=True),
    FormatSpec("tflite", (".tflite",), "edgeship_runtime.tflite:LiteRtRuntime",
               probes=(Probe("ai_edge_litert.interpreter", "ai-edge-litert"),
                       Probe("tflite_runtime.interpreter", "tflite-runtime")),
               runtime_pip=("ai-edge-litert", "tflite-runtime"), converter_pip=("litert-torch", "ai-edge-quantizer"),
               native_tool="benchmark_model", profilable=True, apps={"android": 0, "pi": 0, "web": 1}, default=True),
    FormatSpec("executorch", (".pte",), "edgeship_runtime.executorch:ExecuTorchRuntime",
               probes=(Probe("executorch.extension.pybindings._C+torch", "executorch", how="find",
                             deep="executorch.runtime"),),
               runtime_pip=("executorch",), converter_pip=("executorch", "torchao"), native_tool="executor_runner",
               profilable=True, apps={"android": 1, "pi": 2}, default=True),
    FormatSpec("coreml", (".mlpackage", ".mlmodel"), "edgeship_runtime.coreml:CoreMLRuntime",
               probes=(Probe("coremltools", "coremltools"),), runtime_pip=("coremltools",),
               converter_pip=("coremltools",), platforms=("darwin",), apps={"ios": 0}, default=True,
               title="Core ML"),
    FormatSpec("torchscript", (".ptl",), "edgeship_runtime.torchscript:TorchScriptRuntime",   # legacy PyTorch Mobile
               probes=(Probe("torch", "torch", how="find", deep="torch.jit.mobile"),), runtime_pip=("torch",),
               converter_pip=("torch",)),
)

FORMATS: Dict[str, FormatSpec] = {f.key: f for f in _BUILTIN}


def register(spec: FormatSpec, replace: bool = False) -> FormatSpec:
    """Add a format. Its suffixes must not belong to another format; an existing key needs ``replace=True``."""
    if spec.key in FORMATS and not replace:
        raise ValueError(f"format {spec.key!r} is already registered (pass replace=True to replace it)")
    for other in FORMATS.values():
        clash = set(other.suffixes) & set(spec.suffixes)
        if other.key != spec.key and clash:
            raise ValueError(f"format {spec.key!r}: suffix {sorted(clash)[0]} already belongs to {other.key!r}")
    FORMATS[spec.key] = spec
    return spec


def unregister(key: str) -> None:
    """Remove a format added with :func:`register` (built-in formats stay)."""
    if any(f.key == key for f in _BUILTIN):
        raise ValueError(f"{key!r} is a built-in format")
    FORMATS.pop(key, None)


def format_for_suffix(suffix: str) -> Optional[str]:
    suffix = suffix.lower()
    return next((f.key for f in FORMATS.values() if suffix in f.suffixes), None)


def suffixes() -> List[str]:
    return [s for f in FORMATS.values() for s in f.suffixes]


def default_formats() -> Tuple[str, ...]:
    return tuple(f.key for f in FORMATS.values() if f.default)


def app_formats(app: str) -> Tuple[str, ...]:
    """The formats the app target ``app`` ("android", "ios", "pi") runs, best first (by ``apps`` rank)."""
    ranked = sorted((f.apps[app], i, f.key) for i, f in enumerate(FORMATS.values()) if app in f.apps)
    return tuple(key for _, _, key in ranked)


def native_tools() -> Dict[str, str]:
    """{format: the file name of its native benchmark binary} for the formats that have one."""
    return {f.key: f.native_tool for f in FORMATS.values() if f.native_tool}


def profilable() -> Tuple[str, ...]:
    """The formats ``edgeship profile`` breaks down per op."""
    return tuple(f.key for f in FORMATS.values() if f.profilable)


class KeyView(Sequence):
    """A read-only tuple of format keys computed from :data:`FORMATS` at each use, for module-level names that
    other modules import (``DEFAULT_FORMATS``, ``PROFILABLE``): a format registered later counts. Compares equal
    to the tuple or list of the same keys."""

    def __init__(self, compute: Callable[[], Tuple[str, ...]]):
        self._compute = compute

    def __getitem__(self, i):
        return tuple(self._compute())[i]

    def __len__(self) -> int:
        return len(tuple(self._compute()))

    def __iter__(self):
        return iter(tuple(self._compute()))

    def __contains__(self, key) -> bool:
        return key in tuple(self._compute())

    def __eq__(self, other) -> bool:
        if isinstance(other, (list, tuple, KeyView)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))


def exported_env() -> Dict[str, str]:
    """The environment that carries the formats registered in this process (not the built-in ones) to a runner
    it starts: ``{ENV_VAR: JSON}``, or {} when there are none."""
    builtin = {f.key for f in _BUILTIN}
    extra = [f.to_dict() for f in FORMATS.values() if f.key not in builtin]
    return {ENV_VAR: json.dumps(extra)} if extra else {}


def added_runtime_modules() -> List[str]:
    """The top-level modules of the runtimes of formats registered in this process that live outside
    edgeship_runtime: what a runner on a device needs pushed beside edgeship_runtime."""
    builtin = {f.key for f in _BUILTIN}
    mods = (f.runtime.partition(":")[0].split(".")[0] for f in FORMATS.values() if f.key not in builtin)
    return sorted({m for m in mods if m != "edgeship_runtime"})


def _load_env() -> None:
    text = os.environ.get(ENV_VAR)
    if not text:
        return
    try:
        records = json.loads(text)
        for r in records:
            register(FormatSpec.from_dict(r), replace=True)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{ENV_VAR} does not hold a JSON list of format records: {e}") from None


_load_env()
