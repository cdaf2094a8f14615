"""Compression recipes: YAML with named presets, validated before any long work, with errors that name the key and line.

    preset: tiny                 # optional: start from a named preset (toolchain/edgeship/presets/NAME.yaml)
    data: digits                 # training / fine-tuning data (DATA), split 60/20/20 where it is one set
    eval: digits                 # accuracy is measured on its test split, in every runtime
    train:    {epochs: 30}       # train MODEL first (a model built in code is untrained)
    distill:  {student: file.py:factory | null, width: 0.5, temperature: 4, alpha: 0.5, epochs: 30,
               baseline: true, ship: auto}   # ship: auto (the better of distilled / no-teacher baseline) | distilled | baseline
    prune:    {method: structured, sparsity: 0.5, steps: 1, finetune_epochs: 10, layers: {classifier: null}}
    lowrank:  {energy: 0.9, layers: {classifier: null, Linear: {rank_ratio: 0.25}}, finetune_epochs: 5, distill: true}
    cluster:  {bits: 4, layers: {Conv2d: {bits: 6}}, finetune_epochs: 3}   # k-means weight sharing, 2^bits values
    quantize: {precision: int8, calib_samples: 128, layers: {Linear: null}}
    seed: 0                      # seeds every random source before the model factory runs (default 0)
    #   quantize.qat: {epochs: 3, lr: 1e-4, batch_size: 64, seed: 0}   # quantization-aware fine-tune (int8; needs data)
    export:   {formats: [onnx, tflite, executorch, coreml]}   # default: the format registry's default formats

The sections train, distill, prune, lowrank, quantize.qat and cluster are compression stages, run in that order.
The same stages, in any order, with stages registered by other code (edgeship.compress.stages.register_stage), as a list::

    stages:
      - train: {epochs: 30}
      - distill: {width: 0.5}
      - prune                    # a bare key: its defaults
      - qat: {epochs: 3}         # needs quantize: {precision: int8}

Each stage's settings are its Config dataclass (compress/stages.py): the same keys and defaults in either form. A
stage may not be given in both forms; a recipe's ``stages:`` replaces its preset's stages.

Per-layer options (``layers``) follow coremltools' precedence: layer name > layer type > global; ``null`` leaves
a layer alone (not pruned; kept in float).

A recipe is read defensively (it may come from anywhere): at most ``MAX_RECIPE_BYTES``, UTF-8, at most
``MAX_NODES`` YAML nodes counted with aliases expanded (checked while composing, before any Python object is built,
so an alias bomb is refused in milliseconds), no recursive aliases, strings of at most ``MAX_STRING`` characters,
and error messages quote at most a short prefix of any value.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml
from edgeship_runtime.formats import default_formats

from .errors import QUOTE_CHARS, EdgeshipError, clip, quote

PRESETS_DIR = Path(__file__).parent / "presets"
MAX_RECIPE_BYTES = 1 << 20     # recipes are a few hundred bytes; 1 MiB is generous
MAX_NODES = 100_000            # YAML nodes with aliases expanded (an alias bomb expands to billions)
MAX_STRING = 4096              # the longest string value (paths are at most PATH_MAX = 4096)
MAX_DEPTH = 64                 # collections nested deeper than this (recipes nest three or four levels)
# The stages' settings are the stages' own Config dataclasses (compress/stages.py; a section *is* that class, one
# set of defaults): train -> compress.train.TrainConfig, distill -> compress.distill.DistillConfig,
# prune -> compress.prune.PruneConfig, quantize.qat -> compress.qat.QATConfig. They load when a recipe is parsed,
# so importing this module stays free of torch.
SECTION_STAGES = ("train", "distill", "prune", "lowrank", "cluster")   # stages a recipe may give as a top-level section
SECTION_ORDER = ("train", "distill", "prune", "lowrank", "qat", "cluster")   # the order the section form runs them in
_ALIASES = {"TrainSection": "train", "DistillSection": "distill", "PruneSection": "prune", "QATSection": "qat"}


def __getattr__(name: str):
    """The old names of the stage sections: ``recipe.QATSection`` is ``compress.qat.QATConfig``, and so on."""
    if name in _ALIASES:
        return _stage_config(_ALIASES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _stage_config(key: str) -> type:
    from .compress.stages import config_of
    return config_of(key)


@dataclass
class StageEntry:
    """One stage of a recipe: its registry key and its settings (an instance of that stage's Config)."""
    key: str
    config: Any


@dataclass
class QuantizeSection:
    precision: str = "int8"
    calib_samples: int = 128
    layers: dict[str, str | None] = field(default_factory=dict)   # layer name or type -> null (keep float) | precision
    max_accuracy_drop: float | None = None   # accuracy points vs fp32: keep the most sensitive layers float until it holds
    qat: Any = field(default=None, metadata={"stage": "qat"})   # QATConfig: quantization-aware fine-tune (the qat stage)

    def __post_init__(self):
        from .verify import PRECISIONS
        if self.precision not in PRECISIONS:
            raise EdgeshipError(f"quantize.precision {quote(self.precision)} is unknown", hint=f"use one of {', '.join(PRECISIONS)}")
        if self.calib_samples < 1:
            raise EdgeshipError(f"quantize.calib_samples must be >= 1, got {self.calib_samples}")
        odd = {k: v for k, v in self.layers.items() if v is not None and v != self.precision}
        if odd:
            raise EdgeshipError(f"quantize.layers: only null (keep the layer in float) or {self.precision!r} is supported, got {quote(odd)}",
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
    formats: list[str] = field(default_factory=lambda: list(default_formats()))   # the format registry's defaults
    fp32: bool = True                    # export the float model too, to compare against

    def __post_init__(self):
        from .export import parse_formats
        parse_formats(",".join(self.formats))


@dataclass
class Recipe:
    """A compression recipe. ``stages`` is the ordered list of what runs; ``train``, ``distill``, ``prune`` (and
    ``quantize.qat``) are the section form of the same stages, and after construction they hold the first stage of
    that key in either form (None when there is none)."""

    data: str | None = None
    eval: str | None = None
    train: Any = field(default=None, metadata={"stage": "train"})       # TrainConfig
    distill: Any = field(default=None, metadata={"stage": "distill"})   # DistillConfig
    prune: Any = field(default=None, metadata={"stage": "prune"})       # PruneConfig
    lowrank: Any = field(default=None, metadata={"stage": "lowrank"})   # LowRankConfig
    cluster: Any = field(default=None, metadata={"stage": "cluster"})   # ClusterConfig
    quantize: QuantizeSection | None = None
    export: ExportSection = field(default_factory=ExportSection)
    name: str | None = None
    seed: int = 0                        # seeds torch, numpy and random before the model factory runs: one recipe, one result
    stages: list[StageEntry] = field(default_factory=list, metadata={"stages": True})

    def __post_init__(self):
        given = {k: getattr(self, k) for k in SECTION_STAGES if getattr(self, k) is not None}
        if self.quantize is not None and self.quantize.qat is not None:
            given["qat"] = self.quantize.qat
        if self.stages:
            self.stages = [e if isinstance(e, StageEntry) else StageEntry(*e) for e in self.stages]
            for key, cfg in given.items():   # the views of a recipe already built are its own stages
                if self._first(key) is not cfg:
                    raise EdgeshipError(_both_forms(key), hint=_BOTH_HINT)
        else:
            self.stages = [StageEntry(k, given[k]) for k in SECTION_ORDER if k in given]
        for key in SECTION_STAGES:
            setattr(self, key, self._first(key))
        qat = self._first("qat")
        if qat is not None:
            if self.quantize is None:
                raise EdgeshipError("the qat stage fine-tunes for the int8 exports, but the recipe has no quantize section",
                                    hint="add quantize: {precision: int8}")
            if self.quantize.precision != "int8":
                raise EdgeshipError(f"quantize.qat trains for int8, but quantize.precision is {self.quantize.precision!r}",
                                    hint="set quantize.precision: int8, or drop the qat stage")
            self.quantize.qat = qat

    def _first(self, key: str):
        return next((e.config for e in self.stages if e.key == key), None)

    def section_form(self) -> bool:
        """Whether the stages are what the section form says: built-in ones, each at most once, in its order."""
        keys = [e.key for e in self.stages]
        return all(k in SECTION_ORDER for k in keys) and keys == sorted(set(keys), key=SECTION_ORDER.index)

    def to_dict(self) -> dict:
        """The recipe as data, in the section form where it can be written so, else with a ``stages`` list;
        either reads back (``parse(to_yaml(r)) == r``)."""
        sections = self.section_form()
        out: dict = {"data": self.data, "eval": self.eval}
        for key in SECTION_STAGES:
            cfg = getattr(self, key)
            out[key] = dataclasses.asdict(cfg) if sections and cfg is not None else None
        quantize = dataclasses.asdict(self.quantize) if self.quantize is not None else None
        if quantize is not None and not sections:
            quantize["qat"] = None
        out |= {"quantize": quantize, "export": dataclasses.asdict(self.export), "name": self.name, "seed": self.seed}
        if not sections:
            out["stages"] = [{e.key: dataclasses.asdict(e.config)} for e in self.stages]
        return out


_BOTH_HINT = "give each stage once: either in the stages: list or as its section, not both"


def _both_forms(key: str) -> str:
    where = "quantize.qat" if key == "qat" else key
    return f"stage '{key}' is given twice: as '{where}' and in stages:"


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
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}
    keys = {k.value: (k, v) for k, v in node.value} if node is not None and hasattr(node, "value") and isinstance(node.value, list) else {}
    kwargs = {}
    for key, value in data.items():
        knode, vnode = keys.get(key, (None, None))
        full = f"{path}.{key}" if path else key
        if key not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(cls))
            raise EdgeshipError(f"{where} {_line(knode)}: unknown key '{clip(str(full), QUOTE_CHARS)}'", hint=f"known keys{' in ' + path if path else ''}: {known}")
        if meta[key].get("stages"):
            kwargs[key] = _build_stages(value, vnode, where, data)
            continue
        tp = hints[key]
        stage = meta[key].get("stage")
        section = _stage_config(stage) if stage else next((a for a in (get_args(tp) or (tp,)) if dataclasses.is_dataclass(a)), None)
        if section is not None:
            kwargs[key] = None if value is None else _build(section, value or {}, vnode, where, full)
            continue
        value = _yaml_float(value, tp)
        if not _type_ok(value, tp):
            raise EdgeshipError(f"{where} {_line(vnode)}: '{full}' must be {_type_name(tp)}, got {quote(value)}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except EdgeshipError as e:   # from a section's checks, some in other modules: keep the line short whatever they echo
        msg, leaf = e.message, path.rpartition(".")[2]
        if leaf != path and msg.startswith(leaf + "."):   # a nested section's check names it by its own key
            msg = path + msg[len(leaf):]
        raise EdgeshipError(f"{where} {_line(node)}: {clip(msg, 4 * QUOTE_CHARS)}",
                            e.hint and clip(e.hint, 4 * QUOTE_CHARS)) from None


def _build_stages(value, node, where: str, recipe_data: dict) -> list[StageEntry]:
    """``stages:``: a list of ``- KEY: {settings}`` (or ``- KEY`` for the defaults), each built as its stage's Config."""
    from .compress.stages import STAGES
    if value is None:
        return []
    if not isinstance(value, list):
        raise EdgeshipError(f"{where} {_line(node)}: 'stages' must be a list (- KEY: {{settings}}), got {type(value).__name__}",
                            hint=f"known stages: {', '.join(STAGES)}")
    items = node.value if isinstance(node, yaml.SequenceNode) and len(node.value) == len(value) else [None] * len(value)
    out = []
    for item, inode in zip(value, items):
        knode = vnode = inode
        if isinstance(item, dict) and len(item) == 1:
            key, settings = next(iter(item.items()))
            if isinstance(inode, yaml.MappingNode) and len(inode.value) == 1:
                knode, vnode = inode.value[0]
        elif isinstance(item, str):
            key, settings = item, None
        else:
            raise EdgeshipError(f"{where} {_line(inode)}: each entry of 'stages' is one stage, '- KEY: {{settings}}' or "
                                f"'- KEY', got {quote(item)}", hint=f"known stages: {', '.join(STAGES)}")
        if not isinstance(key, str) or key not in STAGES:
            raise EdgeshipError(f"{where} {_line(knode)}: unknown stage {quote(key)}",
                                hint=f"known stages: {', '.join(STAGES)} (edgeship.compress.stages.register_stage adds one)")
        quantize = recipe_data.get("quantize")
        section = quantize.get("qat") if key == "qat" and isinstance(quantize, dict) else recipe_data.get(key) if key in SECTION_STAGES else None
        if section is not None:
            raise EdgeshipError(f"{where} {_line(knode)}: {_both_forms(key)}", hint=_BOTH_HINT)
        out.append(StageEntry(key, _build(_stage_config(key), settings or {}, vnode, where, key)))
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "layers" else v
    return out


class _BudgetLoader(yaml.SafeLoader):
    """PyYAML's safe loader that counts nodes as it composes them, aliases expanded, and stops past ``MAX_NODES``.

    An alias adds the size of the node it names, so ``[*a, *a, ...]`` nine levels deep counts its billion nodes
    while only a few dozen exist: the bomb is refused before any Python object is constructed from it.
    """

    def __init__(self, text: str, where: str):
        super().__init__(text)
        self.where = where
        self.total = 0
        self.depth = 0
        self.sizes: dict[int, int] = {}     # id(node) -> its size, aliases expanded (only completed nodes)

    def _add(self, n: int, node_or_event) -> None:
        self.total += n
        if self.total > MAX_NODES:
            raise EdgeshipError(f"{self.where} line {node_or_event.start_mark.line + 1}: the YAML expands to more than "
                                f"{MAX_NODES:,} nodes (aliases counted where they are used)",
                                hint="a recipe is a few sections of settings; this looks like an alias bomb or the wrong file")

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:
                if id(target) not in self.sizes:
                    raise EdgeshipError(f"{self.where} line {event.start_mark.line + 1}: alias *{clip(event.anchor, 40)} "
                                        "refers to a node that contains it (a recursive alias)",
                                        hint="recipes do not need recursive structures; write the values out")
                self._add(self.sizes[id(target)], event)
            return super().compose_node(parent, index)   # an undefined alias: PyYAML's own error
        start = self.total
        self.depth += 1
        if self.depth > MAX_DEPTH:          # before Python's recursion limit, in the composer or in the checks after it
            event = self.peek_event()
            raise EdgeshipError(f"{self.where} line {event.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep",
                                hint="a recipe nests sections three or four levels deep")
        node = super().compose_node(parent, index)
        self.depth -= 1
        if isinstance(node, yaml.ScalarNode) and len(node.value) > MAX_STRING:
            raise EdgeshipError(f"{self.where} line {node.start_mark.line + 1}: a value of {len(node.value):,} characters "
                                f"(the limit is {MAX_STRING:,}): {quote(node.value)}",
                                hint="recipe values are names, paths and numbers")
        self._add(1, node)
        self.sizes[id(node)] = self.total - start
        return node


def _yaml_error(e: yaml.YAMLError, text: str) -> str:
    """PyYAML's message, each part short: its problems can quote an anchor or a scalar of any length."""
    if isinstance(e, yaml.reader.ReaderError) and isinstance(e.character, int):
        line = text.count("\n", 0, e.position) + 1
        return (f"non-printable character #x{e.character:04x} at line {line} (character offset {e.position}); "
                "YAML does not allow control characters")
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        parts = [clip(str(p), QUOTE_CHARS) for p in (e.context, e.problem) if p]
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return "; ".join(parts) + where
    return clip(" ".join(str(e).split()), 2 * QUOTE_CHARS)


def load_yaml(text: str, where: str):
    """``text`` as Python data, safely: size, node budget (aliases expanded), nesting and value length limited.

    Returns ``(data, node)``: the data and the composed node it was constructed from (for line numbers).
    """
    if len(text) > MAX_RECIPE_BYTES:
        raise EdgeshipError(f"{where} is {len(text):,} characters; a recipe may be at most {MAX_RECIPE_BYTES:,} bytes (1 MiB)",
                            hint="a recipe is a few sections of settings; is this the right file?")
    loader = None
    try:
        loader = _BudgetLoader(text, where)      # its reader refuses control characters
        node = loader.get_single_node()          # composes, counting nodes: refuses a bomb before constructing
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as e:
        raise EdgeshipError(f"{where} is not valid YAML: {_yaml_error(e, text)}") from None
    except RecursionError:
        raise EdgeshipError(f"{where} is nested too deeply", hint="a recipe nests sections two or three levels deep") from None
    except (ValueError, OverflowError) as e:     # a value PyYAML cannot build: a date like 2020-13-45, a 5000-digit int
        raise EdgeshipError(f"{where} has a value that cannot be read: {clip(str(e), QUOTE_CHARS)}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, node


def parse(text: str, where: str = "recipe") -> Recipe:
    """Parse and validate a recipe; a ``preset:`` key starts from that preset and overrides it."""
    data, node = load_yaml(text, where)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise EdgeshipError(f"{where} must be a YAML mapping of sections (data, train, distill, prune, quantize, export, stages)")
    preset = data.pop("preset", None)
    if preset is not None:
        base, _ = load_yaml(_preset_text(preset), f"preset {preset}")
        base.pop("preset", None)
        if "stages" in data:   # the user's stages: list replaces the preset's stages, in either form
            base = {k: v for k, v in base.items() if k not in SECTION_STAGES}
            if isinstance(base.get("quantize"), dict):
                base["quantize"] = {k: v for k, v in base["quantize"].items() if k != "qat"}
        merged = _merge(base, data)
        # validate the user's keys against their own lines first, then the merged result
        _build(Recipe, data, node, where, "")
        return _build(Recipe, merged, None, f"{where} (with preset {preset})", "")
    return _build(Recipe, data, node, where, "")


def _preset_text(name) -> str:
    """The text of a preset, by NAME only: a path (``preset: /etc/x.yaml``, ``../x``) is not a preset."""
    known = presets()
    if not isinstance(name, str) or name not in known:
        raise EdgeshipError(f"unknown preset {quote(name)}",
                            hint=f"preset: takes a name, not a path; known presets: {', '.join(known)}")
    return (PRESETS_DIR / f"{name}.yaml").read_text(encoding="utf-8")


def load(ref: str) -> Recipe:
    """A recipe file path, or a preset name."""
    p = Path(ref)
    try:
        exists, is_file = p.exists(), p.is_file()
    except OSError as e:                          # a name too long for the file system, ...
        raise EdgeshipError(f"recipe {quote(ref)} cannot be opened: {e.strerror}",
                            hint=f"give a recipe file, or name a preset: {', '.join(presets())}") from None
    if p.suffix in (".yaml", ".yml") or exists:
        if not is_file:
            what = "is not a regular file" if exists else "does not exist"
            raise EdgeshipError(f"recipe file {quote(ref)} {what}", hint=f"or name a preset: {', '.join(presets())}")
        return parse(read_text(p), str(p))
    return parse(_preset_text(ref), f"preset {ref}")


def read_text(path: Path, limit: int = MAX_RECIPE_BYTES, what: str = "recipe") -> str:
    """A small UTF-8 text file: refused past ``limit`` bytes (read no further), or when it is not UTF-8."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise EdgeshipError(f"{what} {path} is {size:,} bytes; the limit is {limit:,} bytes ({limit / (1 << 20):g} MiB)",
                                hint=f"a {what} is a few sections of settings; is this the right file?")
        with open(path, "rb") as f:
            raw = f.read(limit + 1)               # the size can lie (a file that grows, /proc)
    except OSError as e:
        raise EdgeshipError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if len(raw) > limit:
        raise EdgeshipError(f"{what} {path} is more than {limit:,} bytes ({limit / (1 << 20):g} MiB), the limit",
                            hint=f"a {what} is a few sections of settings; is this the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise EdgeshipError(f"{what} {path} is not valid UTF-8: byte 0x{raw[e.start]:02x} at byte offset {e.start} "
                            f"(line {line})", hint=f"save the {what} as UTF-8 text") from None
    return text.removeprefix("\ufeff")           # a byte-order mark some editors write


def to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


def resolve_layers(module, overrides: dict, default):
    """Per-layer values for every named submodule: layer name > layer type (class name) > ``default``."""
    names = dict(module.named_modules())
    types = {type(m).__name__ for m in names.values()}
    unknown = [k for k in overrides if k not in names and k not in types]
    if unknown:
        more = f" (and {len(unknown) - 10:,} more)" if len(unknown) > 10 else ""
        listed = clip(", ".join(clip(str(k), 60) for k in unknown[:10]), 4 * QUOTE_CHARS)
        raise EdgeshipError(f"per-layer options name layers or types the model does not have: {listed}{more}",
                            hint=f"layer names look like {', '.join(list(names)[1:6])}; types: {', '.join(sorted(types)[:8])}")
    out = {}
    for name, m in names.items():
        if not name:
            continue
        out[name] = overrides[name] if name in overrides else overrides.get(type(m).__name__, default)
    return out
