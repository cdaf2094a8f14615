"""What an artifact costs to ship: its size on disk and its download size.

The download size is the artifact zipped with deflate at level 9, as an APK / app bundle or an app store stores its
assets: weights with few distinct values (clustering) or many zeros compress far better than dense floats, while
the file on disk keeps its size. A directory artifact (Core ML's .mlpackage) is zipped whole, its files in sorted
order with their paths relative to it, so the figure is deterministic.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path


def file_size(path: str | Path) -> int:
    """Bytes on disk: the file, or every file under a directory artifact."""
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def download_size(path: str | Path, level: int = 9) -> int:
    """Bytes of ``path`` (a file, or a directory zipped recursively) in a zip archive, deflate at ``level``."""
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    if not files and not p.is_dir():
        raise FileNotFoundError(path)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
        for f in files:
            arc = f.relative_to(p.parent).as_posix()
            info = zipfile.ZipInfo(arc, date_time=(1980, 1, 1, 0, 0, 0))   # fixed: the size does not depend on it
            zf.writestr(info, f.read_bytes(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=level)
    return buf.tell()
