"""Hostile recipes and data sets (issue #11, items 6, 10, 11, 13).

Each case writes one hostile file (or folder) into tmp_path and runs the real CLI on it: recipes through
`edgeship compress example:digits_cnn --recipe FILE` (a recipe is read before anything else happens, so --out is
never created), data through `edgeship export example:digits_cnn -f onnx --calib DATA` or `--eval DATA` (data are
loaded before any export, so no .onnx file appears). Every case must end in exit code 2 with one `error:` line that
names the problem, no traceback; the bombs (YAML alias bombs, a 50 MB recipe, decompression-bomb PNGs) must also be
refused quickly and with a short message: a value is quoted in at most ~120 characters, never expanded.
"""
from __future__ import annotations

import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from reliability.conftest import assert_refused, edgeship

BOMB_SECONDS = 30        # the CLI starts, refuses and exits; a bomb that expanded would take minutes and gigabytes
SHORT_OUTPUT = 5000      # characters of stderr: one error line and a hint


# -- hostile files -------------------------------------------------------------------------------------------------
def _png(width: int, height: int, body: bytes = b"\0" * 9 * 8) -> bytes:
    """A PNG (8-bit grayscale) whose header claims width x height; the pixel data is a few bytes whatever it claims,
    so a 60000 x 60000 "image" costs 100 bytes on disk and is refused before Pillow decodes it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b"")


def _digit_png(v: int) -> bytes:
    """A real 8x8 grayscale PNG."""
    return _png(8, 8, b"".join(b"\0" + bytes([v]) * 8 for _ in range(8)))


def _alias_bomb() -> str:
    """Billion laughs: ten levels of ten aliases each, 10**10 nodes once expanded, 400 bytes on disk."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    return "\n".join(lines) + "\nname: *a9\n"


def _recipe(text: str | bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        f = tmp / "recipe.yaml"
        f.write_bytes(text if isinstance(text, bytes) else text.encode())
        return f
    return make


def _big_recipe(tmp: Path) -> Path:
    f = tmp / "recipe.yaml"
    with open(f, "wb") as out:
        out.write(b"data: digits\n# ")
        out.write(b"x" * (50 << 20))
    return f


def _preset_is_a_real_file(tmp: Path) -> Path:
    """`preset:` names a YAML file that exists (an attacker's, or /etc/...): it must not be read as a preset."""
    (tmp / "evil.yaml").write_text("data: digits\nexport: {formats: [onnx]}\n")
    f = tmp / "recipe.yaml"
    f.write_text(f"preset: {tmp}/../{tmp.name}/evil\n")
    return f


X = np.linspace(-1, 1, 20 * 64, dtype=np.float32).reshape(20, 1, 8, 8)
Y = np.arange(20) % 10


def _npz(**arrays) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        f = tmp / "data.npz"
        np.savez(f, **{"x": X, "y": Y, **arrays})
        return f
    return make


def _with_bad(x: np.ndarray, value, *where) -> np.ndarray:
    x = x.copy()
    for w in where:
        x[w] = value
    return x


def _bytes_file(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / name).write_bytes(data)
        return tmp / name
    return make


def _image_folder(bad_name: str, bad: bytes, classes: bool) -> Callable[[Path], Path]:
    """A folder of good 8x8 digit PNGs and one bad file; with classes, one subfolder per class (eval data)."""
    def make(tmp: Path) -> Path:
        root = tmp / "images"
        for c in range(10 if classes else 1):
            d = root / str(c) if classes else root
            d.mkdir(parents=True, exist_ok=True)
            for i in range(5):
                (d / f"{i}.png").write_bytes(_digit_png(20 * c + i))
        (root / ("3" if classes else "") / bad_name).write_bytes(bad)
        return root
    return make


# -- the catalogue -------------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    make: Callable[[Path], Path]     # writes the hostile file into tmp_path, returns what to pass
    via: str                         # recipe | calib | eval
    words: tuple[str, ...]           # what the error line must say (case-insensitive)
    bomb: bool = False               # must be refused fast, with a short message


TRUNCATED_PNG = _digit_png(50)[:-30]    # the header is fine; the pixel data stops short

CASES = [
    # recipes (item 6: denial of service; item 10: preset; item 11: encoding)
    Case("recipe-alias-bomb", _recipe(_alias_bomb()), "recipe", ("expands to more than 100,000 nodes", "alias"), bomb=True),
    Case("recipe-alias-bomb-in-a-section", _recipe(
        "a: &a {k0: 1, k1: 1, k2: 1, k3: 1, k4: 1, k5: 1, k6: 1, k7: 1, k8: 1, k9: 1}\n"
        + "".join(f"b{i}: &b{i} [{', '.join(['*a' if i == 0 else f'*b{i - 1}'] * 10)}]\n" for i in range(8))
        + "quantize: {layers: {Linear: *b7}}\n"), "recipe", ("expands to more than 100,000 nodes",), bomb=True),
    Case("recipe-50-mb", _big_recipe, "recipe", ("recipe.yaml", "52,428,8", "limit is 1,048,576 bytes"), bomb=True),
    Case("recipe-long-value-echo", _recipe("name: [" + ", ".join(["lol" * 10] * 20000) + "]\n"), "recipe",
         ("'name' must be str | None", "lollol"), bomb=True),
    Case("recipe-huge-string", _recipe("data: " + "d" * 100_000 + "\n"), "recipe",
         ("100,000 characters", "limit is 4,096"), bomb=True),
    Case("recipe-recursive-alias", _recipe("data: &a [x, *a]\n"), "recipe", ("recursive alias",)),
    Case("recipe-nested-too-deeply", _recipe("data: " + "[" * 20000 + "]" * 20000 + "\n"), "recipe",
         ("nested more than 64 levels deep",), bomb=True),
    Case("recipe-invalid-utf8", _recipe(b"data: digits\nname: caf\xe9 au lait\n"), "recipe",
         ("recipe.yaml", "not valid utf-8", "byte offset 22", "0xe9")),
    Case("recipe-control-character", _recipe("data: dig\x00its\n"), "recipe",
         ("not valid YAML", "non-printable character #x0000", "line 1")),
    Case("recipe-preset-path", _recipe("preset: /etc/../some/path.yaml\n"), "recipe",
         ("unknown preset '/etc/../some/path.yaml'", "a name, not a path", "mobile-int8", "tiny")),
    Case("recipe-preset-existing-file", _preset_is_a_real_file, "recipe", ("unknown preset", "a name, not a path")),
    # npz data (item 13)
    Case("npz-nan", _npz(x=_with_bad(X, np.nan, (3, 0, 2, 5), (9, 0, 0, 0))), "calib",
         ("data.npz", "array 'x'", "2 non-finite", "2 NaN", "x[3, 0, 2, 5]")),
    Case("npz-inf", _npz(x=_with_bad(X, -np.inf, (7, 0, 1, 1))), "eval",
         ("array 'x'", "1 non-finite", "1 inf", "x[7, 0, 1, 1]")),
    Case("npz-complex", _npz(x=_with_bad(X.astype(np.complex64), 1j, (2, 0, 4, 4))), "calib",
         ("array 'x'", "complex", "1 with a nonzero imaginary part", "x[2, 0, 4, 4]")),
    Case("npz-bool", _npz(x=X > 0), "calib", ("array 'x'", "1,280 booleans")),
    Case("npz-strings", _npz(x=X.astype(str)), "calib", ("array 'x'", "strings", "not numbers")),
    Case("npz-label-strings", _npz(y=Y.astype(str)), "eval", ("array 'y'", "strings", "class indices")),
    Case("npz-label-nan", _npz(y=_with_bad(Y.astype(np.float64), np.nan, 4)), "eval", ("array 'y'", "1 NaN", "y[4]")),
    Case("npz-object-array", _npz(x=np.array([1, "a", None], dtype=object)), "calib",
         ("cannot read", "data.npz", "allow_pickle=False")),
    Case("npz-not-a-zip", _bytes_file("data.npz", b"PK\x03\x04 this is no zip archive"), "calib",
         ("cannot read", "data.npz", "BadZipFile")),
    # image folders (item 13)
    Case("png-decompression-bomb", _image_folder("bomb.png", _png(60000, 60000), classes=False), "calib",
         ("bomb.png", "3,600,000,000 pixels", "decompression bomb"), bomb=True),
    Case("png-past-pillow-warning-limit", _image_folder("big.png", _png(10000, 10000), classes=True), "eval",
         ("big.png", "10,000 x 10,000 pixels", "decompression bomb"), bomb=True),
    Case("image-corrupt", _image_folder("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg", classes=True), "eval",
         ("cannot read image", "broken.jpg")),
    Case("image-truncated", _image_folder("cut.png", TRUNCATED_PNG, classes=False), "calib",
         ("cannot read image", "cut.png")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_refused(case: Case, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    target = case.make(work)
    out = tmp_path / "out"
    if case.via == "recipe":
        args = ("compress", "example:digits_cnn", "--recipe", target, "--out", out)
    else:
        args = ("export", "example:digits_cnn", "-f", "onnx", "-p", "int8", "--out", out, f"--{case.via}", target)
    t0 = time.perf_counter()
    r = edgeship(*args, timeout=300)
    took = time.perf_counter() - t0
    assert_refused(r, 2, *case.words)
    assert "error:" in r.err
    if case.via == "recipe":
        assert not out.exists(), "the recipe must be refused before anything else happens"
    else:
        assert not list(tmp_path.rglob("*.onnx")), "the data must be refused before any export"
    if case.bomb:
        assert took < BOMB_SECONDS, f"took {took:.1f} s"
        assert len(r.err) < SHORT_OUTPUT and len(r.out) < SHORT_OUTPUT, (len(r.err), len(r.out), r.err[:500])
