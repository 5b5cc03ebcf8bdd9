"""Tests for the Analyse explorer widget (helpers.widgets); the figures are tested in test_plots.py."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from helpers.widgets import explorer_view, make_explorer  # noqa: E402

pytestmark = pytest.mark.fast

LAYERS = ("block0", "block1", "block2")


def _fake_study(k: int = 12, bins: int = 8, seed: int = 0):
    """maps[condition][layer] (k, bins, bins), scores[condition][layer][name] (k,)."""
    rng = np.random.default_rng(seed)
    maps, scores = {}, {}
    for c, cond in enumerate(("model", "random")):
        maps[cond], scores[cond] = {}, {}
        for layer in LAYERS:
            maps[cond][layer] = rng.normal(size=(k, bins, bins))
            # score = neuron index (+ offset per condition): top neurons are known
            scores[cond][layer] = {
                "si": np.arange(k, dtype=float) + c,
                "grid": -np.arange(k, dtype=float),
                "border": np.where(np.arange(k) == 3, 9.0, 0.0),
            }
        scores[cond]["block1"]["grid"][0] = np.nan  # NaN scores are never "top"
    return maps, scores


# --------------------------------------------------------------------------
# explorer
# --------------------------------------------------------------------------
def test_explorer_view_selects_the_top_neurons():
    maps, scores = _fake_study()
    fig, sel = explorer_view(maps, scores, layer="block2", score="si", neuron=4, top_k=5)
    assert sel["condition"] == "model" and sel["layer"] == "block2"
    assert sel["top_neurons"] == [11, 10, 9, 8, 7]
    assert sel["top_scores"] == [11.0, 10.0, 9.0, 8.0, 7.0]
    assert sel["neuron"] == 4 and sel["neuron_scores"]["si"] == 4.0
    assert len(fig.axes) == 6  # 5 top maps + the chosen neuron
    np.testing.assert_array_equal(fig.axes[5].images[0].get_array(), maps["model"]["block2"][4])

    _, sel = explorer_view(maps, scores, layer="block1", score="grid", random_weights=True, top_k=3)
    assert sel["condition"] == "random"
    assert sel["top_neurons"] == [1, 2, 3]  # neuron 0 has a NaN grid score


def test_explorer_view_rejects_bad_selection():
    maps, scores = _fake_study()
    with pytest.raises(ValueError, match="layer"):
        explorer_view(maps, scores, layer="nope")
    with pytest.raises(ValueError, match="score"):
        explorer_view(maps, scores, layer="block0", score="speed")
    with pytest.raises(ValueError, match="neuron"):
        explorer_view(maps, scores, layer="block0", neuron=12)


def test_make_explorer_redraws_on_widget_changes():
    pytest.importorskip("ipywidgets")
    maps, scores = _fake_study()
    w = make_explorer(maps, scores, top_k=4)
    layer, score, random_weights, neuron = w.children[:4]
    assert w.result["layer"] == "block0" and w.result["score"] == "si"
    assert w.result["top_neurons"] == [11, 10, 9, 8]

    layer.value = "block1"
    score.value = "border"
    assert w.result["layer"] == "block1" and w.result["top_neurons"][0] == 3

    random_weights.value = True
    assert w.result["condition"] == "random"

    neuron.value = 7
    assert w.result["neuron"] == 7
    assert w.result["neuron_scores"]["si"] == 8.0  # random condition: index + 1
    assert len(w.result["figure"].axes) == 5
    assert neuron.max == 11


def test_explorer_clips_neuron_to_smaller_layers():
    pytest.importorskip("ipywidgets")
    maps, scores = _fake_study(k=12)
    maps["model"]["small"] = maps["model"]["block0"][:3]
    scores["model"]["small"] = {n: v[:3] for n, v in scores["model"]["block0"].items()}
    maps["random"]["small"] = maps["model"]["small"]
    scores["random"]["small"] = scores["model"]["small"]
    w = make_explorer(maps, scores)
    w.children[3].value = 10
    w.children[0].value = "small"
    assert w.result["neuron"] == 2
