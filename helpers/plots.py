"""Figures for every stage of the study.

Every function draws with matplotlib, returns the ``Figure`` and, when given
``path``, saves it as PNG (``dpi=120``) so headless papermill/nbval runs still
leave the figure on disk.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

import matplotlib.pyplot as plt
import numpy as np


def save(fig: "matplotlib.figure.Figure", path: str | Path | None) -> "matplotlib.figure.Figure":
    """Save ``fig`` as PNG at ``path`` (parents created) when a path is given."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


# =========================================================================== design figures


def plot_example_stimuli(stim, indices=None, *, n: int = 8, path=None):
    """Eight representative stimuli (blog, Design figure, left).

    Parameters:
    stim : helpers.stimuli.StimulusSet
    indices : sequence of int, optional — Which stimuli; default the first ``n``.
    """
    from helpers.stimuli import render

    idx = list(range(min(n, len(stim)))) if indices is None else list(indices)
    cols = min(4, len(idx))
    rows = int(np.ceil(len(idx) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, idx):
        ax.axis("on")  # keep the frame: it is the edge of the visual field
        ax.set_xticks([])
        ax.set_yticks([])
        ax.imshow(render(stim, i))
        ax.set_title(f"#{i}  d={stim.diameter[i]:.0f}px", fontsize=8)
    fig.suptitle("Example stimuli")
    fig.tight_layout()
    return save(fig, path)


def plot_stimulus_centres(stim, *, path=None):
    """Stimulus centres over the visual field, coloured by diameter (blog, right-top)."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    sc = ax.scatter(stim.x, stim.y, c=stim.diameter, s=4, cmap="viridis")
    c = stim.canvas
    ax.set_xlim(0, c)
    ax.set_ylim(c, 0)  # image convention: y grows downwards
    ax.set_aspect("equal")
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    ax.set_title(f"Centres of {len(stim)} stimuli")
    fig.colorbar(sc, ax=ax, label="diameter (px)", shrink=0.8)
    fig.tight_layout()
    return save(fig, path)


def plot_composite(mean_img: np.ndarray, *, path=None):
    """Mean image over all stimuli (blog, right-bottom)."""
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(np.clip(mean_img, 0, 255).astype(np.uint8))
    ax.set_title("Composite (mean of all stimuli)")
    ax.axis("off")
    fig.tight_layout()
    return save(fig, path)



# =========================================================================== record figures


def plot_activation_distributions(stats, *, title: str | None = None, path: str | Path | None = None):
    """Per-layer activation distributions, one panel per condition.

    Parameters:
    stats : pandas.DataFrame — From :func:`helpers.record.activation_stats`: columns ``condition``, ``layer``,
        ``label``, ``q1``, ``q25``, ``q50``, ``q75``, ``q99``, ``mean``. Boxes span the 25-75 % quantiles, whiskers
        1-99 %, the line is the median and the dot the mean; no outliers are drawn.
    """
    conds = list(dict.fromkeys(stats["condition"]))
    fig, axes = plt.subplots(
        1, len(conds), figsize=(max(4.0, 0.45 * stats["layer"].nunique() + 1.5) * len(conds), 3.4), squeeze=False
    )
    for ax, cond in zip(axes[0], conds):
        sub = stats[stats["condition"] == cond]
        boxes = [
            {"med": r.q50, "q1": r.q25, "q3": r.q75, "whislo": r.q1, "whishi": r.q99, "mean": r.mean, "label": r.label}
            for r in sub.itertuples()
        ]
        ax.bxp(boxes, showfliers=False, showmeans=True, meanprops={"marker": ".", "markerfacecolor": "k"})
        ax.axhline(0.0, color="0.7", lw=0.6, zorder=0)
        ax.set_title(str(cond))
        ax.set_ylabel("activation")
        ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    fig.suptitle(title or "Activation distributions per layer (box 25-75 %, whiskers 1-99 %)")
    fig.tight_layout()
    return save(fig, path)


# =========================================================================== analyse figures
#: Display names of the spatial scores (keys as in helpers.scores.SCORE_NAMES).
SCORE_LABELS = {"si": "spatial info", "grid": "grid score", "border": "border score"}
#: Colours of the two weight conditions.
CONDITION_COLOURS = {"model": "tab:blue", "random": "tab:orange"}


def draw_top_ratemaps(
    fig: "matplotlib.figure.Figure",
    maps_by_layer,
    scores_by_layer,
    *,
    top_k: int = 5,
    score_names=("si", "grid", "border"),
    cmap: str = "viridis",
) -> dict:
    """Draw the top-``top_k`` ratemaps per layer and score into ``fig``.

    Rows are layers (in mapping order), columns are ``len(score_names)``
    groups of ``top_k`` maps, best first. Each map is scaled to its own
    range (unvisited bins light grey); ``#neuron score`` is written under it. Used by
    :func:`plot_top_ratemaps` and the widget explorer.

    Returns:
    dict — ``layer -> score name -> ndarray`` of the neuron indices shown.
    """
    from helpers.scores import top_neurons

    colours = matplotlib.colormaps[cmap].with_extremes(bad="0.85")  # unvisited bins light grey
    layers = list(maps_by_layer)
    if not layers:
        raise ValueError("maps_by_layer must hold at least one layer")
    n_groups = len(score_names)
    # spacer columns between score groups
    ratios = []
    for g in range(n_groups):
        ratios += [1.0] * top_k + ([0.25] if g < n_groups - 1 else [])
    grid = fig.add_gridspec(len(layers), len(ratios), width_ratios=ratios, wspace=0.05, hspace=0.35)
    shown: dict = {}
    for row, layer in enumerate(layers):
        maps = np.asarray(maps_by_layer[layer])
        shown[layer] = {}
        for g, name in enumerate(score_names):
            values = np.asarray(scores_by_layer[layer][name])
            best = top_neurons(values, top_k)
            shown[layer][name] = best
            for i in range(top_k):
                ax = fig.add_subplot(grid[row, g * (top_k + 1) + i])
                ax.set_xticks([])
                ax.set_yticks([])
                if i < best.size:
                    j = best[i]
                    ax.imshow(maps[j], cmap=colours, interpolation="nearest")
                    ax.set_xlabel(f"#{j} {values[j]:.2f}", fontsize=6, labelpad=1)
                else:  # fewer finite scores than top_k: the first empty cell says so
                    ax.axis("off")
                    if i == best.size:
                        ax.text(0.5, 0.5, f"only {best.size}\nfinite", ha="center", va="center", fontsize=5,
                                color="0.35", transform=ax.transAxes)
                if row == 0 and i == top_k // 2:
                    ax.set_title(SCORE_LABELS.get(name, name), fontsize=9)
                if g == 0 and i == 0:
                    ax.set_ylabel(str(layer), fontsize=7, rotation=0, ha="right", va="center")
    return shown


def plot_top_ratemaps(
    maps_by_layer,
    scores_by_layer,
    *,
    top_k: int = 5,
    score_names=("si", "grid", "border"),
    title: str | None = None,
    path=None,
):
    """The blog's main figure for one weight condition.

    Parameters:
    maps_by_layer : mapping layer -> ndarray (k, bins, bins) — Ratemaps of every neuron of each layer (rows of the
        figure, in order).
    scores_by_layer : mapping layer -> mapping score name -> ndarray (k,) — Scores of the same neurons (e.g. from
        ``helpers.scores.compute_scores``).
    top_k : int — Neurons shown per layer and score, best first (NaN scores skipped).
    score_names : sequence of str — Column groups, default spatial information, grid and border score.
    title : str, optional — e.g. ``"CLIP ViT-B/32, CLS token -- model weights"``.
    path : str or Path, optional — Save as PNG there.

    Returns:
    matplotlib.figure.Figure
    """
    n_layers = len(maps_by_layer)
    width = 0.55 * top_k * len(score_names) + 1.5
    fig = plt.figure(figsize=(width, 0.62 * n_layers + 0.8))
    draw_top_ratemaps(fig, maps_by_layer, scores_by_layer, top_k=top_k, score_names=score_names)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path)


def _score_by_layer_axes(by_condition, score_names, height: float, argname: str, **subplot_kw):
    """One panel per score with layers on x: ``(conditions, layers, x, fig, axes)``.

    ``by_condition`` maps condition -> layer -> score name -> value; layers are
    taken in the mapping order of the first condition. ``argname`` names the
    caller's parameter in the error for an empty mapping.
    """
    conditions = list(by_condition)
    if not conditions:
        raise ValueError(f"{argname} must hold at least one condition")
    layers = list(by_condition[conditions[0]])
    x = np.arange(len(layers))
    fig, axes = plt.subplots(
        1, len(score_names), figsize=(4.2 * len(score_names), height), squeeze=False, **subplot_kw
    )
    return conditions, layers, x, fig, axes


def _finish_score_by_layer(fig, axes, layers, score_names, title: str | None, path):
    """Layer ticks and score titles (after plotting: ``boxplot`` resets ticks), legend, suptitle, save."""
    x = np.arange(len(layers))
    for ax, name in zip(axes[0], score_names):
        ax.set_xticks(x)
        ax.set_xticklabels([str(layer) for layer in layers], rotation=90, fontsize=7)
        ax.set_title(SCORE_LABELS.get(name, name))
        ax.set_xlabel("layer")
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)


def plot_score_distributions(
    scores_by_condition,
    *,
    score_names=("si", "grid", "border"),
    thresholds=None,
    title: str | None = None,
    path=None,
):
    """Box plots of each score by layer, one box per condition.

    Parameters:
    scores_by_condition : mapping condition -> layer -> score name -> ndarray (k,) — e.g. ``{"model": {...}, "random":
        {...}}``; layers in mapping order of the first condition. NaN scores are left out.
    thresholds : mapping condition -> layer -> score name -> float, optional — Significance thresholds, drawn as short
        horizontal ticks.
    title, path — Figure title; save as PNG at ``path``.

    Returns:
    matplotlib.figure.Figure
    """
    conditions, layers, x, fig, axes = _score_by_layer_axes(
        scores_by_condition, score_names, 3.4, "scores_by_condition"
    )
    width = 0.8 / len(conditions)
    for ax, name in zip(axes[0], score_names):
        for c, cond in enumerate(conditions):
            offset = (c - (len(conditions) - 1) / 2) * width
            data = []
            for layer in layers:
                v = np.asarray(scores_by_condition[cond][layer][name], dtype=float)
                data.append(v[np.isfinite(v)])
            colour = CONDITION_COLOURS.get(cond, f"C{c}")
            ax.boxplot(
                data,
                positions=x + offset,
                widths=width * 0.85,
                showfliers=False,
                patch_artist=True,
                boxprops=dict(facecolor=colour, alpha=0.5, edgecolor=colour),
                medianprops=dict(color="black"),
                whiskerprops=dict(color=colour),
                capprops=dict(color=colour),
            )
            ax.plot([], [], color=colour, lw=6, alpha=0.5, label=cond)
            if thresholds is not None:
                thr = [thresholds[cond][layer][name] for layer in layers]
                ax.scatter(x + offset, thr, marker="_", s=120, color=colour, zorder=3)
    return _finish_score_by_layer(fig, axes, layers, score_names, title, path)


def plot_fraction_significant(
    significant_by_condition,
    *,
    pooled_by_condition=None,
    score_names=("si", "grid", "border"),
    chance: float | None = 0.05,
    title: str | None = None,
    path=None,
):
    """Fraction of significant neurons per layer, one line per condition.

    Parameters:
    significant_by_condition : mapping condition -> layer -> score name -> float or bool array — A fraction in [0, 1],
        or a boolean mask such as ``score_layers(...)["significant"]`` (its mean is plotted).
    pooled_by_condition : same structure, optional — The decisions under the layer's pooled null (``score_layers(...)
        ["significant_pooled"]``), drawn dashed with open markers in the condition's colour, labelled "<condition>,
        pooled null".
    chance : float or None — Expected false-positive rate (1 - percentile/100), drawn dashed.
    title, path — Figure title; save as PNG at ``path``.

    Returns:
    matplotlib.figure.Figure
    """
    conditions, layers, x, fig, axes = _score_by_layer_axes(
        significant_by_condition, score_names, 3.2, "significant_by_condition", sharey=True
    )
    for ax, name in zip(axes[0], score_names):
        for c, cond in enumerate(conditions):
            colour = CONDITION_COLOURS.get(cond, f"C{c}")
            frac = [float(np.mean(significant_by_condition[cond][layer][name])) for layer in layers]
            ax.plot(x, frac, marker="o", color=colour, label=cond)
            if pooled_by_condition is not None:
                frac = [float(np.mean(pooled_by_condition[cond][layer][name])) for layer in layers]
                ax.plot(x, frac, marker="o", mfc="none", ls="--", color=colour, label=f"{cond}, pooled null")
        if chance is not None:
            ax.axhline(chance, color="grey", ls="--", lw=1, label="chance")
        ax.set_ylim(0, 1)
    axes[0, 0].set_ylabel("fraction significant")
    return _finish_score_by_layer(fig, axes, layers, score_names, title, path)

# =========================================================================== perturb figures
def plot_layer_lesions(df, *, title: str | None = None, path: str | Path | None = None):
    """Performance per lesioned unit, visual and text towers, with the baseline (blog's layer-lesion figure).

    Bars: ``balanced_performance`` (mean over the circles and the blank canvas;
    0.5 = every image gets the same answer) when the table has it, else the
    blog's ``performance`` (circles only), which is then drawn as black ticks.

    Parameters:
    df : pandas.DataFrame — :func:`helpers.lesions.layer_lesion_study` output (columns ``tower, label, part,
        performance, baseline_performance``, optionally ``balanced_performance``).
    """
    balanced = "balanced_performance" in df.columns
    value = "balanced_performance" if balanced else "performance"
    towers = [t for t in ("visual", "text") if (df["tower"] == t).any()]
    fig, axes = plt.subplots(1, len(towers), figsize=(6.5 * len(towers), 3.8), squeeze=False, sharey=True)
    parts = [p for p in ("conv1", "block", "attn", "mlp") if (df["part"] == p).any()]
    colours = {"conv1": "C3", "block": "C0", "attn": "C1", "mlp": "C2"}
    base = float(df[f"baseline_{value}"].iloc[0])
    for ax, tower in zip(axes[0], towers):
        d = df[df["tower"] == tower].reset_index(drop=True)
        groups = list(dict.fromkeys(d["block"].astype("float").fillna(-1).astype(int)))
        width = 0.8 / max(1, len([p for p in parts if p != "conv1"]))
        for p in parts:
            dp = d[d["part"] == p]
            if dp.empty:
                continue
            g = dp["block"].astype("float").fillna(-1).astype(int)
            x = np.array([groups.index(v) for v in g], dtype=float)
            if p in ("attn", "mlp"):
                x = x + width * (1 + ["attn", "mlp"].index(p)) - width
            elif len(parts) > 2:
                x = x - width
            w = width if p != "conv1" else 0.8
            ax.bar(x, dp[value], width=w, color=colours[p], label=p)
            if balanced:
                ax.scatter(x, dp["performance"], marker="_", s=120 * w, color="k", zorder=3, label="circles only (blog)")
        ax.axhline(base, color="k", ls="--", lw=1, label="baseline")
        if balanced:
            ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance (one answer for all)")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(["conv1" if g < 0 else str(g) for g in groups], fontsize=8)
        ax.set_xlabel("lesioned unit (resblock index)")
        ax.set_title(f"{tower} tower")
        ax.set_ylim(0, 1.02)
    axes[0, 0].set_ylabel("balanced performance (circles, blank)" if balanced else 'performance ("a black circle")')
    legend = {}  # one entry per label over both towers (conv1 is drawn on the visual tower only)
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(lab, h)
    axes[0, -1].legend(legend.values(), legend.keys(), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)


#: Colour, marker and legend label of each targeted-lesion selection rule.
_RULE_STYLES = {
    "Targeted": ("C3", "o", "Targeted (z)"),
    "Targeted_Abs": ("C1", "s", r"Targeted$_{Abs}$ (|z|)"),
    "Targeted_raw": ("C2", "D", "Targeted_raw (blog: raw value)"),
    "Random": ("C0", "^", "Random"),
}


def _rule_curves(ax, df, value: str) -> None:
    """One line per selection rule of ``summarise_targeted(df, value)``; Random as mean ± SD over seeds."""
    from helpers.lesions import summarise_targeted

    for cond, d in summarise_targeted(df, value).groupby("condition", sort=False):
        colour, marker, label = _RULE_STYLES.get(cond, (None, "o", cond))
        d = d.sort_values("proportion")
        ax.plot(d["proportion"], d["mean"], marker=marker, color=colour, label=label)
        if (d["sd"] > 0).any():
            ax.fill_between(d["proportion"], d["mean"] - d["sd"], d["mean"] + d["sd"], color=colour, alpha=0.25, lw=0)


def plot_targeted_lesions(df, *, block: int, n_neurons: int = 768, title: str | None = None,
                          path: str | Path | None = None):
    """Performance vs proportion of ablated neurons per selection rule (blog's targeted-lesion figure).

    Left: performance (fraction classified "a black circle"); right: mean
    probability of the target prompt, which still moves when decisions don't.
    Random is drawn as mean ± SD over seeds.

    Parameters:
    df : pandas.DataFrame — :func:`helpers.lesions.targeted_lesion_study` output.
    """
    panels = {"performance": 'performance ("a black circle")', "p_target": "mean P(target prompt)"}
    return _rule_panels(df, panels, n_neurons, title or f"lesions in residual block {block}", path)


def plot_selection_specificity(df, *, block: int, n_neurons: int = 768, title: str | None = None,
                               path: str | Path | None = None):
    """How stimulus-specific each selection rule's lesioned sets are, by proportion ablated.

    Left: mean pairwise Jaccard index between different stimuli's sets (1 =
    every stimulus loses the same neurons; Random shows the chance level).
    Right: fraction of each set that is lesioned for every stimulus
    (``n_common / n_ablated``).

    Parameters:
    df : pandas.DataFrame — :func:`helpers.lesions.targeted_lesion_study` output (columns ``jaccard``, ``n_common``,
        ``n_ablated``).
    """
    d = df[df["n_ablated"] > 0].assign(shared=lambda t: t["n_common"] / t["n_ablated"])
    panels = {"jaccard": "mean Jaccard between two stimuli's sets", "shared": "fraction lesioned for every stimulus"}
    return _rule_panels(d, panels, n_neurons, title or f"selection specificity in residual block {block}", path)


def _rule_panels(df, panels: dict[str, str], n_neurons: int, title: str, path):
    """One panel per column of ``panels`` (column -> y label): a curve per selection rule vs proportion ablated."""
    fig, axes = plt.subplots(1, len(panels), figsize=(10, 3.8))
    for ax, (value, ylabel) in zip(axes, panels.items()):
        _rule_curves(ax, df, value)
        ax.set_xlabel(f"proportion of neurons ablated (n={n_neurons})")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)


def _outline_region(ax, region, extent, upsample: int = 16, linestyles: str = "solid"):
    """Draw the outline of a (bins, bins) bool region with square corners."""
    xmin, xmax, ymin, ymax = extent
    reg = np.kron(np.pad(np.asarray(region, float), 1), np.ones((upsample, upsample)))
    nb = reg.shape[0] / upsample - 2
    step_x, step_y = (xmax - xmin) / nb / upsample, (ymax - ymin) / nb / upsample
    xc = xmin - (xmax - xmin) / nb + (np.arange(reg.shape[1]) + 0.5) * step_x
    yc = ymin - (ymax - ymin) / nb + (np.arange(reg.shape[0]) + 0.5) * step_y
    if 0 < reg.mean() < 1:
        ax.contour(xc, yc, reg, levels=[0.5], colors="k", linewidths=1.5, linestyles=linestyles)
    ax.set_xlim(xmin, xmax)
    ax.set_ylim(ymax, ymin)


def plot_spatial_lesion(before, after, region, *, extent, labels=("performance",), controls=None, opposite=None,
                        limits=None, title: str | None = None, path: str | Path | None = None):
    """Maps over the visual field before and after a regional lesion, and the change under each lesion.

    Columns: before, after the region lesion, after − before for the region
    lesion, then after − before for each control lesion. The change maps of a
    row share one symmetric colour scale, so a deficit that is as large under
    a control as under the region lesion looks alike.

    Parameters:
    before, after : (bins, bins) or (k, bins, bins) arrays, NaN in empty bins — (row 0 = top of the image); one figure
        row per map.
    region : (bins, bins) bool, outlined (solid) in every panel.
    extent : (xmin, xmax, ymin, ymax) pixels.
    labels : one label per row, e.g. ``("margin", "P(circle)", "performance")``.
    controls : mapping name -> array like ``after``, optional — Maps after each control lesion (e.g. ``{"opposite":
        ..., "random": ...}``).
    opposite : (bins, bins) bool, optional; outlined dashed.
    limits : one (lo, hi) or None per row, optional — Colour range of the before/after maps; None = their joint data
        range. Default (0, 1) for every row.
    """
    before = np.asarray(before, float)
    after = np.asarray(after, float)
    ctrl = {name: np.asarray(m, float) for name, m in (controls or {}).items()}
    if before.ndim == 2:
        before, after = before[None], after[None]
        ctrl = {name: m[None] for name, m in ctrl.items()}
    xmin, xmax, ymin, ymax = extent
    k = before.shape[0]
    labels = list(labels) + [""] * (k - len(labels))
    limits = [(0.0, 1.0)] * k if limits is None else list(limits)
    ncol = 3 + len(ctrl)
    fig, axes = plt.subplots(k, ncol, figsize=(4 * ncol, 3.8 * k), squeeze=False)
    for r in range(k):
        diffs = [(after[r] - before[r], "region lesion: after − before")]
        diffs += [(m[r] - before[r], f"{name}: after − before") for name, m in ctrl.items()]
        finite = np.concatenate([d[np.isfinite(d)] for d, _ in diffs])
        lim = max(0.05, float(np.abs(finite).max())) if finite.size else 1.0
        if limits[r] is None:
            both = np.r_[before[r][np.isfinite(before[r])], after[r][np.isfinite(after[r])]]
            lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
        else:
            lo, hi = limits[r]
        panels = [(before[r], "before", "viridis", lo, hi), (after[r], "after region lesion", "viridis", lo, hi)]
        panels += [(d, name, "RdBu", -lim, lim) for d, name in diffs]
        for ax, (m, name, cmap, vlo, vhi) in zip(axes[r], panels):
            im = ax.imshow(m, extent=(xmin, xmax, ymax, ymin), cmap=cmap, vmin=vlo, vmax=vhi, interpolation="nearest")
            if opposite is not None:
                _outline_region(ax, opposite, extent, linestyles="dashed")
            _outline_region(ax, region, extent)
            ax.set_title(f"{labels[r]}\n{name}" if labels[r] else name, fontsize=10)
            ax.set_xlabel("x (px)")
            fig.colorbar(im, ax=ax, fraction=0.046)
        axes[r, 0].set_ylabel("y (px)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)


# =========================================================================== decoding figure
def plot_decoding(df, *, layer_labels=None, title: str | None = None, path: str | Path | None = None):
    """Position decoding by layer: R², median error and neurons removed, per condition and neuron set.

    Parameters:
    df : pandas.DataFrame — :func:`helpers.decoding.decoding_table` output (columns ``condition, layer, neurons,
        n_removed, n_neurons, r2, median_error_px, chance_median_error_px``). Layers are plotted in their order of
        appearance; solid lines use all neurons, dashed lines those left after removing the significant ones (where
        none is left: no point, "none left").
    layer_labels : mapping layer -> tick label, optional.
    title, path — Figure title; save as PNG at ``path``.
    """
    if len(df) == 0:
        raise ValueError("df must hold at least one row of helpers.decoding.decoding_table")
    layers = list(dict.fromkeys(df["layer"]))
    labels = [str((layer_labels or {}).get(layer, layer)) for layer in layers]
    x = np.arange(len(layers))
    styles = {"all": ("-", "o", "all neurons"), "non-significant": ("--", "x", "without significant")}
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for c, (cond, dc) in enumerate(df.groupby("condition", sort=False)):
        colour = CONDITION_COLOURS.get(cond, f"C{c}")
        for name, d in dc.groupby("neurons", sort=False):
            ls, marker, what = styles.get(name, (":", "s", name))
            d = d.set_index("layer").reindex(layers)
            for ax, col in zip(axes[:2], ("r2", "median_error_px")):
                ax.plot(x, d[col].to_numpy(float), ls=ls, marker=marker, color=colour, label=f"{cond}: {what}")
            for xi in x[(d["n_neurons"] == 0).to_numpy()]:  # NaN rows: say why there is no point
                axes[0].annotate("none left", (xi, 0.02), rotation=90, fontsize=7, color=colour, ha="center")
        d = dc[dc["neurons"] == "non-significant"].set_index("layer").reindex(layers)
        if len(dc[dc["neurons"] == "non-significant"]):
            frac = d["n_removed"].to_numpy(float) / (d["n_removed"] + d["n_neurons"]).to_numpy(float)
            axes[2].plot(x, frac, marker="o", color=colour, label=cond)
    r2 = df["r2"].to_numpy(float)
    low = np.nanmin(r2) if np.isfinite(r2).any() else 0.0
    axes[0].axhline(0, color="grey", lw=1)
    axes[0].set_ylim(min(-0.05, low - 0.05), 1.02)
    axes[0].set_ylabel("R² (out-of-fold, pooled x and y)")
    axes[0].set_title("decoded position: R²")
    axes[1].axhline(float(np.nanmean(df["chance_median_error_px"])), color="grey", ls=":", lw=1.5,
                    label="chance (training mean)")
    axes[1].set_ylim(bottom=0)
    axes[1].set_ylabel("median error (px)")
    axes[1].set_title("decoded position: median error")
    axes[2].set_ylim(0, 1)
    axes[2].set_ylabel("fraction removed")
    axes[2].set_title("neurons significant for any score")
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=90, fontsize=7)
        ax.set_xlabel("layer")
    axes[1].legend(fontsize=7)
    if axes[2].lines:
        axes[2].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)


#: y-axis labels of the deficit measures of :data:`helpers.lesions.DEFICIT_METRICS`.
DEFICIT_LABELS = {
    "margin": "deficit in logit margin",
    "p_target": "deficit in P(target)",
    "correct": "deficit in performance",
}


def plot_double_dissociation(cells, *, names=("region", "opposite"), metrics=None, title: str | None = None,
                             path: str | Path | None = None):
    """Mean deficit (before − after) of each lesion on the stimuli in each region, with CIs.

    One panel per metric: x = stimuli in region A / in region B; one line per
    lesion (A's neurons, B's neurons, random neurons as a reference). A double
    dissociation is a crossing: lesion A's line falls from A to B, lesion B's
    rises.

    Parameters:
    cells : :func:`helpers.lesions.dissociation_table` output (one model).
    names : (label of region A, label of region B), e.g. ``("lower-left", "upper-right")``.
    metrics : metrics to draw, default every metric in ``cells``.
    """
    metrics = list(dict.fromkeys(cells["metric"])) if metrics is None else list(metrics)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    styles = {"region": ("C3", "o", f"lesion {names[0]} neurons", -0.06),
              "opposite": ("C0", "s", f"lesion {names[1]} neurons", 0.06),
              "random": ("0.5", "^", "lesion random neurons", 0.0)}
    for ax, metric in zip(axes[0], metrics):
        d = cells[cells["metric"] == metric]
        for kind, (colour, marker, label, dx) in styles.items():
            g = d[d["lesion"] == kind].set_index("stimuli").reindex(["region", "opposite"])
            if g["mean_deficit"].isna().all():
                continue
            x = np.arange(2) + dx
            err = np.abs(np.vstack([g["mean_deficit"] - g["ci_low"], g["ci_high"] - g["mean_deficit"]]))
            ax.errorbar(x, g["mean_deficit"], yerr=err, color=colour, marker=marker, capsize=3, label=label,
                        ls="--" if kind == "random" else "-")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks([0, 1], [f"stimuli in\n{names[0]}", f"stimuli in\n{names[1]}"])
        ax.set_xlim(-0.4, 1.4)
        ax.set_ylabel(DEFICIT_LABELS.get(metric, metric) + " (before − after)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title or "double dissociation")
    fig.tight_layout()
    return save(fig, path)
