"""Compression recipes: YAML with named presets, validated before any long work, with errors that name the key and line.

    preset: tiny                 # optional: start from a named preset (toolchain/edgeship/presets/NAME.yaml)
    data: digits                 # training / fine-tuning data (DATA), split 60/20/20 where it is one set
    eval: digits                 # accuracy is measured on its test split, in every runtime
    train:    {epochs: 30}       # train MODEL first (a model built in code is untrained)
    distill:  {student: file.py:factory | null, width: 0.5, temperature: 4, alpha: 0.5, epochs: 30}
    prune:    {method: structured, sparsity: 0.5, steps: 1, finetune_epochs: 10, layers: {classifier: null}}
    quantize: {precision: int8, calib_samples: 128, layers: {Linear: null}}
    #   quantize.qat: {epochs: 3, lr: 1e-4, batch_size: 64, seed: 0}   # quantization-aware fine-tune (int8; needs data)
    export:   {formats: [onnx, tflite, executorch, coreml]}

Per-layer options (``layers``) follow coremltools' precedence: layer name > layer type > global; ``null`` leaves
a layer alone (not pruned; kept in float).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from .errors import EdgeshipError

PRESETS_DIR = Path(__file__).parent / "presets"


@dataclass
class TrainSection:
    epochs: int = 30
    lr: float = 2e-3
    batch_size: int = 64
    seed: int = 0
    patience: int | None = 8

    def __post_init__(self):
        from .compress.train import TrainConfig
        TrainConfig(self.epochs, self.lr, self.batch_size, self.seed, self.patience)


@dataclass
class DistillSection:
    student: str | None = None          # MODEL reference; None derives one from the teacher
    width: float | None = 0.5           # width ratio of a derived student
    temperature: float = 4.0
    alpha: float = 0.5
    epochs: int = 30
    lr: float = 2e-3
    batch_size: int = 64
    seed: int = 0
    patience: int | None = 8
    feature_layers: list[str] | None = None
    baseline: bool = True               # also train the same student without the teacher, for comparison

    def __post_init__(self):
        if self.student is None and not (self.width and 0 < self.width <= 1):
            raise EdgeshipError(f"distill.width must be in (0, 1] when no student is given, got {self.width}")
        from .compress.distill import DistillConfig
        DistillConfig(self.temperature, self.alpha, self.epochs, self.lr, self.batch_size, self.seed, self.patience)


@dataclass
class PruneSection:
    method: str = "structured"          # structured | unstructured
    sparsity: float = 0.5
    steps: int = 1
    finetune_epochs: int = 10
    lr: float = 5e-4
    layers: dict[str, float | None] = field(default_factory=dict)

    def __post_init__(self):
        from .compress.prune import check_sparsity
        if self.method not in ("structured", "unstructured"):
            raise EdgeshipError(f"prune.method must be structured or unstructured, got {self.method!r}")
        check_sparsity(self.sparsity)
        if self.steps < 1 or self.finetune_epochs < 0:
            raise EdgeshipError(f"prune.steps must be >= 1 and finetune_epochs >= 0 (got {self.steps}, {self.finetune_epochs})")
        odd = {k: v for k, v in self.layers.items() if v is not None}
        if odd:
            raise EdgeshipError(f"prune.layers: only null (leave the layer unpruned) is supported, got {odd}",
                                hint="set the global sparsity, and null for layers to keep whole")


@dataclass
class QATSection:
    """Quantization-aware training: a short fine-tune with int8 fake-quant (compress/qat.py)."""
    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1:
            raise EdgeshipError(f"quantize.qat.epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise EdgeshipError(f"quantize.qat.lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise EdgeshipError(f"quantize.qat.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class QuantizeSection:
    precision: str = "int8"
    calib_samples: int = 128
    layers: dict[str, str | None] = field(default_factory=dict)   # layer name or type -> null (keep float) | precision
    max_accuracy_drop: float | None = None   # accuracy points vs fp32: keep the most sensitive layers float until it holds
    qat: QATSection | None = None            # quantization-aware fine-tune before the int8 exports

    def __post_init__(self):
        from .pipeline import PRECISIONS
        if self.precision not in PRECISIONS:
            raise EdgeshipError(f"quantize.precision {self.precision!r} is unknown", hint=f"use one of {', '.join(PRECISIONS)}")
        if self.calib_samples < 1:
            raise EdgeshipError(f"quantize.calib_samples must be >= 1, got {self.calib_samples}")
        odd = {k: v for k, v in self.layers.items() if v is not None and v != self.precision}
        if odd:
            raise EdgeshipError(f"quantize.layers: only null (keep the layer in float) or {self.precision!r} is supported, got {odd}",
                                hint="per-layer values: null keeps a layer (name or type) in float; the precision undoes a type's null for one layer")
        if self.max_accuracy_drop is not None:   # its eval data comes with the command: compress checks it
            from .compress.sensitivity import check_budget
            check_budget(self.max_accuracy_drop, [self.precision], option="quantize.max_accuracy_drop", eval_later=True)
        if self.qat is not None and self.precision != "int8":
            raise EdgeshipError(f"quantize.qat trains for int8, but quantize.precision is {self.precision!r}",
                                hint="set quantize.precision: int8, or drop quantize.qat")

    def keep_float(self, module) -> frozenset[str]:
        """The layers to keep in float: those ``layers`` resolves to null (layer name > layer type > global)."""
        return frozenset(n for n, v in resolve_layers(module, self.layers, self.precision).items() if v is None)


@dataclass
class ExportSection:
    formats: list[str] = field(default_factory=lambda: ["onnx", "tflite", "executorch", "coreml"])
    fp32: bool = True                    # export the float model too, to compare against

    def __post_init__(self):
        from .export import parse_formats
        parse_formats(",".join(self.formats))


@dataclass
class Recipe:
    data: str | None = None
    eval: str | None = None
    train: TrainSection | None = None
    distill: DistillSection | None = None
    prune: PruneSection | None = None
    quantize: QuantizeSection | None = None
    export: ExportSection = field(default_factory=ExportSection)
    name: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _line(node) -> str:
    return f"line {node.start_mark.line + 1}" if node is not None else "?"


def _type_ok(value, tp) -> bool:
    origin = get_origin(tp)
    if tp is Any:
        return True
    if origin is None:
        if tp is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if tp is int:
            return isinstance(value, int) and not isinstance(value, bool)
        if tp is type(None):
            return value is None
        return isinstance(value, tp)
    args = get_args(tp)
    if origin in (list,):
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value)
    if origin in (dict,):
        return isinstance(value, dict) and all(_type_ok(k, args[0]) and _type_ok(v, args[1]) for k, v in value.items())
    return any(_type_ok(value, a) for a in args)   # Union / Optional


def _yaml_float(value, tp):
    """PyYAML (YAML 1.1) reads ``1e-4`` (no dot) as a string: where a float is expected, take the float it means."""
    if isinstance(value, str) and (tp is float or float in get_args(tp)):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _type_name(tp) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _build(cls, data: dict, node, where: str, path: str):
    if not isinstance(data, dict):
        raise EdgeshipError(f"{where} {_line(node)}: '{path}' must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    keys = {k.value: (k, v) for k, v in node.value} if node is not None and hasattr(node, "value") and isinstance(node.value, list) else {}
    kwargs = {}
    for key, value in data.items():
        knode, vnode = keys.get(key, (None, None))
        full = f"{path}.{key}" if path else key
        if key not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(cls))
            raise EdgeshipError(f"{where} {_line(knode)}: unknown key '{full}'", hint=f"known keys{' in ' + path if path else ''}: {known}")
        tp = hints[key]
        section = next((a for a in (get_args(tp) or (tp,)) if dataclasses.is_dataclass(a)), None)
        if section is not None:
            kwargs[key] = None if value is None else _build(section, value or {}, vnode, where, full)
            continue
        value = _yaml_float(value, tp)
        if not _type_ok(value, tp):
            raise EdgeshipError(f"{where} {_line(vnode)}: '{full}' must be {_type_name(tp)}, got {value!r}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except EdgeshipError as e:
        raise EdgeshipError(f"{where} {_line(node)}: {e.message}", e.hint) from None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "layers" else v
    return out


def parse(text: str, where: str = "recipe") -> Recipe:
    """Parse and validate a recipe; a ``preset:`` key starts from that preset and overrides it."""
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise EdgeshipError(f"{where} is not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise EdgeshipError(f"{where} must be a YAML mapping of sections (data, train, distill, prune, quantize, export)")
    preset = data.pop("preset", None)
    if preset is not None:
        base = yaml.safe_load(_preset_text(preset))
        base.pop("preset", None)
        merged = _merge(base, data)
        # validate the user's keys against their own lines first, then the merged result
        _build(Recipe, data, node, where, "")
        return _build(Recipe, merged, None, f"{where} (with preset {preset})", "")
    return _build(Recipe, data, node, where, "")


def _preset_text(name: str) -> str:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise EdgeshipError(f"unknown preset {name!r}", hint=f"known presets: {', '.join(presets())}")
    return path.read_text()


def load(ref: str) -> Recipe:
    """A recipe file path, or a preset name."""
    p = Path(ref)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise EdgeshipError(f"recipe file {ref!r} does not exist", hint=f"or name a preset: {', '.join(presets())}")
        return parse(p.read_text(), str(p))
    return parse(_preset_text(ref), f"preset {ref}")


def to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


def resolve_layers(module, overrides: dict, default):
    """Per-layer values for every named submodule: layer name > layer type (class name) > ``default``."""
    names = dict(module.named_modules())
    types = {type(m).__name__ for m in names.values()}
    unknown = [k for k in overrides if k not in names and k not in types]
    if unknown:
        raise EdgeshipError(f"per-layer options name layers or types the model does not have: {', '.join(unknown)}",
                            hint=f"layer names look like {', '.join(list(names)[1:6])}; types: {', '.join(sorted(types)[:8])}")
    out = {}
    for name, m in names.items():
        if not name:
            continue
        out[name] = overrides[name] if name in overrides else overrides.get(type(m).__name__, default)
    return out
