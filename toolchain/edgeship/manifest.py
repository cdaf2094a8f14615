"""manifest.json: what an app needs to run an exported model. Versioned, validated against the JSON Schema on write and read."""
from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from edgeship_runtime.formats import FORMATS

from ._io import inside, sha256_path, write_json_atomic
from .errors import EdgeshipError

SCHEMA_VERSION = "1.0"
SCHEMA_PATH = Path(__file__).parent / "schemas" / "manifest.schema.json"
BASE_PACKAGES = ("edgeship", "torch", "numpy")     # then every format's converter and runtime packages
STAGE_PACKAGES = ("torch-pruning",)


def tool_packages() -> tuple[str, ...]:
    """The packages whose versions manifest.json and report.json record: edgeship, torch, numpy, each registered
    format's converter and runtime packages (edgeship_runtime.formats), and those of the compression stages."""
    pkgs = list(BASE_PACKAGES)
    for spec in FORMATS.values():
        pkgs += spec.converter_pip + spec.runtime_pip
    return tuple(dict.fromkeys(pkgs + list(STAGE_PACKAGES)))


def tool_versions() -> dict[str, str | None]:
    """Versions of every tool that can take part in making an artifact (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for p in tool_packages():
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


@lru_cache(maxsize=1)
def _schema_text() -> str:
    return SCHEMA_PATH.read_text()


def schema() -> dict:
    """The manifest schema, with the artifact format enum read from the format registry: the file lists the
    built-in formats (a test keeps them equal), a format registered in this process is added here."""
    s = json.loads(_schema_text())
    enum = s["$defs"]["artifact"]["properties"]["format"]["enum"]
    enum += [k for k in FORMATS if k not in enum]
    return s


def validate(manifest: dict, where: str = "manifest.json") -> None:
    check_schema(manifest, schema(), SCHEMA_PATH, "manifest", where)


def check_schema(doc, schema_doc: dict, schema_path: Path, what: str, where: str) -> None:
    """Validate ``doc`` against a JSON Schema; the first problem (by location) as an EdgeshipError naming ``where``,
    the location and the schema file. manifest.json and report.json both go through it."""
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(schema_doc).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        loc = "/".join(str(p) for p in e.path) or "(top level)"
        raise EdgeshipError(f"{where} does not follow the {what} schema at {loc}: {e.message}",
                            hint=f"the schema is {schema_path}; {len(errors)} problem(s) in all")


def check_version(manifest: dict, where: str = "manifest.json") -> None:
    version = str(manifest.get("schema_version", ""))
    major = version.split(".")[0]
    if not major.isdigit():
        raise EdgeshipError(f"{where} has no valid schema_version ({version!r})", hint="is this an edgeship export folder?")
    if int(major) > int(SCHEMA_VERSION.split(".")[0]):
        raise EdgeshipError(f"{where} has schema_version {version}, newer than this edgeship understands ({SCHEMA_VERSION})",
                            hint="upgrade edgeship: pip install -U edgeship")


def load(folder: Path) -> dict:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise EdgeshipError(f"{folder} is not an edgeship export folder: it has no manifest.json",
                            hint="make one with: edgeship export MODEL --out FOLDER")
    try:
        manifest = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise EdgeshipError(f"{path} is not valid JSON: {str(e)[:200]}", hint="export the folder again") from e
    if not isinstance(manifest, dict):
        raise EdgeshipError(f"{path} holds a JSON {type(manifest).__name__}, not an object", hint="export the folder again")
    check_version(manifest, str(path))
    validate(manifest, str(path))
    for art in manifest["artifacts"]:   # every path stays inside the folder, symlinks followed
        inside(Path(folder), art["path"], f"{path}: artifact path")
    if manifest.get("labels"):
        inside(Path(folder), manifest["labels"], f"{path}: labels path")
    return manifest


def build(spec, artifacts: list[dict], labels_file: str | None) -> dict:
    """The manifest for ``spec`` and its artifact entries (already carrying path, sha256, size, I/O)."""
    outputs = spec.reference(spec.example_inputs())
    out_names = list(spec.output_names or (["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]))
    inputs = []
    for i in spec.inputs:
        entry = i.to_dict()   # name, shape, dtype, layout; the range of its values and its kind (mask) where known
        if spec.preprocess and i.layout in ("NCHW", "NHWC"):
            entry["preprocess"] = spec.preprocess
        inputs.append(entry)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": spec.name,
        "task": spec.task,
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "tools": tool_versions(),
        "labels": labels_file,
        "num_classes": int(outputs[0].shape[-1]) if spec.task.endswith("classification") else None,
        "inputs": inputs,
        "outputs": [{"name": n, "shape": [int(d) for d in t.shape], "dtype": str(t.dtype).removeprefix("torch."),
                     "meaning": spec.output_meaning if k == 0 else "other"} for k, (n, t) in enumerate(zip(out_names, outputs))],
        "artifacts": artifacts,
    }
    if getattr(spec, "detection", None) is not None:   # --task detect: how the raw boxes/scores decode (edgeship.detect)
        manifest["detection"] = spec.detection.section(out_names)
    validate(manifest)
    return manifest


def write(folder: Path, manifest: dict) -> None:
    validate(manifest)
    write_json_atomic(Path(folder) / "manifest.json", manifest)


def artifact_problem(folder: Path, art: dict) -> str | None:
    """None when the artifact's bytes are those manifest.json's sha256 names, else why not (missing, or changed since
    export). Read through :func:`edgeship._io.inside`: a path leading out of ``folder`` is an error, not a problem."""
    path = inside(Path(folder), art["path"], "artifact path")
    if not path.exists():
        return f"{art['path']} is missing from {folder}; export again"
    digest = sha256_path(path)
    if digest != art["sha256"]:
        return (f"{art['path']} changed since export (its sha256 {digest[:12]}… differs from manifest.json's "
                f"{art['sha256'][:12]}…); run edgeship verify, or export again")
    return None
