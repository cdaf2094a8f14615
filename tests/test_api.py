"""edgeship.api: the public surface is locked (names and parameters, as coremltools locks its optimize API), the
functions do what the commands do, and the CLI is only a wrapper over them."""
from __future__ import annotations

import inspect
import json
import sys

import pytest

from edgeship import api
from edgeship.errors import EdgeshipError
from edgeship.results import BenchEntry, Report

R = "REQUIRED"
PK, KW = "POSITIONAL_OR_KEYWORD", "KEYWORD_ONLY"

# Changing this table changes the public API: do it on purpose, with a note in the README.
SURFACE = {
    "export": [("model", PK, R), ("out", PK, R), ("formats", KW, None), ("precisions", KW, ("fp32",)),
               ("inputs", KW, ()), ("task", KW, None), ("name", KW, None), ("verify_samples", KW, 5),
               ("verify_data", KW, None), ("check_determinism", KW, False), ("calib", KW, None),
               ("calib_samples", KW, 128), ("eval_data", KW, None), ("keep_float", KW, None),
               ("max_accuracy_drop", KW, None), ("force", KW, False), ("on_event", KW, None)],
    "compress": [("model", PK, R), ("recipe", PK, R), ("out", PK, R), ("data", KW, None), ("eval_data", KW, None),
                 ("inputs", KW, ()), ("task", KW, None), ("name", KW, None), ("force", KW, False),
                 ("progress", KW, None), ("on_event", KW, None)],
    "sweep": [("model", PK, R), ("out", PK, R), ("eval_data", KW, R), ("prune", KW, None),
              ("lowrank", KW, None),
              ("method", KW, "structured"), ("finetune_epochs", KW, 5), ("train_epochs", KW, 0), ("inputs", KW, ()),
              ("task", KW, None), ("force", KW, False), ("jobs", KW, 1), ("ray", KW, None), ("cpus_per_point", KW, 1),
              ("resume", KW, False), ("progress", KW, None), ("on_event", KW, None)],
    "bench": [("folder", PK, R), ("device", PK, "local"), ("runs", KW, 100), ("warmup", KW, 10), ("threads", KW, None),
              ("rounds", KW, 1), ("cooldown", KW, 0.0), ("affinity", KW, None), ("formats", KW, None),
              ("precisions", KW, None), ("energy", KW, "auto"), ("power_cmd", KW, None), ("via", KW, None),
              ("tools", KW, None), ("compare", KW, None), ("batch", KW, None), ("seq", KW, None),
              ("ssh_config", KW, None), ("python", KW, None), ("fleet", KW, None), ("reference", KW, None),
              ("on_event", KW, None)],
    "verify": [("folder", PK, R), ("on_event", KW, None), ("device", KW, None)],
    "package": [("folder", PK, R), ("app", PK, R), ("dest", KW, None), ("app_root", KW, None), ("formats", KW, None),
                ("precisions", KW, None), ("force", KW, False), ("allow_failed", KW, False)],
}


def test_the_public_names_are_locked():
    assert sorted(api.__all__) == sorted([*SURFACE, "Report", "ArtifactResult", "BenchEntry", "EdgeshipError"])
    public = {n for n, v in vars(api).items() if inspect.isfunction(v) and v.__module__ == api.__name__
              and not n.startswith("_")}
    assert public == set(SURFACE)


@pytest.mark.parametrize("name", sorted(SURFACE))
def test_the_parameters_are_locked(name):
    sig = inspect.signature(getattr(api, name))
    got = [(p.name, p.kind.name, R if p.default is inspect.Parameter.empty else p.default)
           for p in sig.parameters.values()]
    assert got == SURFACE[name]
    assert getattr(api, name).__doc__, f"api.{name} has no docstring"


def test_import_is_light():
    """Importing the API loads no converter and no torch: `edgeship --help` and scripts stay quick."""
    import subprocess
    code = ("import sys, edgeship.api; bad = [m for m in ('torch', 'onnx', 'coremltools', 'executorch') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "tiny"
    events = []
    report = api.export("example:tiny_cnn", out, formats=["onnx"], verify_samples=2,
                        on_event=lambda key, stage, info: events.append((key, stage)))
    return out, report, events


def test_export_returns_the_typed_report_it_wrote(exported):
    out, report, events = exported
    assert isinstance(report, Report) and report.passed and report.ok
    assert [a.key for a in report.artifacts] == ["onnx:fp32"]
    assert report.to_dict() == json.loads((out / "report.json").read_text())
    assert ("onnx:fp32", "export") in events and ("onnx:fp32", "done") in events


def test_export_refuses_the_folder_again_and_bad_arguments_before_work(exported, tmp_path):
    out, _, _ = exported
    with pytest.raises(EdgeshipError, match="exists and is not empty"):
        api.export("example:tiny_cnn", out, formats="onnx")
    with pytest.raises(EdgeshipError, match="unknown format caffe"):
        api.export("example:tiny_cnn", tmp_path / "o", formats=["caffe"])
    with pytest.raises(EdgeshipError, match="unknown precision int3"):
        api.export("example:tiny_cnn", tmp_path / "o", precisions="int3")
    with pytest.raises(EdgeshipError, match="needs labelled eval data"):
        api.export("example:tiny_cnn", tmp_path / "o", precisions="int8", max_accuracy_drop=1.0)
    assert not (tmp_path / "o").exists()


def test_export_takes_a_model_spec(tmp_path):
    from edgeship.examples import EXAMPLES
    spec = EXAMPLES["tiny_cnn"]()
    with pytest.raises(EdgeshipError, match="not to a ModelSpec"):
        api.export(spec, tmp_path / "o", formats="onnx", name="other")
    report = api.export(spec, tmp_path / "o", formats="onnx", verify_samples=1)
    assert report.name == spec.name and report.passed


def test_verify_returns_the_typed_report(exported):
    out, _, _ = exported
    report = api.verify(out)
    assert isinstance(report, Report) and report.passed
    assert report.artifacts[0].parity["status"] == "pass"


def test_bench_returns_typed_entries_appended_to_the_report(exported, tmp_path):
    import shutil
    folder = tmp_path / "copy"
    shutil.copytree(exported[0], folder)
    entries = api.bench(folder, runs=2, warmup=0)
    assert [type(e) for e in entries] == [BenchEntry] and entries[0].status == "ok" and entries[0].passed
    assert json.loads((folder / "report.json").read_text())["bench"] == [e.to_dict() for e in entries]
    with pytest.raises(EdgeshipError, match="--threads must be"):
        api.bench(folder, threads=0)


def test_sweep_checks_its_arguments_before_work(tmp_path):
    with pytest.raises(EdgeshipError, match=r"sparsity must be in \[0, 1\)"):
        api.sweep("example:digits_cnn", tmp_path / "o", eval_data="digits", prune=[0, 1.0])
    with pytest.raises(EdgeshipError, match="--method must be structured or unstructured"):
        api.sweep("example:digits_cnn", tmp_path / "o", eval_data="digits", method="random")
    assert not (tmp_path / "o").exists()


def test_the_cli_wraps_the_api(monkeypatch, tmp_path, capsys):
    """`edgeship verify` is api.verify plus printing: the exit code is the report's pass/fail rule."""
    from edgeship import cli
    failing = Report.from_dict({"schema_version": "1.0", "name": "m", "bench": [], "artifacts": [
        {"key": "onnx:fp32", "format": "onnx", "precision": "fp32", "status": "ok",
         "parity": {"status": "fail", "metric": "cosine", "threshold": 0.9999, "reason": "off"}}]})
    calls = []
    monkeypatch.setattr(api, "verify", lambda folder, **kw: calls.append(folder) or failing)
    monkeypatch.setattr(sys, "argv", ["edgeship", "verify", str(tmp_path), "--json"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 1 and calls == [tmp_path]
    assert json.loads(capsys.readouterr().out) == failing.to_dict()
