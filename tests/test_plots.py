"""Tests for the Analyse figures in helpers.plots (moved from test_widgets.py)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from helpers.plots import (  # noqa: E402
    plot_fraction_significant,
    plot_score_distributions,
    plot_top_ratemaps,
)
from test_widgets import LAYERS, _fake_study  # noqa: E402  (the same fake study as the explorer's tests)

pytestmark = pytest.mark.fast


# --------------------------------------------------------------------------
# analyse figures (helpers/plots.py, analyse block)
# --------------------------------------------------------------------------
def test_plot_top_ratemaps_layout_and_png(tmp_path):
    maps, scores = _fake_study()
    path = tmp_path / "fig" / "top.png"
    fig = plot_top_ratemaps(maps["model"], scores["model"], top_k=5, title="model", path=path)
    assert path.exists() and path.stat().st_size > 1000
    assert len(fig.axes) == len(LAYERS) * 3 * 5
    # first map of the SI group in row 0 is the best SI neuron (11)
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), maps["model"]["block0"][11])
    plt.close(fig)


def test_plot_score_distributions_and_fraction_significant(tmp_path):
    _, scores = _fake_study()
    fig = plot_score_distributions(scores, path=tmp_path / "dist.png")
    assert (tmp_path / "dist.png").exists()
    assert len(fig.axes) == 3
    plt.close(fig)

    sig = {
        cond: {layer: {n: np.arange(10) < (3 if cond == "model" else 1) for n in ("si", "grid", "border")}
               for layer in LAYERS}
        for cond in ("model", "random")
    }
    fig = plot_fraction_significant(sig, path=tmp_path / "frac.png")
    assert (tmp_path / "frac.png").exists()
    model_line = [ln for ln in fig.axes[0].lines if ln.get_label() == "model"][0]
    np.testing.assert_allclose(model_line.get_ydata(), [0.3, 0.3, 0.3])
    random_line = [ln for ln in fig.axes[0].lines if ln.get_label() == "random"][0]
    np.testing.assert_allclose(random_line.get_ydata(), [0.1, 0.1, 0.1])
    plt.close(fig)
    pooled = {cond: {layer: {n: np.arange(10) < 6 for n in ("si", "grid", "border")} for layer in LAYERS}
              for cond in ("model", "random")}
    fig = plot_fraction_significant(sig, pooled_by_condition=pooled, path=tmp_path / "frac2.png")
    pooled_line = [ln for ln in fig.axes[1].lines if ln.get_label() == "model, pooled null"][0]
    np.testing.assert_allclose(pooled_line.get_ydata(), [0.6, 0.6, 0.6])
    assert pooled_line.get_linestyle() == "--"
    plt.close(fig)
