"""The one exception type edgeship raises for problems a user can fix, and how messages quote a user's values."""
from __future__ import annotations

import reprlib

QUOTE_CHARS = 120   # error messages quote at most this much of a user's value (a YAML bomb once printed 2.1 GB)

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = QUOTE_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8
_REPR.maxlevel = 3


def quote(value, limit: int = QUOTE_CHARS) -> str:
    """A repr of ``value`` of at most ``limit`` characters, however large or deeply nested the value is."""
    try:
        text = _REPR.repr(value)
    except ValueError:          # an int past Python's digit limit
        text = f"<{type(value).__name__}>"
    return clip(text, limit)


def clip(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class EdgeshipError(Exception):
    """A problem with the user's input or environment, with a hint that says what to do.

    The CLI prints ``message`` and ``hint`` without a traceback (``--debug`` shows one).
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"

    def __reduce__(self):   # pickles with its hint (errors come back from forked converters)
        return type(self), (self.message, self.hint)



class Interrupted(BaseException):
    """Ctrl-C or SIGTERM (the CLI's signal handler raises it in the main thread), so every staging folder and lock
    is cleaned up on the way out. Not a KeyboardInterrupt, which typer turns into a silent exit 130; a BaseException,
    so no ``except Exception`` takes it for a converter failure."""

    pending: int | None = None   # set by the handler: a converter that swallowed the exception cannot hide it

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @classmethod
    def raise_pending(cls) -> None:
        """Re-raise an interrupt that arrived while a library wrapped it in an error of its own."""
        if cls.pending is not None:
            raise cls(cls.pending)
