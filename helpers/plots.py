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


# ---- design figures (owner: Design stage) ----


def plot_example_stimuli(stim, indices=None, *, n: int = 8, path=None):
    """Eight representative stimuli (blog, Design figure, left).

    Parameters
    ----------
    stim : helpers.stimuli.StimulusSet
    indices : sequence of int, optional
        Which stimuli; default the first ``n``.
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


# ---- end design figures ----

# ---- record figures (owner: Record stage) ----
# ---- end record figures ----

# ---- analyse figures (owner: Analyse stage) ----
# ---- end analyse figures ----

# ---- perturb figures (owner: Perturb stage) ----
# ---- end perturb figures ----
