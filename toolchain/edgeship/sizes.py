"""What an artifact costs to download (its size on disk: edgeship._io.size_path).

The download size is the artifact zipped with deflate at level 9, as an APK / app bundle or an app store stores its
assets: weights with few distinct values (clustering) or many zeros compress far better than dense floats, while
the file on disk keeps its size. A directory artifact (Core ML's .mlpackage) is zipped whole, its files in sorted
order with their paths relative to it, so the figure is deterministic.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path


def download_size(path: str | Path, level: int = 9) -> int:
    """Bytes of ``path`` (a file, or a directory zipped recursively) in a zip archive, deflate at ``level``."""
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    if not files and not p.is_dir():
        raise FileNotFoundError(path)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
        for f in files:
            # streamed from disk; the header's date field has a fixed size, so mtimes do not change the figure
            zf.write(f, f.relative_to(p.parent).as_posix(), compresslevel=level)
    return buf.tell()
