"""The output folder of `edgeship sweep`: report.json with the rows, sweep.png, report.html."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from ._io import write_json_atomic, write_text_atomic
from .manifest import tool_versions


def write_sweep(out: Path, spec, rows: list[dict], method: str, force: bool) -> dict:
    from .compress.prune import plot_sweep
    from .outdir import staged_folder
    from .report import SCHEMA_VERSION
    with staged_folder(out, force) as staging:
        plot_sweep(rows, staging / "sweep.png", title=f"{spec.name}: {method} pruning")
        report = {"schema_version": SCHEMA_VERSION, "name": spec.name, "kind": "sweep", "method": method,
                  "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(), "tools": tool_versions(),
                  "sweep": rows, "plot": "sweep.png"}
        write_json_atomic(staging / "report.json", report)
        cells = "".join(f"<tr><td>{r['sparsity']:.2f}</td><td>{r['params']:,}</td><td>{r['macs']:,}</td>"
                        f"<td>{'—' if r['accuracy'] is None else format(r['accuracy'], '.2%')}</td></tr>" for r in rows)
        write_text_atomic(staging / "report.html", f"<!doctype html><meta charset=utf-8><title>sweep {spec.name}</title>"
                          f"<h1>{spec.name}: {method} pruning sweep</h1><table border=1><tr><th>sparsity</th><th>parameters</th>"
                          f"<th>MACs</th><th>accuracy</th></tr>{cells}</table><img src='sweep.png' alt='sparsity vs accuracy'>")
    return report
