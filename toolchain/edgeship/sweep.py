"""`edgeship sweep`: prune to each sparsity, fine-tune, measure: one *point* per sparsity, each run by
:func:`run_point` wherever it runs (this process, a local process pool, a Ray task: ``sweep_runners``), and the
output folder, written as the points finish (:class:`SweepFolder`): report.json (kind "sweep",
schemas/report.schema.json) after every point, sweep.png and report.html at the end.

Same results whichever way a sweep runs, to the bit: every point starts from the same weights (the model's, after
``--train-epochs`` in this process), seeds torch, numpy and random with the sweep's seed and runs with
``torch.set_num_threads(cpus_per_point)``; nothing a point computes depends on which point ran before it, where,
or how many ran at once. A point that fails (its error) or whose worker died past Ray's retries is recorded as
failed and the others go on; ``--resume`` keeps the points report.json already has and runs the rest.
"""
from __future__ import annotations

import copy
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from ._io import write_json_atomic, write_text_atomic
from .errors import EdgeshipError
from .manifest import tool_versions

log = logging.getLogger(__name__)
METHODS = ("structured", "unstructured", "lowrank")
ROW_KEYS = ("sparsity", "params", "macs", "accuracy", "real_sparsity", "nonzero_params")


def axis(method: str) -> str:
    """The row key a point's value goes under: the pruning target, or the low-rank energy kept."""
    return "energy" if method == "lowrank" else "sparsity"


def point_value(row: dict) -> float:
    return float(row["energy"] if "energy" in row else row["sparsity"])


def parse_energies(text: str | Sequence[float]) -> list[float]:
    """"1.0,0.9,0.8" (the --lowrank flag): the energy each layer keeps, each in (0, 1]; 1.0 leaves the model whole."""
    try:
        items = [float(x) for x in text.split(",") if x.strip()] if isinstance(text, str) else [float(x) for x in text]
    except ValueError:
        raise EdgeshipError(f"--lowrank {text!r} is not a comma-separated list of numbers",
                            hint="e.g. --lowrank 1.0,0.9,0.8,0.6 (the energy each layer keeps)") from None
    bad = [x for x in items if not 0.0 < x <= 1.0]
    if bad or not items:
        raise EdgeshipError(f"--lowrank values are the energy each layer keeps, in (0, 1]; got {text!r}",
                            hint="e.g. --lowrank 1.0,0.9,0.8,0.6")
    return items


def parse_sparsities(text: str | Sequence[float]) -> list[float]:
    """"0,0.3,0.5" (the --prune flag) or a list of numbers, each checked to lie in [0, 1)."""
    from .compress.prune import check_sparsity
    try:
        items = [float(x) for x in text.split(",") if x.strip()] if isinstance(text, str) else [float(x) for x in text]
        return [check_sparsity(x) for x in items]
    except ValueError:
        raise EdgeshipError(f"--prune {text!r} is not a comma-separated list of numbers", hint="e.g. --prune 0,0.3,0.5,0.7") from None


def check_method(method: str) -> str:
    if method not in METHODS:
        raise EdgeshipError(f"--method must be structured or unstructured (or lowrank, which --lowrank sets), got {method!r}")
    return method


# -- one point, wherever it runs ----------------------------------------------------------------------------------
@dataclass
class SweepJob:
    """What every point needs, shipped once per worker (a Ray object reference, a pool initializer): the model
    factory (a MODEL reference rebuilt in the worker, or a picklable ModelSpec) with the weights every point starts
    from, the data splits, and the settings."""

    model: str | None                  # a MODEL reference, rebuilt by the worker (file.py:factory works anywhere)
    spec: Any                          # a ModelSpec when the caller gave one (then it must pickle)
    inputs: tuple = ()
    task: str | None = None
    state: dict | None = None          # the weights every point starts from (state_dict, after --train-epochs)
    train: Any = None
    val: Any = None
    test: Any = None
    method: str = "structured"
    finetune_epochs: int = 5
    seed: int = 0
    cpus: int = 1                      # torch threads per point (= the CPUs a Ray task declares)
    _built: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_built"] = None
        if d["model"] is not None:
            d["spec"] = None           # rebuilt from the reference
        return d

    def fresh_spec(self):
        """A private copy of the model at the sweep's starting weights."""
        if self._built is None:
            if self.model is not None:
                from .model import load
                spec = load(self.model, list(self.inputs), seed=self.seed, task=self.task)
            else:
                spec = copy.deepcopy(self.spec)
            if self.state is not None:
                spec.module.load_state_dict(self.state)
            spec.module.eval()
            self._built = spec
        return copy.deepcopy(self._built)


def run_point(job: SweepJob, sparsity: float, progress=None) -> dict:
    """Prune a fresh copy of the model to ``sparsity`` (or, for the lowrank method, factorize it keeping that
    energy), fine-tune, measure: one report.json row (status ok), or the row of a failed point (status failed, the
    error). Seeded and thread-pinned (see the module docstring)."""
    import torch

    from .compress.prune import sweep as prune_sweep
    from .model import seed_everything
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(job.cpus)
        spec = job.fresh_spec()
        seed_everything(job.seed)
        if job.method == "lowrank":
            row = lowrank_point(spec, sparsity, job, progress)
        else:
            row = prune_sweep(spec, [sparsity], job.train, job.val, job.finetune_epochs, job.method,
                              eval_data=job.test, progress=progress)[0].as_dict()
        row.update(status="ok")
    except Exception as e:  # noqa: BLE001 - a failed point is recorded, the others go on
        msg = e.message + (f" (hint: {e.hint})" if e.hint else "") if isinstance(e, EdgeshipError) else f"{type(e).__name__}: {e}"
        row = failed_row(sparsity, msg, axis(job.method))
    finally:
        torch.set_num_threads(threads)
    row["wall_s"] = round(time.perf_counter() - t0, 3)
    row["pid"] = os.getpid()
    return row


def lowrank_point(spec, energy: float, job: SweepJob, progress=None) -> dict:
    """Factorize ``spec`` keeping ``energy`` of each layer (compress.lowrank; 1.0: left whole), fine-tune like
    the low-rank stage, measure on the held-out split."""
    from .compress.lowrank import factorize, summary
    from .compress.prune import count_macs, count_params
    from .compress.train import TrainConfig, evaluate, train_classifier
    module, layers = (spec.module, []) if energy >= 1.0 else factorize(spec.module, energy=energy)
    if job.finetune_epochs and layers:
        train_classifier(module, job.train, job.val, TrainConfig(epochs=job.finetune_epochs, lr=5e-4, patience=5),
                         progress=progress, stage=f"lowrank-{energy:g}")
    module.eval()
    return {"energy": float(energy), "params": count_params(module), "macs": count_macs(module, spec.example_inputs()),
            "accuracy": evaluate(module, job.test), "layers_factorized": summary(layers)["factorized"] if layers else 0}


def failed_row(value: float, error: str, key: str = "sparsity") -> dict:
    return {key: float(value), "params": None, "macs": None, "accuracy": None, "status": "failed",
            "error": error[:2000]}


def prepare_job(spec, model_ref: str | None, inputs, task, eval_ref: str, method: str, finetune_epochs: int,
                train_epochs: int, cpus: int, seed: int = 0, progress=None) -> tuple[SweepJob, int]:
    """Load the data, train the model first when ``train_epochs`` (in this process, once: every point starts from
    the trained weights), and pack the job. Returns it and the number of held-out examples."""
    from .compress.run import data_splits, eval_split
    from .model import seed_everything
    train, val = data_splits(eval_ref, spec)
    test = eval_split(eval_ref, spec)
    if train_epochs:
        from .compress.train import TrainConfig, train_classifier
        seed_everything(seed)
        cfg = TrainConfig(epochs=train_epochs, lr=1e-3, patience=5)   # the sweep's own schedule, as before #14
        train_classifier(spec.module, train, val, cfg, progress=progress, stage="train")
    spec.module.eval()
    state = {k: v.detach().clone() for k, v in spec.module.state_dict().items()}
    job = SweepJob(model=model_ref, spec=None if model_ref else spec, inputs=tuple(inputs or ()), task=task,
                   state=state, train=train, val=val, test=test, method=method, finetune_epochs=finetune_epochs,
                   seed=seed, cpus=cpus)
    return job, len(test)


def run_sweep(spec, sparsities: Sequence[float], eval_ref: str, method: str = "structured", finetune_epochs: int = 5,
              train_epochs: int = 0, progress=None) -> tuple[list[dict], int]:
    """The serial sweep in this process (the API before #17): one row per sparsity and the held-out count."""
    job, held_out = prepare_job(spec, None, (), None, eval_ref, method, finetune_epochs, train_epochs, 1,
                                progress=progress)
    job.spec = spec
    return [run_point(job, s, progress) for s in sorted(set(sparsities))], held_out


# -- the output folder --------------------------------------------------------------------------------------------
class SweepFolder:
    """``out`` as the sweep writes it: report.json rewritten (validated, atomically) after every point, so an
    interrupted sweep keeps what it finished and ``--resume`` continues it; sweep.png and report.html at the end.

    A non-empty ``out`` is refused unless ``resume`` (a sweep folder with the same settings: its finished points
    are kept) or ``force`` (an edgeship folder, cleared first)."""

    def __init__(self, out: Path, name: str, config: dict, *, force: bool = False, resume: bool = False):
        from .outdir import WRITTEN, check_out
        self.out, self.name, self.config = Path(out), name, config
        self.rows: dict[float, dict] = {}
        self.runner: dict = {}
        report = self.out / "report.json"
        if resume and report.is_file():
            self._resume(report)
        else:
            check_out(self.out, force)
            if self.out.is_dir() and force:   # check_out: only files edgeship writes (and format folders)
                for p in self.out.iterdir():
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                assert not any(n not in WRITTEN for n in os.listdir(self.out))
            elif resume and self.out.is_dir() and any(self.out.iterdir()):
                raise EdgeshipError(f"--resume: {self.out} has no report.json of a sweep to continue",
                                    hint="choose the --out of the sweep to continue, or a new folder")
        self.out.mkdir(parents=True, exist_ok=True)

    def _resume(self, path: Path) -> None:
        from . import report as report_mod
        old = report_mod.load(self.out) if path.is_file() else {}
        if old.get("kind") != "sweep":
            raise EdgeshipError(f"--resume: {path} is not a sweep's report", hint="choose the --out of a sweep")
        was = old.get("sweep_config") or {"method": old.get("method")}
        diff = [k for k in self.config if k in was and was[k] != self.config[k]] or \
            ([] if "sweep_config" in old else [k for k in ("method",) if was.get(k) != self.config[k]])
        if diff:
            said = ", ".join(f"{k} {was[k]!r} there, {self.config[k]!r} now" for k in diff)
            raise EdgeshipError(f"--resume: {self.out} was swept with other settings ({said})",
                                hint="run with the same settings, or use --force to start over")
        for r in old.get("sweep") or []:
            if r.get("status", "ok") == "ok":
                self.rows[point_value(r)] = r

    def done(self) -> set[float]:
        return set(self.rows)

    def add(self, row: dict) -> None:
        self.rows[point_value(row)] = row
        self.write(complete=False)

    def report(self, complete: bool) -> dict:
        from .report import SCHEMA_VERSION
        rows = [self.rows[s] for s in sorted(self.rows)]
        return {"schema_version": SCHEMA_VERSION, "name": self.name, "kind": "sweep", "method": self.config["method"],
                "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(), "tools": tool_versions(),
                "sweep": rows, "plot": "sweep.png", "sweep_config": self.config, "runner": self.runner,
                "complete": complete}

    def write(self, complete: bool) -> dict:
        from .report import validate
        report = self.report(complete)
        validate(report, str(self.out / "report.json"))
        write_json_atomic(self.out / "report.json", report)
        return report

    def finish(self) -> dict:
        """The last report.json (complete), sweep.png from the points that measured, report.html."""
        from .compress.prune import plot_sweep
        report = self.write(complete=True)
        ok = [r for r in report["sweep"] if r.get("status", "ok") == "ok"]
        method = self.config["method"]
        if ok:
            plot_sweep(ok, self.out / "sweep.png", title=f"{self.name}: " + (
                "low-rank factorization" if method == "lowrank" else f"{method} pruning"), key=axis(method))
        write_text_atomic(self.out / "report.html", sweep_html(report))
        return report


def sweep_html(report: dict) -> str:
    import html
    e = html.escape

    key = axis(report["method"])

    def cell(r):
        if r.get("status", "ok") != "ok":
            return (f"<tr><td>{r[key]:.2f}</td><td colspan=3 style='color:#b00'>failed: {e(r.get('error') or '')}"
                    "</td><td></td></tr>")
        return (f"<tr><td>{r[key]:.2f}</td><td>{r['params']:,}</td><td>{r['macs']:,}</td>"
                f"<td>{'—' if r['accuracy'] is None else format(r['accuracy'], '.2%')}</td>"
                f"<td>{'—' if r.get('wall_s') is None else format(r['wall_s'], '.1f')}</td></tr>")
    run = report.get("runner") or {}
    how = (f"<p>ran on {e(str(run.get('kind')))}" + (f" {e(str(run.get('address')))}" if run.get("address") else "")
           + f", {run.get('workers')} worker(s), {run.get('cpus_per_point')} CPU(s) per point, "
           f"{run.get('wall_s')} s wall</p>") if run else ""
    return (f"<!doctype html><meta charset=utf-8><title>sweep {e(report['name'])}</title>"
            f"<h1>{e(report['name'])}: {e(report['method'])} sweep</h1>{how}<table border=1><tr><th>{key}</th>"
            f"<th>parameters</th><th>MACs</th><th>accuracy</th><th>point s</th></tr>"
            f"{''.join(cell(r) for r in report['sweep'])}</table><img src='sweep.png' alt='{key} vs accuracy'>")


def write_sweep(out: Path, spec, rows: list[dict], method: str, force: bool) -> dict:
    """The folder of a sweep whose rows are all here (the API before #17)."""
    folder = SweepFolder(out, spec.name, {"method": method}, force=force)
    for r in rows:
        folder.rows[point_value(r)] = r
    return folder.finish()


# -- the whole sweep ----------------------------------------------------------------------------------------------
PointEvent = Callable[[dict, int, int], None]   # (row, finished so far, total)


def sweep_folder(spec, model_ref: str | None, out: Path, sparsities: Sequence[float], eval_ref: str, *,
                 method: str = "structured", finetune_epochs: int = 5, train_epochs: int = 0, inputs=(),
                 task: str | None = None, jobs: int = 1, ray: str | None = None, cpus_per_point: int = 1,
                 retries: int = 2, resume: bool = False, force: bool = False, progress=None,
                 on_point: PointEvent | None = None, on_start: Callable[[dict], None] | None = None) -> dict:
    """Run the points not yet in ``out`` (serially, in ``jobs`` local processes, or as Ray tasks at ``ray``) and
    write report.json as each finishes; returns the final report."""
    from . import sweep_runners
    config = {"model": spec.name, "method": method, "eval": eval_ref, "finetune_epochs": finetune_epochs,
              "train_epochs": train_epochs, "seed": 0, "cpus_per_point": cpus_per_point}
    folder = SweepFolder(out, spec.name, config, force=force, resume=resume)
    todo = [s for s in sorted(set(sparsities)) if s not in folder.done()]
    total = len(set(sparsities))
    skipped = sorted(set(sparsities) - set(todo))
    t0 = time.perf_counter()
    runner = sweep_runners.pick(jobs, ray, cpus_per_point, retries)   # checks ray is installed before any work
    job, held_out = prepare_job(spec, model_ref, inputs, task, eval_ref, method, finetune_epochs, train_epochs,
                                cpus_per_point, progress=progress)
    if on_start is not None:
        on_start({"held_out": held_out, "todo": todo, "skipped": skipped, "total": total})
    count = [len(skipped)]

    def finished(row: dict) -> None:
        folder.add(row)
        count[0] += 1
        if on_point is not None:
            on_point(row, count[0], total)
    info = runner.run(job, todo, finished, progress)
    folder.runner = {**info, "points_run": len(todo), "points_resumed": len(skipped),
                     "wall_s": round(time.perf_counter() - t0, 3)}
    return folder.finish()
