"""ExecuTorch: torch.export -> to_edge_transform_and_lower(XNNPACK) -> .pte; runs in ExecuTorch's runtime."""
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

from ..model import ModelSpec
from . import Exported, artifact_name, require

log = logging.getLogger(__name__)


class ExecuTorchExporter:
    format = "executorch"
    suffix = ".pte"
    runtime = "executorch"
    precisions = frozenset({"fp32", "fp16"})
    extra = "executorch"
    module = "executorch.exir"

    def export(self, spec: ModelSpec, out_dir: Path, precision: str, calib=None) -> Exported:
        import torch
        exir = require("executorch.exir", self.extra, "ExecuTorch export")
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / artifact_name(precision, self.suffix)
        module, args, notes = spec.module, spec.example_inputs(), []
        if precision == "fp16":
            import copy
            module = copy.deepcopy(module).half()
            args = tuple(a.half() if a.is_floating_point() else a for a in args)
            notes.append("fp16 model: float inputs and outputs are float16 in the .pte")
        ep = torch.export.export(module, args, strict=False)
        edge = exir.to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
        details = delegation(edge.exported_program().graph_module)
        if details["portable_ops"]:
            notes.append("left on portable kernels: " + ", ".join(f"{k}×{v}" for k, v in details["portable_ops"].items()))
        program = edge.to_executorch()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(program.buffer)
        os.replace(tmp, path)
        return Exported(path, precision, notes, details)


def delegation(gm) -> dict:
    """Count XNNPACK delegate calls and the ops that stayed on ExecuTorch's portable kernels."""
    delegates, portable = 0, Counter()
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if "executorch_call_delegate" in name:
            delegates += 1
        elif name != "getitem":
            portable[name.replace("aten.", "").split(".")[0]] += 1
    return {"delegates": delegates, "portable_nodes": sum(portable.values()), "portable_ops": dict(sorted(portable.items()))}
