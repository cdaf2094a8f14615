"""Package an export folder into a demo app: android-demo, ios-demo, or a Raspberry Pi bundle.

``package(dist/mnl, "android")`` copies the artifacts the app can run, a manifest.json rewritten to list only
them (paths relative to the model folder) and labels.txt into the app's model folder. Every artifact's sha256 is
checked against the manifest before it is copied. What packaging wrote is recorded in ``.edgeship-packaged.json``
in that folder, so packaging again replaces exactly those files and never touches anything else there.

Only artifacts that report.json shows passing parity in their runtime are packaged (``allow_failed`` overrides).
Every path is checked on resolved real paths (``_io.inside``): a symbolic link in the export folder, in the
destination or in a packaging record never leads package to read, write or delete anything outside them.

Targets (``APPS``; which formats each runs, best first, is ``apps`` in edgeship_runtime.formats):
  android  android-demo/app/src/main/assets/model/   .tflite .pte .onnx   (the app reads assets/model/manifest.json)
  ios      ios-demo/EdgeshipDemo/Model/               .mlpackage            (Xcode compiles it at build time)
  pi       <dest>/ + <dest>.tar.gz                    .onnx .tflite .pte + edgeship_runtime + raspberrypi/ scripts
  web      web-demo/model/                            .onnx .tflite   (the page reads model/manifest.json)
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from edgeship_runtime import formats as format_registry

from . import manifest as manifest_mod
from . import report as report_mod
from ._io import inside, sha256_path, write_json_atomic
from .errors import EdgeshipError

log = logging.getLogger(__name__)

RECORD = ".edgeship-packaged.json"
ANDROID_MARKER = "edgeship-android-demo"      # rootProject.name in android-demo/settings.gradle.kts
IOS_PROJECT = "EdgeshipDemo.xcodeproj"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class AppTarget:
    name: str
    default_root: str                 # folder of the demo inside the repository
    model_dir: str | None             # where the model goes inside the app (None: dest is a standalone bundle)
    flatten: bool                     # put artifacts at the top of the model folder (iOS bundles flatten resources)
    what: str

    @property
    def formats(self) -> tuple[str, ...]:
        """Artifact formats the app can run, in the order it prefers them: the format registry's ``apps`` ranks
        (edgeship_runtime.formats), read at each use so a registered format counts."""
        return format_registry.app_formats(self.name)


APPS: dict[str, AppTarget] = {
    "android": AppTarget("android", "android-demo", "app/src/main/assets/model", flatten=False,
                         what="the Android demo (android-demo)"),
    "ios": AppTarget("ios", "ios-demo", "EdgeshipDemo/Model", flatten=True, what="the iOS demo (ios-demo)"),
    "pi": AppTarget("pi", "raspberrypi", None, flatten=False, what="the Raspberry Pi bundle"),
    "web": AppTarget("web", "web-demo", "model", flatten=False, what="the web demo (web-demo)"),
}
WEB_MARKER = "edgeship-web-demo"              # <meta name="generator"> in web-demo/index.html


@dataclass
class PackageResult:
    """What one ``package`` call wrote."""

    app: str
    dest: Path                                  # the model folder (android/ios) or the bundle folder (pi)
    files: dict[str, str]                       # path relative to dest -> sha256 (a directory: its tree hash)
    artifacts: list[dict]                       # the manifest entries of the artifacts that were copied
    manifest: dict                              # the manifest.json written into dest
    archive: Path | None = None                 # the .tar.gz beside a pi bundle
    removed: list[str] = field(default_factory=list)   # files of the previous packaging that were replaced
    notes: list[str] = field(default_factory=list)     # what a user should know: parity not run here, or shipped failed

    def to_dict(self) -> dict:
        return {"app": self.app, "dest": str(self.dest), "archive": str(self.archive) if self.archive else None,
                "files": self.files, "artifacts": [a["path"] for a in self.artifacts], "removed": self.removed,
                "notes": self.notes}


def package(export_dir: Path, app: str, *, dest: Path | None = None, app_root: Path | None = None,
            formats: str | Sequence[str] | None = None, precision: str | Sequence[str] | None = None,
            force: bool = False, allow_failed: bool = False) -> PackageResult:
    """Copy an export's artifacts, manifest and labels into a demo app (``android``, ``ios``) or a Pi bundle (``pi``).

    ``dest`` overrides the model folder (android/ios) or names the bundle folder (pi; default ``<export>-pi``
    beside the export). ``app_root`` is the demo's folder (default: the one in this repository). ``formats`` and
    ``precision`` narrow the artifacts (default: every artifact the app can run). ``force`` lets packaging
    overwrite files in ``dest`` that an earlier packaging did not write. ``allow_failed`` packages artifacts that
    report.json shows failing parity (or does not list), each one noted in the result; without it they are refused.
    report.json must be readable either way: it is what tells a passing artifact from a failed one.

    Symbolic links: an artifact or labels file that is a link is copied as the real file it points to, but only
    when that file lies inside the export folder (its sha256 is checked against the manifest like any other); a
    link inside a directory artifact (.mlpackage) is refused, since coremltools never writes one. In ``dest``, a
    path that leads outside it through a link (a record entry, a subfolder to write into) is refused before
    anything is written or removed, and a link packaging replaces is removed itself, never its target.
    """
    export_dir = Path(export_dir)
    target = _target(app)
    if not export_dir.is_dir():
        raise EdgeshipError(f"{export_dir} is not a folder", hint="give an export folder made by: edgeship export MODEL --out FOLDER")
    inside(export_dir, "manifest.json", "the export's manifest.json")   # read nothing through a link leading out
    manifest = manifest_mod.load(export_dir)           # checks schema_version, then the schema, then every path

    root = Path(app_root) if app_root is not None else None
    if target.model_dir is not None:                    # android / ios: the model folder inside the app
        if dest is None or root is not None:
            root = _check_app_root(target, root)
        dest = Path(dest) if dest is not None else inside(root, target.model_dir, f"the model folder of {target.what}")
    else:                                               # pi: a standalone bundle folder
        root = _check_app_root(target, root)
        dest = Path(dest) if dest is not None else export_dir.resolve().parent / f"{export_dir.resolve().name}-pi"
    dest = dest.absolute()
    real_export, real_dest = export_dir.resolve(), dest.resolve()
    if real_dest == real_export or real_export in real_dest.parents:
        raise EdgeshipError(f"the destination {dest} is inside the export folder {export_dir}",
                            hint="give --dest outside the export folder")
    chosen = _choose(manifest, target, export_dir, _as_list(formats, "formats"), _as_list(precision, "precision"))
    notes = _check_parity(export_dir, chosen, allow_failed)
    labels = _labels(manifest, export_dir)

    previous = _read_record(dest)
    if target.name == "pi" and previous is None and dest.exists() and (not dest.is_dir() or any(dest.iterdir())) and not force:
        raise EdgeshipError(f"{dest} exists and is not a bundle made by edgeship package",
                            hint="choose another --dest, or pass --force to write into it")
    archive = dest.with_name(dest.name + ".tar.gz") if target.name == "pi" else None
    if archive is not None and archive.exists() and previous is None and not force:
        raise EdgeshipError(f"{archive} exists and was not made by edgeship package",
                            hint="move it away, or pass --force to overwrite it")

    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.stage-", dir=dest.parent))
    try:
        entries, new_manifest = _stage(stage, target, manifest, chosen, labels, export_dir, root)
        files = {rel: sha256_path(stage / rel) for rel in entries}
        for a in new_manifest["artifacts"]:
            if files[a["path"]] != a["sha256"]:    # the copy itself went wrong (disk full, a file changing under us)
                raise EdgeshipError(f"the copy of {a['path']} does not match its sha256", hint="package again")
        _write_record(stage, target, manifest, files)
        removed = _install(stage, dest, previous, list(files), force)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if archive is not None:
        _write_archive(dest, [*files, RECORD], archive)
    log.info("packaged %s (%d artifact(s)) into %s", manifest["name"], len(chosen), dest)
    return PackageResult(app=target.name, dest=dest, files=files, artifacts=new_manifest["artifacts"],
                         manifest=new_manifest, archive=archive, removed=removed, notes=notes)


# ----------------------------------------------------------------------------------------------------------------
# choosing what to copy

def _target(app: str) -> AppTarget:
    key = (app or "").strip().lower()
    aliases = {"raspberrypi": "pi", "rpi": "pi", "iphone": "ios", "browser": "web"}
    key = aliases.get(key, key)
    if key not in APPS:
        raise EdgeshipError(f"unknown app {app!r}", hint=f"use one of: {', '.join(APPS)}")
    return APPS[key]


def _as_list(value: str | Sequence[str] | None, what: str) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    out = [p.strip().lower() for v in items for p in str(v).split(",") if p.strip()]
    if not out:
        raise EdgeshipError(f"--{what} is empty", hint=f"leave --{what} out to take every one the app can run")
    return out


def _choose(manifest: dict, target: AppTarget, export_dir: Path, formats: list[str] | None,
            precisions: list[str] | None) -> list[dict]:
    if formats:
        unusable = [f for f in formats if f not in target.formats]
        if unusable:
            raise EdgeshipError(f"{target.what} cannot run format(s) {', '.join(unusable)}",
                                hint=f"it runs: {', '.join(target.formats)}")
    have = [a for a in manifest["artifacts"] if a["format"] in target.formats]
    chosen = [a for a in have if (not formats or a["format"] in formats) and (not precisions or a["precision"] in precisions)]
    if not chosen:
        listed = ", ".join(f"{a['format']}/{a['precision']}" for a in manifest["artifacts"]) or "none"
        wanted = "" if not (formats or precisions) else \
            f" matching {'formats ' + ','.join(formats) if formats else ''}{' ' if formats and precisions else ''}" \
            f"{'precision ' + ','.join(precisions) if precisions else ''}"
        raise EdgeshipError(f"{export_dir} has no artifact usable by {target.what}{wanted} (it has: {listed})",
                            hint=f"export one it can run: edgeship export MODEL --formats {','.join(target.formats)}"
                                 + (" (or drop --formats/--precision)" if formats or precisions else ""))
    names = [_dest_path(a["path"], target) for a in chosen]
    if len(set(names)) != len(names):
        raise EdgeshipError(f"two artifacts would land on the same name in {target.what}: {names}",
                            hint="narrow them with --formats/--precision")
    for a in chosen:
        src = inside(export_dir, a["path"], "the manifest's artifact path")
        if src.is_dir():
            _refuse_links_within(src, a["path"])
        problem = manifest_mod.artifact_problem(export_dir, a)
        if problem:
            raise EdgeshipError(problem, hint="export again and package the new folder: only what was exported and verified ships")
    return chosen


def _labels(manifest: dict, export_dir: Path) -> Path | None:
    if not manifest.get("labels"):
        return None
    path = inside(export_dir, manifest["labels"], "the manifest's labels path")
    if not path.is_file():
        raise EdgeshipError(f"the manifest names labels file {manifest['labels']}, which is missing from {export_dir}",
                            hint="export again: the folder is incomplete")
    return path


def _refuse_links_within(folder: Path, rel: str) -> None:
    """A directory artifact (.mlpackage) holding a symbolic link is refused: converters never write one, and copying
    or hashing through it could pull a file from outside the export folder into the app."""
    for top, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            if os.path.islink(os.path.join(top, name)):
                link = Path(top, name).relative_to(folder).as_posix()
                raise EdgeshipError(f"the artifact {rel} holds a symbolic link ({link}); edgeship copies only real files",
                                    hint="the folder was edited by hand or tampered with: export it again")


_REVERIFY = "re-check the folder with: edgeship verify {folder} (it rewrites report.json), or export again"


def _check_parity(export_dir: Path, chosen: list[dict], allow_failed: bool) -> list[str]:
    """Refuse artifacts that report.json does not show passing parity in their runtime: a file that computes
    something other than the model (cosine -0.5) runs in an app without any error, so the report is the only
    guard. Parity "not run" (no runtime on the export host: Core ML on Linux) passes with a note; with
    ``allow_failed`` every artifact passes, each failure noted. Returns the notes."""
    entries = _report_artifacts(export_dir)
    notes, problems = [], []
    for a in chosen:
        matches = [e for e in entries if e.get("path") == a["path"]
                   or (e.get("key") or f"{e.get('format')}:{e.get('precision')}") == f"{a['format']}:{a['precision']}"]
        problem, note = _verdict(matches)
        if note:
            notes.append(f"{a['path']}: {note}; check it with edgeship verify {export_dir} where its runtime runs")
        if problem:
            problems.append(f"{a['path']} ({a['format']} {a['precision']}): {problem}")
    if problems and not allow_failed:
        raise EdgeshipError(f"{len(problems)} artifact(s) did not pass parity in {export_dir / 'report.json'}, "
                            f"so nothing was packaged: {'; '.join(problems)}",
                            hint=_REVERIFY.format(folder=export_dir) + "; or pass --allow-failed to package them anyway")
    notes += [f"packaged although it did not pass: {p} (--allow-failed)" for p in problems]
    return notes


def _verdict(matches: list[dict]) -> tuple[str | None, str | None]:
    """(what is wrong, what to note) for one artifact from its report.json entries; every entry must pass."""
    if not matches:
        return "not listed in report.json", None
    note = None
    for e in matches:
        parity = e.get("parity") if isinstance(e.get("parity"), dict) else {}
        status = parity.get("status")
        if e.get("status") != "ok":
            return f"export {str(e.get('status'))[:40]}: {str(e.get('error') or 'no reason given')[:300]}", None
        if status == "not run":
            note = f"parity not run on the export host ({str(parity.get('reason') or 'no reason given')[:300]})"
        elif status != "pass":
            figure = f"{parity.get('metric')} {parity.get('value')} (threshold {parity.get('threshold')})"
            return f"parity {str(status or 'missing')[:40]}: {str(parity.get('reason') or figure)[:300]}", None
    return None, note


def _report_artifacts(export_dir: Path) -> list[dict]:
    """The artifact entries of report.json; an unreadable or shapeless report is an error, never 'all passed'."""
    path = inside(export_dir, "report.json", "the export's report.json")
    artifacts = report_mod.load(export_dir).get("artifacts")   # unreadable or not an object: an error with a hint
    if not isinstance(artifacts, list):
        raise EdgeshipError(f"{path} has no artifacts list, so nothing shows which artifacts passed parity",
                            hint=_REVERIFY.format(folder=export_dir))
    return [e for e in artifacts if isinstance(e, dict)]


def _dest_path(rel: str, target: AppTarget) -> str:
    return PurePosixPath(rel).name if target.flatten else PurePosixPath(rel).as_posix()


def _check_app_root(target: AppTarget, root: Path | None) -> Path:
    explicit = root is not None
    root = (root if explicit else REPO_ROOT / target.default_root).absolute()
    hint = (f"give the demo's folder with --app-root (the {target.default_root}/ folder of the edgeship repository)"
            if explicit else f"this edgeship install has no {target.default_root}/ beside it; pass --app-root")
    if not root.is_dir():
        raise EdgeshipError(f"{root} is not a folder", hint=hint)
    if target.name == "android":
        settings = [root / "settings.gradle.kts", root / "settings.gradle"]
        text = "".join(s.read_text(errors="replace") for s in settings if s.is_file())
        if ANDROID_MARKER not in text:
            raise EdgeshipError(f"{root} is not the edgeship Android demo: no settings.gradle(.kts) naming "
                                f"{ANDROID_MARKER!r}", hint=hint)
    elif target.name == "web":
        index = root / "index.html"
        if not index.is_file() or WEB_MARKER not in index.read_text(errors="replace"):
            raise EdgeshipError(f"{root} is not the edgeship web demo: no index.html naming {WEB_MARKER!r}", hint=hint)
    elif target.name == "ios":
        pbx = root / IOS_PROJECT / "project.pbxproj"
        if not pbx.is_file():
            raise EdgeshipError(f"{root} is not the edgeship iOS demo: it has no {IOS_PROJECT}", hint=hint)
    else:
        missing = [f for f in ("install.sh", "classify.py", "bench.sh") if not (root / f).is_file()]
        if missing:
            raise EdgeshipError(f"{root} is not the edgeship raspberrypi/ folder: {', '.join(missing)} missing", hint=hint)
    return root


# ----------------------------------------------------------------------------------------------------------------
# building the new content in a staging folder

def _stage(stage: Path, target: AppTarget, manifest: dict, chosen: list[dict], labels: Path | None,
           export_dir: Path, root: Path | None) -> tuple[list[str], dict]:
    entries: list[str] = []
    new_artifacts = []
    for a in chosen:
        rel = _dest_path(a["path"], target)
        _copy(inside(export_dir, a["path"], "the manifest's artifact path"), stage / rel)  # a link: its real file
        new_artifacts.append({**a, "path": rel})
        entries.append(rel)
    new_manifest = {**manifest, "artifacts": new_artifacts}
    if labels is not None:
        new_manifest["labels"] = "labels.txt"
        _copy(labels, stage / "labels.txt")
        entries.append("labels.txt")
    manifest_mod.validate(new_manifest, "the packaged manifest.json")
    write_json_atomic(stage / "manifest.json", new_manifest)
    entries.append("manifest.json")
    if target.name == "pi":
        runtime = _runtime_source()
        _copy(runtime, stage / "edgeship_runtime")
        entries.append("edgeship_runtime")
        for f in sorted(root.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.suffix not in (".pyc",) and f.name not in entries:
                _copy(inside(root, f.name, f"the file of {target.what}"), stage / f.name)
                entries.append(f.name)
    return entries, new_manifest


def _runtime_source() -> Path:
    spec = importlib.util.find_spec("edgeship_runtime")
    if spec is None or not spec.origin:
        local = REPO_ROOT / "runtimes" / "edgeship_runtime"
        if local.is_dir():
            return local
        raise EdgeshipError("the device-side package edgeship_runtime is not installed",
                            hint="pip install -e . from the edgeship repository")
    return Path(spec.origin).parent


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".DS_Store"))
    else:
        shutil.copyfile(src, dst)
        mode = 0o755 if (src.suffix in (".sh",) or os.access(src, os.X_OK)) else 0o644
        os.chmod(dst, mode)


def _write_record(stage: Path, target: AppTarget, manifest: dict, files: dict[str, str]) -> None:
    try:
        from importlib.metadata import version
        ours = version("edgeship")
    except Exception:  # noqa: BLE001 - running from a source tree without metadata
        ours = None
    record = {"packaged_by": "edgeship package", "edgeship": ours, "app": target.name, "model": manifest["name"],
              "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(), "files": files}
    write_json_atomic(stage / RECORD, record)


def _read_record(dest: Path) -> dict | None:
    path = inside(dest, RECORD, "the packaging record",
                  hint=f"replace the link {dest / RECORD} with the real file, or delete it")
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        files = record["files"]
        if not isinstance(files, dict) or not all(isinstance(k, str) for k in files):
            raise ValueError("files is not a mapping")
    except (ValueError, KeyError, TypeError) as e:
        raise EdgeshipError(f"{path} is damaged ({e}); cannot tell which files an earlier packaging wrote",
                            hint=f"delete {path} and the model files beside it by hand, then package again") from e
    for rel in files:   # resolved, links followed: a tampered record or a linked subfolder cannot delete outside
        inside(dest, rel, f"{path}: the entry",
               hint=f"{dest} changed since it was packaged: delete {path} and the model files beside it by hand "
                    "(keep any symbolic link's target), then package again")
    return record


# ----------------------------------------------------------------------------------------------------------------
# replacing the previous packaging

def _install(stage: Path, dest: Path, previous: dict | None, entries: list[str], force: bool) -> list[str]:
    """Move the staged entries into dest, first removing what the previous packaging wrote; return what was removed."""
    old = list(previous["files"]) if previous else []
    for rel in [*entries, RECORD]:      # before anything is written or removed: no link may lead the writes out
        inside(dest, rel, "the destination path", hint=f"{dest} has a symbolic link leading outside it: replace it with "
                                                        "a real folder, or give another --dest")
    collisions = [e for e in entries if e not in old and os.path.lexists(dest / e)]
    if collisions and not force:
        raise EdgeshipError(f"{dest} already has {', '.join(collisions)}, which edgeship package did not write",
                            hint="move them away, or pass --force to overwrite them")
    if not dest.exists():
        os.rename(stage, dest)          # the common case: one atomic rename
        stage.mkdir()                   # so the caller's cleanup has something to remove
        return []
    if not dest.is_dir():
        raise EdgeshipError(f"{dest} exists and is not a folder", hint="choose another --dest")
    removed = []
    for rel in old:
        p = dest / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(rel)
        _prune_empty_parents(p.parent, dest)
    for rel in [*entries, RECORD]:
        src, dst = stage / rel, dest / rel
        if dst.is_symlink():
            dst.unlink()                # the link itself, never what it points to
        elif dst.is_dir():
            shutil.rmtree(dst)          # only reachable with force (a collision) or for our own record
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    return removed


def _prune_empty_parents(folder: Path, top: Path) -> None:
    while folder != top and top in folder.parents:
        with contextlib.suppress(OSError):
            folder.rmdir()              # only succeeds when empty
        if folder.exists():
            return
        folder = folder.parent


def _write_archive(dest: Path, entries: Iterable[str], archive: Path) -> None:
    """<dest>.tar.gz with one top folder named like dest, holding exactly the packaged entries."""
    fd, tmp = tempfile.mkstemp(prefix=f".{archive.name}.", suffix=".tmp", dir=archive.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for rel in sorted(entries):
                tar.add(dest / rel, arcname=f"{dest.name}/{rel}", filter=_tar_filter)
        os.chmod(tmp, 0o644)
        os.replace(tmp, archive)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    if "__pycache__" in info.name.split("/") or info.name.endswith(".pyc"):
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if info.isfile():
        info.mode = 0o755 if info.mode & stat.S_IXUSR else 0o644
    return info
