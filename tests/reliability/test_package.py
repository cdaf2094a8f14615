"""`edgeship package` against hostile export folders and destinations (issue #11).

One tiny export (tiny_cnn, ONNX fp32, the tests/package one) is made once per module; each case copies it (links
kept), makes the export folder or the destination hostile (a symlink leading out, a tampered packaging record, a
manifest path that climbs out, an artifact that failed parity or that report.json does not list), runs the real
`edgeship package` and checks the exit code, the words a user reads, no traceback, and that the "outside" sandbox
is byte for byte as it was: package never reads from, writes to or deletes in it.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from edgeship.package import RECORD, package
from package.package_support import make_export
from reliability.conftest import assert_refused, edgeship, tree

FAILED = "cosine -0.53 is below the fp32 threshold 0.9999"


@dataclass
class Ctx:
    folder: Path        # the private copy of the export: tmp/work/tiny_cnn
    dest: Path          # the model folder packaging writes: tmp/app/model
    outside: Path       # the sandbox (tmp/outside), with the user's victim.txt

    def edit(self, name: str, change: Callable[[dict], None]) -> None:
        """Rewrite a JSON file of the export as a tamperer would: by hand."""
        data = json.loads((self.folder / name).read_text())
        change(data)
        (self.folder / name).write_text(json.dumps(data))

    def package_once(self) -> None:
        """A first, honest packaging, so dest holds files and a record."""
        package(self.folder, "android", dest=self.dest)

    def add_to_record(self, rel: str) -> None:
        record = json.loads((self.dest / RECORD).read_text())
        record["files"][rel] = "0" * 64
        (self.dest / RECORD).write_text(json.dumps(record))


@dataclass
class Case:
    id: str
    make: Callable[[Ctx], None]                 # makes the export folder or the destination hostile
    code: int
    words: tuple[str, ...]
    args: tuple[str, ...] = ()
    check: Callable[[Ctx], None] | None = None  # what must hold afterwards, beyond the untouched sandbox


# ---------------------------------------------------------------------------------------------------------------
# the hostile setups

def record_through_linked_folder(c: Ctx) -> None:
    c.package_once()
    (c.dest / "link").symlink_to(c.outside, target_is_directory=True)
    c.add_to_record("link/victim.txt")


def record_names_a_link_to_outside(c: Ctx) -> None:
    c.package_once()
    (c.dest / "victim.txt").symlink_to(c.outside / "victim.txt")
    c.add_to_record("victim.txt")


def record_is_a_link_to_outside(c: Ctx) -> None:
    c.package_once()
    (c.outside / "record.json").write_text(json.dumps({"files": {"victim.txt": "0" * 64}}))
    (c.dest / RECORD).unlink()
    (c.dest / RECORD).symlink_to(c.outside / "record.json")


def record_names_a_link_inside(c: Ctx) -> None:
    c.package_once()
    (c.dest / "NOTES.md").write_text("mine\n")
    (c.dest / "labels.txt").unlink()
    (c.dest / "labels.txt").symlink_to("NOTES.md")      # packaging replaces the link, never the user's file


def dest_onnx_is_a_link_outside(c: Ctx) -> None:
    c.dest.mkdir(parents=True)
    (c.dest / "onnx").symlink_to(c.outside, target_is_directory=True)


def dest_inside_export_through_a_link(c: Ctx) -> None:
    (c.dest.parent / "into-export").symlink_to(c.folder, target_is_directory=True)     # --dest {tmp}/into-export/model


def artifact_links_outside(c: Ctx) -> None:
    (c.folder / "onnx" / "model.onnx").rename(c.outside / "model.onnx")
    (c.folder / "onnx" / "model.onnx").symlink_to(c.outside / "model.onnx")


def labels_link_outside(c: Ctx) -> None:
    (c.folder / "labels.txt").rename(c.outside / "labels.txt")
    (c.folder / "labels.txt").symlink_to(c.outside / "labels.txt")


def json_links_outside(name: str) -> Callable[[Ctx], None]:
    def make(c: Ctx) -> None:
        (c.folder / name).rename(c.outside / name)
        (c.folder / name).symlink_to(c.outside / name)
    return make


def artifact_path(path: str) -> Callable[[Ctx], None]:
    def make(c: Ctx) -> None:
        c.edit("manifest.json", lambda m: m["artifacts"][0].update(path=path))
    return make


def absolute_path(c: Ctx) -> None:
    artifact_path(str(c.outside / "victim.txt"))(c)


def parity(outcome: str, reason: str | None, **entry) -> Callable[[Ctx], None]:
    def make(c: Ctx) -> None:
        def change(r: dict) -> None:
            r["artifacts"][0]["parity"].update(status=outcome, reason=reason, value=-0.53)
            r["artifacts"][0].update(entry)
        c.edit("report.json", change)
    return make


def unlisted(c: Ctx) -> None:
    c.edit("report.json", lambda r: r.update(artifacts=[]))


def no_report(c: Ctx) -> None:
    (c.folder / "report.json").unlink()


# ---------------------------------------------------------------------------------------------------------------
# what must hold afterwards

def victim_intact(c: Ctx) -> None:
    assert (c.outside / "victim.txt").read_text() == "the user's file\n"


def nothing_packaged(c: Ctx) -> None:
    assert not (c.dest / "onnx" / "model.onnx").exists()
    victim_intact(c)


def packaged(c: Ctx) -> None:
    assert (c.dest / "onnx" / "model.onnx").is_file() and not (c.dest / "onnx" / "model.onnx").is_symlink()


def link_replaced_target_kept(c: Ctx) -> None:
    assert (c.dest / "NOTES.md").read_text() == "mine\n"
    assert not (c.dest / "labels.txt").is_symlink()


def export_unchanged(c: Ctx) -> None:
    assert not (c.folder / "model").exists() and not (c.folder / RECORD).exists()


LEADS_OUT = ("leads outside", "symbolic link", "hint")
CASES = [
    Case("record-entry-through-linked-folder", record_through_linked_folder, 2, ("link/victim.txt", *LEADS_OUT),
         check=victim_intact),
    Case("record-entry-is-link-to-outside", record_names_a_link_to_outside, 2, ("victim.txt", *LEADS_OUT),
         check=victim_intact),
    Case("record-itself-links-outside", record_is_a_link_to_outside, 2, ("packaging record", *LEADS_OUT),
         check=victim_intact),
    Case("record-entry-is-link-inside", record_names_a_link_inside, 0, ("labels.txt",), check=link_replaced_target_kept),
    Case("dest-onnx-is-link-outside", dest_onnx_is_a_link_outside, 2, ("onnx/model.onnx", *LEADS_OUT),
         check=nothing_packaged),
    Case("dest-inside-export-through-link", dest_inside_export_through_a_link, 2, ("inside the export folder", "--dest"),
         args=("--dest", "{tmp}/into-export/model"), check=export_unchanged),
    Case("artifact-is-link-to-outside", artifact_links_outside, 2, ("onnx/model.onnx", *LEADS_OUT), check=nothing_packaged),
    Case("labels-is-link-to-outside", labels_link_outside, 2, ("labels", *LEADS_OUT), check=nothing_packaged),
    Case("report-is-link-to-outside", json_links_outside("report.json"), 2, ("report.json", *LEADS_OUT),
         check=nothing_packaged),
    Case("manifest-is-link-to-outside", json_links_outside("manifest.json"), 2, ("manifest.json", *LEADS_OUT),
         check=nothing_packaged),
    Case("artifact-path-climbs-out", artifact_path("../../x"), 2, ("'../../x'", "not a relative path inside", "hint"),
         check=nothing_packaged),
    Case("artifact-path-absolute", absolute_path, 2, ("victim.txt", "not a relative path inside", "hint"),
         check=nothing_packaged),
    Case("failed-parity-refused", parity("fail", FAILED), 2,
         ("onnx/model.onnx", "parity fail", FAILED, "edgeship verify", "--allow-failed"), check=nothing_packaged),
    Case("failed-parity-allowed", parity("fail", FAILED), 0, ("note:", "did not pass", FAILED),
         args=("--allow-failed",), check=packaged),
    Case("failed-export-refused", parity("pass", None, status="failed", error="converter crashed"), 2,
         ("onnx/model.onnx", "export failed", "converter crashed", "--allow-failed"), check=nothing_packaged),
    Case("artifact-absent-from-report", unlisted, 2,
         ("onnx/model.onnx", "not listed in report.json", "edgeship verify", "--allow-failed"), check=nothing_packaged),
    Case("report-missing", no_report, 2, ("no report.json", "hint"), args=("--allow-failed",), check=nothing_packaged),
]


@pytest.fixture(scope="module")
def master(tmp_path_factory) -> Path:
    """The tests/package tiny export, made once: each case works on its own copy."""
    return make_export(tmp_path_factory.mktemp("package-master") / "tiny_cnn")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_package_refuses(case: Case, master: Path, sandbox: Path, tmp_path: Path):
    folder = Path(shutil.copytree(master, tmp_path / "work" / "tiny_cnn", symlinks=True))
    ctx = Ctx(folder, tmp_path / "app" / "model", sandbox)
    ctx.dest.parent.mkdir(parents=True)
    case.make(ctx)
    before = tree(sandbox)
    args = [a.format(tmp=tmp_path / "app") for a in case.args]
    if "--dest" not in args:
        args += ["--dest", str(ctx.dest)]
    r = edgeship("package", folder, "--app", "android", *args)
    assert_refused(r, case.code, *case.words)
    assert tree(sandbox) == before, "package changed the folder outside the export and the destination"
    if case.check:
        case.check(ctx)
