"""Checks and preparation before any format runs: precisions, disk space, dynamic dimensions, per-layer quantization
options, and torch.nn.utils.prune hooks made permanent on a copy of the model."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ._io import captured_output
from .compress.quantize import QuantOptions
from .errors import EdgeshipError, clip
from .failures import ANSI, root_cause
from .model import ModelSpec
from .verify import PRECISIONS

if TYPE_CHECKING:
    from .pipeline import ExportOptions

log = logging.getLogger(__name__)

def check_free_space(spec: ModelSpec, where: Path, artifacts: int) -> None:
    """Refuse up front when ``where`` cannot hold the export: each artifact is at most about the fp32 weights, and
    converters write temporary copies beside it (so twice that, plus 64 MB of headroom)."""
    weights = sum(t.numel() * t.element_size() for t in list(spec.module.parameters()) + list(spec.module.buffers()))
    need = 2 * weights * max(artifacts, 1) + (64 << 20)
    free = shutil.disk_usage(where).free
    if free < need:
        raise EdgeshipError(f"not enough disk space for this export: {free / 1e6:,.0f} MB free in {where}, about "
                            f"{need / 1e6:,.0f} MB needed ({artifacts} artifacts of a model with {weights / 1e6:,.1f} MB "
                            "of weights); nothing was written", hint="free some disk space, or choose an --out on another disk")


def without_pruning_hooks(spec: ModelSpec) -> tuple[ModelSpec, str | None]:
    """Exporters see a copy with torch.nn.utils.prune's hooks made permanent: with the hooks left on, ExecuTorch
    mis-lowers the layers they compute (wrong outputs, no error; the parity gate catches it, see tests)."""
    from torch.nn.utils import prune as tprune
    hooked = [n for n, m in spec.module.named_modules()
              if any(isinstance(h, tprune.BasePruningMethod) for h in m._forward_pre_hooks.values())]
    if not hooked:
        return spec, None
    import copy

    def hooks(m):
        return [h for h in m._forward_pre_hooks.values() if isinstance(h, tprune.BasePruningMethod)]
    # The masked weight is a computed (non-leaf) tensor that deepcopy refuses: set it aside while copying.
    stash = [(m, h._tensor_name, getattr(m, h._tensor_name)) for m in spec.module.modules() for h in hooks(m)]
    try:
        for m, name, _ in stash:
            delattr(m, name)
        module = copy.deepcopy(spec.module)
    finally:
        for m, name, value in stash:
            setattr(m, name, value)
    for m in module.modules():
        for h in hooks(m):
            setattr(m, h._tensor_name, h.apply_mask(m))
            tprune.remove(m, h._tensor_name)
    note = f"pruning hooks on {len(hooked)} layers were made permanent before export (your model is unchanged)"
    log.info(note)
    return spec.with_module(module.eval()), note


def check_precisions(text_or_list) -> list[str]:
    items = [p.strip() for p in text_or_list.split(",")] if isinstance(text_or_list, str) else list(text_or_list)
    items = [p for p in items if p]
    bad = [p for p in items if p not in PRECISIONS]
    if bad or not items:
        raise EdgeshipError(f"unknown precision {', '.join(bad) or repr(text_or_list)}", hint=f"use one of {', '.join(PRECISIONS)}")
    return items


def check_dynamic(spec: ModelSpec) -> None:
    """Dynamic dimensions the model cannot have are refused before any format runs (one torch.export)."""
    if not spec.dynamic:
        return
    from .export import export_program
    from .model import DYNAMIC_HINT, raised
    dims = ", ".join(f"{i.name}:{i.text}" for i in spec.inputs if i.dynamic)
    try:
        with captured_output():
            export_program(spec.module, spec.example_inputs(), spec)
    except EdgeshipError:
        raise
    except Exception as e:  # noqa: BLE001 - the model cannot be traced with these dimensions symbolic
        cause = root_cause(ANSI.sub("", str(e))) or raised(e)
        raise EdgeshipError(f"torch.export cannot trace the model with the dynamic dimensions {dims}: "
                            f"{clip(cause, 300)}; nothing was written",
                            hint="fix those dimensions in --input, or change the model so it works at every size in "
                                 "the range; " + DYNAMIC_HINT) from e


def check_quant_options(spec: ModelSpec, opts: ExportOptions) -> None:
    """Per-layer options and an accuracy budget are checked before any long work: layer names the model has,
    a quantized precision to apply them to, and (for a budget) labelled eval data and a classifier."""
    if opts.quant is None:
        opts.quant = QuantOptions()
    if not isinstance(opts.quant, QuantOptions):
        raise EdgeshipError(f"ExportOptions.quant must be a QuantOptions, got {type(opts.quant).__name__}",
                            hint="e.g. ExportOptions(..., quant=QuantOptions(keep_float={'classifier'}))")
    opts.quant.check(spec.module)
    if opts.max_accuracy_drop is None:
        return
    from .compress.sensitivity import check_budget
    check_budget(opts.max_accuracy_drop, opts.precisions, opts.eval_data, spec)
