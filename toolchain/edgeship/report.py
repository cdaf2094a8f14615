"""report.json (what we measured) and report.html (the same for people, with plots), rewritten together.

report.json follows ``schemas/report.schema.json``, checked on every write as manifest.json is; its typed form is
:class:`edgeship.results.Report` (``Report.from_dict(load(folder))``)."""
from __future__ import annotations

import base64
import html
import io
import json
import logging
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from ._io import _json_default, write_json_atomic, write_text_atomic
from .errors import EdgeshipError
from .manifest import check_schema, tool_versions
from .verify import SCHEMES

log = logging.getLogger(__name__)
SCHEMA_VERSION = "1.0"
SCHEMA_PATH = Path(__file__).parent / "schemas" / "report.schema.json"


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate(report: dict, where: str = "report.json") -> None:
    """Refuse a report that does not follow the schema, naming the first place it departs from it (as
    ``manifest.validate`` does). The report is checked as it will be read back: as JSON (numpy scalars, paths)."""
    if hasattr(report, "to_dict"):   # a results.Report
        report = report.to_dict()
    check_schema(json.loads(json.dumps(report, default=_json_default)), schema(), SCHEMA_PATH, "report", where)


def new_report(spec, manifest: dict, artifacts: list[dict], verify_samples: int) -> dict:
    params = sum(p.numel() for p in spec.module.parameters())
    return {
        "schema_version": SCHEMA_VERSION,
        "name": spec.name,
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "tools": tool_versions(),
        "model": {"name": spec.name, "task": spec.task, "parameters": params, "inputs": manifest["inputs"],
                  "outputs": manifest["outputs"]},
        "verify": {"samples": verify_samples, "tolerances": {k: {"metric": s.metric, "threshold": s.threshold} for k, s in SCHEMES.items()}},
        "artifacts": artifacts,
        "bench": [],
    }


def load(folder: Path) -> dict:
    path = Path(folder) / "report.json"
    if not path.is_file():
        raise EdgeshipError(f"{folder} has no report.json", hint="is this an edgeship export folder? make one with: edgeship export")
    try:
        report = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise EdgeshipError(f"{path} is not valid JSON: {str(e)[:200]}", hint="export the folder again") from e
    if not isinstance(report, dict) or not isinstance(report.get("artifacts", []), list):
        raise EdgeshipError(f"{path} is not an edgeship report (a JSON object with an artifacts list)",
                            hint="export the folder again")
    return report


def write(folder: Path, report: dict) -> None:
    """Validate ``report`` (a dict or a results.Report) against the schema, then write report.json and report.html
    (each atomically); nothing is written when it does not validate."""
    folder = Path(folder)
    if hasattr(report, "to_dict"):
        report = report.to_dict()
    validate(report, str(folder / "report.json"))
    write_json_atomic(folder / "report.json", report)
    write_text_atomic(folder / "report.html", render_html(report))


def _fmt_size(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def parity_text(parity: dict | None) -> str:
    if not parity:
        return "—"
    if parity["status"] == "not run":
        return f"not run: {parity.get('reason')}"
    v = parity.get("value")
    fig = "—" if v is None else (f"cos {v:.6f}" if parity["metric"] == "cosine" else f"SQNR {v:.1f} dB")
    extra = f" max|Δ| {parity['max_abs']:.1e}" if parity.get("max_abs") is not None else ""
    top1 = f" top-1 {parity['top1_agreement']:.0%}" if parity.get("top1_agreement") is not None else ""
    why = f": {parity['reason']}" if parity["status"] != "pass" and parity.get("reason") else ""
    return f"{fig}{extra}{top1}{why}{sizes_text(parity)}"


def bench_name(b: dict) -> str:
    """"onnx:fp32", or with --batch/--seq "onnx:fp32 · batch 8 (1,234 items/s)"."""
    size = b.get("size") if isinstance(b.get("size"), dict) else None
    if not size:
        return str(b.get("artifact"))
    rate = f" ({b['items_per_s']:,.0f} items/s)" if isinstance(b.get("items_per_s"), (int, float)) else ""
    return f"{b.get('artifact')} · {size.get('label')}{rate}"


def sizes_text(parity: dict) -> str:
    """" · sizes 1x8 pass, 1x64 pass, 1x512 pass": parity at each size of the dynamic dimensions (none: "")."""
    rows = [r for r in parity.get("sizes") or () if isinstance(r, dict)]
    if not rows:
        return ""
    def shape(r):
        return "/".join("x".join(map(str, v)) for v in (r.get("shapes") or {}).values()) or str(r.get("size"))
    return " · sizes " + ", ".join(f"{shape(r)} {r.get('status')}" for r in rows)


def accuracy_text(acc: dict | None) -> str:
    if not acc:
        return "—"
    if acc.get("status") != "ok":
        return f"{acc.get('status')}: {acc.get('reason')}"
    return f"{acc['top1']:.2%} (PyTorch {acc['torch_fp32']:.2%}, agree {acc['agreement_with_torch']:.1%})"


def _num(v, spec: str) -> str:
    """A figure, or — where it is not known (native benchmark tools do not report every one)."""
    return "—" if v is None else format(v, spec)


def _plot_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots(report: dict) -> list[tuple[str, str]]:
    """(title, base64 PNG) pairs: sizes per artifact, and latency per artifact and device when benched."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    arts = [a for a in report.get("artifacts", []) if a.get("size_bytes")]
    if arts:
        fig, ax = plt.subplots(figsize=(6, 0.4 * len(arts) + 1))
        ax.barh([a["key"] for a in arts], [a["size_bytes"] / 1e6 for a in arts], color="#4c72b0")
        ax.set_xlabel("file size (MB)")
        ax.invert_yaxis()
        out.append(("Artifact size", _plot_png(fig)))
        plt.close(fig)
    # native benchmark tools may not report every percentile: plot what is known (no p50, no bar; no whisker end, none)
    bench = [b for b in report.get("bench", []) if (b.get("latency_ms") or {}).get("p50") is not None]
    if bench:
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(bench) + 1))
        labels = [f"{bench_name(b)} @ {b['device']}" for b in bench]
        p50 = [b["latency_ms"]["p50"] for b in bench]
        lo = [0.0 if b["latency_ms"].get("min") is None else b["latency_ms"]["p50"] - b["latency_ms"]["min"] for b in bench]
        hi = [0.0 if b["latency_ms"].get("p99") is None else b["latency_ms"]["p99"] - b["latency_ms"]["p50"] for b in bench]
        ax.barh(labels, p50, xerr=[lo, hi], color="#55a868", capsize=3)
        ax.set_xlabel("latency p50 (ms); whiskers: min and p99")
        ax.invert_yaxis()
        out.append(("Latency per artifact and device", _plot_png(fig)))
        plt.close(fig)
        fig = _tradeoff(plt, report, bench)
        if fig is not None:
            out.append(("Size vs latency (colour: accuracy in the artifact's runtime)", _plot_png(fig)))
            plt.close(fig)
    fig = _fleet_plot(plt, report.get("fleet"))
    if fig is not None:
        out.append((f"Fleet: p50 per device (reference {report['fleet'].get('reference')})", _plot_png(fig)))
        plt.close(fig)
    return out


def _fleet_label(r: dict) -> str:
    return r["artifact"] + (f" · {r['size']}" if r.get("size") else "") + \
        (f" · {r['threads']} thr" if r.get("threads") is not None else "")


def _fleet_plot(plt, fleet: dict | None):
    """Grouped bars: for each artifact of the last fleet bench, its p50 on every device."""
    rows = (fleet or {}).get("comparison") or []
    names = [d["name"] for d in (fleet or {}).get("devices", [])]
    if not rows or not names:
        return None
    import numpy as np
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) * max(1, len(names)) / 2 + 2), 4))
    x = np.arange(len(rows))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        vals = [r["p50_ms"].get(n) for r in rows]
        ax.bar(x + i * width - 0.4 + width / 2, [np.nan if v is None else v for v in vals], width, label=n)
    ax.set_xticks(x, [_fleet_label(r) for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("latency p50 (ms)")
    ax.legend(fontsize=8)
    return fig


def fleet_html(fleet: dict | None) -> str:
    """The last fleet bench: each device's outcome, and each artifact's p50 on every device with its ratio to the
    reference device's p50 (2.00× = twice as slow)."""
    if not fleet:
        return ""
    e = html.escape
    names = [d["name"] for d in fleet.get("devices", [])]
    ref = fleet.get("reference")
    devs = "".join(f"<tr><td>{e(d['name'])}</td><td>{e(d['device'])}</td><td>{e(d['status'])}</td>"
                   f"<td>{d.get('wall_s', '—')}</td><td>{e(d.get('reason') or '')}</td></tr>" for d in fleet.get("devices", []))
    head = "".join(f"<th>{e(n)}{' (reference)' if n == ref else ''}</th>" for n in names)

    def cell(r, n):
        v, x = r["p50_ms"].get(n), r["ratio"].get(n)
        return "—" if v is None else f"{v:.3f}" + ("" if x is None or n == ref else f" ({x:.2f}×)")
    rows = "".join(f"<tr><td>{e(_fleet_label(r))}</td>" + "".join(f"<td>{cell(r, n)}</td>" for n in names) + "</tr>"
                   for r in fleet.get("comparison", []))
    return (f"<h2>Fleet bench</h2><p>{len(names)} device(s) at once, {fleet.get('wall_s', '—')} s wall; "
            f"{e(str(fleet.get('created', '')))}</p><table><tr><th>device</th><th>id</th><th>status</th><th>s</th>"
            f"<th>reason</th></tr>{devs}</table><h3>p50 ms per device (× = ratio to {e(str(ref))}'s p50)</h3>"
            f"<table><tr><th>artifact</th>{head}</tr>{rows}</table>")


def _tradeoff(plt, report: dict, bench: list[dict]):
    """One point per benched artifact × device: file size against p50 latency, coloured by eval accuracy."""
    acc = {a["key"]: (a.get("accuracy") or {}).get("top1") for a in report.get("artifacts", [])}
    pts = [(b["size_bytes"] / 1e6, b["latency_ms"]["p50"], acc.get(b["artifact"]), f"{b['artifact']} @ {b['device']}")
           for b in bench if b.get("size_bytes")]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    known = [p for p in pts if p[2] is not None]
    if known:
        sc = ax.scatter([p[0] for p in known], [p[1] for p in known], c=[100 * p[2] for p in known], cmap="viridis", s=60)
        fig.colorbar(sc, ax=ax, label="top-1 accuracy (%)")
    other = [p for p in pts if p[2] is None]
    if other:
        ax.scatter([p[0] for p in other], [p[1] for p in other], c="#999999", s=60, label="accuracy not measured")
        ax.legend(loc="best", fontsize=8)
    for x, y, _, label in pts:
        ax.annotate(label, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("latency p50 (ms)")
    return fig


def sensitivity_html(sens: dict | None) -> str:
    """The per-layer int8 sensitivity table and the accuracy budget's outcome (report.json's "sensitivity")."""
    if not sens:
        return ""
    e = html.escape
    pct = lambda v: "—" if v is None else format(v, ".2%")  # noqa: E731
    acc = sens.get("accuracy") or {}
    rows = "".join(
        f"<tr><td>{e(r['layer'])}</td><td>{e(r['type'])}</td><td>{'—' if r['sqnr_db'] is None else format(r['sqnr_db'], '.1f')}</td>"
        f"<td>{'yes (' + e(str(r['why'])) + ')' if r['kept_float'] else 'no'}</td></tr>" for r in sens.get("layers", []))
    budget = sens.get("max_accuracy_drop")
    outcome = "" if budget is None else (
        f"<p>accuracy budget {budget:g} points: <b>{'met' if sens.get('met') else 'not met'}</b>. Eval accuracy in PyTorch "
        f"(int8 simulated) on {sens.get('eval_examples')} examples: fp32 {pct(acc.get('fp32'))}, every layer int8 "
        f"{pct(acc.get('int8_all_layers'))}, with {len(sens.get('keep_float', []))} layer(s) in float "
        f"{pct(acc.get('int8_after'))}. Each artifact's own accuracy is in the table above.</p>")
    notes = "".join(f"<p>{e(n)}</p>" for n in sens.get("notes") or [])
    return (f"<h2>int8 sensitivity per layer</h2><p>{e(sens.get('simulation', ''))}; {e(sens.get('calibration', ''))}. "
            f"{e(sens.get('metric', ''))}.</p>{outcome}{notes}<table><tr><th>layer</th><th>type</th><th>SQNR dB</th>"
            f"<th>kept in float</th></tr>{rows}</table>")


SHIPPED_TITLE = "fp32 files before → after, their download (zip -9), latency in each runtime (1 thread, p50)"
SHIPPED_COLUMNS = ("format", "file before", "file after", "× smaller", "download before", "download after",
                   "× smaller download", "p50 ms before", "p50 ms after", "× faster")


def shipped_cells(row: dict) -> list[str]:
    """One row of a stage's ``shipped`` list (compress.stages.shipped_change) as the text of SHIPPED_COLUMNS:
    the one formatting for the CLI table and report.html (reports made before download sizes show "—")."""
    if row.get("error"):
        return [row["format"], f"export failed: {row['error']}"] + [""] * (len(SHIPPED_COLUMNS) - 2)
    cells = [row["format"], _fmt_size(row["size_before"]), _fmt_size(row["size_after"]),
             f"{row['size_before'] / row['size_after']:.2f}×"]
    if row.get("download_after"):
        cells += [_fmt_size(row["download_before"]), _fmt_size(row["download_after"]),
                  f"{row['download_before'] / row['download_after']:.2f}×"]
    else:
        cells += ["—", "—", "—"]
    if "p50_ms_before" in row:
        return cells + [f"{row['p50_ms_before']:.3f}", f"{row['p50_ms_after']:.3f}",
                        f"{row['p50_ms_before'] / row['p50_ms_after']:.2f}×"]
    return cells + [row.get("latency", ""), "", ""]


def _shipped_html(stage: dict) -> str:
    e = html.escape
    head = "".join(f"<th>{c}</th>" for c in SHIPPED_COLUMNS)
    rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in shipped_cells(r)) + "</tr>" for r in stage["shipped"])
    return f"<h3>{e(stage['stage'])}: {SHIPPED_TITLE}</h3><table><tr>{head}</tr>{rows}</table>"


def render_html(report: dict) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(a['key'])}</td><td>{e(a.get('status', ''))}</td><td>{e(a.get('path') or '—')}</td>"
        f"<td>{_fmt_size(a.get('size_bytes'))}</td><td>{_fmt_size(a.get('download_bytes'))}</td>"
        f"<td>{a.get('export_s') or '—'}</td>"
        f"<td>{e(parity_text(a.get('parity')))}</td><td>{e(accuracy_text(a.get('accuracy')))}</td>"
        f"<td>{e(a.get('error') or '; '.join(a.get('notes', [])))}</td></tr>"
        for a in report.get("artifacts", []))
    bench_rows = "".join(
        f"<tr><td>{e(bench_name(b))}</td><td>{e(b['device'])}</td><td>{b.get('threads')}</td>"
        + "".join(f"<td>{_num(b['latency_ms'].get(k), '.3f')}</td>" for k in ("p50", "p90", "p99"))
        + f"<td>{_num(b.get('load_ms'), '.1f')}</td><td>{_num(b.get('first_run_ms'), '.2f')}</td><td>{_num(b.get('peak_rss_mb'), '.1f')}</td>"
        f"<td>{e(str((b.get('energy') or {}).get('mj_per_inference', (b.get('energy') or {}).get('reason', '—'))))}</td></tr>"
        for b in report.get("bench", []) if b.get("latency_ms"))
    imgs = "".join(f"<h2>{e(t)}</h2><img alt='{e(t)}' src='data:image/png;base64,{png}'/>" for t, png in plots(report))
    tools = ", ".join(f"{k} {v}" for k, v in report.get("tools", {}).items() if v)
    stages = (report.get("compression") or {}).get("stages") or []
    stages_html = ("<h2>Compression stages (PyTorch, eval set)</h2><table><tr><th>stage</th><th>parameters</th><th>MACs</th>"
                   "<th>accuracy</th></tr>" + "".join(
                       f"<tr><td>{e(s['stage'])}</td><td>{s['parameters']:,}</td><td>{s['macs']:,}</td>"
                       f"<td>{'—' if s.get('accuracy') is None else format(s['accuracy'], '.2%')}</td></tr>" for s in stages)
                   + "</table>") if stages else ""
    stages_html += "".join(_shipped_html(s) for s in stages if s.get("shipped"))
    sens_html = sensitivity_html(report.get("sensitivity"))
    bench_html = ("<h2>Benchmarks</h2><table><tr><th>artifact</th><th>device</th><th>threads</th><th>p50 ms</th><th>p90 ms</th>"
                  f"<th>p99 ms</th><th>load ms</th><th>first run ms</th><th>peak RSS MB</th><th>energy mJ/inf</th></tr>{bench_rows}</table>"
                  if bench_rows else "")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>edgeship report: {e(report.get('name', ''))}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:14px;text-align:left}}th{{background:#f3f3f3}}</style></head><body>
<h1>edgeship report: {e(report.get('name', ''))}</h1>
<p>created {e(report.get('created', ''))}; parameters {report.get('model', {}).get('parameters', '—')};
parity on {report.get('verify', {}).get('samples', '—')} inputs ({e(str(report.get('verify', {}).get('inputs', '')))})</p>
<h2>Artifacts</h2><table><tr><th>artifact</th><th>status</th><th>file</th><th>size</th><th>download (zip -9)</th><th>export s</th><th>parity</th><th>accuracy (eval set, own runtime)</th><th>notes</th></tr>{rows}</table>
{stages_html}
{sens_html}
{bench_html}{fleet_html(report.get("fleet"))}{imgs}<p style="color:#666;font-size:12px">tools: {e(tools)}</p></body></html>
"""
