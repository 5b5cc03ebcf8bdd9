"""A single-page, self-contained HTML report of one run folder, findings first.

The page opens with **Key findings**: per stage one or two sentences whose
numbers are computed here from the run's own tables (prompt table, fraction
significant by layer, the most damaging layer lesion, Targeted vs Random at
10 %, the region lesion against its controls), with the blog's value beside
each where the blog gives one, and a mark wherever the weights are not the
blog's (random or control weights). Then one section per stage: figures first,
their tables after (long ones collapsed in ``<details>``, per-neuron ones
linked), empty figure panels explained. Parameters and the model identity come
last, collapsed.

Everything is inlined: figures as base64 PNG ``data:`` URIs, tables as HTML
built from the CSVs with the numbers exactly as written (floats shown to 6
significant digits). The page needs no network, so it opens in any browser.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from helpers.names import block_label
from helpers.paths import Run

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
#key-findings{background:#f7fafc;border:1px solid #cde;padding:.2em 1em .5em}#key-findings li{margin:.4em 0}
.mark{background:#fff3cd;padding:0 3px}.note{font-size:.9em;color:#444}details{margin:.5em 0}summary{cursor:pointer}
"""


def _fmt(v: str) -> str:
    try:
        f = float(v)
    except ValueError:
        return v
    if v.strip().lstrip("-").isdigit():
        return v
    return "" if f != f else f"{f:.6g}"


def csv_to_html(path: Path, *, max_rows: int = MAX_TABLE_ROWS, rel: str | None = None) -> str:
    """Render a CSV as an HTML table, or a one-line pointer when it has more than ``max_rows`` rows.

    ``rel`` is the CSV's path relative to the report; the pointer then links to it.
    """
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return "<p><em>(empty table)</em></p>"
    head, body = rows[0], rows[1:]
    if len(body) > max_rows:  # per-neuron / per-stimulus tables: point at the file
        return (
            f'<p class="long-table" data-source="{html.escape(path.name)}"><em>{len(body)} rows '
            f"({html.escape(', '.join(head))}) in <a href=\"{html.escape(rel or path.name)}\"><code>"
            f"{html.escape(rel or path.name)}</code></a>, beside this report."
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


#: Tables with more rows than this are collapsed into ``<details>`` (still rendered in full).
COLLAPSE_ROWS = 15

#: The blog's prompt table (fraction of circle stimuli assigned to each prompt, mean over locations).
BLOG_PROMPT_TABLE = {
    "shape only": {"circle": 0.88, "square": 0.05, "triangle": 0.07},
    "+ empty": {"circle": 0.09, "square": 0.00, "triangle": 0.00, "empty": 0.90},
    "+ colour": {"circle": 0.73, "square": 0.06, "triangle": 0.00, "empty": 0.21},
}
#: The blog's most damaging layer lesions (its figure; no numbers given) and its least damaging one.
BLOG_LAYER_LESIONS = 'visual blocks around resblock 9 and <code>conv1</code> most damaging, resblock 11 least'
#: The weights the blog used; any other weights get a mark beside the blog's values.
BLOG_WEIGHTS = "openai"


def _read(path: Path, columns: tuple[str, ...] = ()) -> pd.DataFrame | None:
    """The CSV, or None when it is absent or lacks one of ``columns`` (a finding is then "not in this run")."""
    if not path.is_file():
        return None
    t = pd.read_csv(path)
    return t if set(columns) <= set(t.columns) else None


def _weights_mark(condition: str, weights: str) -> str:
    """Name a condition and flag it when its weights are not the blog's pretrained ones."""
    if condition == "random":
        return '<span class="mark">random weights (the blog\'s control)</span>'
    if weights != BLOG_WEIGHTS:
        return f'<span class="mark">model weights <code>{html.escape(weights)}</code> ≠ the blog\'s {BLOG_WEIGHTS}</span>'
    return f"model weights (<code>{html.escape(weights)}</code>, as the blog)"


def finding_prompts(run: Run, weights: str) -> str | None:
    """The prompt table (``Run.zeroshot``) beside the blog's."""
    t = _read(run.zeroshot, ("circle_mean",))
    if t is None:
        return None
    t = t.set_index(t.columns[0])
    rows = []
    for name, blog in BLOG_PROMPT_TABLE.items():
        if name not in t.index:
            continue
        ours = ", ".join(f"{lab} {t.loc[name, f'{lab}_mean']:.2f} (blog {v:.2f})"
                         for lab, v in blog.items() if f"{lab}_mean" in t.columns)
        rows.append(f"<em>{html.escape(name)}</em>: {ours}")
    return (f"<b>Design.</b> Prompt table, fraction of circles given each prompt ({_weights_mark('model', weights)}): "
            + "; ".join(rows) + ".")


def finding_significance(run: Run, weights: str) -> str | None:
    """Fraction of significant neurons by layer: range over layers and the peak layer, per condition and score."""
    t = _read(run.significance, ("condition", "layer", "score", "null_model", "n_shuffles", "fraction_significant"))
    if t is None:
        return None
    params = _params(run)
    alpha = 1 - float(params.get("percentile", 95.0)) / 100
    out = []
    for cond, d in t.groupby("condition", sort=False):
        per = []
        for score, s in d.groupby("score", sort=False):
            peak = s.loc[s["fraction_significant"].idxmax()]
            where = f"peak {block_label(peak['layer'])}" if peak["fraction_significant"] > 0 else "none in any layer"
            per.append(f"{html.escape(score)} {s['fraction_significant'].min():.2f}–{peak['fraction_significant']:.2f} "
                       f"({where})")
        null = d["null_model"].iloc[0]
        rule = f", {html.escape(str(d['significance_rule'].iloc[0]))} rule" if "significance_rule" in d else ""
        out.append(f"{_weights_mark(cond, weights)}: " + ", ".join(per) + f" [{html.escape(str(null))} null{rule}, "
                   f"{int(d['n_shuffles'].iloc[0])} shuffles]" + _rule_difference(d) + _null_difference(d))
    return (f"<b>Analyse.</b> Fraction of neurons significant, lowest–highest over {t['layer'].nunique()} layers "
            f"(chance {alpha:.2f}; the blog gives no fraction): " + "; ".join(out) + ".")


_NULL_WORDS = {"shuffle": "stimulus shuffles", "surrogate": "smoothness-preserving surrogates"}


def _null_difference(d: pd.DataFrame) -> str:
    """For each score tested under both nulls (the border score): its fraction under the null the run used and
    under the other, mean over layers; "" for tables without both."""
    cols = ("score_null", "fraction_significant_shuffle", "fraction_significant_surrogate")
    if not set(cols) <= set(d.columns):
        return ""
    both = d.dropna(subset=list(cols[1:]))
    per = []
    for score, s in both.groupby("score", sort=False):
        used = str(s["score_null"].iloc[0])
        if used not in _NULL_WORDS:
            continue
        other = next(n for n in _NULL_WORDS if n != used)
        per.append(f"{html.escape(score)} {s[f'fraction_significant_{used}'].mean():.2f} against "
                   f"{_NULL_WORDS[used]} ({s[f'fraction_significant_{other}'].mean():.2f} against {_NULL_WORDS[other]})")
    return " — mean over layers, " + "; ".join(per) if per else ""


def _rule_difference(d: pd.DataFrame) -> str:
    """Where the threshold-only rule (the blog's) calls neurons significant whose score is at or below its tuning
    floor (e.g. grid score <= 0): how many, and its fraction beside the floor rule's; "" where the rules agree."""
    cols = ("fraction_significant_floor", "fraction_significant_null_only", "n_null_only_at_or_below_floor",
            "tuning_floor")
    if not set(cols) <= set(d.columns):
        return ""
    per = []
    for score, s in d.groupby("score", sort=False):
        n = s["n_null_only_at_or_below_floor"].sum()
        if n > 0:
            per.append(f"{int(n)} neurons with a {html.escape(score)} score ≤ {s['tuning_floor'].iloc[0]:g} "
                       f"({html.escape(score)} {s['fraction_significant_null_only'].mean():.2f} instead of "
                       f"{s['fraction_significant_floor'].mean():.2f}, mean over layers)")
    if not per:
        return ""
    return (" — the threshold-only rule (the blog's) would also call significant " + "; ".join(per)
            + ", untuned by the score's own definition")


def finding_decoding(run: Run, weights: str) -> str | None:
    """Cross-validated R² of stimulus position, range over layers (all neurons)."""
    t = _read(run.decoding, ("condition", "neurons", "r2"))
    if t is None:
        return None
    t = t[t["neurons"] == "all"]
    out = [f"{_weights_mark(c, weights)} R² {d['r2'].min():.2f}–{d['r2'].max():.2f}"
           for c, d in t.groupby("condition", sort=False)]
    return "Position decoded from each layer (ridge, cross-validated; not in the blog): " + "; ".join(out) + "."


def finding_layer_lesions(run: Run, weights: str) -> str | None:
    """The most damaging single-unit lesion per condition, beside the blog's: the largest fall in balanced
    performance (circles and the blank canvas) when the table has it, else in the blog's circle-only one."""
    t = _read(run.layer_lesions, ("weights", "tower", "label", "performance", "baseline_performance"))
    if t is None:
        return None
    value = "balanced_performance" if "balanced_performance" in t.columns else "performance"
    what = "balanced performance (circles and the blank)" if value != "performance" else "performance (circles only)"
    out = []
    for cond, d in t.groupby("weights", sort=False):
        base = float(d[f"baseline_{value}"].iloc[0])
        delta = d[value] - d[f"baseline_{value}"]
        if delta.min() >= 0:
            out.append(f"{_weights_mark(cond, weights)}: no lesion lowers performance (unlesioned {base:.2f}"
                       + (", nothing to lose" if base == 0 else "") + ")")
            continue
        ties = d[delta == delta.min()]
        names = ", ".join(f"{r.tower} {r.label}" for r in ties.itertuples())
        extra = (f"; circles only {float(ties['baseline_performance'].iloc[0]):.2f} → {float(ties['performance'].iloc[0]):.2f}"
                 if value != "performance" else "")
        out.append(f"{_weights_mark(cond, weights)}: {html.escape(names)} ({base:.2f} → {float(ties[value].iloc[0]):.2f}{extra})")
    why = ""
    if "random" not in set(t["weights"]) and _params(run).get("include_random", True):
        why = (" The random-weights control was recorded and mapped but not lesioned (<code>perturb_random</code> off):"
               " a random CLIP gives every stimulus the same answer, so its lesion curves are flat by construction.")
    return (f"<b>Perturb.</b> Most damaging layer lesion, by {what}: " + "; ".join(out)
            + f". Blog: {BLOG_LAYER_LESIONS}.{why}")


def finding_targeted(run: Run, weights: str, proportion: float = 0.1) -> str | None:
    """Targeted vs Random lesions at ``proportion`` (or the nearest proportion the run has, said so)."""
    t = _read(run.targeted_lesions, ("weights", "condition", "proportion", "performance"))
    if t is None:
        return None
    props = np.unique(t["proportion"].to_numpy(float))
    props = props[props > 0] if (props > 0).any() else props  # 0 % is the unlesioned network
    near = float(props[np.argmin(np.abs(props - proportion))])
    note = "" if np.isclose(near, proportion) else f" (this run has no {proportion:.0%}; nearest lesion {near:.0%})"
    d = t[np.isclose(t["proportion"], near)]
    perf = d.groupby(["weights", "condition"], sort=False)["performance"].mean()
    out = []
    for cond in d["weights"].unique():
        rules = perf[cond]
        out.append(f"{_weights_mark(cond, weights)}: " + ", ".join(f"{r} {v:.2f}" for r, v in rules.items()))
    p = _params(run)
    block = p.get("block", p.get("layer", "?"))  # 'layer': its name in run folders made before the rename
    return (f"Block-{block} lesions at {near:.0%} of neurons{note}, performance "
            f"(Random: mean over seeds): " + "; ".join(out) + ". Blog: Targeted below Random (figure only).")


def finding_region(run: Run, weights: str) -> str | None:
    """Region lesion: difference in differences of the margin against each control (reference: outside)."""
    t = _read(run.spatial_localisation, ("weights", "metric", "control", "reference", "did", "ci_low", "ci_high", "p_value", "localised"))
    if t is None:
        return None
    d = t[(t["metric"] == "margin") & (t["reference"] == "outside")]
    out = []
    for cond, g in d.groupby("weights", sort=False):
        per = [f"vs {r.control} control {r.did:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}], p = {r.p_value:.2f}"
               + (" <b>localised</b>" if r.localised else "") for r in g.itertuples()]
        out.append(f"{_weights_mark(cond, weights)}: " + "; ".join(per))
    region = html.escape(str(_params(run).get("region", "the region")))
    return (f"Region lesion ({region} neurons): difference in differences of the margin, inside vs outside the "
            f"region, minus the same for the control lesion (not in the blog): " + " — ".join(out) + ".")


FINDINGS = (finding_prompts, finding_significance, finding_decoding, finding_layer_lesions, finding_targeted,
            finding_region)


def key_findings(run: Run, weights: str) -> str:
    """The "Key findings" section: one list item per finding whose table the run holds."""
    items = [f(run, weights) for f in FINDINGS]
    missing = [f.__name__.removeprefix("finding_") for f, i in zip(FINDINGS, items) if i is None]
    body = "".join(f"<li>{i}</li>" for i in items if i is not None)
    tail = (f"<p><em>Not in this run (its stage has not written the table): {', '.join(missing)}.</em></p>"
            if missing else "")
    return f'<section id="key-findings"><h2>Key findings</h2><ul>{body}</ul>{tail}</section>'


def _params(run: Run) -> dict:
    """The run's parameters ({} when absent)."""
    p = run.params
    if not p.is_file():
        return {}
    return yaml.safe_load(p.read_text()) or {}


def empty_panels_note(run: Run) -> str:
    """Why cells of the top-k ratemap grid are empty: layers with fewer than k finite scores (``Run.scores``)."""
    t = _read(run.scores, ("condition", "layer", "si", "grid", "border"))
    if t is None:
        return ""
    k = int(_params(run).get("top_k", 5))
    notes = []
    for cond, d in t.groupby("condition", sort=False):
        for score in ("si", "grid", "border"):
            finite = d[score].notna().groupby(d["layer"], sort=False).sum()
            short = finite[finite < k]
            if len(short):
                notes.append(f"{html.escape(cond)} weights, {score}: {len(short)} of {len(finite)} layers have fewer "
                             f"than {k} neurons with a finite score (" + ", ".join(
                                 f"{block_label(lay)}: {n}" for lay, n in short.items()) + ")")
    if not notes:
        return ""
    return ('<p class="note"><b>Empty cells in the top-ratemap grids</b> are layers where fewer than '
            f"{k} neurons have a finite score, so there is nothing to rank (a NaN score is never shown): "
            + "; ".join(notes) + ".</p>")


def _table_block(t: Path, run: Run) -> str:
    """A table under its file name, collapsed when long."""
    rel = t.relative_to(run.root).as_posix()
    with open(t, newline="") as fh:
        n = sum(1 for _ in fh) - 1
    table = csv_to_html(t, rel=rel)
    if COLLAPSE_ROWS < n <= MAX_TABLE_ROWS:
        return f"<details><summary><code>{html.escape(rel)}</code> ({n} rows)</summary>{table}</details>"
    return f"<h3>{html.escape(rel)}</h3>{table}"


def _parameters(params: dict, identity: dict, run: Run) -> str:
    parts = ["<h2>Parameters and model</h2><details><summary>model identity and the parameters used</summary>"]
    if identity:
        parts.append(f"<table data-source='{run.model.name}'><tbody>")
        parts += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in identity.items()]
        parts.append("</tbody></table>")
    if params:
        parts.append(f"<table data-source='{run.params.name}'><tbody>")
        parts += [
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v) if not isinstance(v, str) else v)}</td></tr>"
            for k, v in sorted(params.items())
        ]
        parts.append("</tbody></table>")
    parts.append("</details>")
    return "".join(parts)


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's report page (:attr:`helpers.paths.Run.report`) and return its path.

    Parameters:
    run_dir : str or Path — The run folder (``data/<run-name>``).
    out : path, optional — Where to write; default :attr:`helpers.paths.Run.report`.
    """
    run = Run(run_dir, create=False)
    run.root.mkdir(parents=True, exist_ok=True)
    out = Path(out) if out else run.report
    figs = run.figure_files()
    tables = run.tables()
    params = _params(run)
    identity = json.loads(run.model.read_text()) if run.model.is_file() else {}
    weights = str(identity.get("weights", params.get("weights", "?")))

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Study report: {html.escape(run.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>Spatial representations study: <code>{html.escape(run.name)}</code></h1>",
        "<p>Design → record → analyse → perturb, after <em>Exploring spatial representations in Visual "
        "Foundation Models</em>. Every number, figure and table below was produced by this run's notebooks, "
        f"which sit beside this file. Model <code>{html.escape(str(identity.get('model', '?')))}</code>, weights "
        f"<code>{html.escape(weights)}</code>, {html.escape(str(params.get('n_stimuli', '?')))} stimuli.</p>",
        key_findings(run, weights),
    ]
    used_figs: set[Path] = set()
    used_tables: set[Path] = set()
    for prefix, title in STAGES:
        stage_figs = [f for f in figs if f.name.startswith(prefix)]
        stage_tables = [t for t in tables if t.stem.startswith(prefix) or run.table_stage(t) == prefix]
        if not stage_figs and not stage_tables:
            continue
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts += [_img(f) for f in stage_figs]
        if prefix == "analyse":
            parts.append(empty_panels_note(run))
        parts += [_table_block(t, run) for t in stage_tables]
        used_figs.update(stage_figs)
        used_tables.update(stage_tables)
    rest_f = [f for f in figs if f not in used_figs]
    rest_t = [t for t in tables if t not in used_tables]
    if rest_f or rest_t:
        parts.append("<h2>Other results</h2>")
        parts += [_img(f) for f in rest_f]
        parts += [_table_block(t, run) for t in rest_t]
    parts.append(_parameters(params, identity, run))
    parts.append("</body></html>")
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
