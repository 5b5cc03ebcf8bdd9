"""A single-page, self-contained HTML report of one run folder.

Everything is inlined: figures as base64 PNG ``data:`` URIs, tables as HTML
built from the run's CSV files, the parameters and the model identity (with the
hash of the weights). The page needs no network and no other file, so it opens
in any browser and can be mailed around.

Figures are grouped by the stage that wrote them (file-name prefix
``design_``, ``record_``, ``analyse_``, ``perturb_``); tables are every CSV of
the run folder, rendered with the numbers exactly as written in the CSV (floats
shown to 6 significant digits).
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

import yaml

from helpers.paths import run_path

STAGES = (
    ("design", "1 · Design: stimuli and zero-shot check"),
    ("record", "2 · Record: activations"),
    ("analyse", "3 · Analyse: ratemaps and spatial scores"),
    ("perturb", "4 · Perturb: lesions"),
)

#: CSV tables up to this many rows are shown in full; longer ones (one row per
#: neuron or per stimulus) are named with their size, not rendered.
MAX_TABLE_ROWS = 200

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.85em}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}code{background:#f4f4f4;padding:0 3px}
"""


def _fmt(v: str) -> str:
    try:
        f = float(v)
    except ValueError:
        return v
    if v.strip().lstrip("-").isdigit():
        return v
    return "" if f != f else f"{f:.6g}"


def csv_to_html(path: Path, *, max_rows: int = MAX_TABLE_ROWS) -> str:
    """Render a CSV as an HTML table, or a one-line pointer when it has more than ``max_rows`` rows."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return "<p><em>(empty table)</em></p>"
    head, body = rows[0], rows[1:]
    if len(body) > max_rows:  # per-neuron / per-stimulus tables: point at the file
        return (
            f'<p class="long-table" data-source="{html.escape(path.name)}"><em>{len(body)} rows '
            f"({html.escape(', '.join(head))}) in <code>{html.escape(path.name)}</code>, beside this report."
            "</em></p>"
        )
    out = [f'<table data-source="{html.escape(path.name)}"><thead><tr>']
    out += [f"<th>{html.escape(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for r in body[:max_rows]:
        out.append("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cap = html.escape(path.stem.replace("_", " "))
    return (
        f'<figure><img alt="{cap}" data-file="{html.escape(path.name)}" '
        f'src="data:image/png;base64,{data}"><figcaption>{cap}</figcaption></figure>'
    )


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.html`` for a run folder and return its path.

    Parameters
    ----------
    run_dir : str or Path
        The run folder (``data/<run-name>``).
    out : path, optional
        Where to write; default ``<run_dir>/report.html``.
    """
    run = run_path(run_dir)
    out = Path(out) if out else run / "report.html"
    figs = sorted((run / "figures").glob("*.png")) if (run / "figures").is_dir() else []
    tables = sorted(p for p in run.rglob("*.csv"))
    params = yaml.safe_load((run / "params.yaml").read_text()) if (run / "params.yaml").is_file() else {}
    identity = json.loads((run / "model.json").read_text()) if (run / "model.json").is_file() else {}

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Study report: {html.escape(run.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>Spatial representations study: <code>{html.escape(run.name)}</code></h1>",
        "<p>Design → record → analyse → perturb, after <em>Exploring spatial representations in Visual "
        "Foundation Models</em>. Every figure and table below was produced by this run's notebooks, "
        "which sit beside this file.</p>",
        "<h2>Parameters and model</h2>",
    ]
    if identity:
        parts.append("<table data-source='model.json'><tbody>")
        parts += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in identity.items()]
        parts.append("</tbody></table>")
    if params:
        parts.append("<table data-source='params.yaml'><tbody>")
        parts += [
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v) if not isinstance(v, str) else v)}</td></tr>"
            for k, v in sorted(params.items())
        ]
        parts.append("</tbody></table>")

    used_figs: set[Path] = set()
    used_tables: set[Path] = set()
    for prefix, title in STAGES:
        stage_figs = [f for f in figs if f.name.startswith(prefix)]
        stage_tables = [t for t in tables if t.stem.startswith(prefix) or _table_stage(t, run) == prefix]
        if not stage_figs and not stage_tables:
            continue
        parts.append(f"<h2>{html.escape(title)}</h2>")
        for t in stage_tables:
            parts.append(f"<h3>{html.escape(t.relative_to(run).as_posix())}</h3>")
            parts.append(csv_to_html(t))
            used_tables.add(t)
        parts += [_img(f) for f in stage_figs]
        used_figs.update(stage_figs)
    rest_f = [f for f in figs if f not in used_figs]
    rest_t = [t for t in tables if t not in used_tables]
    if rest_f or rest_t:
        parts.append("<h2>Other results</h2>")
        for t in rest_t:
            parts.append(f"<h3>{html.escape(t.relative_to(run).as_posix())}</h3>{csv_to_html(t)}")
        parts += [_img(f) for f in rest_f]
    parts.append("</body></html>")
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def _table_stage(path: Path, run: Path) -> str:
    """Stage of a CSV from where it lives: run root -> design, analysis/ -> analyse, perturb/ -> perturb."""
    rel = path.relative_to(run).parts
    if len(rel) == 1:
        return "design" if path.stem.startswith("zeroshot") else ""
    return {"analysis": "analyse", "perturb": "perturb", "recordings": "record"}.get(rel[0], "")
