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
# ---- end design figures ----

# ---- record figures (owner: Record stage) ----
# ---- end record figures ----

# ---- analyse figures (owner: Analyse stage) ----
# ---- end analyse figures ----

# ---- perturb figures (owner: Perturb stage) ----
# ---- end perturb figures ----
