"""The `edgeship` command: thin; parses flags, calls edgeship.api, prints. Errors print without a traceback unless
--debug. Exit codes: 0 every artifact passed (export, compress, verify) or everything was measured (bench); 1 an
artifact failed, an accuracy budget was not met, or a bench measured nothing or failed; 2 an error (message + hint)."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import recipe as recipe_mod
from .errors import EdgeshipError, Interrupted

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress a PyTorch model, export it to ONNX, TFLite, ExecuTorch and Core ML, verify, bench, package.")
console = Console()
if not console.is_terminal:      # piped or captured: wide enough that the summary table does not wrap
    console = Console(width=160)
err_console = Console(stderr=True, soft_wrap=True)
STATE = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show tracebacks and converter logs")):
    STATE["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    if not debug:   # the converters' own warnings (untested torch version, missing CUDA kernels) are noise here
        import warnings
        warnings.filterwarnings("ignore")
        logging.getLogger("edgeship").setLevel(logging.WARNING)
        for name in ("torch", "torchao", "coremltools", "executorch", "absl", "jax"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _status_style(status: str) -> str:
    return {"pass": "green", "ok": "green", "fail": "red", "failed": "red", "not run": "yellow",
            "inconclusive": "yellow"}.get(status, "white")


def _summary(report: dict, title: str) -> Table:
    from .report import _fmt_size, accuracy_text, parity_text
    t = Table(title=title)
    with_acc = any(a.get("accuracy") for a in report["artifacts"])
    for col in ("format", "precision", "file", "size", "download", "export s", "parity") + (("accuracy",) if with_acc else ()) + ("status",):
        t.add_column(col)
    for a in report["artifacts"]:
        p = a.get("parity") or {}
        status = "failed" if a.get("status") == "failed" else p.get("status", "—")
        detail = a.get("error") if a.get("status") == "failed" else parity_text(p)
        row = [a["format"], a["precision"], escape(a.get("path") or "—"), _fmt_size(a.get("size_bytes")),
               _fmt_size(a.get("download_bytes")), str(a.get("export_s") or "—"), escape(detail or "—")]
        if with_acc:
            row.append(escape(accuracy_text(a.get("accuracy"))))
        t.add_row(*row, f"[{_status_style(status)}]{status}[/]")
    return t


def _progress_events(progress, task_ids: dict):
    def on_event(key: str, stage: str, info: dict):
        if key not in task_ids:
            task_ids[key] = progress.add_task(key, total=3)
        tid = task_ids[key]
        if stage == "export":
            progress.update(tid, description=f"{key}: exporting", completed=0)
        elif stage == "verify":
            progress.update(tid, description=f"{key}: verifying in its runtime", completed=1)
        elif stage == "failed":
            progress.update(tid, description=f"{key}: [red]failed[/]", completed=3)
        elif stage == "done":
            st = info["parity"]["status"]
            progress.update(tid, description=f"{key}: [{_status_style(st)}]{st}[/]", completed=3)
        elif stage == "sensitivity":
            progress.update(tid, description=escape(info["what"]), completed=info["done"], total=info["total"])
        elif stage == "sensitivity-done":
            kept = ", ".join(info["keep_float"]) or "none"
            st = "[green]budget met[/]" if info["met"] else "[red]budget not met[/]"
            progress.update(tid, description=f"{key}: {st}; kept in float: {escape(kept)}", completed=1, total=1)
    return on_event


MODEL_HELP = ("path/to/file.py:factory, package.module:attr, or example:NAME; factory keyword arguments in "
              "parentheses, e.g. 'example:digits_cnn(width=64)'")
INPUT_HELP = ("NAME:SHAPE[:DTYPE[:RANGE]], e.g. image:1x3x224x224, tokens:1x128:int64:0..30522 (RANGE LOW..HIGH, HIGH "
              "exclusive; default: the rows of the embedding the input feeds) or attention_mask:1x128:int64:mask "
              "(0/1 padding) (repeatable)")
TASK_HELP = ("classify | detect | segment | embed | generic (default: the factory's, else generic); classify gives "
             "top-1 agreement in verification; detect, segment and embed are recorded in the manifest")


@app.command()
def export(
    model: str = typer.Argument(..., help=MODEL_HELP),
    input: list[str] = typer.Option([], "--input", "-i", help=INPUT_HELP),
    task: Optional[str] = typer.Option(None, "--task", help=TASK_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="output folder (refused if it exists and is not empty, unless --force)"),
    formats: Optional[str] = typer.Option(None, "--formats", "-f", help="comma-separated: onnx,tflite,executorch,coreml (the default: all four), torchscript (legacy PyTorch Mobile, opt-in)"),
    precision: str = typer.Option("fp32", "--precision", "-p", help="fp32, fp16, int8, dynamic-int8, or Core ML weight compression w8|w6|w4 (comma-separated for several)"),
    verify_data: Optional[Path] = typer.Option(None, "--verify-data", help=".npz with extra verification inputs (one array per input name, or 'x')"),
    samples: int = typer.Option(5, "--samples", help="random verification inputs (fixed seed)"),
    check_determinism: bool = typer.Option(False, "--check-determinism", help="export each artifact twice and compare bytes"),
    calib: Optional[str] = typer.Option(None, "--calib", help="int8 calibration DATA: digits, an image folder, an .npz, or file.py:factory"),
    calib_samples: int = typer.Option(128, "--calib-samples", help="calibration examples to use"),
    eval_data: Optional[str] = typer.Option(None, "--eval", help="labelled DATA: accuracy of every artifact in its own runtime"),
    keep_float: Optional[str] = typer.Option(None, "--keep-float", help="layers kept in float in quantized exports: "
                                             "comma-separated module names (features.0.0) or types (Linear)"),
    max_accuracy_drop: Optional[float] = typer.Option(None, "--max-accuracy-drop", help="accuracy points vs fp32 on --eval: "
                                                      "keep the most int8-sensitive layers in float until int8 loses at most this"),
    name: Optional[str] = typer.Option(None, "--name", help="model name in the manifest (default: the factory's name)"),
    force: bool = typer.Option(False, "--force", help="replace an existing edgeship output folder"),
    as_json: bool = typer.Option(False, "--json", help="print report.json instead of the table"),
):
    """Export MODEL to every format, verify each artifact in its runtime, write manifest.json and report.json."""
    from . import api
    STATE["out"] = out                  # an interrupt names it
    with _export_bar(as_json) as progress:
        report = api.export(model, out, formats=formats, precisions=precision, inputs=input, task=task, name=name,
                            verify_samples=samples, verify_data=verify_data, check_determinism=check_determinism,
                            calib=calib, calib_samples=calib_samples, eval_data=eval_data, keep_float=keep_float,
                            max_accuracy_drop=max_accuracy_drop, force=force,
                            on_event=_progress_events(progress, {}))
    _print_export(report, out, as_json)


def _export_bar(as_json: bool):
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                    console=err_console, transient=as_json, disable=as_json)


def _print_export(report, out: Path, as_json: bool) -> None:
    """The summary of an export (or compress) and its exit code: 0 when every artifact passed and the accuracy budget held."""
    data = report.to_dict()
    sens = data.get("sensitivity")
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        if sens:
            _print_sensitivity(sens)
        console.print(_summary(data, f"{report.name} -> {out}"))
        for a in data["artifacts"]:
            if a.get("status") == "failed" and a.get("hint"):
                console.print(f"[red]{a['key']}[/]: {escape(a['error'])}\n  hint: {escape(a['hint'])}")
    raise typer.Exit(0 if report.ok else 1)


def _print_sensitivity(sens: dict, top: int = 10) -> None:
    """The most int8-sensitive layers (SQNR with only that layer int8), which were kept in float, and the budget."""
    t = Table(title="int8 sensitivity per layer, most sensitive first")
    for col in ("layer", "type", "SQNR dB (only it int8)", "kept in float"):
        t.add_column(col)
    rows = sens["layers"]
    for r in rows[:top]:
        kept = f"[yellow]yes ({r['why']})[/]" if r["kept_float"] else "no"
        t.add_row(escape(r["layer"]), r["type"], "—" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}", kept)
    if len(rows) > top:
        t.add_row(f"… {len(rows) - top} more in report.json", "", "", "")
    console.print(t)
    acc = sens["accuracy"]
    pct = lambda v: "—" if v is None else f"{v:.2%}"  # noqa: E731
    console.print(escape(f"{sens['simulation']}; {sens['calibration']}"), soft_wrap=True)
    console.print(escape(f"accuracy on {sens['eval_examples']} eval examples: fp32 {pct(acc['fp32'])}, every layer int8 "
                         f"{pct(acc['int8_all_layers'])} (drop {acc['drop_points_before']:g} points), "
                         f"{len(sens['keep_float'])} layer(s) in float {pct(acc['int8_after'])} "
                         f"(drop {acc['drop_points_after']:g} points)"), soft_wrap=True)
    console.print(f"accuracy budget {sens['max_accuracy_drop']:g} points: " + ("[green]met[/]" if sens["met"] else "[red]not met[/]"))
    for note in sens.get("notes") or []:
        console.print(f"[yellow]{escape(note)}[/]", soft_wrap=True)


def _training_progress():
    """A rich progress bar per training stage, with loss and accuracy."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"),
                        TimeElapsedColumn(), console=err_console)
    tasks: dict[str, int] = {}

    def on_progress(p):
        if p.stage not in tasks:
            tasks[p.stage] = progress.add_task(p.stage, total=p.epochs * p.steps, status="")
        acc = f" val {p.val_accuracy:.2%}" if p.val_accuracy is not None else ""
        progress.update(tasks[p.stage], completed=(p.epoch - 1) * p.steps + p.step,
                        status=f"epoch {p.epoch}/{p.epochs} loss {p.loss:.4f}{acc}")
    return progress, on_progress


@app.command()
def compress(
    model: str = typer.Argument(..., help="the model to compress (the teacher, when the recipe distills): " + MODEL_HELP),
    recipe: str = typer.Option(..., "--recipe", "-r", help="recipe.yaml, or a preset name: " + ", ".join(recipe_mod.presets())),
    out: Path = typer.Option(..., "--out", "-o", help="output folder"),
    data: Optional[str] = typer.Option(None, "--data", help="training data (overrides the recipe's data:)"),
    eval_data: Optional[str] = typer.Option(None, "--eval", help="labelled eval data (overrides the recipe's eval:)"),
    input: list[str] = typer.Option([], "--input", "-i", help=INPUT_HELP),
    task: Optional[str] = typer.Option(None, "--task", help=TASK_HELP),
    name: Optional[str] = typer.Option(None, "--name"),
    force: bool = typer.Option(False, "--force", help="replace an existing edgeship output folder"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Distill → prune → quantize → export, with accuracy measured after each stage and in every runtime."""
    from . import api
    rec = recipe_mod.load(recipe)
    STATE["out"] = out
    training, on_progress = _training_progress()
    export_bar = _export_bar(as_json)
    export_events = _progress_events(export_bar, {})

    def on_event(key: str, stage: str, info: dict):
        if stage != "compressed":
            return export_events(key, stage, info)
        training.stop()                 # the stages are done: their tables, then the export's progress
        if not as_json:
            _print_stages(info["record"])
        export_bar.start()

    training.start()
    try:
        report = api.compress(model, rec, out, data=data, eval_data=eval_data, inputs=input, task=task, name=name,
                              force=force, progress=on_progress, on_event=on_event)
    finally:
        training.stop()
        export_bar.stop()
    _print_export(report, out, as_json)


def _print_stages(record: dict) -> None:
    console.print(_stages_table(record["stages"]))
    if record.get("student"):
        console.print(escape(f"student shipped: {record['student']['shipped']} ({record['student']['why']})"), soft_wrap=True)
    for s in record["stages"]:
        if s.get("shipped"):
            console.print(_shipped_table(s))


def _stages_table(stages: list[dict]) -> Table:
    t = Table(title="compression stages (PyTorch, eval set)")
    for col in ("stage", "parameters", "MACs", "accuracy", "notes"):
        t.add_column(col)
    for s in stages:
        notes = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items()
                          if k not in ("stage", "parameters", "macs", "accuracy", "shipped", "layers"))
        acc = "—" if s["accuracy"] is None else f"{s['accuracy']:.2%}"
        t.add_row(s["stage"], f"{s['parameters']:,}", f"{s['macs']:,}", acc, escape(notes))
    return t


def _shipped_table(stage: dict) -> Table:
    """What a stage changed in the fp32 files, their download and their latency in each runtime
    (compress.stages.shipped_change)."""
    from .report import SHIPPED_COLUMNS, SHIPPED_TITLE, shipped_cells
    t = Table(title=f"{stage['stage']}: {SHIPPED_TITLE}")
    for col in SHIPPED_COLUMNS:
        t.add_column(col)
    for r in stage["shipped"]:
        t.add_row(*map(escape, shipped_cells(r)), style="red" if r.get("error") else None)
    return t


@app.command()
def sweep(
    model: str = typer.Argument(..., help=MODEL_HELP),
    prune_: Optional[str] = typer.Option(None, "--prune", help="sparsities to try, comma-separated, each in [0, 1) "
                                         "(default 0,0.3,0.5,0.7,0.9)"),
    lowrank: Optional[str] = typer.Option(None, "--lowrank", help="low-rank sweep instead: the energy each layer "
                                          "keeps, comma-separated, each in (0, 1], e.g. 1.0,0.9,0.8,0.6"),
    eval_data: str = typer.Option(..., "--eval", help="labelled DATA: fine-tuned on its train split, measured on its held-out split"),
    out: Path = typer.Option(..., "--out", "-o"),
    method: str = typer.Option("structured", "--method", help="structured or unstructured"),
    finetune_epochs: int = typer.Option(5, "--finetune-epochs"),
    train_epochs: int = typer.Option(0, "--train-epochs", help="train MODEL first (a model built in code is untrained)"),
    input: list[str] = typer.Option([], "--input", "-i", help=INPUT_HELP),
    task: Optional[str] = typer.Option(None, "--task", help=TASK_HELP),
    force: bool = typer.Option(False, "--force", help="start over in an existing edgeship folder"),
    jobs: int = typer.Option(1, "--jobs", "-j", help="run N points at once in local processes (1: one after another here)"),
    ray: Optional[str] = typer.Option(None, "--ray", help="run the points as Ray tasks: auto (a local Ray), "
                                      "ray://HOST:10001 or HOST:PORT (a cluster); needs pip install 'edgeship[ray]'"),
    cpus_per_point: int = typer.Option(1, "--cpus-per-point", help="CPUs (torch threads) each point uses and declares to Ray"),
    resume: bool = typer.Option(False, "--resume", help="continue the sweep in --out: keep its finished points, run the rest"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Sparsity-vs-accuracy curve: prune to each sparsity (or factorize keeping each --lowrank energy), fine-tune,
    measure; writes sweep.png and report.json
    (rewritten as each point finishes, so --resume can continue an interrupted sweep)."""
    from . import api
    from .sweep import axis, point_value
    progress, on_progress = _training_progress()
    info: dict = {}
    points: list = []

    def on_event(key: str, stage: str, data: dict):
        if stage == "measured":
            info.update(data)
            if data["skipped"]:
                progress.console.print(f"resuming: {len(data['skipped'])} point(s) already in {escape(str(out))}")
            points.append(progress.add_task("points", total=data["total"], completed=len(data["skipped"]), status=""))
        elif stage == "point":
            row = data["row"]
            v = point_value(row)
            what = (f"[red]{v:.2f} failed[/]" if row.get("status") == "failed"
                    else f"{v:.2f}: {row['accuracy']:.2%}" if row.get("accuracy") is not None else f"{v:.2f}")
            progress.update(points[0], completed=data["done"], status=f"last {what}")
    with progress:
        report = api.sweep(model, out, eval_data=eval_data, prune=prune_, lowrank=lowrank, method=method,
                           finetune_epochs=finetune_epochs,
                           train_epochs=train_epochs, inputs=input, task=task, force=force, jobs=jobs, ray=ray,
                           cpus_per_point=cpus_per_point, resume=resume, progress=on_progress, on_event=on_event)
    result = report.to_dict()
    failed = [r for r in result["sweep"] if r.get("status") == "failed"]
    if as_json:
        print(json.dumps(result, indent=2))
        raise typer.Exit(1 if failed else 0)
    run = result.get("runner") or {}
    swept = result["method"]
    t = Table(title=f"{report.name}: " + ("low-rank" if swept == "lowrank" else f"{swept} pruning")
              + f" sweep ({info.get('held_out')} held-out examples)")
    for col in (axis(swept), "parameters", "MACs", "accuracy", "point s"):
        t.add_column(col)
    for r in result["sweep"]:
        if r.get("status") == "failed":
            t.add_row(f"{point_value(r):.2f}", f"[red]failed[/]: {escape(r.get('error') or '')}", "", "", "")
            continue
        t.add_row(f"{point_value(r):.2f}", f"{r['params']:,}", f"{r['macs']:,}",
                  "—" if r["accuracy"] is None else f"{r['accuracy']:.2%}",
                  "—" if r.get("wall_s") is None else f"{r['wall_s']:.1f}")
    console.print(t)
    if run:
        where = run["kind"] + (f" {run['address']}" if run.get("address") else "")
        console.print(escape(f"{run.get('points_run')} point(s) run ({where}, {run.get('workers')} worker(s)), "
                             f"{run.get('points_resumed')} resumed; {run.get('wall_s'):.1f} s"))
    console.print(f"plot: {out / 'sweep.png'}")
    raise typer.Exit(1 if failed else 0)


@app.command()
def verify(folder: Path = typer.Argument(..., help="an export folder"),
           device: Optional[str] = typer.Option(None, "--device", help="run the artifacts there instead of on this "
                                                "host: browser[:chromium|:PATH] (onnxruntime-web, LiteRT.js)"),
           as_json: bool = typer.Option(False, "--json", help="print report.json")):
    """Re-run the parity checks of an existing export folder on its stored reference inputs and outputs."""
    from . import api
    if device is None:
        report = api.verify(folder)
    else:
        skipped: dict[str, str] = {}
        report = api.verify(folder, device=device, on_event=lambda k, e, p: e == "skipped" and skipped.update({k: p["reason"]}))
    if device is not None:
        from .bench.browser_bench import device_parities
        p_id = _device_id(device)
        rows = device_parities(report.to_dict(), p_id)
        ok = bool(rows) and all(p["status"] in ("pass", "not run") for p in rows.values())
        if as_json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            t = Table(title=f"verify {folder} on {p_id}")
            for col in ("artifact", "parity", "metric", "runtime", "reason"):
                t.add_column(col)
            for k, p in rows.items():
                val = "—" if p.get("value") is None else f"{p['value']:.6g}"
                colour = "green" if p["status"] == "pass" else "red"
                t.add_row(k, f"[{colour}]{p['status']}[/]", f"{p['metric']} {val} (≥ {p['threshold']:g})",
                          escape(f"{p.get('runtime') or '—'} {p.get('runtime_version') or ''}"), escape(p.get("reason") or ""))
            for k, why in skipped.items():
                t.add_row(k, "[yellow]skipped[/]", "—", "—", escape(why))
            console.print(t)
        raise typer.Exit(0 if ok else 1)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        console.print(_summary(report.to_dict(), f"verify {folder}"))
    raise typer.Exit(0 if report.passed else 1)


def _device_id(text: str) -> str:
    from .bench.devices import parse_device
    return parse_device(text).id


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json")):
    """What is installed, which formats can export and run here, and why not."""
    from .doctor import diagnose
    rows = diagnose()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table(title="edgeship doctor")
    for col in ("format", "export", "run here", "versions"):
        t.add_column(col)
    for r in rows["formats"]:
        t.add_row(r["format"], "[green]yes[/]" if r["export"] else f"[red]no[/]: {escape(r['export_reason'])}",
                  "[green]yes[/]" if r["run"] else f"[yellow]no[/]: {escape(r['run_reason'])}", r["versions"])
    console.print(t)
    console.print(f"python {rows['python']} on {rows['platform']}")
    tv = rows["torchvision"]
    if tv and not tv["ok"]:
        console.print(f"[red]torchvision {escape(tv['version'])}[/]: {escape(tv['problem'])}\n  [yellow]fix:[/] {escape(tv['fix'])}",
                      soft_wrap=True)
    elif tv:
        console.print(f"torchvision {escape(tv['version'])}: matches torch {escape(rows['torch'])}")
    b = rows["browser"]
    runs = ", ".join(f"{k} ({v})" for k, v in b["runs"].items()) or "nothing"
    console.print(f"{b['device']}: {escape(b['chromium'] or 'no Chromium')}, runs {escape(runs)}"
                  + "".join(f"\n  [yellow]{escape(p)}[/]" for p in b["problems"])
                  + "".join(f"\n  {k}: {escape(why)}" for k, why in b["cannot_run"].items()), soft_wrap=True)


@app.command()
def package(
    folder: Path = typer.Argument(..., help="an export folder"),
    app_name: str = typer.Option(..., "--app", help="android | ios | pi"),
    dest: Optional[Path] = typer.Option(None, "--dest", help="pi: the bundle folder (default <folder>-pi); android/ios: the model folder"),
    app_root: Optional[Path] = typer.Option(None, "--app-root", help="the demo app's folder (default: android-demo / ios-demo of this repo)"),
    formats: Optional[str] = typer.Option(None, "--formats", "-f", help="only these formats"),
    precision: Optional[str] = typer.Option(None, "--precision", "-p", help="only these precisions"),
    force: bool = typer.Option(False, "--force", help="replace files that packaging did not put there"),
    allow_failed: bool = typer.Option(False, "--allow-failed",
                                      help="also package artifacts that failed parity or that report.json does not list"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Copy an export's artifacts, manifest and labels into android-demo, ios-demo, or a Raspberry Pi bundle.
    Only artifacts whose parity passed in report.json, unless --allow-failed."""
    from . import api
    res = api.package(folder, app_name, dest=dest, app_root=app_root, formats=formats, precisions=precision, force=force,
                      allow_failed=allow_failed)
    if as_json:
        print(json.dumps(res.to_dict(), indent=2, default=str))
        return
    t = Table(title=f"packaged {folder} for {app_name} -> {res.dest}")
    t.add_column("file")
    t.add_column("sha256")
    for f, h in res.files.items():
        t.add_row(escape(str(f)), h[:16] + "…")
    console.print(t)
    if res.archive:
        console.print(f"archive: {res.archive}")
    if res.removed:
        console.print(f"removed from the previous packaging: {', '.join(map(str, res.removed))}")
    for note in res.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")


# Where `profile` and `bench` run: one definition of the device options they share.
DEVICE = typer.Option("local", "--device", "-d", help="local | ssh://user@host[:port] | adb[:SERIAL]")
SSH_CONFIG = typer.Option(None, "--ssh-config", help="ssh config file for ssh:// devices")
PYTHON = typer.Option(None, "--python", help="python interpreter on the device (default: python3)")


@app.command("profile")
def profile_cmd(
    model: Path = typer.Argument(..., help="one model file: .onnx, .tflite or .pte (e.g. dist/q/executorch/model.int8.pte)"),
    device: str = DEVICE,
    runs: int = typer.Option(20, "--runs", help="profiled inferences"),
    warmup: int = typer.Option(3, "--warmup", help="untimed inferences first"),
    threads: Optional[int] = typer.Option(None, "--threads", help="runtime threads"),
    top: Optional[int] = typer.Option(None, "--top", help="show only the N slowest ops"),
    order: bool = typer.Option(False, "--order", help="execution order instead of slowest first"),
    etrecord: Optional[Path] = typer.Option(None, "--etrecord", help="ExecuTorch: the ETRecord from export (aten ops per delegate)"),
    benchmark_model: Optional[str] = typer.Option(None, "--benchmark-model", help="LiteRT: benchmark_model's path ON THE DEVICE, for per-op times"),
    tool: Optional[Path] = typer.Option(None, "--tool", help="LiteRT: a benchmark_model binary on this host, pushed and run without python (phones)"),
    ssh_config: Optional[Path] = SSH_CONFIG,
    python: Optional[str] = PYTHON,
    compare: Optional[Path] = typer.Option(None, "--compare", help="a second model of the same runtime (e.g. the fp32 "
                                           "one): per op kind, its time against MODEL's, and why int8 gains what it does"),
    as_json: bool = typer.Option(False, "--json", help="print the runner's JSON"),
):
    """Per-op profile in the runtime's own profiler: op, time, share, delegated or not, dtype; float ops in int8 models."""
    from .bench.devices import parse_device
    from .bench.profile import (compare_profiles, compare_summary, compare_table, profile_artifact, profile_summary,
                                profile_table)

    dev = parse_device(device, ssh_config=ssh_config, python=python)
    baseline = None
    with err_console.status(f"profiling {model.name} on {dev.id}") as status:
        if compare is not None:
            baseline = profile_artifact(compare, dev, runs, warmup, threads, benchmark_model=benchmark_model, tool=tool)
            status.update(f"profiling {model.name} on {dev.id}")
        result = profile_artifact(model, dev, runs, warmup, threads, etrecord=etrecord,
                                  benchmark_model=benchmark_model, tool=tool)
    if baseline is not None:
        cmp = compare_profiles(result, baseline)
        if as_json:
            print(json.dumps({"profile": result, "baseline": baseline, "compare": cmp}, indent=2))
            return
        console.print(compare_table(cmp, top=top))
        for line in compare_summary(cmp):
            console.print(escape(line))
        return
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(profile_table(result, top=top, sort="order" if order else "time"))
    for line in profile_summary(result):
        console.print(escape(line))


def _threads(text: str | None) -> list[int | None]:
    if not text:
        return [None]
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise EdgeshipError(f"--threads {text!r} is not a number or a comma-separated list", hint="e.g. --threads 4 or --threads 1,2") from None


def _sizes(flag: str, text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise EdgeshipError(f"{flag} {text!r} is not a size or a comma-separated list of sizes",
                            hint=f"e.g. {flag} 1,4,8") from None


@app.command()
def bench(
    folder: Path = typer.Argument(..., help="an export folder (edgeship export --out FOLDER)"),
    device: Optional[List[str]] = typer.Option(None, "--device", "-d", help="local | ssh://user@host[:port] | "
                                               "adb[:SERIAL]; repeat it to bench several devices at once (a fleet)"),
    fleet: Optional[Path] = typer.Option(None, "--fleet", help="fleet.yaml: named devices with their own threads, "
                                         "affinity, energy, python, ssh_config, benched at once"),
    reference: Optional[str] = typer.Option(None, "--reference", help="fleet: the device the others' p50 is "
                                            "compared to (a name or id; default the first)"),
    runs: int = typer.Option(100, "--runs", help="timed inferences per artifact"),
    warmup: int = typer.Option(10, "--warmup", help="untimed inferences first"),
    threads: Optional[str] = typer.Option(None, "--threads", help="runtime threads; a comma list benches each (e.g. 1,2)"),
    rounds: int = typer.Option(1, "--rounds", help="repeat in alternating order; the median round is reported"),
    cooldown: float = typer.Option(0.0, "--cooldown", help="seconds to rest between artifacts"),
    affinity: Optional[str] = typer.Option(None, "--affinity", help="CPU list for taskset on the device, e.g. 4-7 (big cores)"),
    formats: Optional[str] = typer.Option(None, "--formats", "-f", help="only these formats"),
    precision: Optional[str] = typer.Option(None, "--precision", "-p", help="only these precisions (comma-separated)"),
    energy: str = typer.Option("auto", "--energy", help="auto (battery / PMIC / --power-cmd where present) or off"),
    power_cmd: Optional[str] = typer.Option(None, "--power-cmd", help="host command printing watts (external meter)"),
    ssh_config: Optional[Path] = SSH_CONFIG,
    python: Optional[str] = PYTHON,
    via: Optional[str] = typer.Option(None, "--via", help="python (the runner; default) | tool (native benchmark "
                                      "binaries, see --tool; default when --tool is given) | app (the android-demo app)"),
    tool: Optional[List[str]] = typer.Option(None, "--tool", help="FORMAT=PATH of a native benchmark binary built for "
                                             "the device: tflite=benchmark_model, onnx=onnxruntime_perf_test, "
                                             "executorch=executor_runner (repeatable)"),
    compare: Optional[str] = typer.Option(None, "--compare", help="a precision, e.g. fp32: each artifact's speed-up "
                                          "over that precision of the same format, measured in the same run"),
    batch: Optional[str] = typer.Option(None, "--batch", help="sizes of the dynamic batch dimension (axis 0) to bench "
                                        "at, e.g. 1,4,8: latency and throughput (items/s) per size"),
    seq: Optional[str] = typer.Option(None, "--seq", help="sizes of the other dynamic dimensions (sequence length), "
                                      "e.g. 32,128; with --batch, every pair"),
    as_json: bool = typer.Option(False, "--json", help="print the new bench entries as JSON"),
):
    """Benchmark every artifact of FOLDER on a device: latency percentiles, memory, energy; appended to report.json."""
    from . import api
    from .bench.devices import parse_device
    from .results import bench_outcome

    threads_, batch_, seq_ = _threads(threads), _sizes("--batch", batch), _sizes("--seq", seq)
    if fleet is not None or len(device or []) > 1:
        _bench_fleet(folder, device or [], fleet, reference, as_json, dict(
            runs=runs, warmup=warmup, threads=threads_, rounds=rounds, cooldown=cooldown, affinity=affinity,
            formats=formats, precisions=precision, energy=energy, power_cmd=power_cmd, via=via, tools=tool,
            compare=compare, batch=batch_, seq=seq_, ssh_config=ssh_config, python=python))
    dev = parse_device((device or ["local"])[0], ssh_config=ssh_config, python=python)
    with err_console.status(f"benchmarking on {dev.id}") as status:
        def on_event(key, stage, info):
            if stage == "run":
                size = f", {info['size']}" if info.get("size") else ""
                status.update(f"{key}: round {info['round']}, threads {info['threads'] or 'default'}{size} on {dev.id}")
        results = api.bench(folder, dev, runs=runs, warmup=warmup, threads=threads_, rounds=rounds, cooldown=cooldown,
                            affinity=affinity, formats=formats, precisions=precision, energy=energy, power_cmd=power_cmd,
                            via=via, tools=tool, compare=compare, batch=batch_, seq=seq_, on_event=on_event)
    entries = [e.to_dict() for e in results]
    if as_json:
        print(json.dumps(entries, indent=2))
    else:
        console.print(_bench_table(entries, f"bench {folder} on {dev.id}"))
        reasons = {(e.get("energy") or {}).get("reason") for e in entries if e["status"] == "ok"} - {None}
        for r in sorted(reasons):
            console.print(f"* energy not available: {escape(r)}")
    outcome = bench_outcome(entries)
    if outcome == "nothing":   # a run that measured nothing is not a success
        err_console.print(f"[red]error:[/] nothing was benchmarked on {escape(dev.id)}: every artifact was skipped")
        for e in entries:
            err_console.print(f"  {escape(e['artifact'])}: {escape(e.get('reason') or 'skipped')}")
        err_console.print("  [yellow]hint:[/] run `edgeship devices` to see what the device can run; install the "
                          "runtime there, or choose another --via / --formats")
        raise typer.Exit(1)
    raise typer.Exit(0 if outcome == "ok" else 1)


def _bench_fleet(folder: Path, devices: list[str], fleet: Path | None, reference: str | None, as_json: bool,
                 kw: dict) -> None:
    """Several devices at once: a line per device as it finishes, a table per device, the comparison table."""
    from . import api
    from .results import bench_outcome
    done: list[dict] = []
    with err_console.status("benchmarking the fleet") as status:
        def on_event(key, stage, info):
            if stage == "device-done":
                done.append(info)
                st = "[green]ok[/]" if info["status"] == "ok" else f"[red]failed[/]: {escape(info.get('reason') or '')}"
                err_console.print(f"{escape(info['name'])} ({escape(info['device'])}): {st} in {info['wall_s']:.1f} s")
            elif stage == "run":
                status.update(f"{escape(key)}: round {info['round']}, threads {info['threads'] or 'default'}")
        results = api.bench(folder, devices or "local", fleet=fleet, reference=reference, on_event=on_event, **kw)
    entries = [e.to_dict() for e in results]
    report = json.loads((folder / "report.json").read_text())
    fl = report.get("fleet") or {}
    if as_json:
        print(json.dumps({"entries": entries, "fleet": fl}, indent=2))
    else:
        for row in fl.get("devices", []):
            mine = [e for e in entries if e.get("device_name") == row["name"]]
            console.print(_bench_table(mine, f"bench {folder} on {row['name']} ({row['device']})"))
        console.print(fleet_table(fl))
    failed = [d for d in fl.get("devices", []) if d["status"] != "ok"]
    raise typer.Exit(0 if not failed and bench_outcome(entries) == "ok" else 1)


def fleet_table(fl: dict) -> Table:
    """Each artifact's p50 on every device and its ratio to the reference device's (2.00× = twice as slow)."""
    names = [d["name"] for d in fl.get("devices", [])]
    ref = fl.get("reference")
    t = Table(title=f"p50 ms per device (× = ratio to {ref}'s p50)")
    for col in ["artifact", "threads"] + names:
        t.add_column(col + (" (reference)" if col == ref else ""))
    for r in fl.get("comparison", []):
        cells = []
        for n in names:
            v, x = r["p50_ms"].get(n), r["ratio"].get(n)
            cells.append("—" if v is None else f"{v:.3f}" + ("" if x is None or n == ref else f" ({x:.2f}×)"))
        label = r["artifact"] + (f" · {r['size']}" if r.get("size") else "")
        t.add_row(escape(label), str(r.get("threads") if r.get("threads") is not None else "—"), *cells)
    return t


def _bench_table(entries: list[dict], title: str) -> Table:
    from .report import _fmt_size
    t = Table(title=title)
    compared = next((e["speedup_vs"]["precision"] for e in entries if e.get("speedup_vs")), None)
    sized = any(e.get("size") for e in entries)   # --batch/--seq: the input size and the throughput at it
    cols = ["artifact", "size"] + (["input size"] if sized else []) + ["threads", "load ms", "first ms", "p50 ms",
            "p90 ms", "p99 ms", "cv", "peak RSS MB", "energy mJ/inf"] + (["items/s"] if sized else []) + \
        ([f"× {compared} speed"] if compared else []) + ["status"]
    for col in cols:
        t.add_column(col)
    for e in entries:
        at = [escape((e.get("size") or {}).get("label") or "—")] if sized else []
        if e["status"] != "ok":
            t.add_row(e["artifact"], _fmt_size(e.get("size_bytes")), *at, *[""] * (len(cols) - 3 - len(at)), f"[{_status_style('not run' if e['status'] == 'skipped' else 'failed')}]{e['status']}[/]: {escape(e.get('reason') or '')}")
            continue
        lat, en = e["latency_ms"], e.get("energy") or {}

        def num(v, spec: str) -> str:   # native tools do not report every figure
            return "—" if v is None else format(v, spec)
        cv = num(e.get("cv"), ".1%") + (" [red]high[/]" if e.get("cv_flag") else "")
        energy_txt = f"{en['mj_per_inference']:.3f}" if en.get("mj_per_inference") is not None else "n/a*"
        t.add_row(e["artifact"], _fmt_size(e.get("size_bytes")), *at, str(e.get("threads")), num(e.get("load_ms"), ".1f"),
                  num(e.get("first_run_ms"), ".2f"), num(lat.get("p50"), ".3f"), num(lat.get("p90"), ".3f"),
                  num(lat.get("p99"), ".3f"), cv, num(e.get("peak_rss_mb"), ".1f"), energy_txt,
                  *([num(e.get("items_per_s"), ",.1f")] if sized else []),
                  *([_speedup_cell(e.get("speedup_vs"))] if compared else []), "[green]ok[/]")
    return t


def _speedup_cell(sv: dict | None) -> str:
    """"1.62×" (green at ≥ 1.5, yellow ≥ 1, red below): the baseline's p50 over this artifact's, same run."""
    if not sv:
        return "—"
    x = sv.get("x")
    if x is None:
        return escape(sv.get("reason") or "—")
    return f"[{'green' if x >= 1.5 else 'yellow' if x >= 1.0 else 'red'}]{x:.2f}×[/]"


@app.command()
def devices(ssh_config: Optional[Path] = typer.Option(None, "--ssh-config", help="ssh config file (default ~/.ssh/config)"),
            probe: bool = typer.Option(True, "--probe/--no-probe", help="connect to each ready device and list its runtimes"),
            fleet: Optional[Path] = typer.Option(None, "--fleet", help="check every device of fleet.yaml, all at once"),
            as_json: bool = typer.Option(False, "--json")):
    """List the devices edgeship can bench on (local, attached adb devices, ssh config hosts) and what each can run;
    with --fleet, connect to every device of a fleet.yaml at once and say which can be benched."""
    from dataclasses import asdict

    from .bench.devices import list_devices, parse_device
    if fleet is not None:
        _devices_fleet(fleet, ssh_config, as_json)
    rows = [asdict(r) for r in list_devices(ssh_config=ssh_config)]
    for r in rows:
        r["runtimes"] = None
        if probe and r["state"] in ("ready", "device", "configured"):
            try:
                info = parse_device(r["id"], ssh_config=ssh_config).info()
                r["runtimes"] = {k: v for k, v in info.runtimes.items()}
                r["missing"] = info.missing
            except EdgeshipError as e:
                r["probe_error"] = e.message
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table(title="devices")
    for col in ("device", "kind", "state", "description", "can run"):
        t.add_column(col)
    for r in rows:
        can = "—" if r["runtimes"] is None else ", ".join(f"{k} {v}" for k, v in r["runtimes"].items() if v) or "nothing"
        if r.get("probe_error"):
            can = f"[red]{escape(r['probe_error'])}[/]"
        t.add_row(escape(r["id"]), r["kind"], r["state"], escape(r["description"]), can)
    console.print(t)


def _devices_fleet(fleet: Path, ssh_config: Path | None, as_json: bool) -> None:
    from .bench.fleet import check_fleet, load_fleet, members_from
    from .bench.harness import BenchOptions
    members = members_from(load_fleet(fleet), [], BenchOptions(), ssh_config=ssh_config)
    with err_console.status(f"checking {len(members)} device(s) at once"):
        rows = check_fleet(members)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        t = Table(title=f"fleet {fleet}")
        for col in ("name", "device", "state", "can run", "s"):
            t.add_column(col)
        for r in rows:
            can = (", ".join(f"{k} {v}" for k, v in r["runtimes"].items() if v) or "nothing") if r["state"] == "ok" \
                else f"[red]{escape(r['error'])}[/]"
            t.add_row(escape(r["name"]), escape(r["device"]), f"[{_status_style(r['state'])}]{r['state']}[/]", can,
                      f"{r['seconds']:.1f}")
        console.print(t)
    raise typer.Exit(0 if all(r["state"] == "ok" for r in rows) else 1)


def _on_signal(signum, frame):
    Interrupted.pending = signum
    raise Interrupted(signum)


def _interrupted(signum: int) -> None:
    import signal
    out = STATE.get("out")
    what = "interrupted" if signum == signal.SIGINT else "terminated"
    err_console.print(what + (f"; nothing was written to {escape(str(out))}" if out is not None else ""))
    sys.exit(128 + signum)


def main() -> None:
    import errno
    import signal
    signal.signal(signal.SIGTERM, _on_signal)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:   # a background job started with Ctrl-C ignored
        signal.signal(signal.SIGINT, _on_signal)
    try:
        code = app(standalone_mode=False)   # click returns typer.Exit's code instead of raising it here
        sys.exit(code if isinstance(code, int) else 0)
    except Interrupted as e:
        _interrupted(e.signum)
    except OSError as e:
        if e.errno != errno.ENOSPC or STATE["debug"]:
            raise
        out = STATE.get("out")
        err_console.print("[red]error:[/] no space left on the device" + (f" ({escape(str(e.filename))})" if e.filename else "")
                          + (f"; nothing was written to {escape(str(out))}" if out is not None else ""))
        err_console.print("  [yellow]hint:[/] free some disk space (or choose an --out on another disk) and run again")
        sys.exit(2)
    except EdgeshipError as e:
        if STATE["debug"]:
            import traceback
            traceback.print_exc()
        err_console.print(f"[red]error:[/] {escape(e.message)}")
        if e.hint:
            err_console.print(f"  [yellow]hint:[/] {escape(e.hint)}")
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _interrupted(signal.SIGINT)
    except Exception as e:  # click usage errors
        import click
        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
