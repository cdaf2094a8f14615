"""ModelSpec: a torch module with named example inputs, and the loaders that build one from a MODEL reference."""
from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .errors import EdgeshipError, clip

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32,
    "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}
LAYOUTS = ("NCHW", "NHWC", "NC", "NT")   # what the apps and the Pi kit preprocess; the manifest schema's enum
_DTYPE_ALIASES = {"f32": "float32", "fp32": "float32", "float": "float32", "f16": "float16", "fp16": "float16",
                  "i64": "int64", "long": "int64", "i32": "int32", "int": "int32", "u8": "uint8", "i8": "int8"}
TASKS = ("image-classification", "text-classification", "classification", "detection", "segmentation", "embedding",
         "generic")
# --task NAME on the command line -> ModelSpec.task. detection/segmentation/embedding are recorded in the manifest
# (and embedding marks the first output as an embedding); only classification changes verification (top-1 agreement).
CLI_TASKS = {"classify": "classification", "detect": "detection", "segment": "segmentation", "embed": "embedding",
             "generic": "generic"}
INPUT_KINDS = ("mask",)
DEFAULT_INT_HIGH = 10            # integer inputs that feed no embedding and have no range: 0..9, as before
_MASK_NAME = re.compile(r"mask", re.IGNORECASE)
_RANGE_HINT = ("write RANGE as LOW..HIGH, HIGH exclusive (one past the largest value, like a vocabulary size), "
               "e.g. tokens:1x128:int64:0..30522, or mask for a 0/1 padding mask, e.g. attention_mask:1x128:int64:mask")


@dataclass(frozen=True)
class InputSpec:
    """One model input. Random example values: float N(0, 1), or uniform in ``low..high`` when given; integers in
    ``low..high`` (``high`` exclusive: token ids, the vocabulary size; ``low`` defaults to 0); ``kind="mask"``: a 0/1
    padding mask (ones, then zeros for a random length per row, at least one 1); bool 0/1. :func:`load` fills ``high``
    of an integer input from the embedding it feeds, and marks integer inputs named like ``*mask*`` as masks."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    layout: str | None = None
    high: int | float | None = None
    low: int | float | None = None
    kind: str | None = None
    # dynamic dimensions: {axis: (MIN, MAX)}, both inclusive; ``shape`` holds the example size of each (traced, and
    # the reference). A (MIN, MAX) tuple in ``shape`` is the same: its example is :func:`example_size`.
    dynamic: Mapping[int, tuple[int, int]] | None = field(default=None, hash=False)

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name):
            raise EdgeshipError(f"input name {self.name!r} is not a valid identifier",
                                hint="use letters, digits and '_', starting with a letter, e.g. --input image:1x3x224x224")
        self._check_dynamic()
        if not self.shape or any(int(d) < 1 for d in self.shape):
            raise EdgeshipError(f"input {self.name!r} has shape {self.shape}; every dimension must be a positive integer")
        if self.dtype not in DTYPES:
            raise EdgeshipError(f"input {self.name!r} has dtype {self.dtype!r}", hint=f"use one of {', '.join(DTYPES)}")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise EdgeshipError(f"input {self.name!r} has layout {self.layout!r}, which the apps cannot preprocess",
                                hint=f"use one of {', '.join(LAYOUTS)}, or layout=None for any other (audio features "
                                     "NCT, say): the apps then take the tensor as it is")
        self._check_range()

    def _check_dynamic(self) -> None:
        """Normalise ``dynamic`` (and (MIN, MAX) tuples in ``shape``) to {axis: (MIN, MAX)} with the example size in
        ``shape``; refuse an empty range, MIN < 1, an axis the shape lacks, or an example outside its range."""
        dyn = dict(self.dynamic or {})
        shape = list(self.shape) if isinstance(self.shape, (tuple, list)) else self.shape
        if isinstance(shape, list):
            for axis, d in enumerate(shape):
                if isinstance(d, (tuple, list)):
                    dyn[axis] = tuple(d)
                    shape[axis] = None
        if not dyn:
            object.__setattr__(self, "dynamic", None)
            return
        out = {}
        for axis, rng in dyn.items():
            where = f"input {self.name!r}, dimension {axis}"
            if isinstance(axis, str) and axis.lstrip("-").isdigit():
                axis = int(axis)
            if not isinstance(axis, int) or not -len(shape) <= axis < len(shape):
                raise EdgeshipError(f"{where}: the shape {list(self.shape)} has no such axis", hint=DYNAMIC_HINT)
            axis %= len(shape)
            if (not isinstance(rng, (tuple, list)) or len(rng) != 2
                    or not all(isinstance(b, int) and not isinstance(b, bool) for b in rng)):
                raise EdgeshipError(f"{where}: a dynamic range is (MIN, MAX), two integers; got {rng!r}", hint=DYNAMIC_HINT)
            lo, hi = rng
            if lo < 1 or lo >= hi:
                raise EdgeshipError(f"{where}: the dynamic range {lo}..{hi} is " + ("below 1" if lo < 1 else "empty: MIN must be "
                                    "less than MAX (MAX is inclusive)" if lo > hi else "a single size: write it as a fixed "
                                    f"dimension ({lo})"), hint=DYNAMIC_HINT)
            if shape[axis] is None:
                shape[axis] = example_size(lo, hi)
            elif not lo <= int(shape[axis]) <= hi:
                raise EdgeshipError(f"{where}: the example size {shape[axis]} is outside its dynamic range {lo}..{hi}",
                                    hint=DYNAMIC_HINT)
            out[axis] = (lo, hi)
        object.__setattr__(self, "shape", tuple(int(d) for d in shape))
        object.__setattr__(self, "dynamic", dict(sorted(out.items())))

    def at(self, which: str) -> "InputSpec":
        """This input with every dynamic dimension at its ``"min"``, ``"example"`` or ``"max"`` size (still dynamic)."""
        if not self.dynamic or which == "example":
            return self
        pick = 0 if which == "min" else 1
        shape = tuple(self.dynamic[a][pick] if a in self.dynamic else d for a, d in enumerate(self.shape))
        return replace(self, shape=shape)

    def accepts(self, shape: Sequence[int]) -> bool:
        """Whether an array of ``shape`` fits: fixed dimensions equal, dynamic ones inside their range."""
        dyn = self.dynamic or {}
        return len(shape) == len(self.shape) and all(
            dyn[a][0] <= int(d) <= dyn[a][1] if a in dyn else int(d) == self.shape[a] for a, d in enumerate(shape))

    @property
    def text(self) -> str:
        """The shape as --input writes it: 1x(8..512)."""
        dyn = self.dynamic or {}
        return "x".join(f"({dyn[a][0]}..{dyn[a][1]})" if a in dyn else str(d) for a, d in enumerate(self.shape))

    def _check_range(self) -> None:
        if self.kind is not None and self.kind not in INPUT_KINDS:
            raise EdgeshipError(f"input {self.name!r} has kind {self.kind!r}", hint=f"use one of {', '.join(INPUT_KINDS)}, or None")
        if self.low is None and self.high is None:
            return
        rng = f"{self.low if self.low is not None else 0}..{self.high}"
        if self.kind == "mask":
            if (self.low or 0, self.high) != (0, 2):
                raise EdgeshipError(f"input {self.name!r} is a mask (0/1) and takes no range, got {rng}", hint=_RANGE_HINT)
            return
        dt = DTYPES[self.dtype]
        if dt == torch.bool:
            raise EdgeshipError(f"input {self.name!r} is bool (0/1) and takes no range, got {rng}",
                                hint="leave RANGE out for random 0/1, or write mask for a padding mask")
        if self.high is None:
            raise EdgeshipError(f"input {self.name!r} has a low bound ({self.low}) but no high bound", hint=_RANGE_HINT)
        bounds = (self.low if self.low is not None else 0, self.high)
        if any(isinstance(b, bool) or not isinstance(b, (int, float)) for b in bounds):
            raise EdgeshipError(f"input {self.name!r}: the range bounds must be numbers, got {rng}", hint=_RANGE_HINT)
        if dt.is_floating_point:
            if not all(math.isfinite(b) for b in bounds):
                raise EdgeshipError(f"input {self.name!r}: the range {rng} must be finite", hint=_RANGE_HINT)
        else:
            if not all(isinstance(b, int) for b in bounds):
                raise EdgeshipError(f"input {self.name!r} is {self.dtype}, so its range needs integer bounds, got {rng}",
                                    hint=_RANGE_HINT)
            info = torch.iinfo(dt)
            if bounds[0] < info.min or bounds[1] - 1 > info.max:
                raise EdgeshipError(f"input {self.name!r} is {self.dtype}, which holds {info.min}..{info.max + 1} "
                                    f"(HIGH exclusive); the range {rng} does not fit",
                                    hint="choose a wider dtype (int64) or a range inside the dtype's")
        if bounds[0] >= bounds[1]:
            raise EdgeshipError(f"input {self.name!r} has the empty range {rng}: HIGH is exclusive, so it must be "
                                "greater than LOW", hint=_RANGE_HINT)

    @property
    def integer(self) -> bool:
        """An integer input (not bool, not float): token ids, segment ids, masks."""
        dt = DTYPES[self.dtype]
        return not dt.is_floating_point and dt != torch.bool

    @property
    def range(self) -> tuple[int | float, int | float] | None:
        """(low, high), high exclusive, that random values are drawn from; None: N(0, 1) floats or the default 0..9."""
        if self.kind == "mask" or DTYPES[self.dtype] == torch.bool:
            return (0, 2)
        if self.high is None:
            return None
        return (self.low if self.low is not None else 0, self.high)

    def random(self, generator: torch.Generator) -> torch.Tensor:
        dt = DTYPES[self.dtype]
        if self.kind == "mask":
            return padding_mask(self.shape, generator).to(dt)
        if dt == torch.bool:
            return torch.randint(0, 2, self.shape, generator=generator).bool()
        low, high = self.range or (0, None)
        if dt.is_floating_point:
            if high is None:
                return torch.randn(self.shape, generator=generator).to(dt)
            return (torch.rand(self.shape, generator=generator, dtype=torch.float64) * (high - low) + low).to(dt)
        return torch.randint(low, DEFAULT_INT_HIGH if high is None else high, self.shape, generator=generator, dtype=dt)

    def to_dict(self) -> dict:
        """The manifest's input entry (without preprocessing): the range random values come from, and the kind."""
        entry = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "layout": self.layout}
        if self.range is not None and DTYPES[self.dtype] != torch.bool:
            entry |= dict(zip(("low", "high"), self.range))
        if self.kind:
            entry["kind"] = self.kind
        if self.dynamic:
            entry["dynamic"] = {str(a): list(r) for a, r in self.dynamic.items()}
        return entry


DYNAMIC_HINT = ("write a dynamic dimension as (MIN..MAX), both inclusive, e.g. --input tokens:1x(8..512):int64 or "
                "--input image:(1..8)x3x224x224; from a factory InputSpec(..., dynamic={1: (8, 512)})")


def example_size(lo: int, hi: int) -> int:
    """The example size of a dynamic dimension MIN..MAX, which is traced and is the reference: the power of two
    nearest the geometric mean of MIN and MAX (ties up), kept inside the range, and at least 2 (torch.export takes
    a size of 1 as a constant). (8..512) -> 64, (1..8) -> 4, (1..2) -> 2."""
    ex = 2 ** math.floor(math.log2(math.sqrt(lo * hi)) + 0.5)
    return max(lo, min(hi, max(ex, 2)))


def padding_mask(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """A 0/1 padding mask along the last dimension: per row, ones for a random length (at least 1), then zeros."""
    shape = tuple(shape)
    length = shape[-1]
    lengths = torch.randint(1, length + 1, shape[:-1] or (1,), generator=generator)
    return (torch.arange(length) < lengths.unsqueeze(-1)).reshape(shape).to(torch.int64)


@dataclass
class ModelSpec:
    """Everything the exporters need: the module (in eval mode) and its named example inputs."""

    module: nn.Module
    inputs: tuple[InputSpec, ...]
    task: str = "generic"
    labels: list[str] | None = None
    preprocess: dict | None = None
    name: str = "model"
    output_names: tuple[str, ...] | None = None
    output_meaning: str = "logits"
    detection: Any = None        # edgeship.detect.DetectionSpec: how raw (pre-NMS) outputs decode; manifest "detection"
    clustered_bits: int | None = None   # set by the cluster stage: each weight holds <= 2**bits values, which the
    #                                    Core ML exporter keeps as the package's look-up tables (no re-clustering)

    def __post_init__(self):
        if self.detection is not None:
            self.task = "detection" if self.task == "generic" else self.task
            self.output_meaning = "other" if self.output_meaning == "logits" else self.output_meaning
        if not isinstance(self.module, nn.Module):
            raise EdgeshipError(f"the model is a {type(self.module).__name__}, not a torch.nn.Module")
        self.inputs = tuple(self.inputs)
        if not self.inputs:
            raise EdgeshipError("the model has no inputs", hint="give them with --input NAME:SHAPE[:DTYPE]")
        names = [i.name for i in self.inputs]
        if len(set(names)) != len(names):
            raise EdgeshipError(f"input names must be unique, got {names}")
        if self.task not in TASKS:
            raise EdgeshipError(f"unknown task {self.task!r}", hint=f"use one of {', '.join(TASKS)}")
        self.module.eval()

    def example_inputs(self, seed: int = 0) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        return tuple(i.random(g) for i in self.inputs)

    @property
    def dynamic(self) -> bool:
        """Whether any input has a dynamic dimension."""
        return any(i.dynamic for i in self.inputs)

    def at(self, which: str) -> "ModelSpec":
        """The spec with every dynamic dimension at its ``"min"``, ``"example"`` or ``"max"`` size."""
        return replace(self, inputs=tuple(i.at(which) for i in self.inputs)) if self.dynamic else self

    def fixed(self) -> "ModelSpec":
        """The spec with every dimension fixed at its example size (for a converter without dynamic shapes)."""
        return replace(self, inputs=tuple(replace(i, dynamic=None) for i in self.inputs)) if self.dynamic else self

    def sizes(self) -> list[str]:
        """The sizes verification checks: ["example"], or ["min", "example", "max"] with dynamic dimensions."""
        return ["min", "example", "max"] if self.dynamic else ["example"]

    def dynamic_shapes(self) -> tuple | None:
        """torch.export's ``dynamic_shapes`` for the inputs (None without dynamic dimensions): one ``Dim`` per
        distinct (MIN, MAX) range, shared by every input dimension with that range (``input_ids`` and
        ``attention_mask`` at 1x(8..512) have one sequence length, and must be the same size at run time).
        Named batch (axis 0), seq (axis 1) or dimN."""
        if not self.dynamic:
            return None
        from torch.export import Dim
        dims: dict[tuple[int, int], Any] = {}
        used: set[str] = set()
        out = []
        for i in self.inputs:
            spec = {}
            for axis, rng in (i.dynamic or {}).items():
                if rng not in dims:
                    name = {0: "batch", 1: "seq"}.get(axis, f"dim{axis}")
                    name = next(n for n in (name, *(f"{name}_{k}" for k in range(2, 99))) if n not in used)
                    used.add(name)
                    dims[rng] = Dim(name, min=rng[0], max=rng[1])
                spec[axis] = dims[rng]
            out.append(spec or None)
        return tuple(out)

    def reference(self, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Run the PyTorch model; outputs flattened to a list of tensors."""
        with torch.no_grad():
            out = self.module(*args)
        return flatten_outputs(out)

    def check_runs(self) -> list[torch.Tensor]:
        """Run once on example inputs; a shape the model rejects becomes an error naming the inputs."""
        try:
            outs = self.reference(self.example_inputs())
        except EdgeshipError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure here is the user's shapes or model
            given = ", ".join(f"{i.name}:{'x'.join(map(str, i.shape))}:{i.dtype}" for i in self.inputs)
            raise EdgeshipError(f"the model failed on inputs {given}: {raised(e)}",
                                hint="check --input: the shape and dtype must be what the model's forward() expects") from e
        if not outs:
            raise EdgeshipError("the model's forward() returned no tensors", hint="return a tensor (or a tuple/list/dict of tensors)")
        return outs

    def with_module(self, module: nn.Module) -> "ModelSpec":
        return replace(self, module=module)

    @property
    def num_classes(self) -> int | None:
        if self.task.endswith("classification"):
            outs = self.check_runs()
            return int(outs[0].shape[-1])
        return None


KV_CACHE_HINT = ("pass use_cache=False to the model or its config (e.g. GPT2Config(use_cache=False)), or return only "
                 "the logits from forward()")


def flatten_outputs(out: Any, key: str | None = None) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flatten_outputs(o, key)]
    if isinstance(out, dict):
        return [t for k, o in out.items() for t in flatten_outputs(o, k)]
    if type(out).__name__.endswith("Cache") or key in ("past_key_values", "cache"):   # transformers' DynamicCache & co.
        where = f" in output {key!r}" if key else ""
        raise EdgeshipError(f"the model returned its KV cache (a {type(out).__name__}{where}); exporters need tensors "
                            "(or tuples/lists/dicts of them)", hint=KV_CACHE_HINT)
    raise EdgeshipError(f"the model returned a {type(out).__name__}; exporters need tensors (or tuples/lists/dicts of them)")


def parse_input(text: str) -> InputSpec:
    """Parse ``NAME:SHAPE[:DTYPE[:RANGE]]``, SHAPE as ``1x3x224x224``, RANGE as ``LOW..HIGH`` (HIGH exclusive, e.g.
    ``0..30522`` for a 30522-token vocabulary; integers for integer dtypes) or ``mask`` (a 0/1 padding mask)."""
    parts = text.split(":")
    if len(parts) not in (2, 3, 4) or not parts[0] or not parts[1]:
        raise EdgeshipError(f"cannot parse --input {text!r}", hint="write NAME:SHAPE[:DTYPE[:RANGE]], e.g. image:1x3x224x224, "
                            "tokens:1x32:int64 or tokens:1x128:int64:0..30522")
    shape = tuple(_parse_dim(d, parts[1], text) for d in parts[1].lower().replace("*", "x").split("x"))
    dtype = _DTYPE_ALIASES.get(parts[2], parts[2]) if len(parts) >= 3 else "float32"
    layout = "NCHW" if len(shape) == 4 and dtype.startswith("float") else None
    if len(parts) < 4:
        return InputSpec(parts[0], shape, dtype, layout=layout)
    if parts[3].strip().lower() == "mask":
        return InputSpec(parts[0], shape, dtype, layout=layout, kind="mask")
    return InputSpec(parts[0], shape, dtype, layout=layout, **_parse_range(parts[3], text))


def _parse_dim(d: str, shape: str, text: str) -> int | tuple[int, int]:
    """One dimension of --input's SHAPE: an integer, or (MIN..MAX) for a dynamic one (both inclusive)."""
    d = d.strip()
    m = re.fullmatch(r"\(\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*\)", d)
    if m:
        return int(m.group(1)), int(m.group(2))
    try:
        return int(d)
    except ValueError:
        raise EdgeshipError(f"cannot parse the shape {shape!r} in --input {text!r}: {d!r} is not a dimension",
                            hint="dimensions are integers separated by 'x', e.g. 1x3x224x224; " + DYNAMIC_HINT) from None


def _parse_range(rng: str, text: str) -> dict:
    bounds = rng.split("..")
    values = []
    for b in bounds:
        b = b.strip()
        try:
            values.append(int(b))
        except ValueError:
            try:
                values.append(float(b))
            except ValueError:
                values = []
                break
    if len(bounds) != 2 or len(values) != 2:
        raise EdgeshipError(f"cannot parse the range {rng!r} in --input {text!r}", hint=_RANGE_HINT)
    return {"low": values[0], "high": values[1]}


def embedding_feeds(module: nn.Module, args: Sequence[torch.Tensor]) -> dict[int, tuple[int, str]]:
    """Which inputs feed an embedding: {input index: (rows, embedding name)}, the smallest embedding where one input
    feeds several. One forward pass on ``args`` under a torch-function mode that follows each integer input through
    value-preserving ops (views, reshapes, slices, casts) into ``F.embedding`` (nn.Embedding and functional uses,
    tied weights included). Values computed from an input (``ids + 2``) are not followed. The pass is recorded even
    when the forward raises (an id out of range fails inside the embedding, after it was seen)."""
    from torch.nn import functional as F
    from torch.overrides import TorchFunctionMode

    names = {id(p): n.rsplit(".", 1)[0] for n, p in module.named_parameters(remove_duplicate=False)}
    origin: dict[int, int] = {id(t): k for k, t in enumerate(args) if isinstance(t, torch.Tensor)}
    keep = list(args)            # tracked tensors stay alive, so their id()s are not reused during the pass
    feeds: dict[int, tuple[int, str]] = {}
    follow = {"to", "long", "int", "type", "view", "reshape", "flatten", "unflatten", "unsqueeze", "squeeze", "expand",
              "expand_as", "view_as", "reshape_as", "contiguous", "clone", "detach", "cpu", "__getitem__", "narrow",
              "select", "permute", "transpose", "repeat", "t"}

    class Follow(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in (F.embedding, torch.embedding):
                ids, weight = (args[0], args[1]) if func is F.embedding else (args[1], args[0])
                k = origin.get(id(ids))
                if k is not None and isinstance(weight, torch.Tensor) and weight.dim() == 2:
                    rows, where = int(weight.shape[0]), names.get(id(weight), "an embedding")
                    if k not in feeds or rows < feeds[k][0]:
                        feeds[k] = (rows, where)
            out = func(*args, **kwargs)
            if args and getattr(func, "__name__", None) in follow and id(args[0]) in origin and isinstance(out, torch.Tensor):
                origin[id(out)] = origin[id(args[0])]
                keep.append(out)
            return out

    with torch.random.fork_rng(devices=[]), torch.no_grad(), Follow():
        try:
            module(*args)
        except Exception as e:  # noqa: BLE001 - check_runs reports a failing forward; this pass only looks
            log.debug("the embedding pass stopped at %s", raised(e))
    return feeds


def infer_input_ranges(module: nn.Module, inputs: Sequence[InputSpec]) -> tuple[InputSpec, ...]:
    """Fill in what random example values need to be the model's real inputs: integer (or bool) inputs named like a
    mask become 0/1 padding masks; an integer input without a range that feeds an embedding gets 0..rows of the
    smallest such embedding (token ids: the vocabulary; token_type_ids: the type vocabulary); a given range that
    leaves the embedding's rows is an error. Integer inputs that feed no embedding keep the default 0..9."""
    inputs = tuple(replace(i, kind="mask") if i.kind is None and i.low is None and i.high is None
                   and not DTYPES[i.dtype].is_floating_point and _MASK_NAME.search(i.name) else i for i in inputs)
    probe = [i for i in inputs if i.integer and i.kind is None]
    if not probe:
        return inputs
    g = torch.Generator().manual_seed(0)
    args = tuple(i.random(g) if not i.integer or i.kind or i.range else torch.zeros(i.shape, dtype=DTYPES[i.dtype])
                 for i in inputs)
    feeds = embedding_feeds(module, args)
    out = []
    for k, i in enumerate(inputs):
        if k in feeds and i.integer and i.kind is None:
            rows, where = feeds[k]
            if i.range is None:
                i = replace(i, low=0, high=rows)
                log.info("input %s feeds %s: ids sampled in 0..%d", i.name, where, rows)
            elif i.range[0] < 0 or i.range[1] > rows:
                shape = i.text
                raise EdgeshipError(f"input {i.name!r} feeds the embedding {where} with {rows} rows, so its values "
                                    f"must lie in 0..{rows} (HIGH exclusive); the range {i.range[0]}..{i.range[1]} "
                                    "leaves it", hint=f"write --input {i.name}:{shape}:{i.dtype}:0..{rows}, or leave "
                                    "RANGE out to use the embedding's")
        elif i.integer and i.kind is None and i.range is None:
            log.warning("input %s feeds no embedding edgeship can see: random values are 0..%d; give its range with "
                        "--input NAME:SHAPE:DTYPE:LOW..HIGH", i.name, DEFAULT_INT_HIGH - 1)
        out.append(i)
    return tuple(out)


def task_name(text: str) -> str:
    """--task: classify|detect|segment|embed|generic (or an internal task name) -> ModelSpec.task."""
    key = text.strip().lower()
    if key in CLI_TASKS:
        return CLI_TASKS[key]
    if key in TASKS:
        return key
    raise EdgeshipError(f"unknown task {text!r}", hint=f"use one of {', '.join(CLI_TASKS)}")


def with_task(spec: "ModelSpec", task: str) -> "ModelSpec":
    """The spec with the task --task names: a classifier the factory already calls image- or text-classification
    keeps that name; --task embed marks the first output as an embedding, --task detect as raw (pre-NMS) tensors."""
    task = task_name(task)
    if task == "classification" and spec.task.endswith("classification"):
        return spec
    meaning = spec.output_meaning
    if meaning in ("logits", "embedding", "other"):
        meaning = {"embedding": "embedding", "detection": "other"}.get(task, "logits")
    if task == "detection" and spec.detection is None:
        log.warning("--task detect: the factory gives no DetectionSpec (ModelSpec(detection=...), see edgeship.detect), "
                    "so the manifest records the raw outputs without how to decode them")
    return replace(spec, task=task, output_meaning=meaning)


def _import_file(path: Path):
    if not path.is_file():
        raise EdgeshipError(f"model file {str(path)!r} does not exist", hint="MODEL is path/to/file.py:factory, package.module:attr or example:NAME")
    mod_name = f"_edgeship_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001
        raise EdgeshipError(f"importing {path} failed: {raised(e)}", hint=_import_hint(e)) from e
    finally:
        sys.path.remove(str(path.parent.resolve()))
    return module


_CALL_HINT = "keyword arguments with Python literal values, e.g. example:digits_cnn(width=64) or models.py:build(classes=5)"


def split_call(ref: str) -> tuple[str, dict[str, Any]]:
    """``file.py:factory(width=64, name='a')`` -> (``file.py:factory``, {'width': 64, 'name': 'a'}): keyword
    arguments for the factory, each a Python literal. A reference without parentheses has none."""
    base, sep, args = ref.partition("(")
    if not sep or not ref.endswith(")"):
        return ref, {}
    try:
        call = ast.parse(f"f({args}", mode="eval").body
    except SyntaxError:
        raise EdgeshipError(f"cannot read the arguments in MODEL {ref!r}", hint=_CALL_HINT) from None
    if not isinstance(call, ast.Call) or call.args or any(k.arg is None for k in call.keywords):
        raise EdgeshipError(f"MODEL {ref!r}: the factory's arguments must be keyword arguments", hint=_CALL_HINT)
    kwargs = {}
    for k in call.keywords:
        try:
            kwargs[k.arg] = ast.literal_eval(k.value)
        except ValueError:
            raise EdgeshipError(f"MODEL {ref!r}: the value of {k.arg} is not a Python literal (a number, string, "
                                "list, tuple, dict, True/False/None)", hint=_CALL_HINT) from None
    return base, kwargs


def resolve(ref: str):
    """Find the object a MODEL (or DATA factory) reference names, not yet called; with arguments
    (``example:digits_cnn(width=64)``), the factory bound to them."""
    base, kwargs = split_call(ref)
    obj = _resolve(base)
    if not kwargs:
        return obj
    if not callable(obj) or isinstance(obj, nn.Module):
        raise EdgeshipError(f"{base} is a {type(obj).__name__}, not a factory: it takes no arguments", hint=_CALL_HINT)
    return functools.partial(obj, **kwargs)


def _resolve(ref: str):
    if ref.startswith("example:"):
        from . import examples
        name = ref.split(":", 1)[1]
        if name not in examples.EXAMPLES:
            raise EdgeshipError(f"unknown example {name!r}", hint=f"known examples: {', '.join(sorted(examples.EXAMPLES))}")
        return examples.EXAMPLES[name]
    if ":" not in ref:
        raise EdgeshipError(f"cannot read MODEL {ref!r}", hint="write path/to/file.py:factory, package.module:attr or example:NAME")
    target, attr = ref.rsplit(":", 1)
    if target.endswith(".py") or "/" in target or Path(target).suffix == ".py":
        module = _import_file(Path(target))
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise EdgeshipError(f"cannot import module {target!r}: {e}", hint="is the package installed, or did you mean a .py file path?") from e
        except Exception as e:  # noqa: BLE001 - its module-level code raised: the user's message, not our traceback
            raise EdgeshipError(f"importing {target} failed: {raised(e)}", hint=_import_hint(e)) from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
            raise EdgeshipError(f"{target!r} has no attribute {attr!r}", hint=f"callables there: {', '.join(public[:20]) or 'none'}")
        obj = getattr(obj, part)
    return obj


def _user_frame(exc: BaseException) -> str | None:
    """``file:line in function`` of the last traceback frame in the user's own code: not Python's, not an installed
    package's, not edgeship's (a model file, a factory, a forward()). None when every frame is someone else's."""
    import sysconfig
    import traceback
    others = {os.path.realpath(p) + os.sep for p in (sysconfig.get_paths()["stdlib"], Path(__file__).parent)}
    for f in reversed(traceback.extract_tb(exc.__traceback__)):
        path = Path(f.filename)
        if not path.is_file() or {"site-packages", "dist-packages"} & set(path.parts):
            continue
        real = os.path.realpath(path)
        if not any(real.startswith(o) for o in others):
            rel = os.path.relpath(real)
            return f"{real if rel.startswith('..') else rel}:{f.lineno} in {f.name}"
    return None


def raised(exc: BaseException) -> str:
    """``ValueError: its message (at models.py:12 in build)``: one short line, where in the user's code it was raised."""
    where = _user_frame(exc)
    return f"{type(exc).__name__}: {clip(str(exc), 300)}" + (f" (at {where})" if where else "")


def _import_hint(exc: BaseException) -> str:
    if "torchvision::" in str(exc):   # a torchvision built for another torch (#13): doctor names the matching one
        return "torchvision does not match this torch: run 'edgeship doctor' for the matching version; --debug shows the whole traceback"
    return "--debug shows the whole traceback"


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and random: a factory that draws its weights from the global generators (most do) then
    builds the same model every run, so one recipe gives one result."""
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load(ref: str, inputs: Sequence[InputSpec] = (), *, name: str | None = None, seed: int = 0,
         task: str | None = None) -> ModelSpec:
    """Build a ModelSpec from a MODEL reference and optional ``--input`` specs (which override the factory's) and
    ``--task`` (which overrides the factory's). Integer inputs get their ranges from the model
    (:func:`infer_input_ranges`). Every random source is seeded with ``seed`` first (the import of a model file may
    draw weights too)."""
    if task is not None:
        task_name(task)   # an unknown task is refused before the model loads
    seed_everything(seed)
    obj = resolve(ref)
    if inspect.isclass(obj) and issubclass(obj, nn.Module) or (callable(obj) and not isinstance(obj, nn.Module)):
        try:
            obj = obj()
        except Exception as e:  # noqa: BLE001 - the user's factory raised: its message and line, not our traceback
            if isinstance(e, TypeError) and _user_frame(e) is None:   # the call itself: required arguments missing
                raise EdgeshipError(f"calling {ref} failed: {e}", hint="the factory must take no required arguments, "
                                    "or get them in MODEL: " + _CALL_HINT) from e
            raise EdgeshipError(f"the factory {ref} raised {raised(e)}",
                                hint="--debug shows the whole traceback") from e
    default_name = re.sub(r"[^A-Za-z0-9_-]+", "_", split_call(ref)[0].rsplit(":", 1)[-1]) or "model"
    if isinstance(obj, ModelSpec):
        spec = obj
        if inputs:
            spec = replace(spec, inputs=tuple(inputs))
    elif isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], nn.Module):
        module, examples_ = obj
        examples_ = (examples_,) if isinstance(examples_, torch.Tensor) else tuple(examples_)
        if inputs:
            specs = tuple(inputs)
        else:
            rev = {v: k for k, v in DTYPES.items()}
            specs = tuple(InputSpec(f"input_{i}" if len(examples_) > 1 else "input", tuple(t.shape), rev[t.dtype])
                          for i, t in enumerate(examples_))
        spec = ModelSpec(module, specs)
    elif isinstance(obj, nn.Module):
        if not inputs:
            raise EdgeshipError(f"{ref} gives a module but no example inputs",
                                hint="add --input NAME:SHAPE[:DTYPE], or return (module, example_inputs) from the factory")
        spec = ModelSpec(obj, tuple(inputs))
    else:
        raise EdgeshipError(f"{ref} returned a {type(obj).__name__}, not a torch.nn.Module",
                            hint="the factory must return an nn.Module, (module, example_inputs) or an edgeship ModelSpec")
    if name or spec.name == "model":
        spec = replace(spec, name=name or default_name)
    if task is not None:
        spec = with_task(spec, task)
    check_memory(spec.at("max"))   # verification runs the largest size of each dynamic dimension too
    spec = replace(spec, inputs=infer_input_ranges(spec.module, spec.inputs))
    spec.check_runs()
    return spec


def activation_bytes(spec: ModelSpec) -> int | None:
    """Bytes one forward pass needs beyond the weights, from a shape-only pass on fake tensors (nothing is
    allocated): the inputs plus the two largest layer outputs at any step. None where the fake pass cannot run."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    sizes: list[int] = []

    def hook(_m, _i, out):
        sizes.extend(t.numel() * t.element_size() for t in flatten_outputs(out) if isinstance(t, torch.Tensor))
    leaves = [m for m in spec.module.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    fake_log = logging.getLogger("torch._subclasses.fake_tensor")   # logs a 30-line traceback of a failing forward()
    level = fake_log.level
    fake_log.setLevel(logging.CRITICAL + 1)
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
            spec.module(*(torch.empty(i.shape, dtype=DTYPES[i.dtype]) for i in spec.inputs))   # fake: no memory
    except Exception:  # noqa: BLE001 - an op fake tensors cannot run: the real run checks the model instead
        return None
    finally:
        fake_log.setLevel(level)
        for h in handles:
            h.remove()
    inputs = sum(int(torch.Size(i.shape).numel()) * DTYPES[i.dtype].itemsize for i in spec.inputs)
    return inputs + sum(sorted(sizes)[-2:])


def available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def check_memory(spec: ModelSpec) -> None:
    """Refuse shapes whose activations cannot fit before running anything (``--input image:1x3x20000x20000`` grew to
    9.7 GB in a minute without a word): the estimate against the memory available, with the inputs that cause it."""
    free = available_memory()
    need = activation_bytes(spec) if free is not None else None
    if need is None or need <= 0.8 * free:
        return
    given = ", ".join(f"{i.name}:{'x'.join(map(str, i.shape))}:{i.dtype}" for i in spec.inputs)
    raise EdgeshipError(f"one forward pass on inputs {given} needs about {need / 2**30:,.1f} GiB for activations, "
                        f"and {free / 2**30:,.1f} GiB of memory is available; nothing was run",
                        hint="use a smaller --input shape (the model's real input size), or a machine with more memory")
