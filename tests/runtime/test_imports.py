"""The device-side package never imports torch (nor edgeship): it is pushed to devices with numpy + one runtime."""
from __future__ import annotations

import subprocess
import sys


def _python(code: str) -> None:
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_modules_import_no_torch():
    _python("import edgeship_runtime.bench, edgeship_runtime.onnx, edgeship_runtime.tflite, "
            "edgeship_runtime.executorch, edgeship_runtime.coreml, edgeship_runtime.torchscript; import sys; "
            "assert 'torch' not in sys.modules and 'edgeship' not in sys.modules, sorted(sys.modules)")


def test_running_onnx_and_tflite_imports_no_torch(models):
    onnx, tflite = models["two"].path("onnx"), models["two"].path("tflite")
    _python("import sys, numpy as np; from edgeship_runtime import open_runtime\n"
            f"for p in ({str(onnx)!r}, {str(tflite)!r}):\n"
            "    open_runtime(p).run([np.ones((1, 8), np.float32)] * 2)\n"
            "bad = [m for m in ('torch', 'edgeship', 'executorch', 'coremltools') if m in sys.modules]\n"
            "assert not bad, bad")


def test_package_sources_do_not_import_torch_or_edgeship():
    import ast
    from pathlib import Path

    import edgeship_runtime
    for src in Path(edgeship_runtime.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(src.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for n in names:
                assert n.split(".")[0] != "edgeship", f"{src.name} imports {n}"
                # only the ExecuTorch class, lazily, where executorch has it loaded; and PyTorch Mobile's, whose
                # runtime is torch itself (lazily too: test_modules_import_no_torch)
                if n.split(".")[0] == "torch":
                    assert src.name in ("executorch.py", "torchscript.py"), f"{src.name} imports {n}"
