"""edgeship package: the right files in the right places, checked hashes, clean re-packaging, and errors with hints."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from edgeship import manifest as manifest_mod
from edgeship._io import sha256_path
from edgeship.errors import EdgeshipError
from edgeship.package import APPS, RECORD, package

from package_support import LABELS, REPO, tree, write_report

ASSETS = "app/src/main/assets/model"


def _check_packaged(res, export_dir: Path, expect_artifacts: list[str]):
    """manifest validates, lists exactly the copied artifacts, every file's sha256 matches the export's."""
    written = json.loads((res.dest / "manifest.json").read_text())
    manifest_mod.validate(written)
    assert written == res.manifest
    assert [a["path"] for a in written["artifacts"]] == expect_artifacts
    source = {a["sha256"]: a for a in json.loads((export_dir / "manifest.json").read_text())["artifacts"]}
    for a in written["artifacts"]:
        assert sha256_path(res.dest / a["path"]) == a["sha256"] == res.files[a["path"]]
        assert a["sha256"] in source, "the packaged artifact is not one of the export's"
    assert (res.dest / "labels.txt").read_text().splitlines() == LABELS
    record = json.loads((res.dest / RECORD).read_text())
    assert record["files"] == res.files
    assert set(res.files) == {*expect_artifacts, "labels.txt", "manifest.json"} | _pi_extras(res)


def _pi_extras(res) -> set[str]:
    return {k for k in res.files if res.app == "pi" and k not in ("labels.txt", "manifest.json")
            and not k.startswith(("onnx/", "tflite/", "executorch/"))}


@pytest.mark.slow
def test_android_gets_its_formats_in_assets(export_with_coreml, android_app):
    res = package(export_with_coreml, "android", app_root=android_app)
    assert res.dest == (android_app / ASSETS).absolute()
    _check_packaged(res, export_with_coreml, ["onnx/model.onnx"])      # the .mlpackage is not for Android
    assert not (res.dest / "coreml").exists()
    # the app reads exactly this folder: assets/model/manifest.json
    kotlin = (android_app / "app/src/main/java/dev/edgeship/demo/ModelStore.kt").read_text()
    assert '"model"' in kotlin and "manifest.json" in kotlin


@pytest.mark.slow
def test_ios_gets_the_mlpackage_flat_in_its_model_folder(export_with_coreml, ios_app):
    res = package(export_with_coreml, "ios", app_root=ios_app)
    assert res.dest == (ios_app / "EdgeshipDemo" / "Model").absolute()
    _check_packaged(res, export_with_coreml, ["model.mlpackage"])       # flat: Xcode flattens bundle resources
    assert any("parity not run" in n and "needs macOS" in n for n in res.notes), res.notes   # accepted, but said
    assert (res.dest / "model.mlpackage" / "Manifest.json").is_file()
    assert not (res.dest / "onnx").exists()


def test_repackaging_replaces_only_what_packaging_wrote(export_dir, android_app):
    assets = android_app / "app/src/main/assets"
    (assets / "model").mkdir(parents=True)
    (assets / "model" / "NOTES.md").write_text("mine\n")           # a user's file inside the model folder
    (assets / "other.txt").write_text("unrelated\n")               # and one beside it
    app_before = {k: v for k, v in tree(android_app).items() if not k.startswith(ASSETS + "/")}

    first = package(export_dir, "android", app_root=android_app)
    assert (first.dest / "NOTES.md").read_text() == "mine\n"

    # a new export of the model: different labels and a different artifact path
    (export_dir / "labels.txt").write_text("\n".join(reversed(LABELS)) + "\n")
    m = json.loads((export_dir / "manifest.json").read_text())
    (export_dir / "onnx" / "model.onnx").rename(export_dir / "onnx" / "renamed.onnx")
    m["artifacts"][0]["path"] = "onnx/renamed.onnx"
    (export_dir / "manifest.json").write_text(json.dumps(m))
    second = package(export_dir, "android", app_root=android_app)

    assert not (second.dest / "onnx" / "model.onnx").exists(), "the previous artifact was left behind"
    assert (second.dest / "onnx" / "renamed.onnx").is_file()
    assert sorted(second.removed) == sorted(first.files)
    assert (second.dest / "labels.txt").read_text().splitlines() == list(reversed(LABELS))
    assert (second.dest / "NOTES.md").read_text() == "mine\n"
    assert set(tree(second.dest)) == {*second.files, RECORD, "NOTES.md"}
    after = {k: v for k, v in tree(android_app).items() if not k.startswith(ASSETS + "/")}
    assert after == app_before, "packaging touched app files outside its model folder"
    assert not list(second.dest.parent.glob(".model.stage-*")), "a staging folder was left behind"


def test_repackaging_same_export_is_stable(export_dir, android_app):
    a = package(export_dir, "android", app_root=android_app)
    snapshot = {k: v for k, v in tree(a.dest).items() if k != RECORD}
    b = package(export_dir, "android", app_root=android_app)
    assert {k: v for k, v in tree(b.dest).items() if k != RECORD} == snapshot
    assert b.files == a.files


def test_precision_and_format_filters(export_dir, android_app):
    with pytest.raises(EdgeshipError, match="no artifact usable by the Android demo.*precision int8") as e:
        package(export_dir, "android", app_root=android_app, precision="int8")
    assert "onnx/fp32" in str(e.value)
    with pytest.raises(EdgeshipError, match="cannot run format.*coreml"):
        package(export_dir, "android", app_root=android_app, formats="coreml")
    res = package(export_dir, "android", app_root=android_app, formats=["onnx"], precision="fp32")
    assert [a["path"] for a in res.artifacts] == ["onnx/model.onnx"]


def test_pi_bundle_folder_and_archive(export_dir, tmp_path):
    dest = tmp_path / "pi-bundle"
    res = package(export_dir, "pi", dest=dest)
    assert res.dest == dest.absolute() and res.archive == tmp_path / "pi-bundle.tar.gz"
    for f in ("install.sh", "classify.py", "classify.sh", "bench.sh", "edgeship-classify.service",
              "edgeship_runtime/__init__.py", "edgeship_runtime/bench.py", "edgeship_runtime/onnx.py"):
        assert (dest / f).is_file(), f
    _check_packaged(res, export_dir, ["onnx/model.onnx"])
    for script in ("install.sh", "classify.sh", "bench.sh"):
        assert (dest / script).stat().st_mode & 0o111, f"{script} is not executable"
    assert not list(dest.rglob("__pycache__"))
    with tarfile.open(res.archive) as tar:
        names = set(tar.getnames())
        members = {m.name: m for m in tar.getmembers()}
    assert "pi-bundle/onnx/model.onnx" in names and "pi-bundle/install.sh" in names
    assert "pi-bundle/" + RECORD in names
    assert members["pi-bundle/install.sh"].mode & 0o111
    assert all(n == "pi-bundle" or n.startswith("pi-bundle/") for n in names)
    # the scripts are the repository's raspberrypi/ ones, byte for byte
    assert (dest / "classify.py").read_bytes() == (REPO / "raspberrypi" / "classify.py").read_bytes()


def test_pi_default_dest_is_beside_the_export(export_dir):
    res = package(export_dir, "pi")
    assert res.dest == export_dir.parent.absolute() / "tiny_cnn-pi"
    assert res.archive.is_file()


def test_pi_repackage_keeps_the_venv_and_user_files(export_dir, tmp_path):
    dest = tmp_path / "bundle"
    package(export_dir, "pi", dest=dest)
    (dest / ".venv" / "bin").mkdir(parents=True)
    (dest / ".venv" / "bin" / "python").write_text("#!/bin/sh\n")
    (dest / "photo.jpg").write_bytes(b"\xff\xd8")
    res = package(export_dir, "pi", dest=dest)
    assert (dest / ".venv" / "bin" / "python").is_file() and (dest / "photo.jpg").is_file()
    with tarfile.open(res.archive) as tar:
        assert not any(".venv" in n or "photo.jpg" in n for n in tar.getnames())


# ---------------------------------------------------------------------------------------------------------------
# bad input

def test_not_an_export_folder(tmp_path, android_app):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeshipError, match="no manifest.json") as e:
        package(tmp_path / "empty", "android", app_root=android_app)
    assert "edgeship export" in e.value.hint
    with pytest.raises(EdgeshipError, match="is not a folder"):
        package(tmp_path / "missing", "android", app_root=android_app)


def test_app_root_that_is_not_the_demo(export_dir, tmp_path):
    other = tmp_path / "someapp"
    other.mkdir()
    (other / "settings.gradle.kts").write_text('rootProject.name = "someapp"\n')
    with pytest.raises(EdgeshipError, match="not the edgeship Android demo") as e:
        package(export_dir, "android", app_root=other)
    assert "--app-root" in e.value.hint
    assert not (other / "app").exists()
    with pytest.raises(EdgeshipError, match="not the edgeship iOS demo"):
        package(export_dir, "ios", app_root=other)
    with pytest.raises(EdgeshipError, match="unknown app 'windows'"):
        package(export_dir, "windows")


def test_newer_major_manifest_is_refused(export_dir, android_app):
    m = json.loads((export_dir / "manifest.json").read_text())
    m["schema_version"] = "2.0"
    (export_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EdgeshipError, match="schema_version 2.0, newer than"):
        package(export_dir, "android", app_root=android_app)


def test_manifest_that_breaks_the_schema_is_refused(export_dir, android_app):
    m = json.loads((export_dir / "manifest.json").read_text())
    m["artifacts"][0]["sha256"] = "not-a-hash"
    (export_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EdgeshipError, match="does not follow the manifest schema"):
        package(export_dir, "android", app_root=android_app)


def test_no_artifact_for_the_app(export_dir, ios_app):
    with pytest.raises(EdgeshipError, match="no artifact usable by the iOS demo") as e:
        package(export_dir, "ios", app_root=ios_app)
    assert "--formats coreml" in e.value.hint
    assert not (ios_app / "EdgeshipDemo" / "Model").exists()


def test_sha256_mismatch_is_an_error_and_writes_nothing(export_dir, android_app):
    with open(export_dir / "onnx" / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(EdgeshipError, match="changed since export .its sha256") as e:
        package(export_dir, "android", app_root=android_app)
    assert "export again" in e.value.hint
    assert not (android_app / ASSETS).exists()


def test_missing_artifact_file(export_dir, android_app):
    (export_dir / "onnx" / "model.onnx").unlink()
    with pytest.raises(EdgeshipError, match="missing from"):
        package(export_dir, "android", app_root=android_app)


def test_pi_dest_that_is_not_a_bundle_needs_force(export_dir, tmp_path):
    dest = tmp_path / "photos"
    dest.mkdir()
    (dest / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(EdgeshipError, match="not a bundle made by edgeship package") as e:
        package(export_dir, "pi", dest=dest)
    assert "--force" in e.value.hint
    assert [p.name for p in dest.iterdir()] == ["cat.jpg"]
    res = package(export_dir, "pi", dest=dest, force=True)
    assert (dest / "cat.jpg").read_bytes() == b"\xff\xd8" and (dest / "manifest.json").is_file()
    assert res.archive.is_file()


def test_a_user_file_where_packaging_would_write_needs_force(export_dir, android_app):
    model_dir = android_app / ASSETS
    model_dir.mkdir(parents=True)
    (model_dir / "labels.txt").write_text("my labels\n")
    with pytest.raises(EdgeshipError, match="already has labels.txt"):
        package(export_dir, "android", app_root=android_app)
    assert (model_dir / "labels.txt").read_text() == "my labels\n"
    package(export_dir, "android", app_root=android_app, force=True)
    assert (model_dir / "labels.txt").read_text().splitlines() == LABELS


def test_damaged_record_is_reported(export_dir, android_app):
    res = package(export_dir, "android", app_root=android_app)
    (res.dest / RECORD).write_text('{"files": {"../../settings.gradle.kts": "x"}}')
    with pytest.raises(EdgeshipError, match="is not a relative path inside"):
        package(export_dir, "android", app_root=android_app)
    assert (android_app / "settings.gradle.kts").is_file()


def test_every_app_has_a_default_root_in_the_repo():
    for target in APPS.values():
        assert (REPO / target.default_root).is_dir(), target.default_root


# ---------------------------------------------------------------------------------------------------------------
# only artifacts that passed parity (report.json)

def _set_parity(export_dir: Path, parity: str, reason: str | None, **entry) -> None:
    report = json.loads((export_dir / "report.json").read_text())
    report["artifacts"][0]["parity"] |= {"status": parity, "reason": reason, "value": -0.53}
    report["artifacts"][0] |= entry
    (export_dir / "report.json").write_text(json.dumps(report))


def test_failed_parity_is_refused_unless_allowed(export_dir, android_app):
    _set_parity(export_dir, "fail", "cosine -0.53 is below the fp32 threshold 0.9999")
    with pytest.raises(EdgeshipError, match=r"onnx/model.onnx \(onnx fp32\): parity fail: cosine -0.53") as e:
        package(export_dir, "android", app_root=android_app)
    assert "edgeship verify" in e.value.hint and "--allow-failed" in e.value.hint
    assert not (android_app / ASSETS).exists()
    res = package(export_dir, "android", app_root=android_app, allow_failed=True)
    assert (res.dest / "onnx" / "model.onnx").is_file()
    assert any("did not pass" in n and "cosine -0.53" in n for n in res.notes), res.notes


def test_failed_export_and_unlisted_artifacts_are_refused(export_dir, android_app):
    _set_parity(export_dir, "pass", None, status="failed", error="the converter crashed")
    with pytest.raises(EdgeshipError, match="export failed: the converter crashed"):
        package(export_dir, "android", app_root=android_app)
    write_report(export_dir, [])
    with pytest.raises(EdgeshipError, match="onnx/model.onnx .*not listed in report.json"):
        package(export_dir, "android", app_root=android_app)


@pytest.mark.parametrize("content, words", [(None, "has no report.json"), (b"\xff\xfe{", "is not valid JSON"),
                                            (b"{not json", "is not valid JSON"), (b"[]", "not an edgeship report"),
                                            (b'{"name": "m"}', "has no artifacts list")])
def test_unreadable_report_is_an_error_with_a_hint(export_dir, android_app, content, words):
    if content is None:
        (export_dir / "report.json").unlink()
    else:
        (export_dir / "report.json").write_bytes(content)
    with pytest.raises(EdgeshipError, match=words) as e:
        package(export_dir, "android", app_root=android_app, allow_failed=True)
    assert e.value.hint
    assert not (android_app / ASSETS).exists()


# ---------------------------------------------------------------------------------------------------------------
# symbolic links: never read, write or delete outside the export folder and the destination

def test_an_artifact_linked_inside_the_export_is_copied_as_the_real_file(export_dir, android_app):
    real = export_dir / "onnx" / "real.onnx"
    (export_dir / "onnx" / "model.onnx").rename(real)
    (export_dir / "onnx" / "model.onnx").symlink_to("real.onnx")
    res = package(export_dir, "android", app_root=android_app)
    copied = res.dest / "onnx" / "model.onnx"
    assert not copied.is_symlink() and copied.read_bytes() == real.read_bytes()


def test_a_link_the_record_lists_is_removed_not_its_target(export_dir, android_app):
    first = package(export_dir, "android", app_root=android_app)
    (first.dest / "NOTES.md").write_text("mine\n")
    (first.dest / "labels.txt").unlink()
    (first.dest / "labels.txt").symlink_to("NOTES.md")          # a link inside the destination, to a user's file
    package(export_dir, "android", app_root=android_app)
    assert (first.dest / "NOTES.md").read_text() == "mine\n"
    assert not (first.dest / "labels.txt").is_symlink()
    assert (first.dest / "labels.txt").read_text().splitlines() == LABELS


def test_a_record_entry_through_a_link_out_of_the_destination_is_refused(export_dir, android_app, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("keep\n")
    first = package(export_dir, "android", app_root=android_app)
    (first.dest / "link").symlink_to(outside)
    record = json.loads((first.dest / RECORD).read_text())
    record["files"]["link/victim.txt"] = "0" * 64
    (first.dest / RECORD).write_text(json.dumps(record))
    with pytest.raises(EdgeshipError, match="link/victim.txt' leads outside") as e:
        package(export_dir, "android", app_root=android_app)
    assert RECORD in e.value.hint
    assert (outside / "victim.txt").read_text() == "keep\n"


def test_a_destination_subfolder_linked_outside_is_refused(export_dir, android_app, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    model_dir = android_app / ASSETS
    model_dir.mkdir(parents=True)
    (model_dir / "onnx").symlink_to(outside)
    with pytest.raises(EdgeshipError, match="destination path 'onnx/model.onnx' leads outside"):
        package(export_dir, "android", app_root=android_app, force=True)
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in model_dir.iterdir()) == ["onnx"], "something was written before the refusal"


@pytest.mark.slow
def test_a_link_inside_an_mlpackage_is_refused(export_with_coreml, ios_app, tmp_path):
    (tmp_path / "secret.txt").write_text("not for the app\n")
    (export_with_coreml / "coreml" / "model.mlpackage" / "Data" / "extra").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(EdgeshipError, match="holds a symbolic link"):
        package(export_with_coreml, "ios", app_root=ios_app)
