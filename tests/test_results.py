"""Typed results (edgeship.results) and report.json's JSON Schema, against a real export and real bench entries:
the report validates, the types give back the very same JSON, one pass/fail rule, and a broken report is refused
on write with the place it breaks."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from edgeship import report as report_mod
from edgeship.errors import EdgeshipError
from edgeship.results import (ArtifactResult, BenchEntry, Report, all_passed, artifact_passed, bench_outcome)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """tiny_cnn exported to ONNX fp32 + int8 through edgeship.api, then benched locally (appended to report.json)."""
    from edgeship import api
    out = tmp_path_factory.mktemp("results") / "tiny"
    api.export("example:tiny_cnn", out, formats="onnx", precisions=["fp32", "int8"], verify_samples=2)
    api.bench(out, "local", runs=3, warmup=1, compare="fp32")
    return out


def _read(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def test_a_real_report_validates_and_round_trips_exactly(folder):
    data = _read(folder)
    report_mod.validate(data)
    report = Report.from_dict(data)
    assert json.dumps(report.to_dict()) == json.dumps(data)          # same keys, values and order
    assert [a.key for a in report.artifacts] == ["onnx:fp32", "onnx:int8"]
    assert all(isinstance(a, ArtifactResult) and a.passed for a in report.artifacts)
    assert report.passed and report.budget_met and report.ok
    assert [b.artifact for b in report.bench] == ["onnx:fp32", "onnx:int8"]
    b = report.bench[1]
    assert isinstance(b, BenchEntry) and b.status == "ok" and b.latency_ms["p50"] > 0 and b.device == "local"
    assert b.speedup_vs["precision"] == "fp32"
    assert b.extra["cv_flag"] in (True, False)        # keys without a field are kept as they were
    assert report.artifact("onnx:int8").parity["metric"] == "sqnr_db"


def test_a_new_artifact_result_writes_what_export_always_wrote():
    r = ArtifactResult("onnx", "fp32", "failed", error="boom", hint="try")
    assert list(r.to_dict()) == ["format", "precision", "status", "path", "size_bytes", "export_s", "parity",
                                 "deterministic", "accuracy", "notes", "details", "error", "hint", "key"]
    assert r.to_dict()["key"] == "onnx:fp32" and not r.passed
    back = ArtifactResult.from_dict(r.to_dict())
    assert back == r and back.to_dict() == r.to_dict()


def test_a_row_read_keeps_its_keys_and_a_field_set_later_is_written():
    row = {"key": "onnx:fp32", "format": "onnx", "precision": "fp32", "status": "ok"}   # as verify_folder adds one
    a = ArtifactResult.from_dict(row)
    assert a.to_dict() == row
    a.parity = {"status": "pass", "metric": "cosine", "threshold": 0.9999}
    assert a.to_dict() == row | {"parity": a.parity} and a.passed


@pytest.mark.parametrize("row,passed", [
    ({"status": "ok", "parity": {"status": "pass"}}, True),
    ({"status": "ok", "parity": {"status": "not run", "reason": "needs macOS"}}, True),   # said, not failed
    ({"status": "ok", "parity": {"status": "fail"}}, False),
    ({"status": "ok", "parity": {"status": "inconclusive"}}, False),
    ({"status": "ok", "parity": None}, False),
    ({"status": "ok"}, False),
    ({"status": "failed", "parity": {"status": "pass"}}, False),
    ({"status": "ok", "parity": "pass"}, False),                   # a hand-edited row is never a pass
])
def test_one_pass_fail_rule(row, passed):
    assert artifact_passed(row) is passed
    assert all_passed([row]) is passed
    typed = ArtifactResult("onnx", "fp32", row["status"], parity=row.get("parity") if isinstance(row.get("parity"), dict) else None)
    assert typed.passed is (passed and isinstance(row.get("parity"), dict))


def test_report_ok_needs_the_accuracy_budget_too():
    r = Report.from_dict({"schema_version": "1.0", "name": "m", "artifacts": [], "bench": [],
                          "sensitivity": {"met": False}})
    assert r.passed and not r.budget_met and not r.ok


@pytest.mark.parametrize("statuses,outcome", [
    (["ok", "skipped"], "ok"), (["skipped", "skipped"], "nothing"), (["ok", "failed"], "failed"), ([], "ok")])
def test_bench_outcome(statuses, outcome):
    assert bench_outcome([{"status": s} for s in statuses]) == outcome
    entries = [BenchEntry("onnx:fp32", "onnx", "fp32", "local", s) for s in statuses]
    assert bench_outcome(entries) == outcome


def _break(data: dict, path: str, value) -> dict:
    d = copy.deepcopy(data)
    *parents, last = path.split("/")
    node = d
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is KeyError:
        del node[last]
    else:
        node[int(last) if isinstance(node, list) else last] = value
    return d


@pytest.mark.parametrize("path,value,where", [
    ("artifacts/1/status", "great", "artifacts/1/status"),
    ("artifacts/0/parity/status", "passed", "artifacts/0/parity/status"),
    ("artifacts/0/size_bytes", -3, "artifacts/0/size_bytes"),
    ("artifacts/0/colour", "blue", "artifacts/0"),                 # a row has no unknown keys
    ("artifacts/0/key", KeyError, "artifacts/0"),
    ("bench/0/status", "fast", "bench/0/status"),
    ("bench/0/device", KeyError, "bench/0"),
    ("verify/samples", "five", "verify/samples"),
    ("model", KeyError, "(top level)"),
    ("surprise", 1, "(top level)"),                                # the top level is strict
    ("schema_version", "one", "schema_version"),
])
def test_a_broken_report_is_refused_on_write_with_the_place(folder, tmp_path, path, value, where):
    broken = _break(_read(folder), path, value)
    with pytest.raises(EdgeshipError) as e:
        report_mod.write(tmp_path, broken)
    assert f"does not follow the report schema at {where}:" in e.value.message
    assert "report.schema.json" in e.value.hint
    assert not (tmp_path / "report.json").exists() and not (tmp_path / "report.html").exists()


def test_details_and_parity_stay_open_for_what_exporters_and_runtimes_add(folder, tmp_path):
    data = _read(folder)
    data["artifacts"][0]["details"]["anything"] = {"nested": [1, 2]}
    data["artifacts"][0]["parity"]["per_output"] = [0.99]
    data["bench"][0]["device_info"]["soc"] = "bcm2712"
    report_mod.write(tmp_path, data)
    assert _read(tmp_path) == data


def test_a_sweep_report_validates():
    report_mod.validate({"schema_version": "1.0", "name": "m", "kind": "sweep", "method": "structured",
                         "created": "2025-01-01T00:00:00+00:00", "tools": {"torch": "2.9"}, "plot": "sweep.png",
                         "sweep": [{"sparsity": 0.5, "params": 10, "macs": 20, "accuracy": None, "real_sparsity": 0.5,
                                    "nonzero_params": 5}]})
    with pytest.raises(EdgeshipError, match="at sweep/0/sparsity"):
        report_mod.validate({"schema_version": "1.0", "name": "m", "kind": "sweep", "method": "structured",
                             "created": "x", "tools": {}, "plot": "sweep.png",
                             "sweep": [{"sparsity": 1.5, "params": 10, "macs": 20, "accuracy": None}]})
