"""Explore a finished run folder: read its tables, draw its views, wire the widgets.

Everything here reads what 03 and 04 wrote (ratemaps, scores, decoding, layer and
targeted lesions; :class:`helpers.paths.Run`); no model is loaded and nothing is
recomputed. ``notebooks/explore.ipynb`` narrates it and ``make explore
RUN=<run>`` serves that notebook with Voila.

Figures are rendered to PNG here and displayed as images, so they reach the
browser whatever matplotlib backend the kernel was started with (with the agg
backend forced, a displayed ``Figure`` arrives as text/plain only).
"""

from __future__ import annotations

import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from helpers.paths import CONDITIONS, Run
from helpers.plots import CONDITION_COLOURS, SCORE_LABELS
from helpers.ratemaps import load_ratemaps
from helpers.scores import SCORE_NAMES
from helpers.widgets import explorer_view

__all__ = ["RunTables", "load_run", "decoding_figure", "lesion_figure", "selection_label", "make_run_explorer"]

#: The score selector's extra option, offered when the run has a decoding table.
DECODING = "decoding"


@dataclass(frozen=True)
class RunTables:
    """What the explorer reads from one finished run folder.

    ``maps[condition][layer]`` is (k, bins, bins); ``scores[condition][layer][name]``
    and ``p_values[condition][layer][name]`` are (k,) for name in SI / grid /
    border (p from the per-neuron shuffle null; NaN where the score is NaN).
    The lesion and decoding tables are the CSVs as written (None when absent).
    """

    run: Run
    weights: str
    layers: list[str]
    maps: dict
    scores: dict
    p_values: dict
    significant: dict
    decoding: pd.DataFrame | None
    layer_lesions: pd.DataFrame | None
    targeted_lesions: pd.DataFrame | None

    @property
    def conditions(self) -> list[str]:
        return list(self.maps)


def _read_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() else None


def load_run(run_dir: str | Path) -> RunTables:
    """Read a finished run folder (``data/<run>`` or an absolute path).

    Raises:
    FileNotFoundError — Naming ``run_dir`` and the files 03 should have written, when the run has not finished its
        Analyse stage.
    """
    run = Run(run_dir, create=False)
    needed = [run.scores] + [run.ratemaps(c) for c in CONDITIONS[:1]]
    missing = [p.relative_to(run.root).as_posix() for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"run_dir={str(run_dir)!r} ({run}) is not a finished run: missing {', '.join(missing)} "
            "(run the study up to 03_analyse first)"
        )
    table = pd.read_csv(run.scores)
    maps, scores, p_values, significant = {}, {}, {}, {}
    for cond in CONDITIONS:
        path = run.ratemaps(cond)
        if not path.is_file():
            continue
        maps[cond] = load_ratemaps(path)["maps"]
        rows = table[table["condition"] == cond]
        scores[cond], p_values[cond], significant[cond] = {}, {}, {}
        for layer in maps[cond]:
            t = rows[rows["layer"] == layer].sort_values("neuron")
            if len(t) != maps[cond][layer].shape[0]:
                raise ValueError(
                    f"{run.scores.name} has {len(t)} rows for {cond}/{layer} but its ratemaps hold "
                    f"{maps[cond][layer].shape[0]} neurons: the run folder {run} is inconsistent"
                )
            scores[cond][layer] = {s: t[s].to_numpy(float) for s in SCORE_NAMES}
            p_values[cond][layer] = {s: t[f"{s}_p"].to_numpy(float) for s in SCORE_NAMES}
            significant[cond][layer] = {s: t[f"{s}_sig"].to_numpy(bool) for s in SCORE_NAMES}
    identity = json.loads(run.model.read_text()) if run.model.is_file() else {}
    return RunTables(
        run=run,
        weights=str(identity.get("weights", "?")),
        layers=list(maps["model"]),
        maps=maps,
        scores=scores,
        p_values=p_values,
        significant=significant,
        decoding=_read_csv(run.decoding),
        layer_lesions=_read_csv(run.layer_lesions),
        targeted_lesions=_read_csv(run.targeted_lesions),
    )


def condition_name(data: RunTables, condition: str) -> str:
    """``"model weights (openai)"`` or ``"random weights (seeded init)"``: what the toggle shows."""
    return f"model weights ({data.weights})" if condition == "model" else "random weights (seeded initialisation)"


def neuron_at(data: RunTables, *, condition: str, layer: str, score: str, by: str, value: int) -> int:
    """The neuron index picked by rank (0 = best finite ``score``) or directly by index.

    Ranks past the last finite score, and indices past the layer's size, are
    clipped to the last one. ``score="decoding"`` ranks by spatial information.
    """
    k = data.maps[condition][layer].shape[0]
    if by == "index":
        return int(np.clip(value, 0, k - 1))
    if by != "rank":
        raise ValueError(f"by must be 'rank' or 'index', got {by!r}")
    values = data.scores[condition][layer]["si" if score == DECODING else score]
    finite = np.flatnonzero(np.isfinite(values))
    if finite.size == 0:
        return 0
    order = finite[np.argsort(-values[finite], kind="stable")]
    return int(order[min(int(value), order.size - 1)])


def selection_label(data: RunTables, selection: dict) -> str:
    """One line of text naming what the figure shows: layer, weights, score, neuron and its scores with p."""
    cond, layer, neuron = selection["condition"], selection["layer"], selection["neuron"]
    parts = []
    for s in SCORE_NAMES:
        v = data.scores[cond][layer][s][neuron]
        p = data.p_values[cond][layer][s][neuron]
        sig = data.significant[cond][layer][s][neuron]
        parts.append(
            f"{SCORE_LABELS[s]} n/a (not finite)" if not np.isfinite(v)
            else f"{SCORE_LABELS[s]} {v:.3f} (p={p:.2f}{', significant' if sig else ''})"
        )
    score = selection["score"]
    what = "decoding R² by layer" if score == DECODING else f"top {selection['top_k']} by {SCORE_LABELS[score]}"
    return f"{layer} · {condition_name(data, cond)} · {what} · neuron {neuron}: " + "; ".join(parts)


def decoding_figure(data: RunTables, *, condition: str, layer: str) -> Figure:
    """Cross-validated R² of stimulus position from each layer (all / non-significant neurons), ``layer`` marked."""
    fig = Figure(figsize=(7.5, 3.0))
    ax = fig.add_subplot()
    dec = data.decoding[data.decoding["condition"] == condition]
    x = np.arange(len(data.layers))
    for neurons, style in (("all", "-o"), ("non-significant", "--s")):
        d = dec[dec["neurons"] == neurons].set_index("layer").reindex(data.layers)
        ax.plot(x, d["r2"].to_numpy(float), style, label=f"{neurons} neurons", color=CONDITION_COLOURS[condition])
    ax.axvline(data.layers.index(layer), color="0.5", lw=1)
    ax.set_xticks(x)
    ax.set_xticklabels([str(i) for i in x], fontsize=7)
    ax.set_xlabel("layer (order of the run)")
    ax.set_ylabel("R² (position)")
    ax.legend(fontsize=7)
    ax.set_title(f"position decoding -- {condition_name(data, condition)}; grey line: {layer}", fontsize=8)
    fig.tight_layout()
    return fig


def lesion_figure(data: RunTables, *, condition: str) -> Figure:
    """The run's lesion curves for one condition: every layer lesion, and block lesions by proportion.

    Left: balanced performance (circles and the blank canvas; 0.5 = one answer for
    every image) with each unit zeroed when the table has it, else the blog's
    circle-only performance; the unlesioned baseline dashed. Right: performance against the proportion of
    neurons ablated, one line per selection rule (Random averaged over seeds).
    A panel whose table is missing says so.
    """
    fig = Figure(figsize=(10, 3.4))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ll, tl = data.layer_lesions, data.targeted_lesions
    for ax, table, name in ((left, ll, "layer_lesions"), (right, tl, "targeted_lesions")):
        why = (f"no {getattr(data.run, name).relative_to(data.run.root)} in this run\n(04_perturb has not run)" if table is None else
               f"the {condition} condition was not lesioned in this run\n(04's perturb_random is off)"
               if not (table["weights"] == condition).any() else None)
        if why:
            ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, fontsize=8)
            ax.set_axis_off()
    if ll is not None and (ll["weights"] == condition).any():
        d = ll[ll["weights"] == condition]
        value = "balanced_performance" if "balanced_performance" in d.columns else "performance"
        ticks = list(dict.fromkeys(str(v).replace("resblock ", "") for v in d["label"]))  # conv1, 0, 1, ...
        for tower, marker in (("visual", "o"), ("text", "s")):  # same block of both towers at the same x
            t = d[d["tower"] == tower]
            x = [ticks.index(str(v).replace("resblock ", "")) for v in t["label"]]
            left.plot(x, t[value], marker=marker, ms=3, lw=1, label=tower)
        left.set_xticks(np.arange(len(ticks)))
        left.set_xticklabels(ticks, fontsize=7, rotation=90)
        if len(d):
            left.axhline(float(d[f"baseline_{value}"].iloc[0]), ls="--", color="0.5", lw=1, label="unlesioned")
        left.set_xlabel("unit zeroed (resblock number)")
        left.set_ylabel("balanced performance (circles, blank)" if value != "performance" else "performance (circles)")
        left.set_ylim(-0.05, 1.05)
        left.legend(fontsize=7)
        left.set_title("layer lesions", fontsize=9)
    if tl is not None and (tl["weights"] == condition).any():
        d = tl[tl["weights"] == condition]
        curves = d.groupby(["condition", "proportion"], sort=False)["performance"].mean().unstack(0)
        for rule in curves.columns:
            right.plot(curves.index, curves[rule], marker="o", ms=3, label=rule)
        right.set_xlabel("proportion of neurons ablated")
        right.set_ylabel("performance")
        right.set_ylim(-0.05, 1.05)
        right.legend(fontsize=7)
        right.set_title("targeted vs random lesions (04's `block`)", fontsize=9)
    fig.suptitle(f"lesion curves -- {condition_name(data, condition)}", fontsize=9)
    fig.tight_layout()
    return fig


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes (100 dpi)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def view(data: RunTables, *, layer: str, score: str, random_weights: bool, by: str, value: int,
         top_k: int) -> tuple[Figure, dict]:
    """Ratemap figure (or the decoding curve) for one setting of the controls, and its selection dict."""
    condition = "random" if random_weights else "model"
    if condition not in data.maps:
        raise ValueError(f"random_weights=True needs {data.run.ratemaps('random')}")
    neuron = neuron_at(data, condition=condition, layer=layer, score=score, by=by, value=value)
    if score == DECODING:
        fig = decoding_figure(data, condition=condition, layer=layer)
        selection = {"condition": condition, "layer": layer, "score": score, "neuron": neuron}
    else:
        fig, selection = explorer_view(data.maps, data.scores, layer=layer, score=score,
                                       random_weights=random_weights, neuron=neuron, top_k=top_k)
    selection["top_k"] = top_k
    return fig, selection


def make_run_explorer(data: RunTables):
    """The explorer widget: controls, a label naming the selection, the ratemap view and the lesion curves.

    Controls: layer, score (SI / grid / border, plus decoding when the run has
    it), random-weights toggle, neuron by rank or index, top-k. CSS classes
    ``explore-<control>``, ``explore-label``, ``explore-view`` and
    ``explore-lesions`` name the parts for browser tests.

    Returns:
    ipywidgets.VBox — ``box.state`` is a dict with the last ``selection`` and ``label``.
    """
    import ipywidgets as w
    from IPython.display import Image, display

    options = [(SCORE_LABELS[s], s) for s in SCORE_NAMES]
    if data.decoding is not None:
        options.append(("decoding R²", DECODING))
    controls = {
        "layer": w.Dropdown(options=data.layers, value=data.layers[0], description="layer"),
        "score": w.Dropdown(options=options, value="si", description="score"),
        "random": w.Checkbox(value=False, description="random weights", disabled="random" not in data.maps),
        "by": w.ToggleButtons(options=["rank", "index"], value="rank", description="neuron by"),
        "value": w.BoundedIntText(value=0, min=0, max=max(m.shape[0] for m in data.maps["model"].values()) - 1,
                                  description="rank/index"),
        "top_k": w.IntSlider(value=5, min=1, max=10, description="top k"),
    }
    for name, c in controls.items():
        c.add_class(f"explore-{name}")
    label = w.HTML().add_class("explore-label")
    view_out = w.Output().add_class("explore-view")
    lesion_out = w.Output().add_class("explore-lesions")
    box = w.VBox([w.HBox([controls["layer"], controls["score"], controls["random"]]),
                  w.HBox([controls["by"], controls["value"], controls["top_k"]]),
                  label, view_out, lesion_out])
    box.state = {}

    def redraw(_=None):
        fig, selection = view(data, layer=controls["layer"].value, score=controls["score"].value,
                              random_weights=controls["random"].value, by=controls["by"].value,
                              value=controls["value"].value, top_k=controls["top_k"].value)
        text = selection_label(data, selection)
        label.value = f"<b>{html.escape(text)}</b>"
        view_out.clear_output(wait=True)
        with view_out:
            display(Image(data=png(fig)))
        box.state.update(selection=selection, label=text)

    def redraw_lesions(_=None):
        condition = "random" if controls["random"].value else "model"
        lesion_out.clear_output(wait=True)
        with lesion_out:
            display(Image(data=png(lesion_figure(data, condition=condition))))

    for c in controls.values():
        c.observe(redraw, names="value")
    controls["random"].observe(redraw_lesions, names="value")
    redraw()
    redraw_lesions()
    return box
