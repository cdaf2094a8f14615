"""Errors that point the right way (#13 points 5 and 7): the exact message a user gets, from real converters and
real models, each without a traceback unless --debug."""
from __future__ import annotations

import json
import textwrap

import pytest
from test_cli import assert_clean_error, run

from edgeship.model import KV_CACHE_HINT
from edgeship.pipeline import DATA_DEPENDENT_HINT

# NMS-like post-processing: how many boxes pass the threshold decides the control flow (line 6), which torch.export
# cannot trace. Every converter used to blame the first op in its log (aten.gt.Scalar) and keep colour codes.
DETECTOR = '''\
import torch


def batched_nms(boxes, scores, k: int = 4):
    keep = torch.nonzero(scores > 0.5).squeeze(1)
    if keep.numel() < k:
        return boxes[:k]
    return boxes[keep[:k]]


class Detector(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x):
        out = self.head(x)
        return batched_nms(out[:, :4], out[:, 4].sigmoid())


def detector():
    return Detector(), (torch.randn(16, 8),)
'''
GUARD = ("GuardOnDataDependentSymNode: Could not guard on data-dependent expression u0 < 4 "
         "(at detector.py:6 in batched_nms)")


@pytest.mark.slow
def test_converter_failure_quotes_the_root_cause(tmp_path):
    (tmp_path / "detector.py").write_text(DETECTOR)
    r = run("export", "detector.py:detector", "--formats", "onnx,executorch,tflite", "--out", "o", "--json", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stdout + r.stderr and "\x1b[" not in r.stdout
    rows = json.loads(r.stdout)["artifacts"]
    assert {a["format"]: a["error"] for a in rows} == {f: f"the {f} converter failed: {GUARD}"
                                                       for f in ("onnx", "executorch", "tflite")}
    assert {a["hint"] for a in rows} == {DATA_DEPENDENT_HINT}


@pytest.mark.slow
def test_debug_shows_the_traceback_of_an_executorch_int8_failure(tmp_path):
    (tmp_path / "detector.py").write_text(DETECTOR)
    args = ("export", "detector.py:detector", "--formats", "executorch", "--precision", "int8", "--out", "o")
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert f"executorch:int8: the executorch converter failed: {GUARD} hint: {DATA_DEPENDENT_HINT}" in " ".join(r.stdout.split())
    assert "Traceback" not in r.stdout + r.stderr
    r = run("--debug", *args, "--force", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    tb = r.stderr[r.stderr.index("the executorch converter raised (int8):"):]
    assert tb.splitlines()[1] == "Traceback (most recent call last):"
    assert 'detector.py", line 6, in batched_nms' in tb
    assert "torch.fx.experimental.symbolic_shapes.GuardOnDataDependentSymNode: Could not guard" in tb


MODELS = '''\
import torch


def helper(n):
    if n > 2:
        raise ValueError("checksum mismatch in weights.bin")
    return torch.nn.Linear(n, n)


def build():
    return helper(3), (torch.randn(1, 3),)


class Bad(torch.nn.Module):
    def forward(self, x):
        return x @ torch.ones(5, 5)


def bad_forward():
    return Bad(), (torch.randn(1, 3),)
'''


@pytest.mark.parametrize("factory,message", [
    ("build", "error: the factory models.py:build raised ValueError: checksum mismatch in weights.bin "
              "(at models.py:6 in helper)\n  hint: --debug shows the whole traceback\n"),
    ("bad_forward", "error: the model failed on inputs input:1x3:float32: RuntimeError: mat1 and mat2 shapes cannot be "
                    "multiplied (1x3 and 5x5) (at models.py:16 in forward)\n"),
])
def test_an_error_in_the_users_code_names_their_line(tmp_path, factory, message):
    (tmp_path / "models.py").write_text(MODELS)
    r = run("export", f"models.py:{factory}", "--formats", "onnx", "--out", "o", cwd=tmp_path)
    assert_clean_error(r, message)
    assert "fake_tensor" not in r.stderr   # torch's own log of the failing shape-only pass stays quiet
    r = run("--debug", "export", f"models.py:{factory}", "--formats", "onnx", "--out", "o", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback (most recent call last):" in r.stderr
    assert f'models.py", line {message.split("models.py:")[-1].split()[0]}' in r.stderr


def test_a_model_file_that_imports_a_broken_torchvision(tmp_path):
    (tmp_path / "m.py").write_text(textwrap.dedent('''\
        import torch
        raise RuntimeError("operator torchvision::nms does not exist")  # what a torchvision for another torch says
        '''))
    r = run("export", "m.py:f", "--out", "o", cwd=tmp_path)
    assert_clean_error(r, "error: importing m.py failed: RuntimeError: operator torchvision::nms does not exist "
                          "(at m.py:2 in <module>)\n  hint: torchvision does not match this torch: run 'edgeship "
                          "doctor' for the matching version; --debug shows the whole traceback\n")


GPT2 = '''\
import torch
from transformers import GPT2Config, GPT2LMHeadModel


def gpt2(use_cache=True):
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=64, use_cache=use_cache)
    return GPT2LMHeadModel(config), (torch.randint(0, 100, (1, 8)),)
'''


@pytest.mark.slow
def test_a_model_that_returns_its_kv_cache_is_told_use_cache_false(tmp_path):
    transformers = pytest.importorskip("transformers")
    (tmp_path / "gpt.py").write_text(GPT2)
    r = run("export", "gpt.py:gpt2", "--formats", "onnx", "--out", "o", cwd=tmp_path)
    key = "cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values"
    assert_clean_error(r, f"error: the model returned its KV cache (a DynamicCache in output {key!r}); exporters need "
                          f"tensors (or tuples/lists/dicts of them)\n  hint: {KV_CACHE_HINT}\n")
    assert "check --input" not in r.stderr
    r = run("export", "gpt.py:gpt2(use_cache=False)", "--formats", "onnx", "--out", "o", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr   # the advice works
    assert json.loads(r.stdout)["artifacts"][0]["parity"]["status"] == "pass"


# torchvision (#13 point 7): PyPI's only torchvision for torch 2.13 is a CUDA build, and next to the CPU torch its
# import fails. torchvision is not installed in this venv: a stand-in package on sys.path (its dist-info gives the
# version) fails the way the real one does, or imports.
NMS_MISSING = "operator torchvision::nms does not exist"
CPU_FIX = ("pip install --force-reinstall --no-deps 'torchvision==0.28.*' --index-url https://download.pytorch.org/whl/cpu, "
           "or pip uninstall torchvision if no model of yours needs it (edgeship itself never imports it)")


def fake_torchvision(where, version: str, error: str | None = None):
    (where / "torchvision").mkdir(parents=True)
    (where / "torchvision" / "__init__.py").write_text(f"raise RuntimeError({error!r})\n" if error else "")
    (where / f"torchvision-{version}.dist-info").mkdir()
    (where / f"torchvision-{version}.dist-info" / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torchvision\nVersion: {version}\n")
    return where


@pytest.mark.parametrize("torchvision,torch,error,problem,index", [
    ("0.28.0", "2.13.0+cpu", None, None, None),
    ("0.28.0", "2.13.0+cpu", NMS_MISSING, f"import torchvision fails: RuntimeError: {NMS_MISSING}", "cpu"),
    ("0.27.1", "2.13.0+cpu", None, "torchvision 0.27.1 is not built for torch 2.13.0+cpu (that is torchvision 0.28.x)", "cpu"),
    ("0.28.0+cpu", "2.13.0+cu126", None, "torchvision 0.28.0+cpu and torch 2.13.0+cu126 are different builds", "cu126"),
])
def test_doctor_torchvision_logic(tmp_path, monkeypatch, torchvision, torch, error, problem, index):
    import sys

    import edgeship.doctor as doctor
    assert doctor._version("torchvision") is None and doctor.check_torchvision() is None   # edgeship never needs it
    monkeypatch.syspath_prepend(str(fake_torchvision(tmp_path, torchvision, error)))
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda p: torch if p == "torch" else real(p))
    try:
        got = doctor.check_torchvision()
    finally:
        sys.modules.pop("torchvision", None)
    fix = CPU_FIX.replace("/whl/cpu", f"/whl/{index}") if problem else None
    assert got == {"version": torchvision, "ok": problem is None, "problem": problem, "fix": fix}


def test_doctor_command_names_the_torchvision_fix(tmp_path):
    import os
    import subprocess
    import sys
    r = run("doctor", "--json")   # the real command on this machine's packages
    assert r.returncode == 0, r.stderr
    from edgeship.doctor import check_torchvision
    assert json.loads(r.stdout)["torchvision"] == check_torchvision()
    env = os.environ | {"PYTHONPATH": str(fake_torchvision(tmp_path, "0.28.0", NMS_MISSING))}
    r = subprocess.run([sys.executable, "-m", "edgeship.cli", "doctor"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    from importlib.metadata import version
    build = version("torch").partition("+")[2]   # pinned at 2.13.0; "cpu" from make setup
    fix = CPU_FIX.replace(" --index-url https://download.pytorch.org/whl/cpu", f" --index-url https://download.pytorch.org/whl/{build}" if build else "")
    assert f"torchvision 0.28.0: import torchvision fails: RuntimeError: {NMS_MISSING}\n  fix: {fix}\n" in r.stdout
