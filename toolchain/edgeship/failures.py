"""Why a converter failed, in one line: the root cause it stated (a data-dependent guard, a "Caused by:" line), else
the op it could not handle, else the first line of the error; and why a converter that ended its own process died."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from ._io import ChildDied
from .errors import EdgeshipError, clip

_OP_PATTERNS = [r"(aten[.:]{1,2}[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)", r"op(?:erator)? ['\"`]?([A-Za-z0-9_.:]+)['\"`]? (?:is )?not (?:supported|implemented)",
                r"[Uu]nsupported op(?:eration)?[: ]+['\"`]?([A-Za-z0-9_.:]+)", r"[Uu]nsupported fx node ([A-Za-z0-9_.]+)",
                r"\bnode ([A-Za-z0-9_.]+) \(\1\)"]


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")   # terminal colours (torch.onnx's "\x1b[96mThis is step 1/3\x1b[0m")
_DATA_DEPENDENT = re.compile(r"Could not [^\n]*?data-dependent expression [^\n(]*")
_CAUSED_BY = re.compile(r"^\s*Caused by:\s*(.+?)\s*$", re.M)
_WHERE = re.compile(r"^\(?(\S+?):(\d+) in (\w+)\)?$")   # torch.export's "(…/models.py:6 in batched_nms)"
DATA_DEPENDENT_HINT = ("the model's control flow or output shape depends on its input values (NMS, nonzero, "
                       "item()), which export cannot trace: return the tensors before that step and do it in the app, "
                       "or rewrite it with torch.cond / torch._check; --debug shows the converter's log")


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions behind it (__cause__, else __context__), innermost first."""
    seen: list[BaseException] = []
    while exc is not None and not any(exc is s for s in seen):
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen[::-1]


def root_cause(text: str) -> str | None:
    """The root cause a converter stated in ``text``: a data-dependent guard and where, or a "Caused by:" line."""
    guard, caused = _DATA_DEPENDENT.search(text), _CAUSED_BY.search(text)
    what = caused.group(1) if caused else ""
    where = _WHERE.match(what)
    if where:   # torch names the user's line, its path cut from the left: keep the file name
        what = f"at {Path(where.group(1)).name}:{where.group(2)} in {where.group(3)}"
    if guard:
        return f"{guard.group(0).strip().rstrip('.')} ({what})" if what else guard.group(0).strip()
    if where:   # a location alone: say what failed there
        return f"{next(ln.strip() for ln in text.splitlines() if ln.strip())} ({what})"
    return what or None


def describe_failure(fmt: str, exc: BaseException, output: str = "") -> tuple[str, str | None]:
    """A one-line reason for a converter failure that names the format and the root cause the converter gave
    (a data-dependent guard, a "Caused by:" line: in the exception chain, innermost first, or the converter's log),
    else the op, else the first line of the error it was raised from. Terminal colour codes are removed."""
    if isinstance(exc, EdgeshipError):
        return exc.message, exc.hint
    chain = exception_chain(exc)
    texts = [(type(e).__name__, ANSI.sub("", str(e))) for e in chain] + [(type(chain[0]).__name__, ANSI.sub("", output))]
    for name, text in texts:
        cause = root_cause(text)
        if cause:
            hint = DATA_DEPENDENT_HINT if "data-dependent" in cause else "--debug shows the converter's log and traceback"
            return f"the {fmt} converter failed: {name}: {clip(cause, 240)}", hint
    whole = "\n".join(t for _, t in texts)
    op = next((m.group(1) for m in (re.search(p, whole) for p in _OP_PATTERNS) if m), None)
    last = exc   # a wrapper raised "from" the real error (torch.onnx's "Failed to export … step 1/3"): quote that one
    for _ in chain:
        last = last.__cause__ or last
    name, text = type(last).__name__, ANSI.sub("", str(last))
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    detail = clip(f"{name}: {first}" if first else name, 240)
    from .export import EXPORTERS
    others = ", ".join(f for f in EXPORTERS if f != fmt)
    if op:
        return f"the {fmt} converter cannot handle op {op}: {detail}", f"the other formats ({others}) may still work; --debug shows the converter's log"
    return f"the {fmt} converter failed: {detail}", "--debug shows the converter's log and traceback"


def converter_died(fmt: str, e: ChildDied, out_dir: Path, output: str) -> tuple[str, str]:
    """Why a converter ended its own process: a full disk (it says nothing then), or its last words."""
    free = shutil.disk_usage(out_dir).free
    if free < 1 << 20:
        return (f"the {fmt} converter stopped ({e}): the disk is full ({free:,} bytes free where the output is written)",
                "free some disk space, or choose an --out on another disk, and run again")
    last = [ln.strip() for ln in output.splitlines() if ln.strip()][-1:] or ["(it printed nothing)"]
    return (f"the {fmt} converter ended its process ({e}); its last output: {last[0][:300]}",
            "--debug shows the converter's whole log")
