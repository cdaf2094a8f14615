"""The one exception type edgeship raises for problems a user can fix."""
from __future__ import annotations


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

