"""The run-folder explorer (helpers.explore): reads only a finished run's files, redraws on every control."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import explore
from helpers.paths import REPO_ROOT
from helpers.ratemaps import save_ratemaps
from helpers.widgets import explorer_view

LAYERS = ("visual.transformer.resblocks.0.attn", "visual.transformer.resblocks.1.attn")
K = 6


def _run(tmp_path, decoding=True, lesions=True):
    """A finished run folder with planted scores: in every layer neuron 4 has the best SI, grid is NaN but for 2."""
    run = tmp_path / "run"
    rng = np.random.default_rng(0)
    rows = ["condition,layer,neuron,si,si_sig,si_p,grid,grid_sig,grid_p,border,border_sig,border_p"]
    for c, cond in enumerate(("model", "random")):
        save_ratemaps(run / "analysis" / f"ratemaps_{cond}.npz",
                      {layer: rng.normal(size=(K, 4, 4)) for layer in LAYERS}, np.ones((4, 4)),
                      extent=(0, 224, 0, 224), bins=4, sigma=None)
        for li, layer in enumerate(LAYERS):
            for n in range(K):
                si = 0.9 - c * 0.1 if n == 4 else 0.1 * n / K
                grid = f"{0.5 + n / 10}" if n in (1, 2) else ""
                rows.append(f"{cond},{layer},{n},{si},{n == 4},{0.05 if n == 4 else 0.5},{grid},False,"
                            f"{0.3 if grid else ''},{0.2 + li},False,0.4")
    (run / "analysis" / "scores.csv").write_text("\n".join(rows) + "\n")
    (run / "model.json").write_text(json.dumps({"weights": "random"}))
    if decoding:
        dec = ["condition,layer,neurons,r2"] + [f"{c},{layer},{s},{0.1 * i}" for c in ("model", "random")
                                                for i, layer in enumerate(LAYERS) for s in ("all", "non-significant")]
        (run / "analysis" / "decoding.csv").write_text("\n".join(dec) + "\n")
    if lesions:
        (run / "perturb").mkdir()
        (run / "perturb" / "layer_lesions.csv").write_text(
            "weights,tower,label,performance,baseline_performance\nmodel,visual,conv1,0.2,1.0\n"
            "model,visual,resblock 0,0.9,1.0\nrandom,visual,conv1,0.0,0.0\n")
        (run / "perturb" / "targeted_lesions.csv").write_text(
            "weights,condition,seed,proportion,performance\nmodel,Targeted,,0.0,1.0\nmodel,Targeted,,0.5,0.3\n"
            "model,Random,0,0.0,1.0\nmodel,Random,0,0.5,0.8\nmodel,Random,1,0.5,0.6\nrandom,Targeted,,0.5,0.0\n")
    return run


def test_load_run_reads_the_folder_and_refuses_an_unfinished_one(tmp_path):
    data = explore.load_run(_run(tmp_path))
    assert data.layers == list(LAYERS) and data.conditions == ["model", "random"]
    assert data.scores["model"][LAYERS[0]]["si"].argmax() == 4
    assert data.significant["random"][LAYERS[1]]["si"].tolist() == [n == 4 for n in range(K)]
    missing = tmp_path / "not_a_run"
    with pytest.raises(FileNotFoundError, match="not_a_run"):
        explore.load_run(missing)
    assert not missing.exists()  # a reader never creates the folder it was given


def test_inconsistent_scores_are_refused(tmp_path):
    run = _run(tmp_path)
    lines = (run / "analysis" / "scores.csv").read_text().splitlines()
    (run / "analysis" / "scores.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="scores.csv"):
        explore.load_run(run)


def test_neuron_by_rank_and_by_index(tmp_path):
    data = explore.load_run(_run(tmp_path))
    pick = dict(condition="model", layer=LAYERS[0])
    assert explore.neuron_at(data, **pick, score="si", by="rank", value=0) == 4
    assert explore.neuron_at(data, **pick, score="grid", by="rank", value=0) == 2  # best finite grid
    assert explore.neuron_at(data, **pick, score="grid", by="rank", value=5) == 1  # past the finite ones: the last
    assert explore.neuron_at(data, **pick, score="si", by="index", value=99) == K - 1


def test_view_follows_every_control_and_the_label_says_what_is_shown(tmp_path):
    data = explore.load_run(_run(tmp_path))
    base = dict(layer=LAYERS[0], score="si", random_weights=False, by="rank", value=0, top_k=3)
    images, labels = set(), set()
    for change in ({}, {"layer": LAYERS[1]}, {"random_weights": True}, {"score": "border"}, {"top_k": 2},
                   {"score": "decoding"}):
        fig, sel = explore.view(data, **{**base, **change})
        images.add(explore.png(fig))
        labels.add(explore.selection_label(data, sel))
    assert len(images) == 6 and len(labels) == 6
    _, sel = explore.view(data, **base)
    label = explore.selection_label(data, sel)
    assert LAYERS[0] in label and "model weights (random)" in label and "neuron 4" in label
    assert "spatial info 0.900 (p=0.05, significant)" in label and "grid score n/a (not finite)" in label


def test_widget_redraws_and_offers_decoding_only_when_present(tmp_path):
    box = explore.make_run_explorer(explore.load_run(_run(tmp_path)))
    controls = {c._dom_classes[0]: c for hbox in box.children[:2] for c in hbox.children}
    assert ("decoding R²", "decoding") in controls["explore-score"].options
    controls["explore-layer"].value = LAYERS[1]
    assert box.state["selection"]["layer"] == LAYERS[1] and LAYERS[1] in box.state["label"]
    controls["explore-random"].value = True
    assert box.state["selection"]["condition"] == "random" and "random weights" in box.state["label"]
    plain = explore.make_run_explorer(explore.load_run(_run(tmp_path / "b", decoding=False)))
    options = [v for _, v in plain.children[0].children[1].options]
    assert options == ["si", "grid", "border"]


def test_lesion_panels_without_a_table_say_why(tmp_path):
    data = explore.load_run(_run(tmp_path, lesions=False))
    fig = explore.lesion_figure(data, condition="model")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("layer_lesions.csv" in t for t in texts) and any("targeted_lesions.csv" in t for t in texts)
    with_tables = explore.lesion_figure(explore.load_run(_run(tmp_path / "b")), condition="model")
    assert not [t for ax in with_tables.axes for t in ax.texts]
    right = with_tables.axes[1].lines
    assert {ln.get_label(): ln.get_ydata().tolist() for ln in right} == {"Targeted": [1.0, 0.3], "Random": [1.0, 0.7]}


def test_empty_top_k_panels_say_why():
    maps = {"model": {"L": np.zeros((4, 3, 3))}}
    scores = {"model": {"L": {"grid": np.array([np.nan, 0.2, np.nan, np.nan])}}}
    fig, sel = explorer_view(maps, scores, layer="L", score="grid", top_k=3)
    assert sel["top_neurons"] == [1]
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert len(texts) == 1 and "no neuron" in texts[0] and "1 of 4 finite" in texts[0]


def test_explorer_notebook_is_committed_clean_and_not_a_study_stage():
    from helpers.study import notebooks

    nb = json.loads((REPO_ROOT / "notebooks" / "explore.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)
    assert "parameters" in code[0]["metadata"].get("tags", []) and "run_dir" in "".join(code[0]["source"])
    assert "explore.ipynb" not in [p.name for p in notebooks()]


def test_top_ratemap_grid_says_why_cells_are_empty():
    import matplotlib.pyplot as plt

    from helpers.plots import plot_top_ratemaps

    maps = {"L0": np.zeros((4, 3, 3)), "L1": np.zeros((4, 3, 3))}
    scores = {"L0": {"si": np.arange(4.0), "grid": np.array([np.nan, 0.2, np.nan, np.nan])},
              "L1": {"si": np.arange(4.0), "grid": np.arange(4.0)}}
    fig = plot_top_ratemaps(maps, scores, top_k=3, score_names=("si", "grid"))
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    plt.close(fig)
    assert texts == ["only 1\nfinite"]  # L0's grid column only


def test_layer_lesion_curve_shows_balanced_performance_when_the_table_has_it(tmp_path):
    run = _run(tmp_path)
    (run / "perturb" / "layer_lesions.csv").write_text(
        "weights,tower,label,performance,baseline_performance,balanced_performance,baseline_balanced_performance\n"
        "model,visual,conv1,1.0,1.0,0.5,1.0\nmodel,visual,resblock 0,0.9,1.0,0.95,1.0\n")
    fig = explore.lesion_figure(explore.load_run(run), condition="model")
    left = {ln.get_label(): list(np.asarray(ln.get_ydata(), float)) for ln in fig.axes[0].lines}
    assert left["visual"] == [0.5, 0.95]  # conv1 blinds the model: chance, although circles stay at 1.0
    # a condition the run did not lesion (perturb_random off) says so instead of drawing empty axes
    rows = "weights,tower,label,performance,baseline_performance\nmodel,visual,conv1,0.2,1.0\n"
    (run / "perturb" / "layer_lesions.csv").write_text(rows)
    only_model = explore.lesion_figure(explore.load_run(run), condition="random")
    assert any("not lesioned" in t.get_text() for ax in only_model.axes for t in ax.texts)
