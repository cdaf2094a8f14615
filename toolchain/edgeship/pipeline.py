"""The export trip: one ModelSpec -> every requested format × precision -> parity in each runtime -> one folder;
and ``verify_folder``, which re-runs the parity checks of a folder on its stored reference data.

A failing format does not stop the others: its entry in report.json says why. The folder is built in a
staging directory beside ``out`` and renamed into place at the end, so an interrupted run leaves nothing half-written.
The other jobs of an export live beside this file: preflight.py (checks before any work, pruning hooks),
refdata.py (verification inputs, reference outputs, reference.npz), failures.py (why a converter failed),
evaluate.py (accuracy in each runtime), results.py (the typed results), outdir.py (the output folder).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
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
from .errors import EdgeshipError, Interrupted
from .evaluate import eval_reference, evaluate_artifact, is_classifier
from .export import Exported, effective_precisions, get_exporter
from .failures import DATA_DEPENDENT_HINT, converter_died, describe_failure
from .model import ModelSpec
from .outdir import claim, staged_folder
from .preflight import (check_dynamic, check_free_space, check_precisions, check_quant_options,
                        without_pruning_hooks)
from .refdata import (REFERENCE_FILE, SizeCheck, check_finite_reference, check_fixed_output_shapes, check_sizes,
                      load_reference, load_size_checks, load_verification, load_verify_data, save_reference, size_feeds,
                      verification_feeds)
from .results import ArtifactResult
from .sizes import download_size
from .verify import QUANTIZED

__all__ = ["ExportOptions", "ArtifactResult", "Event", "run_export", "verify_folder", "export_artifact", "artifact_io",
           # moved to preflight / refdata / failures / evaluate; importable from here as before
           "check_precisions", "check_free_space", "check_dynamic", "check_quant_options", "without_pruning_hooks",
           "verification_feeds", "load_verify_data", "check_finite_reference", "check_fixed_output_shapes",
           "SizeCheck", "size_feeds", "check_sizes", "REFERENCE_FILE", "save_reference", "load_reference",
           "load_size_checks", "describe_failure", "DATA_DEPENDENT_HINT", "is_classifier", "eval_reference",
           "evaluate_artifact"]

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
                raise EdgeshipError(*converter_died(fmt, e, out_dir, output())) from None
    return exported, time.perf_counter() - t0


def artifact_io(path: Path) -> tuple[list[dict], list[dict]]:
    """The artifact's own input/output tensors as its runtime sees them (names, shapes, dtypes, quantization)."""
    from edgeship_runtime import open_runtime
    rt = open_runtime(path)
    conv = lambda t: {"name": t.name, "shape": list(t.shape), "dtype": t.dtype,  # noqa: E731
                      "quantization": ({"scale": float(t.quantization[0]), "zero_point": int(t.quantization[1])} if t.quantization else None)}
    return [conv(t) for t in rt.inputs], [conv(t) for t in rt.outputs]


def run_export(spec: ModelSpec, out: Path, opts: ExportOptions, on_event: Event | None = None,
               extra: dict | None = None) -> dict:
    """Export ``spec`` to every format × precision in ``opts``, verify each, write the folder; returns report.json's dict."""
    with claim(Path(out), opts.force) as out:
        return _run_export(spec, out, opts, on_event or (lambda *a: None), extra)


def _run_export(spec: ModelSpec, out: Path, opts: ExportOptions, on_event: Event, extra: dict | None) -> dict:
    check_precisions(opts.precisions)
    check_free_space(spec, out.parent, sum(len(effective_precisions(f, opts.precisions)) for f in opts.formats))
    spec, hooks_note = without_pruning_hooks(spec)
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
        report = report_mod.new_report(spec, manifest, [r.to_dict() for r in results],
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
                       notes=exported.notes, details=details, download_bytes=download_size(exported.path))
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


def verify_folder(folder: Path, on_event: Event | None = None) -> dict:
    """Re-run the parity checks of an export folder on its stored reference inputs and outputs; checks every
    artifact's sha256 against the manifest first. Updates report.json in place (atomically); returns it."""
    on_event = on_event or (lambda *a: None)
    folder = Path(folder)
    manifest, feeds, refs = load_verification(folder)
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
