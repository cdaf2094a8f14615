"""What every runtime shares: tensor info, the feed mapping, dtype casting and (de)quantization.

Device-side code: numpy and the standard library only (never torch, never edgeship).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

log = logging.getLogger(__name__)

Feeds = Union[Mapping[str, Any], Sequence[Any], np.ndarray]


class RuntimeUnavailable(ImportError):
    """The runtime a model needs is not installed here (or cannot run on this OS); ``hint`` says what fixes it."""

    def __init__(self, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


@dataclass(frozen=True)
class TensorInfo:
    """One input or output as the runtime sees it.

    ``shape`` has ``None`` for dynamic dimensions; ``dtype`` is a numpy dtype name ("float32", "int8", ...);
    ``quantization`` is ``(scale, zero_point)`` for a per-tensor quantized tensor, else ``None``.
    """

    name: str
    shape: Tuple[Optional[int], ...]
    dtype: str
    quantization: Optional[Tuple[float, int]] = None

    def to_dict(self) -> dict:
        q = None if self.quantization is None else {"scale": self.quantization[0], "zero_point": self.quantization[1]}
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "quantization": q}

    def describe(self) -> str:
        dims = "x".join("?" if d is None else str(d) for d in self.shape)
        q = "" if self.quantization is None else f" q(scale={self.quantization[0]:g}, zp={self.quantization[1]})"
        return f"{self.name}:{dims}:{self.dtype}{q}"


class Runtime:
    """Base class: a subclass sets ``inputs``/``outputs`` in ``_load`` and runs ordered arrays in ``_run``.

    ``run(feeds)`` maps the feeds onto ``inputs`` (by name when every feed name is an input name, else by
    position in the order given), checks shapes, casts dtypes (int64 -> int32, float -> int8/uint8 with the
    input's scale/zero point, float64 -> float32 ...) and returns the outputs as numpy arrays, dequantized
    (and float16 widened) to float32.
    """

    name: ClassVar[str] = ""
    install_hint: ClassVar[str] = ""

    def __init__(self, path: Union[str, Path], threads: Optional[int] = None, **opts: Any):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"model file not found: {self.path}")
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads: Optional[int] = None if threads is None else int(threads)
        self.opts = dict(opts)
        self.notes: List[str] = []
        self.inputs: List[TensorInfo] = []
        self.outputs: List[TensorInfo] = []
        self.backend = self.import_backend()
        self.version: str = self._version()
        self._load()

    # --- what a subclass provides -------------------------------------------------------------------------
    @classmethod
    def check_platform(cls) -> None:
        """Raise RuntimeUnavailable when this runtime cannot run models on this OS (cheap: imports nothing)."""

    @classmethod
    def import_backend(cls) -> Any:
        """Import and return the runtime's Python package; raise RuntimeUnavailable with a hint when missing."""
        raise NotImplementedError

    def _version(self) -> str:
        return str(getattr(self.backend, "__version__", "unknown"))

    def _load(self) -> None:
        raise NotImplementedError

    def _run(self, arrays: List[np.ndarray]) -> List[np.ndarray]:
        raise NotImplementedError

    # --- the shared part ----------------------------------------------------------------------------------
    def run(self, feeds: Feeds) -> List[np.ndarray]:
        outs = self._run(self.prepare(feeds))
        return [dequantize(np.asarray(o), info) for o, info in zip(outs, self.outputs)]

    def prepare(self, feeds: Feeds) -> List[np.ndarray]:
        """Order the feeds as ``inputs`` and cast each to the dtype the runtime wants."""
        ordered = self._order(feeds)
        return [self._cast(np.asarray(a), info) for a, info in zip(ordered, self.inputs)]

    def _expected(self) -> str:
        return ", ".join(i.describe() for i in self.inputs)

    def _order(self, feeds: Feeds) -> List[Any]:
        if isinstance(feeds, np.ndarray):
            feeds = [feeds]
        if isinstance(feeds, Mapping):
            names = [i.name for i in self.inputs]
            if len(feeds) != len(names):
                raise ValueError(f"{self.path.name} takes {len(names)} input(s) ({self._expected()}), "
                                 f"got {len(feeds)}: {list(feeds)}")
            if set(feeds) == set(names):
                return [feeds[n] for n in names]
            log.debug("feed names %s do not match input names %s; mapping by position", list(feeds), names)
            return list(feeds.values())
        feeds = list(feeds)
        if len(feeds) != len(self.inputs):
            raise ValueError(f"{self.path.name} takes {len(self.inputs)} input(s) ({self._expected()}), got {len(feeds)}")
        return feeds

    def _cast(self, a: np.ndarray, info: TensorInfo) -> np.ndarray:
        if len(a.shape) != len(info.shape) or any(d is not None and d != s for d, s in zip(info.shape, a.shape)):
            raise ValueError(f"input {info.name!r} expects shape {list(info.shape)} ({info.dtype}), got "
                             f"{list(a.shape)} ({a.dtype}); the model takes: {self._expected()}")
        return np.ascontiguousarray(cast(a, info))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, {self.name} {self.version}, threads={self.threads}, "
                f"inputs=[{', '.join(i.describe() for i in self.inputs)}], "
                f"outputs=[{', '.join(o.describe() for o in self.outputs)}])")


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    """float -> int: round(x / scale) + zero_point (half away from zero, as TFLite does), clipped to the dtype."""
    v = np.asarray(x, dtype=np.float64) / scale
    q = np.trunc(v + np.copysign(0.5, v)) + zero_point
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, info: TensorInfo) -> np.ndarray:
    """Quantized integer output -> float32 with its scale/zero point; float16 -> float32; others unchanged."""
    if info.quantization is not None and q.dtype.kind in "iu":
        scale, zp = info.quantization
        return ((q.astype(np.float32) - np.float32(zp)) * np.float32(scale)).astype(np.float32)
    if q.dtype == np.float16:
        return q.astype(np.float32)
    return q


def cast(a: np.ndarray, info: TensorInfo) -> np.ndarray:
    """Cast ``a`` to ``info.dtype``: quantize floats for quantized int inputs; refuse lossy casts."""
    want = np.dtype(info.dtype)
    if a.dtype == want:
        return a
    if info.quantization is not None and want.kind in "iu" and a.dtype.kind == "f":
        return quantize(a, info.quantization[0], info.quantization[1], want.name)
    if want.kind in "iu" and a.dtype.kind in "iub":
        lim = np.iinfo(want)
        if a.size and (a.min() < lim.min or a.max() > lim.max):
            raise ValueError(f"input {info.name!r} is {want.name}; the values given ({a.dtype}) range "
                             f"{a.min()}..{a.max()}, outside {lim.min}..{lim.max}")
        return a.astype(want)
    if want.kind in "fc" and a.dtype.kind in "fiub":
        return a.astype(want)
    if want.kind == "b" and a.dtype.kind in "iub":
        return a.astype(want)
    raise ValueError(f"input {info.name!r} expects {want.name}, got {a.dtype.name}; cast it first "
                     f"(a float array for an integer input is refused unless the input is quantized)")
