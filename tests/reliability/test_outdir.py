"""The output folder, interrupts, full disks, bad models and `edgeship verify` against tampered folders (issue #11).

Each case runs the real `edgeship` command on a real model (example:tiny_cnn, or a misbehaving one from
data/hostile_models.py) and checks the exit code, the words a user reads, no traceback, and what is left on disk:
nothing outside the folder the command owns, no staging folder or lock beside it, and a user's file never deleted.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from reliability.conftest import Run, assert_refused, edgeship, tree

pytestmark = pytest.mark.slow
MODELS = Path(__file__).parent / "data" / "hostile_models.py"


def model(name: str) -> str:
    return f"{MODELS}:{name}"


@dataclass
class Ctx:
    root: Path          # tmp/work: the parent of OUT, where staging folders and the lock live
    out: Path           # tmp/work/out
    outside: Path       # the sandbox with the user's victim.txt
    env: dict

    def debris(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.name.startswith(".out."))


@dataclass
class Case:
    id: str
    run: Callable[[Ctx], Run]
    code: int
    words: tuple[str, ...]
    check: Callable[[Ctx], None] | None = None
    setup: Callable[[Ctx], None] | None = None


def export(c: Ctx, ref: str = "example:tiny_cnn", *args: str, formats: str = "onnx") -> Run:
    return edgeship("export", ref, "-f", formats, "--out", c.out, *args, env=c.env)


def existing_export(c: Ctx) -> None:
    r = export(c)
    assert r.code == 0, r.text


# ---------------------------------------------------------------------------------------------------------------
# the output folder

def user_file_kept(c: Ctx) -> None:
    assert (c.out / "notes.txt").read_text() == "the user's notes\n"
    assert sorted(p.name for p in c.out.iterdir()) == ["notes.txt"]


def hold_the_lock(c: Ctx) -> Run:
    """Another run holds OUT: the lock file with its pid, flock'ed (what a running export does)."""
    with open(c.root / ".out.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write("4242\n")
        f.flush()
        r = export(c)
    (c.root / ".out.lock").unlink()   # the other run's to remove
    return r


def stale_staging(c: Ctx) -> None:
    """What a SIGKILLed run leaves: a staging folder with half an export, and its (unlocked) lock file."""
    d = c.root / ".out.staging-k1ll3d"
    (d / "onnx").mkdir(parents=True)
    (d / "onnx" / "model.onnx").write_bytes(b"\0" * 1000)
    (c.root / ".out.lock").write_text("999999\n")


def swept(c: Ctx) -> None:
    assert c.debris() == [] and (c.out / "manifest.json").is_file()


def swap_cut_in_half(c: Ctx) -> None:
    """A swap interrupted between its two renames (no atomic exchange): OUT gone, the old folder set aside."""
    existing_export(c)
    old = c.root / ".out.old-abc123"
    old.mkdir()
    c.out.rename(old / "out")


def restored(c: Ctx) -> None:
    assert (c.out / "manifest.json").is_file() and c.debris() == []


def foreign_file(c: Ctx) -> None:
    existing_export(c)
    (c.out / "my-notes.txt").write_text("keep me\n")


def out_is_a_link(c: Ctx) -> None:
    c.out.symlink_to(c.outside, target_is_directory=True)


def out_is_a_file(c: Ctx) -> None:
    c.out.write_text("a file\n")


# ---------------------------------------------------------------------------------------------------------------
# interrupts

def interrupt(sig: int) -> Callable[[Ctx], Run]:
    def run(c: Ctx) -> Run:
        p = subprocess.Popen([sys.executable, "-m", "edgeship.cli", "export", "example:tiny_cnn", "-f",
                              "onnx,tflite,executorch", "--out", str(c.out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=dict(os.environ, **c.env),
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))   # as in a terminal
        # wait until the export is under way (the staging folder exists), then interrupt it
        deadline = time.monotonic() + 120
        while not any(n.startswith(".out.staging-") for n in c.debris()) and time.monotonic() < deadline:
            if p.poll() is not None:
                break
            time.sleep(0.05)
        time.sleep(1.0)
        p.send_signal(sig)
        out, err = p.communicate(timeout=300)
        return Run(p.returncode, out, err)
    return run


def nothing_left(c: Ctx) -> None:
    assert not os.path.lexists(c.out) and c.debris() == [], c.debris()


# ---------------------------------------------------------------------------------------------------------------
# disks

def tmpfs(size: str) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("needs root to mount a small tmpfs")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(c.root)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        c.env["FILL_DIR"] = str(c.root)
    return setup


def no_debris_but_filler(c: Ctx) -> None:
    assert not os.path.lexists(c.out)
    assert sorted(p.name for p in c.root.iterdir()) in ([], ["filler.bin"]), list(c.root.iterdir())


# ---------------------------------------------------------------------------------------------------------------
# verify on tampered folders

def edit_manifest(change: Callable[[dict], None]) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        existing_export(c)
        m = json.loads((c.out / "manifest.json").read_text())
        change(m)
        (c.out / "manifest.json").write_text(json.dumps(m))
    return setup


def outside_onnx(c: Ctx) -> None:
    existing_export(c)
    shutil.copy(c.out / "onnx" / "model.onnx", c.outside / "model.onnx")
    m = json.loads((c.out / "manifest.json").read_text())
    m["artifacts"][0]["path"] = str(c.outside / "model.onnx")
    (c.out / "manifest.json").write_text(json.dumps(m))


def linked_onnx(c: Ctx) -> None:
    existing_export(c)
    shutil.move(c.out / "onnx" / "model.onnx", c.outside / "model.onnx")
    (c.out / "onnx" / "model.onnx").symlink_to(c.outside / "model.onnx")


def write_file(name: str, data: bytes) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        existing_export(c)
        (c.out / name).write_bytes(data)
    return setup


def object_reference(c: Ctx) -> None:
    existing_export(c)
    np.savez(c.out / "reference.npz", input__x=np.array(["a", "b"]), output__0=np.zeros((2, 1, 10)))


def flipped_artifact(c: Ctx) -> None:
    existing_export(c)
    p = c.out / "onnx" / "model.onnx"
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF
    p.write_bytes(bytes(data))


def verify(c: Ctx) -> Run:
    return edgeship("verify", c.out, env=c.env)


CASES = [
    # output folder: nothing of the user's is ever deleted; one run at a time
    Case("file-appears-in-new-out-during-export", lambda c: export(c, model("drops_a_file"), formats="onnx,tflite"), 2,
         ("changed while this run worked", "kept", "discarded"), user_file_kept,
         setup=lambda c: c.env.update(USER_FILE_DIR=str(c.out))),
    Case("second-run-on-the-same-out", hold_the_lock, 2, ("another edgeship run (pid 4242)", "nothing was changed"),
         lambda c: os.path.lexists(c.out) and pytest.fail("OUT was written")),
    Case("stale-staging-of-a-killed-run-is-swept-and-said", export, 0, ("interrupted earlier run",), swept,
         setup=stale_staging),
    Case("swap-cut-between-its-renames-is-undone", export, 2, ("exists and is not empty",), restored,
         setup=swap_cut_in_half),
    Case("force-never-deletes-a-users-file", lambda c: export(c, "example:tiny_cnn", "--force"), 2,
         ("files edgeship did not write", "my-notes.txt"), lambda c: (c.out / "my-notes.txt").read_text() == "keep me\n"
         or pytest.fail("my-notes.txt changed"), setup=foreign_file),
    Case("out-is-a-symlink", lambda c: export(c, "example:tiny_cnn", "--force"), 2, ("is a symbolic link",),
         setup=out_is_a_link),
    Case("out-is-a-file", export, 2, ("is a file",), lambda c: c.out.read_text() == "a file\n" or pytest.fail(),
         setup=out_is_a_file),
    # interrupts: a message, the conventional exit code, nothing left behind
    Case("ctrl-c", interrupt(signal.SIGINT), 130, ("interrupted; nothing was written to",), nothing_left),
    Case("sigterm", interrupt(signal.SIGTERM), 143, ("terminated; nothing was written to",), nothing_left),
    # disks and converters that end the process
    Case("disk-full-while-the-tflite-converter-writes", lambda c: export(c, model("fills_the_disk"), formats="tflite"), 2,
         ("no space left on the device", "nothing was written"), no_debris_but_filler, setup=tmpfs("80m")),
    Case("not-enough-disk-up-front", export, 2, ("not enough disk space", "MB free"), no_debris_but_filler,
         setup=tmpfs("8m")),
    Case("converter-ends-its-process", lambda c: export(c, model("ends_the_process"), formats="onnx,tflite"), 1,
         ("tflite converter ended its process (exit code 1)",),
         lambda c: (c.out / "onnx" / "model.onnx").is_file() and c.debris() == [] or pytest.fail(str(c.debris()))),
    # bad models and shapes: the model's problem, said as such, before any long work
    Case("huge-input-shape", lambda c: export(c, "example:tiny_cnn", "--input", "image:1x3x60000x60000"), 2,
         ("needs about", "GiB", "memory is available")),
    Case("factory-raises", lambda c: export(c, model("raises")), 2, ("raised ValueError", "checksum mismatch")),
    Case("forward-returns-nothing", lambda c: export(c, model("no_outputs")), 2, ("returned no tensors",)),
    Case("model-output-is-nan", lambda c: export(c, model("nan_out")), 2, ("not finite", "a problem of the model")),
    # verify on tampered folders: no stale pass, nothing read from outside, a reason in the table
    Case("verify-manifest-with-no-artifacts", verify, 2, ("lists no artifacts",),
         setup=edit_manifest(lambda m: m.update(artifacts=[]))),
    Case("verify-path-climbs-out", verify, 2, ("is not a relative path inside",),
         setup=edit_manifest(lambda m: m["artifacts"][0].update(path="../../../etc/passwd"))),
    Case("verify-absolute-path-to-an-outside-model", verify, 2, ("is not a relative path inside",), setup=outside_onnx),
    Case("verify-artifact-linked-outside", verify, 2, ("leads outside", "symbolic link"), setup=linked_onnx),
    Case("verify-manifest-not-an-object", verify, 2, ("holds a JSON list, not an object",),
         setup=write_file("manifest.json", b"[1, 2]")),
    Case("verify-report-not-an-object", verify, 2, ("not an edgeship report",), setup=write_file("report.json", b"7")),
    Case("verify-reference-not-a-zip", verify, 2, ("reference.npz cannot be read", "export the folder again"),
         setup=write_file("reference.npz", b"garbage")),
    Case("verify-reference-with-strings", verify, 2, ("reference.npz cannot be read",), setup=object_reference),
    Case("verify-shows-why-it-failed", verify, 1, ("changed since export",), setup=flipped_artifact),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case, tmp_path: Path, sandbox: Path):
    root = tmp_path / "work"
    root.mkdir()
    c = Ctx(root, root / "out", sandbox, {"TMPDIR": str(tmp_path)})
    try:
        if case.setup:
            case.setup(c)
        before = tree(sandbox)
        r = case.run(c)
        assert_refused(r, case.code, *case.words)
        assert tree(sandbox) == before, "something outside the command's folder changed"
        if case.code != 0:
            assert not (root / ".out.lock").exists(), "the lock was left behind"
        if case.check:
            case.check(c)
    finally:
        if os.path.ismount(root):
            subprocess.run(["umount", str(root)], check=False)
