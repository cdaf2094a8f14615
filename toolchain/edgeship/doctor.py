"""`edgeship doctor`: which formats can export and run here, and why not."""
from __future__ import annotations

import platform
from importlib import metadata

from .export import EXPORTERS, available

RUNTIME_PACKAGES = {"onnx": ["onnxruntime"], "tflite": ["ai-edge-litert", "tflite-runtime"],
                    "executorch": ["executorch"], "coreml": ["coremltools"], "torchscript": ["torch"]}
CONVERTER_PACKAGES = {"onnx": ["onnx", "onnxscript", "onnxslim"], "tflite": ["litert-torch", "ai-edge-quantizer"],
                      "executorch": ["executorch", "torchao"], "coreml": ["coremltools"], "torchscript": ["torch"]}


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def runtime_available(fmt: str) -> tuple[bool, str | None]:
    """Whether artifacts of ``fmt`` can run (predict) on this host, and if not, why."""
    from edgeship_runtime import RuntimeUnavailable, runtime_class

    try:
        runtime_class(fmt).import_backend()
    except RuntimeUnavailable as e:
        return False, str(e)
    if fmt == "coreml" and platform.system() != "Darwin":
        return False, "Core ML prediction needs macOS (here the package is inspected: names, shapes, dtypes)"
    return True, None


def diagnose() -> dict:
    rows = []
    for fmt in EXPORTERS:
        ok, reason = available(fmt)
        run_ok, run_reason = runtime_available(fmt)
        pkgs = dict.fromkeys(CONVERTER_PACKAGES[fmt] + RUNTIME_PACKAGES[fmt])
        versions = ", ".join(f"{p} {_version(p)}" for p in pkgs if _version(p))
        rows.append({"format": fmt, "export": ok, "export_reason": reason, "run": run_ok, "run_reason": run_reason,
                     "versions": versions or "—"})
    return {"formats": rows, "python": platform.python_version(), "platform": platform.platform(),
            "torch": _version("torch")}
