"""ExecuTorch programs (.pte) in executorch.runtime, XNNPACK delegates included.

executorch's Python runtime imports torch (its pybindings link libtorch, and ``executorch.runtime`` pulls in
``executorch.exir``): this module imports it only when a model is opened, so ``import edgeship_runtime.executorch``
stays torch-free. A .pte carries no tensor names: inputs are called input_0, input_1, ... in forward()'s order.

Threads: the XNNPACK delegate and the portable kernels share ExecuTorch's process-wide threadpool; ``threads``
resets it (``_unsafe_reset_threadpool``, before the program is loaded) for the whole process.
"""
from __future__ import annotations

from typing import Any, List

import numpy as np

from .base import Runtime, RuntimeUnavailable, TensorInfo, cast

# c10::ScalarType codes (executorch/runtime/core/portable_type/scalar_type.h) -> numpy dtype names
_SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32",
                 7: "float64", 11: "bool"}


class ExecuTorchRuntime(Runtime):
    """Options: ``method`` (default "forward"); ``etdump`` (True: the program records an ETDump of every
    execution, for ``write_etdump``; needs a runtime built with the event tracer, as the pip wheel is) and
    ``debug_buffer_size`` (bytes for intermediate outputs in the ETDump; default 0, timings only)."""

    name = "executorch"
    install_hint = "pip install executorch"

    @classmethod
    def import_backend(cls) -> Any:
        try:
            import executorch.runtime  # loads torch and the compiled runtime (portable_lib)
        except ImportError as e:
            raise RuntimeUnavailable(f"executorch is not installed ({e})", hint=cls.install_hint) from e
        return executorch.runtime

    def _version(self) -> str:
        from executorch import version
        return str(version.__version__)

    def _load(self) -> None:
        import torch  # executorch.runtime has imported it already; its methods take and return torch tensors
        from executorch.extension.pybindings import portable_lib

        self._torch = torch
        if self.threads is not None:
            portable_lib._unsafe_reset_threadpool(self.threads)
        self.threads = int(portable_lib._threadpool_get_thread_count())
        if self.opts.get("etdump"):
            self.program = self.backend.Runtime.get().load_program(
                str(self.path), enable_etdump=True, debug_buffer_size=int(self.opts.get("debug_buffer_size", 0)))
        else:
            self.program = self.backend.Runtime.get().load_program(str(self.path))
        method = self.opts.get("method", "forward")
        if method not in self.program.method_names:
            raise ValueError(f"{self.path.name} has no method {method!r}; it has {sorted(self.program.method_names)}")
        self.method = self.program.load_method(method)
        meta = self.method.metadata
        self.inputs = [_info(f"input_{k}", meta.input_tensor_meta(k)) for k in range(meta.num_inputs())]
        self.outputs = [_info(f"output_{k}", meta.output_tensor_meta(k)) for k in range(meta.num_outputs())]

    def _cast(self, a: np.ndarray, info: TensorInfo) -> np.ndarray:
        """A .pte gives no word of which dimensions are dynamic: its input sizes are the upper bounds of dynamic
        ones (memory is planned for them). So any size up to them is passed on, and ExecuTorch itself refuses a
        static input of another size (see _run)."""
        if len(a.shape) == len(info.shape) and all(0 < s <= d for s, d in zip(a.shape, info.shape)):
            return np.ascontiguousarray(cast(a, info))
        return super()._cast(a, info)

    def _run(self, arrays: List[np.ndarray]) -> List[np.ndarray]:
        try:
            outs = self.method.execute([self._torch.from_numpy(a if a.flags.writeable else a.copy()) for a in arrays])
        except RuntimeError as e:
            if "set_inputs" not in str(e) or all(tuple(a.shape) == i.shape for a, i in zip(arrays, self.inputs)):
                raise
            given = ", ".join(f"{i.name}:{'x'.join(map(str, a.shape))}" for a, i in zip(arrays, self.inputs))
            raise ValueError(f"{self.path.name} did not take inputs of shape {given}: a static input takes only its own "
                             f"shape, a dynamic one sizes up to its bound ({self._expected()}) ({e})") from e
        return [o.numpy() if hasattr(o, "numpy") else np.asarray(o) for o in outs]

    # --- profiling (``etdump=True``) ----------------------------------------------------------------------
    def write_etdump(self, etdump_path: str, debug_buffer_path: str) -> None:
        """Write the ETDump of every execution so far (and the debug buffer) to files, for the Inspector."""
        if not self.opts.get("etdump"):
            raise ValueError("open the program with etdump=True to record an ETDump")
        self.program.write_etdump_result_to_file(str(etdump_path), str(debug_buffer_path))


def _info(name: str, meta: Any) -> TensorInfo:
    code = int(meta.dtype())
    return TensorInfo(name, tuple(int(s) for s in meta.sizes()), _SCALAR_TYPES.get(code, f"scalar_type_{code}"))
