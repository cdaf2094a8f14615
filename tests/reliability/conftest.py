"""The reliability catalogue: every bad input edgeship handles, one parametrized case each.

Each case runs the real `edgeship` command in a subprocess and checks what a user sees: the exit code, a one-line
`error:` message (with a hint), no traceback, and that nothing outside the folders the command owns was written,
deleted or read. Files in this folder: test_<area>.py, one `CASES` list each; the README's reliability section quotes
the count that `pytest --collect-only -q tests/reliability` prints.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def edgeship(*args, cwd: Path | None = None, timeout: float = 600, env: dict | None = None, stdin: str | None = None) -> Run:
    """Run the real CLI; returns exit code, stdout and stderr."""
    e = dict(os.environ, COLUMNS="200")
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "edgeship.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, cwd=cwd, env=e, input=stdin)
    return Run(p.returncode, p.stdout, p.stderr)


def assert_refused(r: Run, code: int, *needles: str) -> None:
    """Exit ``code``; an `error:` line naming every needle (case-insensitive); no Python traceback."""
    assert r.code == code, f"exit {r.code}, wanted {code}\nstdout: {r.out[-2000:]}\nstderr: {r.err[-3000:]}"
    assert "Traceback" not in r.text, r.text[-3000:]
    low = " ".join(r.text.split()).lower()   # rich wraps long lines
    for n in needles:
        assert n.lower() in low, f"{n!r} not in:\n{r.text[-3000:]}"


def tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its size: compare before and after to prove nothing was written or deleted."""
    return {p.relative_to(root).as_posix(): (p.lstat().st_size if not p.is_symlink() else -1)
            for p in sorted(Path(root).rglob("*"))}


@pytest.fixture
def sandbox(tmp_path) -> Path:
    """A folder that stands for 'outside': tests put victim files here and check they are untouched."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "victim.txt").write_text("the user's file\n")
    return d
