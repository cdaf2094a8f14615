"""The toy ``npz`` format's exporter (tests/test_formats.py): one nn.Linear saved as its weight and bias.

What a format outside the package needs on the host: an exporter class with the attributes of
``edgeship.export.Exporter`` and an ``export`` that writes ``model<.precision><suffix>`` into ``out_dir``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeship.errors import EdgeshipError
from edgeship.export import Exported, artifact_name
from edgeship.model import ModelSpec


class NpzExporter:
    format = "npz"
    suffix = ".npz"
    runtime = "numpy-npz"              # NpzRuntime.name
    precisions = frozenset({"fp32"})
    extra = "all"
    module = "numpy"

    def export(self, spec: ModelSpec, out_dir: Path, precision: str, calib=None, quant=None) -> Exported:
        import torch
        linear = spec.module
        if not isinstance(linear, torch.nn.Linear) or len(spec.inputs) != 1:
            raise EdgeshipError(f"the npz format holds one nn.Linear with one input, not a {type(linear).__name__}")
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / artifact_name(precision, self.suffix)
        with open(path, "wb") as f:
            np.savez(f, weight=linear.weight.detach().numpy(), bias=linear.bias.detach().numpy(),
                     input_name=np.array(spec.inputs[0].name), input_shape=np.array(spec.inputs[0].shape))
        return Exported(path, precision, notes=["toy npz format: numpy runs x @ W.T + b"])
