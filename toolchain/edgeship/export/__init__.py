"""Exporter registry: format key -> "module:Class" (or the class), imported lazily so one format never imports
another's converter. The keys are those of the format registry, :data:`edgeship_runtime.formats.FORMATS`, which
says everything else about a format (suffixes, runtime, pip packages, apps, native tool, default or not).

A new format is one exporter, one runtime and one registration, from outside this package too::

    from edgeship.export import register_format
    register_format(FormatSpec("npz", (".npz",), "mypkg.npz_runtime:NpzRuntime", ...), "mypkg.npz_export:NpzExporter")
"""
from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

from edgeship_runtime import formats as _formats

from ..errors import EdgeshipError
from ..model import ModelSpec

EXPORTERS: dict[str, str | type] = {
    "onnx": "edgeship.export.onnx:OnnxExporter",
    "tflite": "edgeship.export.tflite:TFLiteExporter",
    "executorch": "edgeship.export.executorch:ExecuTorchExporter",
    "coreml": "edgeship.export.coreml:CoreMLExporter",
    "torchscript": "edgeship.export.torchscript:TorchScriptExporter",   # legacy PyTorch Mobile (.ptl): opt-in only
}


def default_formats() -> list[str]:
    """The formats ``--formats`` means when not given: the registry's ``default`` ones that have an exporter."""
    return [k for k in _formats.default_formats() if k in EXPORTERS]


DEFAULT_FORMATS: Sequence[str] = _formats.KeyView(default_formats)   # read at each use


def register_exporter(key: str, exporter: str | type, replace: bool = False) -> None:
    """Add the exporter of a format already in :data:`edgeship_runtime.formats.FORMATS` (same key): a
    "module:Class" string, imported when first used, or the class itself."""
    if key not in _formats.FORMATS:
        raise ValueError(f"format {key!r} is not in the format registry: register its FormatSpec first "
                         "(edgeship_runtime.formats.register, or edgeship.export.register_format for both)")
    if key in EXPORTERS and not replace:
        raise ValueError(f"format {key!r} already has an exporter (pass replace=True to replace it)")
    if not (isinstance(exporter, type) or (isinstance(exporter, str) and exporter.count(":") == 1)):
        raise ValueError(f"an exporter is 'module:Class' or a class, not {exporter!r}")
    EXPORTERS[key] = exporter


def register_format(spec: _formats.FormatSpec, exporter: str | type, replace: bool = False) -> _formats.FormatSpec:
    """Register a format in one call: its :class:`~edgeship_runtime.formats.FormatSpec` and its exporter."""
    if spec.key in EXPORTERS and not replace:
        raise ValueError(f"format {spec.key!r} already has an exporter (pass replace=True to replace it)")
    _formats.register(spec, replace=replace)
    register_exporter(spec.key, exporter, replace=True)
    return spec


def unregister_format(key: str) -> None:
    """Remove a format added with :func:`register_format` (both records; built-in formats stay)."""
    _formats.unregister(key)
    EXPORTERS.pop(key, None)


@dataclass
class Exported:
    """What an exporter made: the artifact and what it learned while making it."""

    path: Path
    precision: str                      # the precision the artifact really has
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)   # format-specific figures (delegation counts, opset, …)
    min_os: dict | None = None


class Exporter(Protocol):
    format: ClassVar[str]
    suffix: ClassVar[str]
    runtime: ClassVar[str]
    precisions: ClassVar[frozenset[str]]
    precision_map: ClassVar[dict[str, str]]   # requested -> made, where a format makes something else (optional)
    extra: ClassVar[str]                # the pip extra that installs its converter
    module: ClassVar[str]               # the converter's import name, to say what is missing

    def export(self, spec: ModelSpec, out_dir: Path, precision: str, calib=None, quant=None) -> Exported:
        """Make one artifact in ``out_dir``. ``calib``: calibration inputs for int8 (compress.quantize's
        ``calibration_inputs`` accepts them). ``quant``: a ``compress.quantize.QuantOptions`` or None, passed only
        for quantized precisions when it asks for something: the layers in ``quant.keep_float`` stay float with
        the format's own quantizer, and the artifact says which layers it really kept float
        (``details["float_layers"]`` and a note, read back from the file; ``compress.quantize.layers_note``),
        or that it could not."""
        ...


def artifact_name(precision: str, suffix: str) -> str:
    return f"model{'' if precision == 'fp32' else '.' + precision}{suffix}"


def effective_precisions(fmt: str, requested) -> list[str]:
    """The precisions ``fmt`` really makes for ``requested``, without duplicates (Core ML: int8 -> w8)."""
    mapping = getattr(get_exporter(fmt), "precision_map", {})
    return list(dict.fromkeys(mapping.get(p, p) for p in requested))


def parse_formats(text: str | None) -> list[str]:
    if not text:
        return default_formats()
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in EXPORTERS]
    if unknown or not formats:
        raise EdgeshipError(f"unknown format {', '.join(unknown) or repr(text)}", hint=f"known formats: {', '.join(EXPORTERS)}")
    return list(dict.fromkeys(formats))


def exporter_class(fmt: str) -> type:
    """The exporter class of ``fmt`` (its module imported now)."""
    if fmt not in EXPORTERS:
        raise EdgeshipError(f"unknown format {fmt!r}", hint=f"known formats: {', '.join(EXPORTERS)}")
    target = EXPORTERS[fmt]
    if isinstance(target, type):
        return target
    mod, cls = target.split(":")
    return getattr(importlib.import_module(mod), cls)


def get_exporter(fmt: str) -> Exporter:
    return exporter_class(fmt)()


def available(fmt: str) -> tuple[bool, str | None]:
    """Whether the converter for ``fmt`` can be imported here, and if not, why."""
    klass = exporter_class(fmt)
    try:
        importlib.import_module(klass.module)
        return True, None
    except ImportError as e:
        return False, f"{klass.module} is not installed ({e}); pip install 'edgeship[{klass.extra}]'"


def export_program(module, args, spec: ModelSpec, what: str = "the model"):
    """``torch.export.export(module, args)`` with ``spec``'s dynamic dimensions (``ModelSpec.dynamic_shapes``);
    a model that fixes a dimension marked dynamic is refused with the input, the axis and what torch.export says
    the model needs (its "Suggested fixes")."""
    import torch
    dynamic = spec.dynamic_shapes()
    try:
        return torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
    except Exception as e:  # noqa: BLE001 - torch's UserError (ConstraintViolation) for a dimension the model fixes
        if dynamic is None or "Constraints violated" not in str(e):
            raise
        raise dynamic_error(spec, str(e), what) from e


def dynamic_dims(spec: ModelSpec) -> dict:
    """{input name: {axis: [MIN, MAX]}} of the dynamic inputs: an exporter's ``details["dynamic"]``."""
    return {i.name: {str(a): list(r) for a, r in i.dynamic.items()} for i in spec.inputs if i.dynamic}


def dynamic_error(spec: ModelSpec, text: str, what: str = "the model") -> EdgeshipError:
    """The error for torch.export's "Constraints violated (seq)!": which input dimensions, and the fixes it suggests."""
    import re
    named = {}
    for i, dims in zip(spec.inputs, spec.dynamic_shapes() or ()):
        for axis, dim in (dims or {}).items():
            named.setdefault(dim.__name__, []).append(f"{i.name} dimension {axis} ({i.dynamic[axis][0]}..{i.dynamic[axis][1]})")
    bad = re.search(r"Constraints violated \(([^)]*)\)", text)
    names = [n.strip() for n in bad.group(1).split(",")] if bad else list(named)
    const = re.search(r"specialized it to be a constant \((\d+)\)", text)
    fixes = text.split("Suggested fixes:", 1)[1].strip().splitlines() if "Suggested fixes:" in text else []
    fixes = [f.strip() for f in fixes if "=" in f][:3]
    where = "; ".join(w for n in names for w in named.get(n, [n]))
    why = f"{what} fixes it to {const.group(1)}" if const else f"{what} constrains it"
    return EdgeshipError(f"{where} cannot be dynamic: {why} (torch.export: {'; '.join(fixes) or text.splitlines()[0]})",
                         hint="make that dimension fixed in --input (or narrow its range as suggested), or change the "
                              "model so it does not depend on that size (e.g. slice position embeddings to the input length)")


def require(module: str, extra: str, what: str):
    """Import a converter module, or raise the missing-dependency error that names the pip extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise EdgeshipError(f"{what} needs the Python package '{module.split('.')[0]}', which is not installed ({e})",
                            hint=f"pip install 'edgeship[{extra}]'  (or run 'make setup')") from e
