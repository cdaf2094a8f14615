"""The `edgeship` command: thin; parses, calls the API, prints. Errors print without a traceback unless --debug."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import EdgeshipError

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
    return {"pass": "green", "ok": "green", "fail": "red", "failed": "red", "not run": "yellow"}.get(status, "white")


def _summary(report: dict, title: str) -> Table:
    from .report import _fmt_size, parity_text
    t = Table(title=title)
    for col in ("format", "precision", "file", "size", "export s", "parity", "status"):
        t.add_column(col)
    for a in report["artifacts"]:
        p = a.get("parity") or {}
        status = "failed" if a.get("status") == "failed" else p.get("status", "—")
        detail = a.get("error") if a.get("status") == "failed" else parity_text(p)
        t.add_row(a["format"], a["precision"], escape(a.get("path") or "—"), _fmt_size(a.get("size_bytes")),
                  str(a.get("export_s") or "—"), escape(detail or "—"), f"[{_status_style(status)}]{status}[/]")
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
    return on_event


def _all_passed(report: dict) -> bool:
    return all(a.get("status") == "ok" and (a.get("parity") or {}).get("status") in ("pass", "not run")
               for a in report["artifacts"])


@app.command()
def export(
    model: str = typer.Argument(..., help="path/to/file.py:factory, package.module:attr, or example:NAME"),
    input: list[str] = typer.Option([], "--input", "-i", help="NAME:SHAPE[:DTYPE], e.g. image:1x3x224x224 (repeatable)"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder (refused if it exists and is not empty, unless --force)"),
    formats: Optional[str] = typer.Option(None, "--formats", "-f", help="comma-separated: onnx,tflite,executorch,coreml (default: all)"),
    precision: str = typer.Option("fp32", "--precision", "-p", help="fp32 or fp16 (comma-separated for several)"),
    verify_data: Optional[Path] = typer.Option(None, "--verify-data", help=".npz with extra verification inputs (one array per input name, or 'x')"),
    samples: int = typer.Option(5, "--samples", help="random verification inputs (fixed seed)"),
    check_determinism: bool = typer.Option(False, "--check-determinism", help="export each artifact twice and compare bytes"),
    name: Optional[str] = typer.Option(None, "--name", help="model name in the manifest (default: the factory's name)"),
    force: bool = typer.Option(False, "--force", help="replace an existing edgeship output folder"),
    as_json: bool = typer.Option(False, "--json", help="print report.json instead of the table"),
):
    """Export MODEL to every format, verify each artifact in its runtime, write manifest.json and report.json."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, BarColumn, TimeElapsedColumn

    from . import export as export_mod
    from .model import load, parse_input
    from .pipeline import ExportOptions, prepare_out, run_export

    fmts = export_mod.parse_formats(formats)
    precisions = [p.strip() for p in precision.split(",") if p.strip()]
    prepare_out(out, force)            # refuse early, before any long work
    spec = load(model, [parse_input(t) for t in input], name=name)
    opts = ExportOptions(fmts, precisions, samples, verify_data, check_determinism, force)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=err_console, transient=as_json, disable=as_json) as progress:
        report = run_export(spec, out, opts, _progress_events(progress, {}))
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        console.print(_summary(report, f"{spec.name} -> {out}"))
        for a in report["artifacts"]:
            if a.get("status") == "failed" and a.get("hint"):
                console.print(f"[red]{a['key']}[/]: {escape(a['error'])}\n  hint: {escape(a['hint'])}")
    raise typer.Exit(0 if _all_passed(report) else 1)


@app.command()
def verify(folder: Path = typer.Argument(..., help="an export folder"),
           as_json: bool = typer.Option(False, "--json", help="print report.json")):
    """Re-run the parity checks of an existing export folder on its stored reference inputs and outputs."""
    from .pipeline import verify_folder
    report = verify_folder(folder)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        console.print(_summary(report, f"verify {folder}"))
    raise typer.Exit(0 if _all_passed(report) else 1)


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


def main() -> None:
    try:
        code = app(standalone_mode=False)   # click returns typer.Exit's code instead of raising it here
        sys.exit(code if isinstance(code, int) else 0)
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
        err_console.print("aborted")
        sys.exit(130)
    except Exception as e:  # click usage errors
        import click
        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
