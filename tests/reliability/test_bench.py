"""`edgeship bench` (and the device URL it shares with `profile`) against hostile export folders and options.

One tiny export (tiny_cnn, ONNX fp32) is made once per module with the real CLI; each case copies it, makes it hostile
(an artifact path that climbs out, an absolute path, a symlink to outside, bytes changed after export, a password in
the device URL, a token in --power-cmd, a device that can run nothing), runs the real `edgeship` and checks the exit
code, the words a user reads, no traceback, and that nothing outside the export folder was written: not the "outside"
sandbox, not the folder next to the export, not the device's temp root (TMPDIR for the local device).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from reliability.conftest import assert_refused, edgeship, tree
from support.sshd import sshd  # noqa: F401  (fixture, used by the ssh case only)

SECRET = "abc123SECRET"
FAST = ("--runs", "3", "--warmup", "1")


@dataclass
class Ctx:
    folder: Path        # the private copy of the export: tmp/work/model
    outside: Path       # the sandbox (tmp/outside), with the user's victim.txt
    tmp: Path
    request: pytest.FixtureRequest

    def manifest(self) -> dict:
        return json.loads((self.folder / "manifest.json").read_text())

    def set_artifact(self, **fields) -> None:
        """Rewrite the one artifact entry of manifest.json (as a tamperer would: by hand, schema still valid)."""
        m = self.manifest()
        m["artifacts"][0].update(fields)
        (self.folder / "manifest.json").write_text(json.dumps(m, indent=2))

    @property
    def model(self) -> Path:
        return self.folder / self.manifest()["artifacts"][0]["path"]


@dataclass
class Case:
    id: str
    build: Callable[[Ctx], list]          # makes the hostile input; returns the CLI arguments
    code: int
    needles: tuple[str, ...]
    secret: str | None = None             # must appear nowhere: output, report.json, report.html
    check: Callable[[Ctx, object], None] | None = None
    marks: tuple = ()


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------ the hostile inputs

def climbing_path(c: Ctx) -> list:
    """The review's case: a manifest artifact at ../../escaped/evil.sh (the file exists there, its sha256 matches)."""
    evil = c.folder / "../../escaped/evil.sh"
    evil.parent.mkdir(parents=True, exist_ok=True)
    evil.write_text("#!/bin/sh\necho pwned\n")
    c.set_artifact(path="../../escaped/evil.sh", sha256=_sha(evil), size_bytes=evil.stat().st_size)
    return ["bench", c.folder, "--device", "local", *FAST]


def climbing_path_ssh(c: Ctx) -> list:
    server = c.request.getfixturevalue("sshd")
    args = climbing_path(c)
    assert not Path("/escaped").exists()      # where ../../escaped lands from the board's /tmp/edgeship-XXXX
    return [*args[:2], "--device", server.url(), "--ssh-config", server.config, "--python", sys.executable, *FAST]


def check_nothing_at_root(c: Ctx, r) -> None:
    assert not Path("/escaped").exists()


def absolute_path(c: Ctx) -> list:
    target = c.outside / "model.onnx"
    shutil.copy(c.model, target)
    c.set_artifact(path=str(target))
    return ["bench", c.folder, *FAST]


def symlinked_file(c: Ctx) -> list:
    """The manifest is untouched; the artifact file is a link to a file outside (same bytes, so the sha256 matches)."""
    model = c.model
    target = c.outside / "model.onnx"
    shutil.copy(model, target)
    model.unlink()
    model.symlink_to(target)
    return ["bench", c.folder, *FAST]


def symlinked_folder(c: Ctx) -> list:
    """The artifact's folder (onnx/) is a link to a folder outside holding the same file."""
    model = c.model
    target = c.outside / "elsewhere"
    shutil.copytree(model.parent, target)
    shutil.rmtree(model.parent)
    model.parent.symlink_to(target, target_is_directory=True)
    return ["bench", c.folder, *FAST]


def changed_bytes(c: Ctx) -> list:
    """The artifact was changed after export (a flipped byte): that artifact fails, nothing is pushed or run."""
    data = bytearray(c.model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    c.model.write_bytes(bytes(data))
    return ["bench", c.folder, "--json", *FAST]


def check_changed(c: Ctx, r) -> None:
    entries = json.loads(r.out)
    assert [(e["artifact"], e["status"]) for e in entries] == [("onnx:fp32", "failed")]
    assert "latency_ms" not in entries[0]
    assert json.loads((c.folder / "report.json").read_text())["bench"] == entries


def password_in_url(c: Ctx) -> list:
    return ["bench", c.folder, "--device", f"ssh://u:{SECRET}@127.0.0.1", *FAST]


def password_in_url_profile(c: Ctx) -> list:
    return ["profile", c.model, "--device", f"ssh://u:{SECRET}@127.0.0.1:notaport"]


def token_in_power_cmd(c: Ctx) -> list:
    """A meter command carrying a bearer token: it runs (echo prints the watts), but is stored redacted."""
    cmd = f"echo 2.0 || curl -s -H 'Authorization: Bearer {SECRET}' https://meter.lan/watts"
    return ["bench", c.folder, "--json", "--power-cmd", cmd, *FAST]


def check_power_cmd(c: Ctx, r) -> None:
    entries = json.loads(r.out)
    assert [e["status"] for e in entries] == ["ok"], entries
    detail = entries[0]["energy"]["method_detail"]
    assert entries[0]["energy"]["method"] == "external-meter" and "echo <redacted 7 args>" in detail, detail
    assert "Bearer" not in (c.folder / "report.json").read_text()


def nothing_can_run(c: Ctx) -> list:
    """The device's python does not exist: every artifact is skipped, so nothing was measured."""
    return ["bench", c.folder, "--python", str(c.tmp / "no-such-python"), *FAST]


def check_skipped_recorded(c: Ctx, r) -> None:
    entries = json.loads((c.folder / "report.json").read_text())["bench"]
    assert [(e["artifact"], e["status"]) for e in entries] == [("onnx:fp32", "skipped")]


def no_tool_for_the_format(c: Ctx) -> list:
    tool = c.tmp / "benchmark_model"
    tool.write_text("#!/bin/sh\nexit 0\n")
    return ["bench", c.folder, "--via", "tool", "--tool", f"tflite={tool}", *FAST]


CASES = [
    Case("climbing-artifact-path", climbing_path, 2, ("artifact path", "../../escaped/evil.sh", "not a relative path")),
    Case("climbing-artifact-path-ssh", climbing_path_ssh, 2, ("artifact path", "../../escaped/evil.sh",
                                                              "not a relative path"),
         check=check_nothing_at_root, marks=(pytest.mark.slow,)),
    Case("absolute-artifact-path", absolute_path, 2, ("artifact path", "model.onnx", "not a relative path")),
    Case("artifact-symlinked-outside", symlinked_file, 2, ("artifact path", "leads outside", "symbolic link")),
    Case("artifact-folder-symlinked-outside", symlinked_folder, 2, ("artifact path", "leads outside", "symbolic link")),
    Case("artifact-changed-after-export", changed_bytes, 1, ("changed since export", "run edgeship verify"),
         check=check_changed),
    Case("password-in-ssh-url", password_in_url, 2, ("carries a password", "ssh://u:***@127.0.0.1", "hint:",
                                                     "key-based auth", "ssh config"), secret=SECRET),
    Case("password-in-ssh-url-profile", password_in_url_profile, 2, ("carries a password", "hint:"), secret=SECRET),
    Case("token-in-power-cmd", token_in_power_cmd, 0, ("external-meter",), secret=SECRET, check=check_power_cmd),
    Case("every-artifact-skipped", nothing_can_run, 1, ("error:", "nothing was benchmarked", "every artifact was "
                                                        "skipped", "onnx:fp32", "does not run", "hint:"),
         check=check_skipped_recorded),
    Case("every-artifact-skipped-via-tool", no_tool_for_the_format, 1, ("nothing was benchmarked",
                                                                        "no native benchmark tool given for onnx")),
]


# ------------------------------------------------------------------------------------------ the export, once

@pytest.fixture(scope="module")
def export_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench-export") / "tiny_cnn"
    r = edgeship("export", "example:tiny_cnn", "-f", "onnx", "--samples", "1", "--out", out)
    assert r.code == 0, r.text[-3000:]
    return out


def _outside_trees(c: Ctx, devtmp: Path) -> dict:
    escaped = c.tmp / "escaped"
    # onnxruntime (1.2x+) itself keeps a session-id file, .ses, in $TMPDIR: the runtime's, not a write of edgeship's
    dev = {k: v for k, v in tree(devtmp).items() if k != "t/.ses"}
    return {"sandbox": tree(c.outside), "devtmp": dev, "escaped": tree(escaped) if escaped.exists() else None,
            "next to the export": {k: v for k, v in tree(c.folder.parent).items()
                                   if k != c.folder.name and not k.startswith(c.folder.name + "/")}}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bench(case: Case, export_folder: Path, tmp_path: Path, sandbox: Path, request):
    folder = Path(shutil.copytree(export_folder, tmp_path / "work" / "model", symlinks=True))
    c = Ctx(folder, sandbox, tmp_path, request)
    args = case.build(c)
    devtmp = tmp_path / "devtmp"                         # the local device's temp root: TMPDIR=devtmp/t
    (devtmp / "t").mkdir(parents=True)
    before, folder_before = _outside_trees(c, devtmp), tree(folder)

    r = edgeship(*args, env={"TMPDIR": str(devtmp / "t")})

    assert_refused(r, case.code, *case.needles)
    assert _outside_trees(c, devtmp) == before           # nothing written or deleted outside the export folder
    assert (sandbox / "victim.txt").read_text() == "the user's file\n"
    if case.code == 2:
        assert tree(folder) == folder_before             # refused before any work: report.json not touched
    if case.secret:
        assert case.secret not in r.text, r.text[-3000:]
        for name in ("report.json", "report.html"):
            assert case.secret not in (folder / name).read_text(errors="replace")
    if case.check:
        case.check(c, r)
