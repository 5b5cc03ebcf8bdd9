"""The summary page of a sweep (:class:`helpers.paths.SweepFolder`) and CSVs aggregated across its points.

Tables: the points (varying parameters, status, wall time, stages run, weights and hash, report and log);
fraction significant and decoding R² by layer as mean ± SD over seeds; every point's lesion curves.

A *group* is the points that share every varying parameter but ``seed``; the
SD is the sample SD (ddof 1) over that group's seeds, empty for one seed. Only
points whose last run finished are aggregated.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers.paths import SweepFolder

#: The parameter that is averaged over; every other varying parameter splits groups.
SEED = "seed"


def points_table(folder: Path) -> pd.DataFrame:
    """One row per point of the sweep in ``folder`` (see the module docstring)."""
    sw = SweepFolder(folder)
    meta = json.loads(sw.meta.read_text())
    rows = []
    for name, params in meta["points"].items():
        rec = sw.point_file(name, "json")
        out = json.loads(rec.read_text()) if rec.is_file() else {"status": "not finished"}
        run = sw.run(name)
        ident = json.loads(run.model.read_text()) if run.model.is_file() else {}
        rows.append({
            "point": name,
            **{a: _cell(params.get(a)) for a in meta["axes"]},
            "status": out.get("status"),
            "wall_s": out.get("wall_s"),
            "stages_run": ",".join(out.get("stages_run") or []),
            "model": ident.get("model"),
            "weights": ident.get("weights"),
            "weights_hash": ident.get("weights_hash"),
            "report": run.report.relative_to(sw.root).as_posix() if run.report.is_file() else "",
            "log": sw.point_file(name, "log").relative_to(sw.root).as_posix(),
        })
    return pd.DataFrame(rows)


def _cell(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def _gather(folder: Path, points: pd.DataFrame, table: str, rename: dict[str, str] | None = None) -> pd.DataFrame:
    """A CSV of every finished point, stacked, with the point's name and varying parameters in front.

    ``rename`` renames the CSV's own columns first (the lesion tables call the
    weights condition ``weights``, a name a sweep axis may hold); a column
    still named like an axis gets the suffix ``_in_run``.
    """
    sw = SweepFolder(folder)
    meta = json.loads(sw.meta.read_text())
    frames = []
    for _, p in points[points.status == "done"].iterrows():
        f = getattr(sw.run(p.point), table)
        if f.is_file():
            df = pd.read_csv(f).rename(columns=rename or {})
            df = df.rename(columns={c: f"{c}_in_run" for c in df.columns if c in ["point", *meta["axes"]]})
            for i, a in enumerate(["point", *meta["axes"]]):
                df.insert(i, a, p[a])
            frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def over_seeds(df: pd.DataFrame, axes: list[str], by: list[str], value: str) -> pd.DataFrame:
    """Mean, SD (ddof 1; NaN for one seed) and number of seeds of ``value`` per group and ``by``."""
    keys = [a for a in axes if a != SEED] + by
    g = df.groupby(keys, sort=False, dropna=False)[value]
    return g.agg(mean="mean", sd="std", n_seeds="count").reset_index()


def write_summary(folder: str | Path) -> Path:
    """Write the summary CSVs, figures and page of the sweep in ``folder`` (:class:`helpers.paths.SweepFolder`); return the page's path."""
    folder = Path(folder)
    sw = SweepFolder(folder)
    meta = json.loads(sw.meta.read_text())
    axes = meta["axes"]
    points = points_table(folder)
    points.to_csv(sw.points_table, index=False)
    sw.figures.mkdir(exist_ok=True)
    sig = _gather(folder, points, "significance")
    dec = _gather(folder, points, "decoding")
    tables, images = {}, []
    if not sig.empty:
        tables["significance"] = over_seeds(sig, axes, ["condition", "layer", "score"], "fraction_significant")
        images.append(_plot_by_layer(tables["significance"], axes, "score", "fraction significant",
                                     sw.figure("sweep_significance"), chance=_alpha(folder, points)))
    if not dec.empty:
        tables["decoding"] = over_seeds(dec, axes, ["condition", "layer", "neurons"], "r2")
        images.append(_plot_by_layer(tables["decoding"], axes, "neurons", "decoding R² (position)",
                                     sw.figure("sweep_decoding")))
    tgt = _gather(folder, points, "targeted_lesions",
                  {"condition": "rule", "weights": "condition", "seed": "lesion_seed"})
    lay = _gather(folder, points, "layer_lesions", {"weights": "condition"})
    if not tgt.empty:
        tables["targeted_lesions"] = _targeted_curves(tgt)
    if not lay.empty:
        tables["layer_lesions"] = lay[["point", "condition", "tower", "label", "performance"]]
    if not tgt.empty or not lay.empty:
        images.append(_plot_lesions(tables.get("targeted_lesions"), tables.get("layer_lesions"),
                                    sw.figure("sweep_lesions")))
    for name, t in tables.items():
        t.to_csv(sw.table(name), index=False)
    out = sw.summary
    out.write_text(_page(sw, meta, points, tables, images), encoding="utf-8")
    return out


def _targeted_curves(tgt: pd.DataFrame) -> pd.DataFrame:
    """Per point, weights condition, lesion rule and proportion: performance, mean over Random seeds."""
    from helpers.lesions import summarise_targeted

    parts = [summarise_targeted(d.drop(columns="condition").rename(columns={"rule": "condition"}), "performance")
             .rename(columns={"condition": "rule"}).assign(point=p, condition=c)
             for (p, c), d in tgt.groupby(["point", "condition"], sort=False)]
    cols = ["point", "condition", "rule", "proportion", "mean", "sd", "n_runs"]
    return pd.concat(parts, ignore_index=True)[cols]


def _group_label(row: pd.Series, axes: list[str]) -> str:
    return ", ".join(f"{a}={row[a]}" for a in axes if a != SEED)


def _alpha(folder: Path, points: pd.DataFrame) -> float | None:
    """The significance level 1 - percentile/100 of the finished points, when they all share one."""
    import yaml

    levels = set()
    for name in points.loc[points.status == "done", "point"]:
        f = SweepFolder(folder).run(name).params
        if f.is_file():
            levels.add(1 - float(yaml.safe_load(f.read_text()).get("percentile", 95.0)) / 100)
    return levels.pop() if len(levels) == 1 else None


def _plot_by_layer(t: pd.DataFrame, axes: list[str], panel: str, ylabel: str, path: Path,
                   chance: float | None = None) -> Path:
    """One panel per ``panel`` value; one line per group and condition; mean ± SD over seeds by layer.

    ``chance``: a dashed line (the fraction significant expected by chance, alpha).
    """
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(t[panel]))
    fig, axs = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False, sharey=True)
    layers = list(dict.fromkeys(t["layer"]))
    for ax, val in zip(axs[0], panels):
        sub = t[t[panel] == val]
        keys = [a for a in axes if a != SEED] + ["condition"]
        for label, d in sub.groupby(keys, sort=False, dropna=False):
            x = [layers.index(v) for v in d["layer"]]
            name = _group_label(d.iloc[0], axes)
            n = int(d["n_seeds"].max())
            ax.errorbar(x, d["mean"], yerr=d["sd"].fillna(0), marker="o", ms=3, capsize=2,
                        label=f"{name + ', ' if name else ''}{d['condition'].iloc[0]} (n={n})")
        if chance is not None:
            ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance ({chance:.2g})")
        ax.set_title(str(val))
        ax.set_xlabel("layer (index)")
        ax.grid(alpha=0.3)
    axs[0][0].set_ylabel(ylabel + " (mean ± SD over seeds)")
    axs[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_lesions(tgt: pd.DataFrame | None, lay: pd.DataFrame | None, path: Path) -> Path:
    """Every point's lesion curves overlaid: one panel per targeted rule, and the layer lesions per tower."""
    import matplotlib.pyplot as plt

    rules = list(dict.fromkeys(tgt["rule"])) if tgt is not None else []
    towers = list(dict.fromkeys(lay["tower"])) if lay is not None else []
    n = len(rules) + len(towers)
    fig, axs = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False)
    points = list(dict.fromkeys(pd.concat([d["point"] for d in (tgt, lay) if d is not None])))
    colour = {p: plt.cm.tab10(i % 10) for i, p in enumerate(points)}
    style = {"model": "-", "random": "--"}
    for ax, rule in zip(axs[0], rules):
        for (p, w), d in tgt[tgt["rule"] == rule].groupby(["point", "condition"], sort=False):
            ax.plot(d["proportion"], d["mean"], style.get(w, ":"), color=colour[p], marker="o", ms=2,
                    label=f"{p} ({w})")
        ax.set(title=f"targeted: {rule}", xlabel="proportion lesioned", ylim=(-0.05, 1.05))
    for ax, tower in zip(axs[0][len(rules):], towers):
        for (p, w), d in lay[lay["tower"] == tower].groupby(["point", "condition"], sort=False):
            ax.plot(range(len(d)), d["performance"], style.get(w, ":"), color=colour[p], marker="o", ms=2,
                    label=f"{p} ({w})")
        ax.set(title=f"layer lesions: {tower}", xlabel="layer zeroed (index)", ylim=(-0.05, 1.05))
    for ax in axs[0]:
        ax.grid(alpha=0.3)
    axs[0][0].set_ylabel("performance")
    axs[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


CSS = """
body{font-family:system-ui,sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.85em}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}img{max-width:100%}.failed{color:#b00;font-weight:bold}
"""


def _page(sw: SweepFolder, meta: dict, points: pd.DataFrame, tables: dict[str, pd.DataFrame], images: list[Path]) -> str:
    axes = meta["axes"]
    done = int((points.status == "done").sum())
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Sweep {html.escape(meta['name'])}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>Sweep <code>{html.escape(meta['name'])}</code>: {done}/{len(points)} points done</h1>",
        f"<p>Base preset <code>{html.escape(str(meta.get('base')))}</code>, shared overrides "
        f"<code>{html.escape(json.dumps(meta.get('params') or {}))}</code>, varying: "
        f"<code>{html.escape(', '.join(axes) or 'nothing')}</code>. Means and SDs are over the points that differ "
        "only in <code>seed</code>, which draws the stimuli and, with <code>weights=random</code>, the weights "
        "too; with pretrained weights it measures stimulus-set variability only. The <em>random</em> "
        "condition of every point is the control network seeded by <code>random_seed</code>, the same "
        "network in every point of one architecture.</p>",
        "<h2>Points</h2>", _points_html(points, sw.points_table.name),
    ]
    parts += [_img(p) for p in images]
    if "significance" in tables:
        parts += ["<h2>Fraction significant (mean ± SD over seeds)</h2>",
                  _wide(tables["significance"], axes, "score")]
    if "decoding" in tables:
        parts += ["<h2>Position decoding R² by layer (mean ± SD over seeds)</h2>",
                  _wide(tables["decoding"], axes, "neurons")]
    names = [sw.points_table.name] + [sw.table(t).name for t in tables]
    parts.append("<p>CSVs beside this page: " + ", ".join(names) + ".</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _points_html(points: pd.DataFrame, source: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in points.columns)
    rows = []
    for _, r in points.iterrows():
        cells = []
        for c in points.columns:
            v = "" if pd.isna(r[c]) else str(r[c])
            if c in ("report", "log") and v:
                v = f"<a href='{html.escape(v)}'>{html.escape(c)}</a>"
            elif c == "status" and v != "done":
                v = f"<span class='failed'>{html.escape(v)}</span>"
            else:
                v = html.escape(v)
            cells.append(f"<td>{v}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table data-source='{source}'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _wide(t: pd.DataFrame, axes: list[str], column: str) -> str:
    """``mean ± sd (n)`` cells, one column per ``column`` value, one row per group, condition and layer."""
    t = t.copy()
    t["cell"] = [f"{m:.3f} ± {s:.3f} (n={n})" if np.isfinite(s) else f"{m:.3f} (n={n})"
                 for m, s, n in zip(t["mean"], t["sd"], t["n_seeds"])]
    index = [a for a in axes if a != SEED] + ["condition", "layer"]
    wide = t.pivot_table(index=index, columns=column, values="cell", aggfunc="first", sort=False)
    return wide.to_html(escape=True)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<figure><img alt='{html.escape(path.stem)}' src='data:image/png;base64,{data}'></figure>"

