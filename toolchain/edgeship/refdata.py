"""Verification data: the inputs every artifact is checked on (real examples, seeded random ones, --verify-data),
PyTorch's reference outputs and their sanity checks, the extra sets at the MIN and MAX of dynamic dimensions, and
reference.npz, which stores them beside the artifacts so ``edgeship verify`` can re-check a folder without the model."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from . import verify
from .errors import EdgeshipError
from .model import ModelSpec

def verification_feeds(spec: ModelSpec, samples: int, data: Path | None, real=None) -> tuple[list[tuple], str]:
    """The inputs every artifact is checked on, and where they came from.

    Real examples when there are any (``real``: the eval DataSource or the calibration inputs): an int8 model
    calibrated on real data is only meant to be right on data like it, and seeded N(0, 1) noise saturates its
    ranges (SQNR 3-4 dB on digits, with eval accuracy unchanged). Otherwise seeded random inputs. Plus any
    user-given ones (.npz with one array per input name, or 'x')."""
    if real is not None and hasattr(real, "calibration"):
        feeds, source = real.calibration(samples, seed=1), f"{samples} examples of the eval data"
    elif real:
        feeds, source = list(real)[:samples], f"{min(samples, len(real))} calibration examples"
    else:
        feeds, source = [spec.example_inputs(seed=s) for s in range(samples)], f"{samples} seeded random inputs"
    if data is not None:
        extra = load_verify_data(spec, data)
        feeds += extra
        source += f" + {len(extra)} from {data}"
    return feeds, source


def load_verify_data(spec: ModelSpec, path: Path) -> list[tuple]:
    import torch
    if not path.is_file():
        raise EdgeshipError(f"--verify-data {path} does not exist")
    with np.load(path) as npz:
        keys = [i.name for i in spec.inputs]
        if len(keys) == 1 and keys[0] not in npz and "x" in npz:
            arrays = {keys[0]: npz["x"]}
        else:
            missing = [k for k in keys if k not in npz]
            if missing:
                raise EdgeshipError(f"--verify-data {path} lacks arrays for inputs {missing}", hint=f"it has {list(npz.keys())}; name arrays after the inputs, or 'x' for a single input")
            arrays = {k: npz[k] for k in keys}
    n = len(next(iter(arrays.values())))
    out = []
    for j in range(n):
        row = []
        for i in spec.inputs:
            a = np.asarray(arrays[i.name][j])
            if tuple(a.shape) != i.shape:
                a = a.reshape(i.shape) if a.size == int(np.prod(i.shape)) else a
            if tuple(a.shape) != i.shape:
                raise EdgeshipError(f"--verify-data sample {j} for input {i.name!r} has shape {list(a.shape)}, the model wants {list(i.shape)}")
            row.append(torch.from_numpy(a.astype(i.dtype)))
        out.append(tuple(row))
    return out


def check_finite_reference(refs: list[list[np.ndarray]], source: str) -> None:
    """PyTorch's own outputs must be finite: NaN or inf there is the model's problem, and no artifact can be
    checked against it (it would be reported as the artifact's fault)."""
    for k, outs in enumerate(refs):
        for j, a in enumerate(outs):
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                bad = int(np.size(a) - np.isfinite(a).sum())
                raise EdgeshipError(f"the model's own PyTorch output {j} is not finite ({bad} NaN/inf values) on "
                                    f"verification input {k} ({source}): a problem of the model, not of any export; "
                                    "nothing was written", hint="run the model in PyTorch on these inputs; give real "
                                    "inputs with --verify-data, --calib or --eval if random ones are out of its range")


def check_fixed_output_shapes(spec: ModelSpec, np_feeds, refs: list[list[np.ndarray]]) -> None:
    """Inputs of the same shapes must give outputs of the same shapes: an output whose size depends on the values
    (NMS, torch.nonzero, a score threshold in forward()) exports in no format; say so, and point to --task detect."""
    first: dict[tuple, tuple] = {}
    for k, (feed, outs) in enumerate(zip(np_feeds, refs)):
        in_shapes = tuple(tuple(np.shape(x)) for x in feed)
        out_shapes = tuple(tuple(np.shape(o)) for o in outs)
        seen = first.setdefault(in_shapes, (k, out_shapes))
        if seen[1] == out_shapes:
            continue
        j = next(j for j, (a, b) in enumerate(zip(seen[1], out_shapes)) if a != b) if len(seen[1]) == len(out_shapes) else 0
        shown = ("x".join(map(str, seen[1][j])) or "scalar", "x".join(map(str, out_shapes[j])) or "scalar") \
            if len(seen[1]) == len(out_shapes) else (f"{len(seen[1])} outputs", f"{len(out_shapes)} outputs")
        from .detect import VARIABLE_OUTPUT_HINT
        raise EdgeshipError(f"the model's output {j} has shape {shown[0]} on verification input {seen[0]} and "
                            f"{shown[1]} on input {k} (same input shapes): its outputs vary in size with the values, "
                            "as a detector's do after a score threshold or NMS; no format can export that. "
                            "Nothing was written", hint=VARIABLE_OUTPUT_HINT)


@dataclass
class SizeCheck:
    """Verification inputs at one size of the dynamic dimensions (``label``: min | example | max) and PyTorch's
    outputs; the example size's are the main verification set (``feeds`` None here)."""
    label: str
    shapes: dict[str, list[int]]
    feeds: list[list[np.ndarray]] | None = None
    refs: list[list[np.ndarray]] | None = None


SIZE_SAMPLES = 2   # seeded random inputs at MIN and at MAX (the example size has the --samples ones)


def size_feeds(spec: ModelSpec, samples: int) -> list[SizeCheck]:
    """The sizes a model with dynamic dimensions is verified at: every dynamic dimension at its MIN, at its example
    size (the main verification set) and at its MAX. Empty without dynamic dimensions."""
    out = []
    for label in spec.sizes() if spec.dynamic else ():
        at = spec.at(label)
        shapes = {i.name: list(i.shape) for i in at.inputs}
        if any(sc.shapes == shapes for sc in out):   # (1..2): the example is the MAX
            continue
        if label == "example":
            out.append(SizeCheck(label, shapes))
            continue
        feeds = [at.example_inputs(seed=s) for s in range(min(samples, SIZE_SAMPLES))]
        try:
            refs = [[t.numpy() for t in at.reference(f)] for f in feeds]
        except Exception as e:  # noqa: BLE001 - the model itself fails at that size
            from .model import raised
            given = ", ".join(f"{k}:{'x'.join(map(str, v))}" for k, v in shapes.items())
            raise EdgeshipError(f"the model fails in PyTorch at the {label} size of its dynamic dimensions ({given}): "
                                f"{raised(e)}; nothing was written",
                                hint="narrow the dynamic range in --input to the sizes the model takes") from e
        check_finite_reference(refs, f"{len(feeds)} seeded random inputs at the {label} size")
        out.append(SizeCheck(label, shapes, [[t.numpy() for t in f] for f in feeds], refs))
    return out


def check_sizes(parity: dict, path: Path, fmt: str, precision: str, sizes: Sequence[SizeCheck], classifier: bool,
                fixed: dict | None = None) -> None:
    """Run the artifact at each size of ``sizes`` too; ``parity["sizes"]`` gets one row per size (the example
    size's is ``parity`` itself), and the artifact fails when any size fails. ``fixed``: the shapes a format fixed
    the dynamic inputs to (TFLite): other sizes are "not run", with the reason."""
    rows = []
    for sc in sizes:
        if sc.feeds is None:
            p = dict(parity)
        elif fixed and any(sc.shapes.get(k) != v for k, v in fixed.items()):
            from .export.tflite import FIXED_SHAPES
            taken = ", ".join(f"{k}:{'x'.join(map(str, v))}" for k, v in fixed.items())
            p = verify.not_run(precision, f"{FIXED_SHAPES if fmt == 'tflite' else 'fixed shapes'}; the artifact "
                                          f"takes only {taken}").to_dict()
        else:
            p = verify.check_artifact(path, fmt, precision, sc.feeds, sc.refs, classifier).to_dict()
        rows.append({"size": sc.label, "shapes": sc.shapes,
                     **{f: p.get(f) for f in ("status", "value", "cosine", "max_abs", "sqnr_db", "samples", "reason")}})
    parity["sizes"] = rows
    failed = [r for r in rows if r["status"] == "fail"]
    if failed and parity.get("status") in ("pass", "not run"):
        f = failed[0]
        at = ", ".join(f"{k}:{'x'.join(map(str, v))}" for k, v in f["shapes"].items())
        parity["status"] = "fail"
        parity["reason"] = f"at the {f['size']} size ({at}): {f.get('reason')}"


REFERENCE_FILE = "reference.npz"


def save_reference(folder: Path, spec: ModelSpec, np_feeds, refs, sizes: Sequence[SizeCheck] = ()) -> None:
    """Store the verification inputs and PyTorch's outputs beside the artifacts, so ``edgeship verify`` can
    re-check a folder without the model (like ExecuTorch's BundledProgram, for every format). The sets at the
    MIN and MAX of dynamic dimensions go in as ``size_min__input__NAME`` / ``size_min__output__K`` ..."""
    arrays = {f"input__{i.name}": np.stack([f[k] for f in np_feeds]) for k, i in enumerate(spec.inputs)}
    arrays |= {f"output__{k}": np.stack([r[k] for r in refs]) for k in range(len(refs[0]))}
    for sc in (sc for sc in sizes if sc.feeds is not None):
        arrays |= {f"size_{sc.label}__input__{i.name}": np.stack([f[k] for f in sc.feeds]) for k, i in enumerate(spec.inputs)}
        arrays |= {f"size_{sc.label}__output__{k}": np.stack([r[k] for r in sc.refs]) for k in range(len(sc.refs[0]))}
    tmp = folder / (REFERENCE_FILE + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(folder / REFERENCE_FILE)


def load_verification(folder: Path) -> tuple[dict, list[list[np.ndarray]], list[list[np.ndarray]]]:
    """What re-verifying an export folder needs: its manifest (checked) and the stored reference inputs and outputs
    (``edgeship verify``, here or on a device)."""
    from . import manifest as manifest_mod
    manifest = manifest_mod.load(folder)
    if not manifest["artifacts"]:
        raise EdgeshipError(f"{folder / 'manifest.json'} lists no artifacts: there is nothing to verify",
                            hint="export the folder again")
    feeds, refs = load_reference(folder, manifest)
    return manifest, feeds, refs


def load_reference(folder: Path, manifest: dict) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
    path = folder / REFERENCE_FILE
    if not path.is_file():
        raise EdgeshipError(f"{folder} has no {REFERENCE_FILE} with reference inputs and outputs",
                            hint="re-export the folder with this edgeship version")
    try:
        with np.load(path, allow_pickle=False) as z:
            ins = [z[f"input__{i['name']}"] for i in manifest["inputs"]]
            outs = [z[f"output__{k}"] for k in range(len(manifest["outputs"]))]
    except Exception as e:  # noqa: BLE001 - not a zip, a missing array, an object array: the file is damaged
        raise EdgeshipError(f"{path} cannot be read as the folder's reference data ({type(e).__name__}: {str(e)[:200]})",
                            hint="export the folder again: reference.npz holds the inputs and PyTorch outputs verify needs") from None
    arrays = ins + outs
    n = len(ins[0]) if ins and ins[0].ndim else 0
    if not n or any(a.ndim == 0 or len(a) != n or a.dtype.kind not in "biuf" for a in arrays):
        raise EdgeshipError(f"{path} does not hold one numeric input and output row per verification sample",
                            hint="export the folder again")
    return [[a[j] for a in ins] for j in range(n)], [[a[j] for a in outs] for j in range(n)]


def load_size_checks(folder: Path, manifest: dict) -> list[SizeCheck]:
    """The MIN/example/MAX verification sets of dynamic dimensions stored in reference.npz (empty when none)."""
    try:
        return _load_size_checks(folder, manifest)
    except Exception as e:  # noqa: BLE001 - a missing or mangled array: the file is damaged, as in load_reference
        raise EdgeshipError(f"{folder / REFERENCE_FILE} cannot be read as the folder's reference data at the sizes of "
                            f"its dynamic dimensions ({type(e).__name__}: {str(e)[:200]})",
                            hint="export the folder again") from None


def _load_size_checks(folder: Path, manifest: dict) -> list[SizeCheck]:
    out = []
    with np.load(folder / REFERENCE_FILE, allow_pickle=False) as z:
        for label in ("min", "example", "max"):
            if label == "example":
                ins = [z[f"input__{i['name']}"] for i in manifest["inputs"]]
                out.append(SizeCheck(label, {i["name"]: list(a.shape[1:]) for i, a in zip(manifest["inputs"], ins)}))
                continue
            if f"size_{label}__input__{manifest['inputs'][0]['name']}" not in z.files:
                continue
            ins = [z[f"size_{label}__input__{i['name']}"] for i in manifest["inputs"]]
            outs = [z[f"size_{label}__output__{k}"] for k in range(len(manifest["outputs"]))]
            n = len(ins[0])
            out.append(SizeCheck(label, {i["name"]: list(a.shape[1:]) for i, a in zip(manifest["inputs"], ins)},
                                 [[a[j] for a in ins] for j in range(n)], [[a[j] for a in outs] for j in range(n)]))
    return out if len(out) > 1 else []
