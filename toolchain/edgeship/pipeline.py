"""The export trip: one ModelSpec -> every requested format × precision -> parity in each runtime -> one folder.

A failing format does not stop the others: its entry in report.json says why. The folder is built in a
staging directory beside ``out`` and renamed into place at the end, so an interrupted run leaves nothing half-written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import platform
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import manifest as manifest_mod
from . import report as report_mod
from . import verify
from ._io import ChildDied, captured_output, run_forked, sha256_path, size_path, write_text_atomic
from .compress.quantize import QuantOptions
from .errors import EdgeshipError, Interrupted, clip
from .export import EXPORTERS, Exported, effective_precisions, get_exporter
from .model import ModelSpec
from .outdir import claim, staged_folder
from .verify import PRECISIONS, QUANTIZED

log = logging.getLogger(__name__)
Event = Callable[[str, str, dict], None]   # (artifact key, stage, info)


@dataclass
class ExportOptions:
    formats: Sequence[str]
    precisions: Sequence[str] = ("fp32",)
    verify_samples: int = 5
    verify_data: Path | None = None
    check_determinism: bool = False
    force: bool = False
    calib: object = None             # calibration inputs for int8: a DataSource or a list of input tuples
    eval_data: object = None         # a labelled DataSource: accuracy of every artifact in its own runtime
    quant: QuantOptions = field(default_factory=QuantOptions)   # per-layer options (keep_float) for quantized exports
    max_accuracy_drop: float | None = None   # accuracy points: keep the most int8-sensitive layers float until it holds


@dataclass
class ArtifactResult:
    format: str
    precision: str
    status: str                      # ok | failed
    path: str | None = None          # relative to the output folder
    size_bytes: int | None = None
    export_s: float | None = None
    parity: dict | None = None
    deterministic: bool | None = None
    accuracy: dict | None = None     # on the eval set, run in the artifact's own runtime
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    error: str | None = None
    hint: str | None = None

    @property
    def key(self) -> str:
        return f"{self.format}:{self.precision}"

    @property
    def passed(self) -> bool:
        return self.status == "ok" and (self.parity or {}).get("status") in ("pass", "not run")


_OP_PATTERNS = [r"(aten[.:]{1,2}[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)", r"op(?:erator)? ['\"`]?([A-Za-z0-9_.:]+)['\"`]? (?:is )?not (?:supported|implemented)",
                r"[Uu]nsupported op(?:eration)?[: ]+['\"`]?([A-Za-z0-9_.:]+)", r"[Uu]nsupported fx node ([A-Za-z0-9_.]+)",
                r"\bnode ([A-Za-z0-9_.]+) \(\1\)"]


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")   # terminal colours (torch.onnx's "\x1b[96mThis is step 1/3\x1b[0m")
_DATA_DEPENDENT = re.compile(r"Could not [^\n]*?data-dependent expression [^\n(]*")
_CAUSED_BY = re.compile(r"^\s*Caused by:\s*(.+?)\s*$", re.M)
_WHERE = re.compile(r"^\(?(\S+?):(\d+) in (\w+)\)?$")   # torch.export's "(…/models.py:6 in batched_nms)"
DATA_DEPENDENT_HINT = ("the model's control flow or output shape depends on its input values (NMS, nonzero, "
                       "item()), which export cannot trace: return the tensors before that step and do it in the app, "
                       "or rewrite it with torch.cond / torch._check; --debug shows the converter's log")


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions behind it (__cause__, else __context__), innermost first."""
    seen: list[BaseException] = []
    while exc is not None and not any(exc is s for s in seen):
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen[::-1]


def _root_cause(text: str) -> str | None:
    """The root cause a converter stated in ``text``: a data-dependent guard and where, or a "Caused by:" line."""
    guard, caused = _DATA_DEPENDENT.search(text), _CAUSED_BY.search(text)
    what = caused.group(1) if caused else ""
    where = _WHERE.match(what)
    if where:   # torch names the user's line, its path cut from the left: keep the file name
        what = f"at {Path(where.group(1)).name}:{where.group(2)} in {where.group(3)}"
    if guard:
        return f"{guard.group(0).strip().rstrip('.')} ({what})" if what else guard.group(0).strip()
    if where:   # a location alone: say what failed there
        return f"{next(ln.strip() for ln in text.splitlines() if ln.strip())} ({what})"
    return what or None


def describe_failure(fmt: str, exc: BaseException, output: str = "") -> tuple[str, str | None]:
    """A one-line reason for a converter failure that names the format and the root cause the converter gave
    (a data-dependent guard, a "Caused by:" line: in the exception chain, innermost first, or the converter's log),
    else the op, else the first line of the error it was raised from. Terminal colour codes are removed."""
    if isinstance(exc, EdgeshipError):
        return exc.message, exc.hint
    chain = _chain(exc)
    texts = [(type(e).__name__, _ANSI.sub("", str(e))) for e in chain] + [(type(chain[0]).__name__, _ANSI.sub("", output))]
    for name, text in texts:
        cause = _root_cause(text)
        if cause:
            hint = DATA_DEPENDENT_HINT if "data-dependent" in cause else "--debug shows the converter's log and traceback"
            return f"the {fmt} converter failed: {name}: {clip(cause, 240)}", hint
    whole = "\n".join(t for _, t in texts)
    op = next((m.group(1) for m in (re.search(p, whole) for p in _OP_PATTERNS) if m), None)
    last = exc   # a wrapper raised "from" the real error (torch.onnx's "Failed to export … step 1/3"): quote that one
    for _ in chain:
        last = last.__cause__ or last
    name, text = type(last).__name__, _ANSI.sub("", str(last))
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    detail = clip(f"{name}: {first}" if first else name, 240)
    others = ", ".join(f for f in EXPORTERS if f != fmt)
    if op:
        return f"the {fmt} converter cannot handle op {op}: {detail}", f"the other formats ({others}) may still work; --debug shows the converter's log"
    return f"the {fmt} converter failed: {detail}", "--debug shows the converter's log and traceback"


def verification_feeds(spec: ModelSpec, samples: int, data: Path | None, real=None) -> tuple[list[tuple], str]:
    """The inputs every artifact is checked on, and where they came from.

    Real examples when there are any (``real``: the eval DataSource or the calibration inputs): an int8 model
    calibrated on real data is only meant to be right on data like it, and seeded N(0, 1) noise saturates its
    ranges (SQNR 3-4 dB on digits, with eval accuracy unchanged). Otherwise seeded random inputs. Plus any
    user-given ones (.npz with one array per input name, or 'x')."""
    if real is not None and hasattr(real, "calibration"):
        feeds, source = real.calibration(samples, seed=1), f"{samples} examples of the eval data"
    elif real:
        feeds, source = list(real)[:samples], f"{min(samples, len(real))} calibration examples"
    else:
        feeds, source = [spec.example_inputs(seed=s) for s in range(samples)], f"{samples} seeded random inputs"
    if data is not None:
        extra = load_verify_data(spec, data)
        feeds += extra
        source += f" + {len(extra)} from {data}"
    return feeds, source


def load_verify_data(spec: ModelSpec, path: Path) -> list[tuple]:
    import torch
    if not path.is_file():
        raise EdgeshipError(f"--verify-data {path} does not exist")
    with np.load(path) as npz:
        keys = [i.name for i in spec.inputs]
        if len(keys) == 1 and keys[0] not in npz and "x" in npz:
            arrays = {keys[0]: npz["x"]}
        else:
            missing = [k for k in keys if k not in npz]
            if missing:
                raise EdgeshipError(f"--verify-data {path} lacks arrays for inputs {missing}", hint=f"it has {list(npz.keys())}; name arrays after the inputs, or 'x' for a single input")
            arrays = {k: npz[k] for k in keys}
    n = len(next(iter(arrays.values())))
    out = []
    for j in range(n):
        row = []
        for i in spec.inputs:
            a = np.asarray(arrays[i.name][j])
            if tuple(a.shape) != i.shape:
                a = a.reshape(i.shape) if a.size == int(np.prod(i.shape)) else a
            if tuple(a.shape) != i.shape:
                raise EdgeshipError(f"--verify-data sample {j} for input {i.name!r} has shape {list(a.shape)}, the model wants {list(i.shape)}")
            row.append(torch.from_numpy(a.astype(i.dtype)))
        out.append(tuple(row))
    return out


def export_artifact(spec: ModelSpec, fmt: str, precision: str, out_dir: Path, calib=None,
                    quant: QuantOptions | None = None) -> tuple[Exported, float]:
    exporter = get_exporter(fmt)
    if precision not in exporter.precisions:
        raise EdgeshipError(f"{fmt} has no {precision} export", hint=f"{fmt} precisions: {', '.join(sorted(exporter.precisions))}")
    quant = quant if precision in QUANTIZED else None   # per-layer options apply to quantized precisions only
    t0 = time.perf_counter()
    with captured_output() as output:
        def convert() -> Exported:
            try:
                return exporter.export(spec, out_dir / fmt, precision, calib, quant=quant)
            except EdgeshipError:
                raise
            except Exception as e:  # noqa: BLE001 - converter failures become the format's failure reason
                Interrupted.raise_pending()   # a converter that wrapped Ctrl-C in an error of its own
                msg, hint = describe_failure(fmt, e, output())
                # --debug: the traceback joins the converter's log (also from a forked child, whose pickled error has none)
                log.debug("the %s converter raised (%s):", fmt, precision, exc_info=True)
                raise EdgeshipError(msg, hint) from e
        if not getattr(exporter, "isolate", False) or getattr(exporter, "converted_in_this_process", False):
            exported = convert()
        else:
            with contextlib.suppress(ImportError):   # imported once here, not again in every child
                importlib.import_module(exporter.module)
            def in_child() -> Exported:
                import torch
                torch.set_num_threads(1)   # GNU OpenMP's threads do not survive fork: a parallel op would hang
                return convert()
            try:
                exported = run_forked(in_child)
            except ChildDied as e:
                raise EdgeshipError(*_died(fmt, e, out_dir, output())) from None
    return exported, time.perf_counter() - t0


def _died(fmt: str, e: ChildDied, out_dir: Path, output: str) -> tuple[str, str]:
    """Why a converter ended its own process: a full disk (it says nothing then), or its last words."""
    free = shutil.disk_usage(out_dir).free
    if free < 1 << 20:
        return (f"the {fmt} converter stopped ({e}): the disk is full ({free:,} bytes free where the output is written)",
                "free some disk space, or choose an --out on another disk, and run again")
    last = [ln.strip() for ln in output.splitlines() if ln.strip()][-1:] or ["(it printed nothing)"]
    return (f"the {fmt} converter ended its process ({e}); its last output: {last[0][:300]}",
            "--debug shows the converter's whole log")


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


def artifact_io(path: Path) -> tuple[list[dict], list[dict]]:
    """The artifact's own input/output tensors as its runtime sees them (names, shapes, dtypes, quantization)."""
    from edgeship_runtime import open_runtime
    rt = open_runtime(path)
    conv = lambda t: {"name": t.name, "shape": list(t.shape), "dtype": t.dtype,  # noqa: E731
                      "quantization": ({"scale": float(t.quantization[0]), "zero_point": int(t.quantization[1])} if t.quantization else None)}
    return [conv(t) for t in rt.inputs], [conv(t) for t in rt.outputs]


def _without_pruning_hooks(spec: ModelSpec) -> tuple[ModelSpec, str | None]:
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


def run_export(spec: ModelSpec, out: Path, opts: ExportOptions, on_event: Event | None = None,
               extra: dict | None = None) -> dict:
    """Export ``spec`` to every format × precision in ``opts``, verify each, write the folder; returns report.json's dict."""
    with claim(Path(out), opts.force) as out:
        return _run_export(spec, out, opts, on_event or (lambda *a: None), extra)


def _run_export(spec: ModelSpec, out: Path, opts: ExportOptions, on_event: Event, extra: dict | None) -> dict:
    check_precisions(opts.precisions)
    check_free_space(spec, out.parent, sum(len(effective_precisions(f, opts.precisions)) for f in opts.formats))
    spec, hooks_note = _without_pruning_hooks(spec)
    check_quant_options(spec, opts)
    check_dynamic(spec)
    feeds, feeds_source = verification_feeds(spec, opts.verify_samples, opts.verify_data, opts.eval_data or opts.calib)
    refs = [[t.numpy() for t in spec.reference(f)] for f in feeds]
    check_finite_reference(refs, feeds_source)
    np_feeds = [[t.numpy() for t in f] for f in feeds]
    check_fixed_output_shapes(spec, np_feeds, refs)
    sizes = size_feeds(spec, opts.verify_samples)   # dynamic dimensions: also verified at their MIN and MAX
    classifier = is_classifier(spec, refs, opts.eval_data)
    torch_pred = eval_reference(spec, opts.eval_data) if opts.eval_data is not None and classifier else None
    sensitivity = None
    if opts.max_accuracy_drop is not None:
        sensitivity = _fit_budget(spec, opts, on_event)
        opts = dataclasses.replace(opts, quant=dataclasses.replace(opts.quant, keep_float=sensitivity.keep_float))
    with staged_folder(out, opts.force) as staging:
        results: list[ArtifactResult] = []
        for fmt in opts.formats:
            for precision in effective_precisions(fmt, opts.precisions):
                results.append(_one(spec, fmt, precision, staging, opts, np_feeds, refs, classifier, on_event, torch_pred,
                                    sizes))
        labels_file = None
        if spec.labels:
            write_text_atomic(staging / "labels.txt", "\n".join(spec.labels) + "\n")
            labels_file = "labels.txt"
        entries = []
        for r in results:
            if r.status != "ok":
                continue
            path = staging / r.path
            ins, outs = artifact_io(path)
            for k, i in enumerate(spec.inputs):   # the dimensions this artifact takes at any size in their range
                if i.name in (r.details.get("dynamic") or {}) and k < len(ins):
                    ins[k]["dynamic"] = r.details["dynamic"][i.name]
            exporter = get_exporter(r.format)
            entry = {"format": r.format, "precision": r.precision, "path": r.path, "sha256": sha256_path(path),
                     "size_bytes": r.size_bytes, "runtime": exporter.runtime, "inputs": ins, "outputs": outs,
                     "notes": r.notes}
            if r.details.get("min_os"):
                entry["min_os"] = r.details["min_os"]
            entries.append(entry)
        save_reference(staging, spec, np_feeds, refs, sizes)
        manifest = manifest_mod.build(spec, entries, labels_file)
        manifest_mod.write(staging, manifest)
        report = report_mod.new_report(spec, manifest, [r.__dict__ | {"key": r.key} for r in results],
                                       verify_samples=len(feeds))
        report["verify"]["inputs"] = feeds_source
        report.update(extra or {})
        if hooks_note:
            report["notes"] = [hooks_note]
        if torch_pred is not None:
            report["eval"] = {"examples": len(opts.eval_data), "torch_fp32_top1": float(np.mean(torch_pred == opts.eval_data.y))}
        if opts.quant.keep_float:
            report["quantize"] = {"keep_float": sorted(opts.quant.keep_float)}
        if sensitivity is not None:
            report["sensitivity"] = sensitivity.to_dict()
        report_mod.write(staging, report)
    return report


def check_finite_reference(refs: list[list[np.ndarray]], source: str) -> None:
    """PyTorch's own outputs must be finite: NaN or inf there is the model's problem, and no artifact can be
    checked against it (it would be reported as the artifact's fault)."""
    for k, outs in enumerate(refs):
        for j, a in enumerate(outs):
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                bad = int(np.size(a) - np.isfinite(a).sum())
                raise EdgeshipError(f"the model's own PyTorch output {j} is not finite ({bad} NaN/inf values) on "
                                    f"verification input {k} ({source}): a problem of the model, not of any export; "
                                    "nothing was written", hint="run the model in PyTorch on these inputs; give real "
                                    "inputs with --verify-data, --calib or --eval if random ones are out of its range")


def check_fixed_output_shapes(spec: ModelSpec, np_feeds, refs: list[list[np.ndarray]]) -> None:
    """Inputs of the same shapes must give outputs of the same shapes: an output whose size depends on the values
    (NMS, torch.nonzero, a score threshold in forward()) exports in no format; say so, and point to --task detect."""
    first: dict[tuple, tuple] = {}
    for k, (feed, outs) in enumerate(zip(np_feeds, refs)):
        in_shapes = tuple(tuple(np.shape(x)) for x in feed)
        out_shapes = tuple(tuple(np.shape(o)) for o in outs)
        seen = first.setdefault(in_shapes, (k, out_shapes))
        if seen[1] == out_shapes:
            continue
        j = next(j for j, (a, b) in enumerate(zip(seen[1], out_shapes)) if a != b) if len(seen[1]) == len(out_shapes) else 0
        shown = ("x".join(map(str, seen[1][j])) or "scalar", "x".join(map(str, out_shapes[j])) or "scalar") \
            if len(seen[1]) == len(out_shapes) else (f"{len(seen[1])} outputs", f"{len(out_shapes)} outputs")
        from .detect import VARIABLE_OUTPUT_HINT
        raise EdgeshipError(f"the model's output {j} has shape {shown[0]} on verification input {seen[0]} and "
                            f"{shown[1]} on input {k} (same input shapes): its outputs vary in size with the values, "
                            "as a detector's do after a score threshold or NMS; no format can export that. "
                            "Nothing was written", hint=VARIABLE_OUTPUT_HINT)


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
        cause = _root_cause(_ANSI.sub("", str(e))) or raised(e)
        raise EdgeshipError(f"torch.export cannot trace the model with the dynamic dimensions {dims}: "
                            f"{clip(cause, 300)}; nothing was written",
                            hint="fix those dimensions in --input, or change the model so it works at every size in "
                                 "the range; " + DYNAMIC_HINT) from e


@dataclass
class SizeCheck:
    """Verification inputs at one size of the dynamic dimensions (``label``: min | example | max) and PyTorch's
    outputs; the example size's are the main verification set (``feeds`` None here)."""
    label: str
    shapes: dict[str, list[int]]
    feeds: list[list[np.ndarray]] | None = None
    refs: list[list[np.ndarray]] | None = None


SIZE_SAMPLES = 2   # seeded random inputs at MIN and at MAX (the example size has the --samples ones)


def size_feeds(spec: ModelSpec, samples: int) -> list[SizeCheck]:
    """The sizes a model with dynamic dimensions is verified at: every dynamic dimension at its MIN, at its example
    size (the main verification set) and at its MAX. Empty without dynamic dimensions."""
    out = []
    for label in spec.sizes() if spec.dynamic else ():
        at = spec.at(label)
        shapes = {i.name: list(i.shape) for i in at.inputs}
        if any(sc.shapes == shapes for sc in out):   # (1..2): the example is the MAX
            continue
        if label == "example":
            out.append(SizeCheck(label, shapes))
            continue
        feeds = [at.example_inputs(seed=s) for s in range(min(samples, SIZE_SAMPLES))]
        try:
            refs = [[t.numpy() for t in at.reference(f)] for f in feeds]
        except Exception as e:  # noqa: BLE001 - the model itself fails at that size
            from .model import raised
            given = ", ".join(f"{k}:{'x'.join(map(str, v))}" for k, v in shapes.items())
            raise EdgeshipError(f"the model fails in PyTorch at the {label} size of its dynamic dimensions ({given}): "
                                f"{raised(e)}; nothing was written",
                                hint="narrow the dynamic range in --input to the sizes the model takes") from e
        check_finite_reference(refs, f"{len(feeds)} seeded random inputs at the {label} size")
        out.append(SizeCheck(label, shapes, [[t.numpy() for t in f] for f in feeds], refs))
    return out


def check_sizes(parity: dict, path: Path, fmt: str, precision: str, sizes: Sequence[SizeCheck], classifier: bool,
                fixed: dict | None = None) -> None:
    """Run the artifact at each size of ``sizes`` too; ``parity["sizes"]`` gets one row per size (the example
    size's is ``parity`` itself), and the artifact fails when any size fails. ``fixed``: the shapes a format fixed
    the dynamic inputs to (TFLite): other sizes are "not run", with the reason."""
    rows = []
    for sc in sizes:
        if sc.feeds is None:
            p = dict(parity)
        elif fixed and any(sc.shapes.get(k) != v for k, v in fixed.items()):
            from .export.tflite import FIXED_SHAPES
            taken = ", ".join(f"{k}:{'x'.join(map(str, v))}" for k, v in fixed.items())
            p = verify.not_run(precision, f"{FIXED_SHAPES if fmt == 'tflite' else 'fixed shapes'}; the artifact "
                                          f"takes only {taken}").to_dict()
        else:
            p = verify.check_artifact(path, fmt, precision, sc.feeds, sc.refs, classifier).to_dict()
        rows.append({"size": sc.label, "shapes": sc.shapes,
                     **{f: p.get(f) for f in ("status", "value", "cosine", "max_abs", "sqnr_db", "samples", "reason")}})
    parity["sizes"] = rows
    failed = [r for r in rows if r["status"] == "fail"]
    if failed and parity.get("status") in ("pass", "not run"):
        f = failed[0]
        at = ", ".join(f"{k}:{'x'.join(map(str, v))}" for k, v in f["shapes"].items())
        parity["status"] = "fail"
        parity["reason"] = f"at the {f['size']} size ({at}): {f.get('reason')}"


def is_classifier(spec: ModelSpec, refs: list[list[np.ndarray]], eval_data) -> bool:
    """A classification task, or any model whose first output is one row of scores with labelled eval data whose
    labels index it: a plain module from the user's factory gets top-1 accuracy in every runtime too."""
    if spec.task.endswith("classification"):
        return True
    y = getattr(eval_data, "y", None)
    if y is None or not len(y) or not refs:
        return False
    first = refs[0][0]
    return (first.ndim == 2 and first.shape[0] == 1 and np.issubdtype(np.asarray(y).dtype, np.integer)
            and 0 <= int(np.min(y)) and int(np.max(y)) < first.shape[1])


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


def _fit_budget(spec: ModelSpec, opts: ExportOptions, on_event: Event):
    """Which layers to keep in float for ``opts.max_accuracy_drop`` (compress.sensitivity), before any export."""
    from .compress.sensitivity import fit_accuracy_budget

    def progress(what: str, done: int, total: int):
        on_event("int8 sensitivity", "sensitivity", {"what": what, "done": done, "total": total})
    with captured_output():   # the quantizer's own chatter
        result = fit_accuracy_budget(spec, opts.eval_data, opts.max_accuracy_drop, opts.calib,
                                     keep_float=opts.quant.keep_float, progress=progress)
    on_event("int8 sensitivity", "sensitivity-done", {"met": result.met, "keep_float": sorted(result.keep_float)})
    return result


def _one(spec, fmt, precision, staging, opts, np_feeds, refs, classifier, on_event, torch_pred,
         sizes=()) -> ArtifactResult:
    key = f"{fmt}:{precision}"
    on_event(key, "export", {})
    try:
        exported, seconds = export_artifact(spec, fmt, precision, staging, opts.calib, opts.quant)
    except EdgeshipError as e:
        log.info("%s failed: %s", key, e.message)
        on_event(key, "failed", {"error": e.message})
        return ArtifactResult(fmt, precision, "failed", error=e.message, hint=e.hint)
    rel = exported.path.relative_to(staging).as_posix()
    details = dict(exported.details)
    if exported.min_os:
        details["min_os"] = exported.min_os
    r = ArtifactResult(fmt, exported.precision, "ok", rel, size_path(exported.path), round(seconds, 2),
                       notes=exported.notes, details=details)
    if opts.check_determinism:
        with tempfile.TemporaryDirectory() as again:
            second, _ = export_artifact(spec, fmt, precision, Path(again), opts.calib, opts.quant)
            r.deterministic = sha256_path(second.path) == sha256_path(exported.path)
            if not r.deterministic:
                r.notes.append("not byte-identical when exported twice")
    on_event(key, "verify", {"path": rel})
    with captured_output():   # runtimes print their own chatter (XNNPACK delegate, cpuinfo) to fd 1/2
        parity = verify.check_artifact(exported.path, fmt, exported.precision, np_feeds, refs, classifier)
        r.parity = parity.to_dict()
        if sizes:
            check_sizes(r.parity, exported.path, fmt, exported.precision, sizes, classifier, details.get("fixed_shapes"))
        if torch_pred is not None:
            on_event(key, "evaluate", {"path": rel})
            r.accuracy = evaluate_artifact(exported.path, fmt, opts.eval_data, torch_pred)
    on_event(key, "done", {"parity": r.parity})
    return r


def eval_reference(spec: ModelSpec, data) -> np.ndarray:
    """PyTorch's predicted classes on the eval set: what every artifact's predictions are compared to."""
    import torch
    preds = []
    with torch.no_grad():
        for x, _ in data.batches(batch_size=1):
            x = x if isinstance(x, tuple) else (x,)
            preds.append(int(torch.argmax(spec.reference(x)[0], dim=-1).reshape(-1)[0]))
    return np.asarray(preds)


def evaluate_artifact(path: Path, fmt: str, data, torch_pred: np.ndarray) -> dict:
    """Top-1 accuracy on ``data`` run in the artifact's own runtime, next to PyTorch fp32's, and their agreement."""
    y = data.y
    torch_acc = float(np.mean(torch_pred == y)) if y is not None else None
    base = {"examples": len(data), "torch_fp32": torch_acc}
    if fmt == "coreml" and platform.system() != "Darwin":
        return base | {"status": "not run", "reason": "needs macOS: Core ML prediction runs only there"}
    from edgeship_runtime import RuntimeUnavailable, open_runtime
    try:
        rt = open_runtime(path)
        preds = np.asarray([int(np.argmax(rt.run([a[j:j + 1] for a in data.xs])[0].reshape(-1)))
                            for j in range(len(data))])
    except RuntimeUnavailable as e:
        return base | {"status": "not run", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - reported with the artifact, like a parity failure
        return base | {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
    acc = float(np.mean(preds == y)) if y is not None else None
    return base | {"status": "ok", "top1": acc, "agreement_with_torch": float(np.mean(preds == torch_pred)),
                   "drop_points": None if acc is None else round(100 * (torch_acc - acc), 2)}


REFERENCE_FILE = "reference.npz"


def save_reference(folder: Path, spec: ModelSpec, np_feeds, refs, sizes: Sequence[SizeCheck] = ()) -> None:
    """Store the verification inputs and PyTorch's outputs beside the artifacts, so ``edgeship verify`` can
    re-check a folder without the model (like ExecuTorch's BundledProgram, for every format). The sets at the
    MIN and MAX of dynamic dimensions go in as ``size_min__input__NAME`` / ``size_min__output__K`` ..."""
    arrays = {f"input__{i.name}": np.stack([f[k] for f in np_feeds]) for k, i in enumerate(spec.inputs)}
    arrays |= {f"output__{k}": np.stack([r[k] for r in refs]) for k in range(len(refs[0]))}
    for sc in (sc for sc in sizes if sc.feeds is not None):
        arrays |= {f"size_{sc.label}__input__{i.name}": np.stack([f[k] for f in sc.feeds]) for k, i in enumerate(spec.inputs)}
        arrays |= {f"size_{sc.label}__output__{k}": np.stack([r[k] for r in sc.refs]) for k in range(len(sc.refs[0]))}
    tmp = folder / (REFERENCE_FILE + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(folder / REFERENCE_FILE)


def load_reference(folder: Path, manifest: dict) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
    path = folder / REFERENCE_FILE
    if not path.is_file():
        raise EdgeshipError(f"{folder} has no {REFERENCE_FILE} with reference inputs and outputs",
                            hint="re-export the folder with this edgeship version")
    try:
        with np.load(path, allow_pickle=False) as z:
            ins = [z[f"input__{i['name']}"] for i in manifest["inputs"]]
            outs = [z[f"output__{k}"] for k in range(len(manifest["outputs"]))]
    except Exception as e:  # noqa: BLE001 - not a zip, a missing array, an object array: the file is damaged
        raise EdgeshipError(f"{path} cannot be read as the folder's reference data ({type(e).__name__}: {str(e)[:200]})",
                            hint="export the folder again: reference.npz holds the inputs and PyTorch outputs verify needs") from None
    arrays = ins + outs
    n = len(ins[0]) if ins and ins[0].ndim else 0
    if not n or any(a.ndim == 0 or len(a) != n or a.dtype.kind not in "biuf" for a in arrays):
        raise EdgeshipError(f"{path} does not hold one numeric input and output row per verification sample",
                            hint="export the folder again")
    return [[a[j] for a in ins] for j in range(n)], [[a[j] for a in outs] for j in range(n)]


def load_size_checks(folder: Path, manifest: dict) -> list[SizeCheck]:
    """The MIN/example/MAX verification sets of dynamic dimensions stored in reference.npz (empty when none)."""
    try:
        return _load_size_checks(folder, manifest)
    except Exception as e:  # noqa: BLE001 - a missing or mangled array: the file is damaged, as in load_reference
        raise EdgeshipError(f"{folder / REFERENCE_FILE} cannot be read as the folder's reference data at the sizes of "
                            f"its dynamic dimensions ({type(e).__name__}: {str(e)[:200]})",
                            hint="export the folder again") from None


def _load_size_checks(folder: Path, manifest: dict) -> list[SizeCheck]:
    out = []
    with np.load(folder / REFERENCE_FILE, allow_pickle=False) as z:
        for label in ("min", "example", "max"):
            if label == "example":
                ins = [z[f"input__{i['name']}"] for i in manifest["inputs"]]
                out.append(SizeCheck(label, {i["name"]: list(a.shape[1:]) for i, a in zip(manifest["inputs"], ins)}))
                continue
            if f"size_{label}__input__{manifest['inputs'][0]['name']}" not in z.files:
                continue
            ins = [z[f"size_{label}__input__{i['name']}"] for i in manifest["inputs"]]
            outs = [z[f"size_{label}__output__{k}"] for k in range(len(manifest["outputs"]))]
            n = len(ins[0])
            out.append(SizeCheck(label, {i["name"]: list(a.shape[1:]) for i, a in zip(manifest["inputs"], ins)},
                                 [[a[j] for a in ins] for j in range(n)], [[a[j] for a in outs] for j in range(n)]))
    return out if len(out) > 1 else []


def verify_folder(folder: Path, on_event: Event | None = None) -> dict:
    """Re-run the parity checks of an export folder on its stored reference inputs and outputs; checks every
    artifact's sha256 against the manifest first. Updates report.json in place (atomically); returns it."""
    on_event = on_event or (lambda *a: None)
    folder = Path(folder)
    manifest = manifest_mod.load(folder)
    if not manifest["artifacts"]:
        raise EdgeshipError(f"{folder / 'manifest.json'} lists no artifacts: there is nothing to verify",
                            hint="export the folder again")
    feeds, refs = load_reference(folder, manifest)
    sizes = load_size_checks(folder, manifest)
    report = report_mod.load(folder)
    listed = {f"{a['format']}:{a['precision']}" for a in manifest["artifacts"]}
    by_key = {}
    for a in report["artifacts"]:   # a row the manifest does not list cannot have passed: say so, never keep a stale pass
        if isinstance(a, dict) and isinstance(a.get("key"), str):
            by_key[a["key"]] = a
            if a["key"] not in listed and a.get("status") == "ok":
                a["parity"] = verify.Parity("fail", *verify.tolerance(str(a.get("precision"))),
                                            reason="not listed in manifest.json (the folder was edited)").to_dict()
    classifier = manifest["task"].endswith("classification")
    for art in manifest["artifacts"]:
        key = f"{art['format']}:{art['precision']}"
        on_event(key, "verify", {"path": art["path"]})
        entry = by_key.setdefault(key, {"key": key, "format": art["format"], "precision": art["precision"], "status": "ok"})
        problem = manifest_mod.artifact_problem(folder, art)
        if problem:
            parity = verify.Parity("fail", *verify.tolerance(art["precision"]), reason=problem)
        else:
            parity = verify.check_artifact(folder / art["path"], art["format"], art["precision"], feeds, refs, classifier)
        entry["parity"] = parity.to_dict()
        if sizes and not problem:
            details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
            fixed = details.get("fixed_shapes") if isinstance(details.get("fixed_shapes"), dict) else None
            check_sizes(entry["parity"], folder / art["path"], art["format"], art["precision"], sizes, classifier, fixed)
        on_event(key, "done", {"parity": entry["parity"]})
    report["artifacts"] = list(by_key.values())
    report_mod.write(folder, report)
    return report
