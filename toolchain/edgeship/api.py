"""edgeship's Python API: what every `edgeship` command does, as plain functions. The CLI (cli.py) only parses
flags, calls these, and prints; a script gets the same checks, files and typed results::

    from edgeship import api
    report = api.export("example:tiny_cnn", "dist/tiny", formats=["onnx", "tflite"], precisions=["fp32", "int8"],
                        calib="digits")
    assert report.passed                      # every artifact passed parity in its own runtime
    entries = api.bench("dist/tiny", runs=50) # appended to dist/tiny/report.json
    api.package("dist/tiny", "android")

Results are typed (edgeship.results: Report, ArtifactResult, BenchEntry; ``to_dict()`` gives report.json's
JSON). Errors are :class:`edgeship.errors.EdgeshipError` with a message and a hint. Long work reports through
``on_event(key, stage, info)`` (export, verify, bench) and ``progress`` (training in compress and sweep).
The names and parameters of this module are locked by tests/test_api.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from .errors import EdgeshipError
from .results import ArtifactResult, BenchEntry, Report

__all__ = ["export", "compress", "sweep", "bench", "verify", "package", "Report", "ArtifactResult", "BenchEntry",
           "EdgeshipError"]

Event = Callable[[str, str, dict], None]   # (artifact key, stage, info), as pipeline.Event


def export(model, out: str | Path, *, formats: str | Sequence[str] | None = None,
           precisions: str | Sequence[str] = ("fp32",), inputs: Sequence = (), task: str | None = None,
           name: str | None = None, verify_samples: int = 5, verify_data: str | Path | None = None,
           check_determinism: bool = False, calib=None, calib_samples: int = 128, eval_data=None,
           keep_float: str | Iterable[str] | None = None, max_accuracy_drop: float | None = None,
           force: bool = False, on_event: Event | None = None) -> Report:
    """Export ``model`` to every format × precision, verify each artifact in its own runtime, and write ``out``
    (manifest.json, report.json, report.html, reference.npz, the artifacts). A failing format does not stop the others.

    ``model``: a ModelSpec, or a MODEL reference (``file.py:factory``, ``pkg.mod:attr``, ``example:NAME``).
    ``formats``: default all four. ``inputs``: ``NAME:SHAPE[:DTYPE[:RANGE]]`` strings or InputSpecs (a reference
    only). ``calib`` / ``eval_data``: a DATA reference (``digits``, an image folder, an .npz, ``file.py:factory``) or a
    loaded DataSource (``calib`` also a list of input tuples). ``keep_float``: layers kept in float in quantized
    exports (module names or types). ``out`` is refused when it exists and is not empty, unless ``force``."""
    from . import export as export_mod
    from .outdir import claim
    from .pipeline import ExportOptions, check_precisions

    if task is not None and not _is_spec(model):
        _task(task)                     # an unknown task is refused before any long work
    fmts = export_mod.parse_formats(formats) if formats is None or isinstance(formats, str) else \
        export_mod.parse_formats(",".join(formats))
    precs = check_precisions(precisions)
    if max_accuracy_drop is not None:   # before any long work (the model loads)
        from .compress.sensitivity import check_budget
        check_budget(max_accuracy_drop, precs, eval_data)
    with claim(Path(out), force):       # refuse early, before any long work; held until the folder is in place
        spec = _load(model, inputs, name=name, task=task)
        opts = ExportOptions(fmts, precs, verify_samples, Path(verify_data) if verify_data is not None else None,
                             check_determinism, force, quant=_keep_float(spec, keep_float),
                             max_accuracy_drop=max_accuracy_drop)
        _attach_data(opts, spec, calib, calib_samples, eval_data)
        return _export(spec, Path(out), opts, on_event)


def compress(model, recipe, out: str | Path, *, data: str | None = None, eval_data: str | None = None,
             inputs: Sequence = (), task: str | None = None, name: str | None = None, force: bool = False,
             progress: Callable | None = None, on_event: Event | None = None) -> Report:
    """Run a recipe's torch → torch stages (train, distill, prune, qat; accuracy after each on the eval set), then
    export the result as the recipe says, with accuracy in every runtime. report.json's ``compression`` holds the
    stages. ``recipe``: a Recipe, a recipe.yaml path or a preset name; ``data`` / ``eval_data`` override its
    ``data:`` / ``eval:``. ``progress(p)`` follows training; ``on_event`` the export, and gets
    ``("compression", "compressed", {"record": ...})`` once the stages are done, before the export starts."""
    from . import recipe as recipe_mod
    from .compress.run import compress_model, quant_options
    from .outdir import claim
    from .pipeline import ExportOptions

    rec = recipe if isinstance(recipe, recipe_mod.Recipe) else recipe_mod.load(str(recipe))
    if task is not None and not _is_spec(model):
        _task(task)
    with claim(Path(out), force):
        spec = _load(model, inputs, name=name, seed=rec.seed, task=task)
        final, record, calib, eval_src = compress_model(spec, rec, data, eval_data, progress)
        precisions = (["fp32"] if rec.export.fp32 else []) + ([rec.quantize.precision] if rec.quantize else [])
        opts = ExportOptions(rec.export.formats, precisions or ["fp32"], force=force, eval_data=eval_src,
                             calib=calib.calibration(rec.quantize.calib_samples) if (calib is not None and rec.quantize) else None,
                             **quant_options(final, rec))
        if on_event is not None:
            on_event("compression", "compressed", {"record": record})
        return _export(final, Path(out), opts, on_event, extra={"compression": record})


def sweep(model, out: str | Path, *, eval_data: str, prune: str | Sequence[float] | None = None,
          lowrank: str | Sequence[float] | None = None, method: str = "structured", finetune_epochs: int = 5, train_epochs: int = 0, inputs: Sequence = (),
          task: str | None = None, force: bool = False, jobs: int = 1, ray: str | None = None,
          cpus_per_point: int = 1, resume: bool = False, progress: Callable | None = None,
          on_event: Event | None = None) -> Report:
    """Sparsity-vs-accuracy curve: prune a fresh copy of ``model`` to each sparsity (a *point*; default 0, 0.3,
    0.5, 0.7, 0.9), fine-tune on ``eval_data``'s train split, measure on its held-out split; with ``lowrank`` (the
    energies each layer keeps, e.g. 1.0, 0.9, 0.8, 0.6) the points factorize instead (method "lowrank"); writes ``out`` (report.json with kind "sweep" after
    every point, sweep.png and report.html at the end). ``train_epochs`` trains the model first (a model built in
    code is untrained). Points run in this process (``jobs`` 1), in ``jobs`` local processes, or as Ray tasks
    (``ray``: ``auto`` for a local Ray, ``ray://HOST:10001`` or ``HOST:PORT`` for a cluster), each with
    ``cpus_per_point`` torch threads; the results are the same to the bit whichever way. A failed point is recorded
    with its error and the others go on. ``resume`` keeps the points ``out`` already has. ``on_event`` gets
    ``("sweep", "measured", {"held_out": N, "todo": [...], "skipped": [...], "total": T})`` before the points run
    and ``("sweep", "point", {"row": ROW, "done": K, "total": T})`` as each finishes."""
    from .outdir import claim
    from .sweep import check_method, parse_energies, parse_sparsities, sweep_folder
    from .sweep_runners import pick

    if lowrank is not None:
        if prune is not None:
            raise EdgeshipError("give --prune or --lowrank, not both: a sweep has one axis",
                                hint="run two sweeps into two folders to compare them")
        sparsities, method = parse_energies(lowrank), "lowrank"
    else:
        sparsities = parse_sparsities((0.0, 0.3, 0.5, 0.7, 0.9) if prune is None else prune)
    check_method(method)
    pick(jobs, ray, cpus_per_point, 2)        # --jobs/--ray/--cpus-per-point (and Ray installed) before any work
    if task is not None and not _is_spec(model):
        _task(task)
    out = Path(out)
    on_event = on_event or (lambda *a: None)
    with claim(out, force or (resume and (out / "report.json").is_file())):
        spec = _load(model, inputs, task=task)
        report = sweep_folder(spec, None if _is_spec(model) else str(model), out, sparsities, eval_data,
                              method=method, finetune_epochs=finetune_epochs, train_epochs=train_epochs,
                              inputs=_inputs(inputs), task=task, jobs=jobs, ray=ray, cpus_per_point=cpus_per_point,
                              resume=resume, force=force, progress=progress,
                              on_start=lambda info: on_event("sweep", "measured", info),
                              on_point=lambda row, k, n: on_event("sweep", "point", {"row": row, "done": k, "total": n}))
        return Report.from_dict(report)


def bench(folder: str | Path, device="local", *, runs: int = 100, warmup: int = 10,
          threads: Sequence[int | None] | int | None = None, rounds: int = 1, cooldown: float = 0.0,
          affinity: str | None = None, formats: str | Sequence[str] | None = None,
          precisions: str | Sequence[str] | None = None, energy: str = "auto", power_cmd: str | None = None,
          via: str | None = None, tools: Mapping[str, str | Path] | Sequence[str] | None = None,
          compare: str | None = None, batch: Sequence[int] | None = None, seq: Sequence[int] | None = None,
          ssh_config: str | Path | None = None, python: str | None = None, fleet: str | Path | None = None,
          reference: str | None = None, on_event: Event | None = None) -> list[BenchEntry]:
    """Benchmark every (selected) artifact of an export ``folder`` on ``device`` (``local``, ``ssh://user@host``,
    ``adb[:SERIAL]``, or a Device): latency percentiles, memory, energy. The entries are appended to the folder's
    report.json and returned. ``threads``: one count or several (each benched); ``via``: python (the runner),
    tool (native benchmark binaries given in ``tools``, FORMAT -> path) or app (android-demo); ``compare``: a
    precision whose speed each artifact is compared to; ``batch`` / ``seq``: sizes of dynamic dimensions.

    A fleet: ``device`` a list of several, and/or ``fleet`` (a fleet.yaml: named devices with their own threads,
    affinity, energy, python, ssh_config): every device benched at once (one worker each, each device serially);
    a device that fails is recorded and the others finish; report.json gets every entry (``device_name``) and a
    ``fleet`` section comparing each artifact's p50 across devices, as a ratio to ``reference`` (default: the
    first device). ``on_event`` then also gets ``(NAME, "device-done", row)`` and ``("fleet", "done", fleet)``."""
    from . import export as export_mod
    from .bench.devices import parse_device
    from .bench.harness import BenchOptions, bench_folder

    opts = BenchOptions(runs, warmup, _list(threads) or [None], rounds, cooldown, affinity,
                        export_mod.parse_formats(formats if formats is None or isinstance(formats, str) else ",".join(formats))
                        if formats else None, _list(precisions), energy, power_cmd,
                        via=via or ("tool" if tools else "python"), tools=tools or None, compare=compare,
                        batch=_list(batch), seq=_list(seq))
    many = isinstance(device, (list, tuple))
    if fleet is not None or (many and len(device) != 1) or reference is not None:
        from .bench.fleet import bench_fleet, load_fleet, members_from
        spec = load_fleet(fleet) if fleet is not None else None
        members = members_from(spec, list(device) if many else ([] if fleet is not None and device == "local" else [device]),
                               opts, ssh_config=ssh_config, python=python)
        entries, _ = bench_fleet(Path(folder), members, reference if reference is not None else spec and spec.reference,
                                 on_event)
        return [BenchEntry.from_dict(e) for e in entries]
    device = device[0] if many else device
    dev = parse_device(device, ssh_config=ssh_config, python=python) if isinstance(device, str) else device
    return [BenchEntry.from_dict(e) for e in bench_folder(Path(folder), dev, opts, on_event)]


def verify(folder: str | Path, *, on_event: Event | None = None, device=None) -> Report:
    """Re-run the parity checks of an export folder on its stored reference inputs and outputs (reference.npz), after
    checking every artifact's sha256 against manifest.json; report.json is updated in place and returned.

    ``device`` (``"browser"`` or a Device from ``parse_device``): run them there instead of in this host's runtimes;
    each artifact's result is ``parity["devices"][device.id]`` (the host's parity is kept; formats the device cannot
    run are left as they were)."""
    if device is not None:
        from .bench.browser_bench import verify_on_device
        from .bench.devices import parse_device
        dev = parse_device(device) if isinstance(device, str) else device
        try:
            return Report.from_dict(verify_on_device(Path(folder), dev, on_event))
        finally:
            if isinstance(device, str):
                dev.cleanup()
    from .pipeline import verify_folder
    return Report.from_dict(verify_folder(Path(folder), on_event))


def package(folder: str | Path, app: str, *, dest: str | Path | None = None, app_root: str | Path | None = None,
            formats: str | Sequence[str] | None = None, precisions: str | Sequence[str] | None = None,
            force: bool = False, allow_failed: bool = False):
    """Copy an export's artifacts, manifest and labels into ``app``: android (android-demo), ios (ios-demo) or pi
    (a Raspberry Pi bundle). Only artifacts whose parity passed in report.json, unless ``allow_failed``.
    Returns edgeship.package.PackageResult (``to_dict()`` for JSON)."""
    from .package import package as do_package
    return do_package(Path(folder), app, dest=Path(dest) if dest is not None else None,
                      app_root=Path(app_root) if app_root is not None else None, formats=formats,
                      precision=precisions, force=force, allow_failed=allow_failed)


# -- helpers ------------------------------------------------------------------------------------------------------
def _export(spec, out: Path, opts, on_event: Event | None, extra: dict | None = None) -> Report:
    from .pipeline import run_export
    return Report.from_dict(run_export(spec, out, opts, on_event, extra=extra))


def _is_spec(model) -> bool:
    from .model import ModelSpec
    return isinstance(model, ModelSpec)


def _task(text: str) -> str:
    from .model import task_name
    return task_name(text)


def _load(model, inputs: Sequence, *, name: str | None = None, seed: int = 0, task: str | None = None):
    """A ModelSpec as given, or loaded from a MODEL reference with ``inputs`` (strings parsed as --input)."""
    from .model import load, parse_input
    if _is_spec(model):
        if inputs or name or task:
            raise EdgeshipError("inputs, name and task apply to a MODEL reference, not to a ModelSpec",
                                hint="set them on the ModelSpec, or pass the reference string")
        return model
    return load(str(model), [parse_input(t) if isinstance(t, str) else t for t in inputs], name=name, seed=seed,
                task=task)


def _inputs(inputs: Sequence) -> list:
    from .model import parse_input
    return [parse_input(t) if isinstance(t, str) else t for t in inputs]


def _keep_float(spec, names: str | Iterable[str] | None):
    """--keep-float NAMES: module names or types, resolved like a recipe's quantize.layers (name > type)."""
    from .compress.quantize import QuantOptions
    from .recipe import resolve_layers
    items = names.split(",") if isinstance(names, str) else list(names or ())
    items = [n.strip() for n in items if n.strip()]
    if not items:
        return QuantOptions()
    return QuantOptions(n for n, v in resolve_layers(spec.module, dict.fromkeys(items), "int8").items() if v is None)


def _attach_data(opts, spec, calib, calib_samples: int, eval_ref) -> None:
    """Load calib and eval now (a reference string; a loaded source is taken as is), so a bad data set is
    reported before any export starts."""
    from .compress.run import eval_split
    from .data import load_data
    if isinstance(calib, str) and calib:
        opts.calib = load_data(calib, spec, "train" if calib == "digits" else "all").calibration(calib_samples)
    elif calib is not None and not isinstance(calib, str):
        opts.calib = calib
    if isinstance(eval_ref, str) and eval_ref:
        opts.eval_data = eval_split(eval_ref, spec)
    elif eval_ref is not None and not isinstance(eval_ref, str):
        opts.eval_data = eval_ref


def _list(v) -> list | None:
    """A comma-separated string, one value or a sequence -> a list (None stays None)."""
    if v is None:
        return None
    if isinstance(v, str):
        return [p.strip() for p in v.split(",") if p.strip()] or None
    if isinstance(v, (int, float)):
        return [v]
    return list(v)
