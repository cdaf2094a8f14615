"""Parity metrics and the tolerance policy: the one place where thresholds live.

An artifact passes when, on every verification input, its outputs agree with the PyTorch reference within
the tolerance of its precision. Thresholds are reported with the figures and never loosened silently.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from edgeship_runtime.formats import FORMATS

from .errors import EdgeshipError, quote

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Scheme:
    """A precision: what it stores in how many bits, and the tolerance its artifacts are held to.

    ``kind``: "float" (fp32, fp16), "static" (int8 weights and activations, calibrated), "dynamic" (int8 weights,
    activations quantized at run time) or "weight-only" (n-bit weights decompressed to float before compute).
    """
    name: str
    kind: str
    bits: int
    metric: str          # "cosine" or "sqnr_db", over all outputs of all verification inputs
    threshold: float     # the artifact passes at or above it

    @property
    def quantized(self) -> bool:
        return self.kind != "float"


SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("fp32", "float", 32, "cosine", 0.9999),
    Scheme("fp16", "float", 16, "cosine", 0.999),
    Scheme("int8", "static", 8, "sqnr_db", 20.0),
    Scheme("dynamic-int8", "dynamic", 8, "sqnr_db", 20.0),
    Scheme("w8", "weight-only", 8, "sqnr_db", 20.0),
    Scheme("w6", "weight-only", 6, "sqnr_db", 15.0),
    Scheme("w4", "weight-only", 4, "sqnr_db", 10.0),
)}
PRECISIONS = tuple(SCHEMES)
QUANTIZED = frozenset(n for n, s in SCHEMES.items() if s.quantized)   # where per-layer options (keep_float) apply


# A verification that cannot fail is no verification. Below these the PyTorch reference says nothing about the
# artifact, and the check is "inconclusive" with the reason (never a pass, never a plain fail).
TINY = 1e-30              # largest |reference| below this: denormal-range values a runtime may flush to zero
CONSTANT_SPREAD = 1e-6    # outputs that vary across the verification inputs by less than this (relative): constant
NEGLIGIBLE_SAMPLE = 1e-6  # a sample whose largest |reference| is below this fraction of all samples' largest


def scheme(precision: str) -> Scheme:
    try:
        return SCHEMES[precision]
    except (KeyError, TypeError):
        raise EdgeshipError(f"unknown precision {quote(precision)}", hint=f"use one of {', '.join(PRECISIONS)}") from None


def tolerance(precision: str) -> tuple[str, float]:
    """(metric, threshold) of ``precision``; an unknown one (a hand-edited folder) is held to int8's."""
    s = SCHEMES.get(precision, SCHEMES["int8"])
    return s.metric, s.threshold


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``got`` against ``ref`` in dB (inf when identical)."""
    ref, got = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    noise = np.sum((ref - got) ** 2)
    if noise == 0:
        return float("inf")
    with np.errstate(divide="ignore"):   # an all-zero reference: -inf dB (verify reports it as inconclusive)
        return float(10 * np.log10(np.sum(ref ** 2) / noise))


def degenerate_reference(refs: Sequence[Sequence[np.ndarray]]) -> str | None:
    """Why a PyTorch reference cannot tell a right artifact from a wrong one, or None when it can: all zeros,
    denormal-range values, or the same outputs for every verification input (a head initialised at zero, logits
    of 1e-9 that barely depend on the input)."""
    flat = [np.concatenate([np.asarray(o, np.float64).ravel() for o in ref]) for ref in refs]
    if not flat or not all(f.size for f in flat):
        return None
    peak = max(float(np.max(np.abs(f))) for f in flat)
    if peak == 0:
        return "the PyTorch reference is all zeros on every verification input: any artifact would match it"
    if peak < TINY:
        return (f"the PyTorch reference's largest magnitude is {peak:.3g}: denormal-range values that runtimes "
                "may flush to zero (the weights look untrained or badly scaled)")
    if len(flat) > 1 and len({f.size for f in flat}) == 1:
        mean = np.mean(flat, axis=0)
        spread = max(float(np.linalg.norm(f - mean)) for f in flat) / max(float(np.linalg.norm(mean)), peak * 1e-300)
        if spread < CONSTANT_SPREAD:
            return (f"the PyTorch reference is the same for all {len(flat)} verification inputs (relative spread "
                    f"{spread:.2g}): the outputs do not depend on the input, so they cannot show whether the "
                    "artifact computes the model (an untrained or zero-initialised head?)")
    return None


@dataclass
class Parity:
    """The outcome of one artifact's parity check. ``status``: pass | fail | inconclusive | not run."""

    status: str
    metric: str
    threshold: float
    value: float | None = None
    max_abs: float | None = None
    cosine: float | None = None
    sqnr_db: float | None = None
    top1_agreement: float | None = None
    samples: int = 0
    reason: str | None = None
    runtime: str | None = None
    runtime_version: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (None if isinstance(v, float) and not np.isfinite(v) and k != "sqnr_db" else v) for k, v in d.items()}


def compare(refs: Sequence[Sequence[np.ndarray]], gots: Sequence[Sequence[np.ndarray]], precision: str,
            classifier: bool = False) -> Parity:
    """Compare per-sample output lists. Metrics are taken over all outputs of all samples together;
    cosine is the worst sample's."""
    metric, threshold = tolerance(precision)
    if len(refs) != len(gots) or not refs:
        raise ValueError("compare() needs the same non-zero number of reference and artifact samples")
    max_abs, cos_worst, agree = 0.0, 1.0, []
    r_all, g_all = [], []
    peak = max((float(np.max(np.abs(np.asarray(o, np.float64)))) for ref in refs for o in ref if np.size(o)), default=0.0)
    negligible = 0   # samples whose reference is ~0 next to the others': their cosine is rounding noise
    for ref, got in zip(refs, gots):
        if len(ref) != len(got):
            return Parity("fail", metric, threshold, samples=len(refs),
                          reason=f"artifact gives {len(got)} outputs, PyTorch gives {len(ref)}")
        for r, g in zip(ref, got):
            r = np.asarray(r, dtype=np.float32)
            g = np.asarray(g, dtype=np.float32)
            if r.size != g.size:
                return Parity("fail", metric, threshold, samples=len(refs),
                              reason=f"output shape {list(g.shape)} differs from PyTorch's {list(r.shape)}")
            g = g.reshape(r.shape)
            if not np.all(np.isfinite(g)):
                return Parity("fail", metric, threshold, samples=len(refs), reason="artifact output has NaN or inf")
            max_abs = max(max_abs, float(np.max(np.abs(r - g))) if r.size else 0.0)
            r_all.append(r.ravel())
            g_all.append(g.ravel())
        sample_peak = max((float(np.max(np.abs(np.asarray(o, np.float64)))) for o in ref if np.size(o)), default=0.0)
        if sample_peak < NEGLIGIBLE_SAMPLE * peak:
            negligible += 1
        else:
            for r, g in zip(ref, got):
                cos_worst = min(cos_worst, cosine(np.asarray(r, np.float32), np.asarray(g, np.float32).reshape(np.shape(r))))
        if classifier:   # every row of a batch counts
            agree += list(np.argmax(ref[0], axis=-1).ravel() == np.argmax(got[0].reshape(ref[0].shape), axis=-1).ravel())
    s = sqnr_db(np.concatenate(r_all), np.concatenate(g_all))
    value = cos_worst if metric == "cosine" else s
    top1 = float(np.mean(agree)) if agree else None
    why = degenerate_reference(refs)
    if why is not None:
        return Parity("inconclusive", metric, threshold, value=value, max_abs=max_abs, cosine=cos_worst, sqnr_db=s,
                      top1_agreement=top1, samples=len(refs),
                      reason=why + "; verify with inputs where the model's output depends on its input (--verify-data) "
                                   "or with trained weights")
    ok = value >= threshold
    reason = None if ok else f"{metric} {value:.6g} is below the {precision} threshold {threshold:g}"
    if negligible:
        note = (f"{negligible} of {len(refs)} samples left out of the worst-sample cosine: their reference is below "
                f"{NEGLIGIBLE_SAMPLE:g} of the largest output (cosine of near-zero vectors is rounding noise)")
        reason = note if reason is None else f"{reason}; {note}"
    return Parity("pass" if ok else "fail", metric, threshold, value=value, max_abs=max_abs, cosine=cos_worst,
                  sqnr_db=s, top1_agreement=top1, samples=len(refs), reason=reason)


def not_run(precision: str, reason: str) -> Parity:
    metric, threshold = tolerance(precision)
    return Parity("not run", metric, threshold, reason=reason)


def run_artifact(path: Path, feeds: Sequence[Sequence[np.ndarray]], threads: int | None = None) -> tuple[list[list[np.ndarray]], str, str]:
    """Run ``path`` in its own runtime on each feed list; returns (outputs, runtime name, version)."""
    from edgeship_runtime import open_runtime

    rt = open_runtime(path, threads=threads)
    return [rt.run(list(f)) for f in feeds], rt.name, rt.version


def check_artifact(path: Path, fmt: str, precision: str, feeds: Sequence[Sequence[np.ndarray]],
                   refs: Sequence[Sequence[np.ndarray]], classifier: bool) -> Parity:
    """Run the artifact in its real runtime on ``feeds`` and compare against ``refs``."""
    from edgeship_runtime import RuntimeUnavailable

    problem = FORMATS[fmt].platform_problem(sys.platform)
    if problem:
        return not_run(precision, problem)
    try:
        gots, name, version = run_artifact(path, feeds)
    except RuntimeUnavailable as e:
        return not_run(precision, f"{e}")
    except Exception as e:  # noqa: BLE001 - a runtime failing on the artifact is a failed check, with its reason
        metric, threshold = tolerance(precision)
        return Parity("fail", metric, threshold, reason=f"the runtime failed to run it: {type(e).__name__}: {e}")
    p = compare(refs, gots, precision, classifier)
    p.runtime, p.runtime_version = name, version
    return p
