"""Typed results: one artifact's export and parity (:class:`ArtifactResult`), one bench measurement
(:class:`BenchEntry`) and the whole report.json (:class:`Report`), each with ``to_dict`` / ``from_dict``.

The types wrap report.json, they do not rename it: ``Report.from_dict(d).to_dict() == d`` for every report edgeship
writes (keys, values and their order), so readers of the plain JSON (report.html, package, the apps, scripts) see
the same file. A key these types do not know is kept in ``extra`` and written back as it was. The JSON Schema of the
file is ``schemas/report.schema.json`` (checked by ``report.validate`` on every write).

The pass/fail rule lives here once: an artifact passed when it exported (``status`` ok) and its parity in its own
runtime passed, or could not be run on this host ("not run": Core ML on Linux, said in the report, never a failure
of the artifact). Parity that failed or was inconclusive does not pass.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping

PASSING_PARITY = ("pass", "not run")   # parity statuses that count as passed (see the module docstring)


def artifact_passed(row: Mapping) -> bool:
    """The pass/fail rule, on one report.json artifact row (a dict) or an :class:`ArtifactResult`."""
    if isinstance(row, ArtifactResult):
        row = {"status": row.status, "parity": row.parity}
    parity = row.get("parity") if isinstance(row.get("parity"), Mapping) else {}
    return row.get("status") == "ok" and parity.get("status") in PASSING_PARITY


def all_passed(artifacts: Iterable[Mapping]) -> bool:
    """Every artifact passed (:func:`artifact_passed`); what `edgeship export` and `edgeship verify` exit 0 on."""
    return all(artifact_passed(a) for a in artifacts)


class _Record:
    """to_dict/from_dict for a dataclass that mirrors a JSON object: the keys read are written back in their order
    (a key whose field is None stays, a key that was absent stays absent); a new object writes the keys of
    ``ALWAYS`` and every other field that is set. Keys with no field go to ``extra`` and come back unchanged."""

    ALWAYS: ClassVar[tuple[str, ...]] = ()
    NESTED: ClassVar[dict[str, type]] = {}   # field -> record type of its list items

    def _fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extra", "keys_read")}

    def _always(self) -> tuple[str, ...]:
        return self.ALWAYS

    def to_dict(self) -> dict:
        values = self._fields()
        values.update(self._computed())
        out: dict = {}
        for k in self.keys_read:
            if k in values:
                out[k] = _plain(values[k])
            elif k in self.extra:
                out[k] = self.extra[k]
        always = () if self.keys_read else self._always()
        for k in (*always, *values):   # a new object: ALWAYS and what is set; one read: what changed since
            if k not in out and k in values and (k in always or not self._is_default(k, values[k])):
                out[k] = _plain(values[k])
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out

    def _computed(self) -> dict[str, Any]:
        return {}

    def _is_default(self, name: str, value) -> bool:
        f = next((f for f in dataclasses.fields(self) if f.name == name), None)
        if f is None:   # a computed key (ArtifactResult.key): written with ALWAYS only
            return True
        if f.default is not dataclasses.MISSING:
            return value == f.default
        return f.default_factory is not dataclasses.MISSING and value == f.default_factory()

    @classmethod
    def from_dict(cls, d: Mapping):
        if not isinstance(d, Mapping):
            raise TypeError(f"{cls.__name__}.from_dict needs a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "keys_read"}
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and f.name not in d]
        if missing:
            from .errors import EdgeshipError
            raise EdgeshipError(f"{cls.__name__}.from_dict: the object has no {', '.join(missing)}",
                                hint="report.json rows are checked against schemas/report.schema.json")
        kw = {}
        for k in names & d.keys():
            item = cls.NESTED.get(k)
            kw[k] = [item.from_dict(x) if isinstance(x, Mapping) else x for x in d[k]] \
                if item is not None and isinstance(d[k], list) else d[k]
        computed = set(cls._COMPUTED) if hasattr(cls, "_COMPUTED") else set()
        extra = {k: v for k, v in d.items() if k not in names and k not in computed}
        return cls(**kw, extra=extra, keys_read=tuple(d.keys()))


def _plain(v):
    if isinstance(v, _Record):
        return v.to_dict()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


@dataclass
class ArtifactResult(_Record):
    """One format × precision of an export: report.json's ``artifacts`` row."""

    format: str
    precision: str
    status: str                      # ok | failed (the converter failed; ``error`` and ``hint`` say why)
    path: str | None = None          # relative to the output folder
    size_bytes: int | None = None
    export_s: float | None = None
    parity: dict | None = None       # verify.Parity.to_dict(), with "sizes" for dynamic dimensions
    download_bytes: int | None = None   # zip deflate 9 of the file (edgeship.sizes): what an app store/APK pays
    deterministic: bool | None = None
    accuracy: dict | None = None     # on the eval set, run in the artifact's own runtime
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    error: str | None = None
    hint: str | None = None
    extra: dict = field(default_factory=dict, repr=False, compare=False)
    keys_read: tuple[str, ...] = field(default=(), repr=False, compare=False)

    ALWAYS: ClassVar[tuple[str, ...]] = ("format", "precision", "status", "path", "size_bytes", "export_s", "parity",
                                         "deterministic", "accuracy", "notes", "details", "error", "hint", "key")
    _COMPUTED: ClassVar[tuple[str, ...]] = ("key",)

    @property
    def key(self) -> str:
        return f"{self.format}:{self.precision}"

    @property
    def passed(self) -> bool:
        return artifact_passed(self)

    def _computed(self) -> dict[str, Any]:
        return {"key": self.key}


@dataclass
class BenchEntry(_Record):
    """One artifact × thread count (× input size) benched on one device: report.json's ``bench`` row, as
    bench.harness writes it. Measured figures are there when ``status`` is ok; ``reason`` says why not otherwise."""

    artifact: str                    # "onnx:fp32"
    format: str
    precision: str
    device: str
    status: str                      # ok | skipped (the device cannot run it) | failed
    reason: str | None = None
    path: str | None = None
    size_bytes: int | None = None
    device_kind: str | None = None
    device_info: dict | None = None
    via: str | None = None           # python | tool | app
    timestamp: str | None = None
    runtime: str | None = None
    runtime_version: str | None = None
    threads: int | None = None
    runs: int | None = None
    warmup: int | None = None
    latency_ms: dict | None = None   # min, mean, p50, p90, p99, ... (native tools may leave some None)
    cv: float | None = None
    load_ms: float | None = None
    first_run_ms: float | None = None
    peak_rss_mb: float | None = None
    energy: dict | None = None
    size: dict | None = None         # --batch/--seq: the input size benched at
    items_per_s: float | None = None
    speedup_vs: dict | None = None   # --compare
    extra: dict = field(default_factory=dict, repr=False, compare=False)
    keys_read: tuple[str, ...] = field(default=(), repr=False, compare=False)

    ALWAYS: ClassVar[tuple[str, ...]] = ("artifact", "path", "format", "precision", "size_bytes", "device", "device_kind",
                                         "device_info", "via", "status", "reason", "timestamp")

    @property
    def passed(self) -> bool:
        """Measured, or skipped with the reason (the device cannot run that format): not a failure."""
        return self.status in ("ok", "skipped")


def bench_outcome(entries: Iterable[Mapping | BenchEntry]) -> str:
    """"ok" (everything measured or skipped with a reason), "failed" (an entry failed), or "nothing" (every entry
    was skipped: a run that measured nothing is not a success). `edgeship bench` exits 0 on "ok" only."""
    status = [e.status if isinstance(e, BenchEntry) else e.get("status") for e in entries]
    if status and all(s == "skipped" for s in status):
        return "nothing"
    return "ok" if all(s in ("ok", "skipped") for s in status) else "failed"


@dataclass
class Report(_Record):
    """report.json: an export's (``kind`` absent) or a pruning sweep's (``kind`` "sweep")."""

    schema_version: str
    name: str
    created: str | None = None
    tools: dict | None = None
    kind: str | None = None                  # None: an export; "sweep": `edgeship sweep`
    model: dict | None = None                # name, task, parameters, inputs, outputs
    verify: dict | None = None               # samples, tolerances, inputs (where the verification inputs came from)
    artifacts: list[ArtifactResult] = field(default_factory=list)
    bench: list[BenchEntry] = field(default_factory=list)
    notes: list[str] | None = None
    eval: dict | None = None                 # examples, torch_fp32_top1
    quantize: dict | None = None             # keep_float
    sensitivity: dict | None = None          # compress.sensitivity.SensitivityReport.to_dict()
    compression: dict | None = None          # compress.run's record: recipe, data, eval, stages, student
    method: str | None = None                # sweep: structured | unstructured
    sweep: list[dict] | None = None          # sweep: one row per sparsity
    plot: str | None = None                  # sweep: sweep.png
    extra: dict = field(default_factory=dict, repr=False, compare=False)
    keys_read: tuple[str, ...] = field(default=(), repr=False, compare=False)

    NESTED: ClassVar[dict[str, type]] = {"artifacts": ArtifactResult, "bench": BenchEntry}

    def _always(self) -> tuple[str, ...]:
        if self.kind == "sweep":
            return ("schema_version", "name", "kind", "method", "created", "tools", "sweep", "plot")
        return ("schema_version", "name", "created", "tools", "model", "verify", "artifacts", "bench")

    @property
    def passed(self) -> bool:
        """Every artifact passed parity (:func:`artifact_passed`); `edgeship verify` exits 0 on it."""
        return all_passed(a for a in self.artifacts)

    @property
    def budget_met(self) -> bool:
        """False only when an accuracy budget (--max-accuracy-drop) was set and not met."""
        return (self.sensitivity or {}).get("met") is not False

    @property
    def ok(self) -> bool:
        """What `edgeship export` and `compress` exit 0 on: every artifact passed and the accuracy budget held."""
        return self.passed and self.budget_met

    def artifact(self, key: str) -> ArtifactResult:
        for a in self.artifacts:
            if isinstance(a, ArtifactResult) and a.key == key:
                return a
        raise KeyError(key)
