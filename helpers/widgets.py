"""ipywidgets explorers for notebooks.

The explorer mirrors the blog's interactive figure: pick a layer, a score and
the "random weights" toggle, and see that layer's top ratemaps for the score,
next to one neuron of your choice with all its scores.

The drawing is a pure function, :func:`explorer_view`, that returns the
figure and a description of what it shows, so it can be tested without a
notebook; :func:`make_explorer` only wires widgets to it. Figures are made
with :class:`matplotlib.figure.Figure` directly (not pyplot), so redrawing
never accumulates open pyplot figures and nothing is shown twice inline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from helpers.plots import SCORE_LABELS
from helpers.scores import SCORE_NAMES, top_neurons

__all__ = ["explorer_view", "make_explorer"]

MapsByCondition = Mapping[str, Mapping[str, np.ndarray]]
ScoresByCondition = Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]


def _condition(random_weights: bool) -> str:
    return "random" if random_weights else "model"


def explorer_view(
    maps: MapsByCondition,
    scores: ScoresByCondition,
    *,
    layer: str,
    score: str = "si",
    random_weights: bool = False,
    neuron: int = 0,
    top_k: int = 5,
) -> tuple[Figure, dict]:
    """Figure of one layer's top ratemaps for one score, plus one chosen neuron.

    Parameters:
    maps : mapping condition -> layer -> ndarray (k, bins, bins) — Conditions are ``"model"`` and ``"random"``.
    scores : mapping condition -> layer -> score name -> ndarray (k,)
    layer : str — Layer key.
    score : {"si", "grid", "border"} — Score used to rank the neurons.
    random_weights : bool — Use the ``"random"`` condition instead of ``"model"``.
    neuron : int — Index of the neuron drawn large on the right (0 .. k-1).
    top_k : int — Number of top neurons shown.

    Returns:
    figure : matplotlib.figure.Figure
    selection : dict — ``condition``, ``layer``, ``score``, ``top_neurons`` (list of int), ``top_scores`` (list of
        float), ``neuron`` and ``neuron_scores`` (score name -> float).
    """
    condition = _condition(random_weights)
    if condition not in maps or condition not in scores:
        raise ValueError(f"random_weights={random_weights} needs condition {condition!r} in maps and scores")
    if layer not in maps[condition]:
        raise ValueError(f"layer must be one of {list(maps[condition])}, got {layer!r}")
    layer_scores = scores[condition][layer]
    if score not in layer_scores:
        raise ValueError(f"score must be one of {list(layer_scores)}, got {score!r}")
    layer_maps = np.asarray(maps[condition][layer])
    k = layer_maps.shape[0]
    if not 0 <= int(neuron) < k:
        raise ValueError(f"neuron must be in 0..{k - 1} for layer {layer!r}, got {neuron}")
    neuron = int(neuron)
    values = np.asarray(layer_scores[score], dtype=float)
    best = top_neurons(values, top_k)

    colours = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")  # unvisited bins light grey
    fig = Figure(figsize=(1.6 * top_k + 3.2, 3.0))
    grid = fig.add_gridspec(1, top_k + 1, width_ratios=[1.0] * top_k + [1.8], wspace=0.1, bottom=0.05, top=0.72)
    _draw_top_panels(fig, grid, layer_maps, values, best, top_k, colours, SCORE_LABELS.get(score, score))
    ax = fig.add_subplot(grid[0, top_k])
    ax.imshow(layer_maps[neuron], cmap=colours, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    neuron_scores = {name: float(np.asarray(v)[neuron]) for name, v in layer_scores.items()}
    lines = [f"neuron {neuron}"] + [f"{SCORE_LABELS.get(n, n)}: {v:.2f}" for n, v in neuron_scores.items()]
    ax.set_title("\n".join(lines), fontsize=7)
    fig.suptitle(f"{layer} -- {condition} weights -- top {top_k} by {SCORE_LABELS.get(score, score)}", fontsize=9)
    selection = {
        "condition": condition,
        "layer": layer,
        "score": score,
        "top_neurons": [int(j) for j in best],
        "top_scores": [float(values[j]) for j in best],
        "neuron": neuron,
        "neuron_scores": neuron_scores,
    }
    return fig, selection


def _draw_top_panels(fig, grid, layer_maps, values, best, top_k: int, colours, label: str) -> None:
    """The ``top_k`` small ratemaps, best first; the first empty panel says why it is empty."""
    for i in range(top_k):
        ax = fig.add_subplot(grid[0, i])
        ax.set_xticks([])
        ax.set_yticks([])
        if i < best.size:
            j = best[i]
            ax.imshow(layer_maps[j], cmap=colours, interpolation="nearest")
            ax.set_xlabel(f"#{j}  {values[j]:.2f}", fontsize=7)
        else:
            ax.axis("off")
            if i == best.size:
                ax.text(0.5, 0.5, f"no neuron\nwith a finite\n{label}\n({best.size} of {len(layer_maps)} finite)",
                        ha="center", va="center", fontsize=6, transform=ax.transAxes)


def make_explorer(
    maps: MapsByCondition,
    scores: ScoresByCondition,
    *,
    top_k: int = 5,
    score_names: Sequence[str] = SCORE_NAMES,
    display_figure: bool = True,
):
    """Interactive explorer: layer, score, random-weights toggle, neuron index.

    Parameters:
    maps, scores — As in :func:`explorer_view`.
    top_k : int — Top neurons shown.
    score_names : sequence of str — Options of the score selector.
    display_figure : bool — Display the figure in the widget's output (only inside IPython).

    Returns:
    ipywidgets.interactive — Children: layer ``Dropdown``, score ``Dropdown``, random-weights ``Checkbox``, neuron
        ``IntSlider``, output. ``w.result`` is the selection dict of the last redraw, with the figure under
        ``"figure"``. A neuron index beyond the layer's size is clipped.
    """
    import ipywidgets as widgets

    conditions = [c for c in ("model", "random") if c in maps]
    if not conditions:
        raise ValueError("maps must hold a 'model' and/or 'random' condition")
    layers = list(maps[conditions[0]])
    n_max = max(np.asarray(m).shape[0] for cond in conditions for m in maps[cond].values())

    def redraw(layer: str, score: str, random_weights: bool, neuron: int) -> dict:
        n_layer = np.asarray(maps[_condition(random_weights)][layer]).shape[0]
        fig, selection = explorer_view(
            maps, scores, layer=layer, score=score, random_weights=random_weights,
            neuron=min(int(neuron), n_layer - 1), top_k=top_k,
        )
        if display_figure:
            try:
                from IPython import get_ipython
                from IPython.display import display
            except ImportError:  # pragma: no cover - IPython ships with ipywidgets
                get_ipython = None
            if get_ipython is not None and get_ipython() is not None:
                display(fig)
        selection["figure"] = fig
        return selection

    return widgets.interactive(
        redraw,
        layer=widgets.Dropdown(options=layers, value=layers[0], description="layer"),
        score=widgets.Dropdown(
            options=[(SCORE_LABELS.get(s, s), s) for s in score_names], value=score_names[0], description="score"
        ),
        random_weights=widgets.Checkbox(value=False, description="random weights", disabled="random" not in maps),
        neuron=widgets.IntSlider(value=0, min=0, max=n_max - 1, description="neuron"),
    )
