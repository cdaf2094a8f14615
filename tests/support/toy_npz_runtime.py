"""The toy ``npz`` format's runtime (tests/test_formats.py): a .npz holding one linear layer, run in numpy.

Device-side like edgeship_runtime's runtimes: numpy only, never torch or edgeship. The file holds ``weight``
(OUT x IN), ``bias`` (OUT), ``input_name`` and ``input_shape``; the output is ``x @ weight.T + bias``.
"""
from __future__ import annotations

from typing import Any, List

import numpy as np

from edgeship_runtime.base import Runtime, TensorInfo


class NpzRuntime(Runtime):
    name = "numpy-npz"
    install_hint = "pip install numpy"

    @classmethod
    def import_backend(cls) -> Any:
        return np

    def _load(self) -> None:
        with np.load(self.path, allow_pickle=False) as z:
            self.weight = z["weight"].astype(np.float32)
            self.bias = z["bias"].astype(np.float32)
            name, shape = str(z["input_name"]), tuple(int(d) for d in z["input_shape"])
        self.inputs = [TensorInfo(name, shape, "float32")]
        self.outputs = [TensorInfo("output", shape[:-1] + (self.weight.shape[0],), "float32")]

    def _run(self, arrays: List[np.ndarray]) -> List[np.ndarray]:
        return [(arrays[0] @ self.weight.T + self.bias).astype(np.float32)]
