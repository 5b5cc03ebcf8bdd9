"""Tests of the spatial-specificity analysis of helpers.lesions (section 3):
matched control lesions, the difference-in-differences localisation test, the
double dissociation and the logit margin of the zero-shot task.

Synthetic per-stimulus tables carry the statistics' ground truth (the uniform
shift of issue 10, item 2, and a planted local deficit); a tiny hand-built
tower and a few stimuli through a random ViT-B/32 check the plumbing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import expit

from helpers import lesions as L
from helpers import models, ratemaps, stimuli

EXTENT = (0.0, 224.0, 0.0, 224.0)


# --------------------------------------------------------------------------- synthetic per-stimulus tables


def synthetic_table(n: int = 400, *, seed: int = 0, bins: int = 10, local: bool = False, n_seeds: int = 5,
                    region: str = "lower-left") -> pd.DataFrame:
    """A :func:`L.spatial_lesion_study`-shaped table for a 2-prompt task, from logit margins.

    Stimulus centres uniform over 224 x 224 px; baseline margin ``0.5 + 3 x / 224``
    (harder on the left); ``p = sigmoid(margin)``, ``correct = margin > 0``.
    ``local=False`` (issue 10's uniform case): every lesion (region, opposite,
    ``n_seeds`` random) lowers every stimulus's margin by 1. ``local=True``
    (planted localised deficit): the region lesion lowers only the stimuli in
    the region, the opposite lesion only those in the opposite region, random
    lesions nothing.
    """
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 224, size=(n, 2))
    rc = ratemaps.bin_indices(pos, bins, EXTENT)
    inside = L.region_mask(region, bins)[rc[:, 0], rc[:, 1]]
    in_opp = L.opposite_region(region, bins)[rc[:, 0], rc[:, 1]]
    m0 = 0.5 + 3 * pos[:, 0] / 224
    rows = []
    for kind, s in [("region", None), ("opposite", None)] + [("random", s) for s in range(n_seeds)]:
        hit = {"region": inside, "opposite": in_opp, "random": np.zeros(n, bool)}[kind] if local else np.ones(n, bool)
        m1 = m0 - hit
        rows.append(pd.DataFrame(dict(
            lesion=kind, seed=s, n_lesioned=10, stimulus=np.arange(n), x=pos[:, 0], y=pos[:, 1], row=rc[:, 0],
            col=rc[:, 1], inside=inside, in_opposite=in_opp, correct_before=m0 > 0, correct_after=m1 > 0,
            p_before=expit(m0), p_after=expit(m1), margin_before=m0, margin_after=m1,
        )))
    df = pd.concat(rows, ignore_index=True)
    df["seed"] = df["seed"].astype("Int64")
    return df


def test_uniform_shift_is_not_localised_although_the_literal_test_says_it_is():
    df = synthetic_table()
    tab = L.localisation_table(df, n_permutations=500, n_bootstrap=500)
    assert len(tab) == 3 * 2 * 2  # metrics x controls x reference groups
    assert not tab["localised"].any()
    assert np.allclose(tab[["did", "ci_low", "ci_high"]], 0.0, atol=1e-12)
    assert (tab["p_value"] > 0.5).all()
    # the confound the DiD removes: the blog-literal test flags the same uniform lesion
    lit = tab[(tab.control == "opposite") & (tab.reference == "outside")].set_index("metric")
    assert lit.loc["p_target", "literal_localised"] and lit.loc["correct", "literal_localised"]
    assert 0.18 < lit.loc["p_target", "deficit_inside"] < 0.24 and 0.10 < lit.loc["p_target", "deficit_outside"] < 0.16
    # the margin, which does not saturate, shows the same deficit everywhere
    assert lit.loc["margin", "deficit_inside"] == pytest.approx(1.0) == lit.loc["margin", "deficit_outside"]
    assert not lit.loc["margin", "literal_localised"]


def test_planted_local_deficit_is_localised_against_both_controls():
    df = synthetic_table(local=True)
    tab = L.localisation_table(df, n_permutations=500, n_bootstrap=500)
    assert tab["localised"].all() and (tab["p_value"] < 0.01).all() and (tab["ci_low"] > 0).all()
    t = tab.set_index(["metric", "control", "reference"])
    # margin: region lesion 1 inside, 0 outside; opposite lesion 0 in the region, 1 in the opposite region
    assert t.loc[("margin", "opposite", "opposite region"), "did"] == pytest.approx(2.0)
    assert t.loc[("margin", "random", "outside"), "did"] == pytest.approx(1.0)
    frac_opp = df.loc[(df.lesion == "region") & ~df.inside, "in_opposite"].mean()
    assert t.loc[("margin", "opposite", "outside"), "did"] == pytest.approx(1.0 + frac_opp)
    assert t.loc[("margin", "random", "outside"), "n_controls"] == 5


def test_double_dissociation_cells_cross_only_for_a_local_deficit():
    for local in (True, False):
        cells = L.dissociation_table(synthetic_table(local=local), metrics=["margin"], n_bootstrap=300)
        c = cells.set_index(["lesion", "stimuli"])["mean_deficit"]
        a_on_a, a_on_b = c[("region", "region")], c[("region", "opposite")]
        b_on_a, b_on_b = c[("opposite", "region")], c[("opposite", "opposite")]
        assert (a_on_a > a_on_b and b_on_b > b_on_a) == local
        assert (cells["ci_low"] <= cells["mean_deficit"] + 1e-12).all()
        assert (cells["mean_deficit"] <= cells["ci_high"] + 1e-12).all()
    assert set(cells["lesion"]) == {"region", "opposite", "random"}


def test_double_dissociation_needs_the_unsaturated_scale():
    dd = L.double_dissociation(L.localisation_table(synthetic_table(local=True), n_permutations=300,
                                                    n_bootstrap=300)).set_index("metric")
    assert dd.loc["margin", "dissociated"] and dd.loc["p_target", "dissociated"]
    assert dd.loc["margin", "interaction"] == pytest.approx(2.0)
    # correctness cannot see the opposite lesion: every upper-right stimulus stays correct (margin > 2 - 1)
    assert dd.loc["correct", "b_on_b"] == 0.0 and not dd.loc["correct", "dissociated"]
    uniform = L.double_dissociation(L.localisation_table(synthetic_table(), n_permutations=300, n_bootstrap=300))
    assert not uniform["dissociated"].any() and not uniform["crossed"].any()


def test_did_permutation_p_is_calibrated_under_a_heterogeneous_baseline():
    """Null: region and control lesions shift alike plus noise; the baseline varies over the field."""
    rng = np.random.default_rng(1)
    n, reps = 200, 200
    pos = rng.uniform(0, 224, size=(n, 2))
    inside = (pos[:, 0] < 112) & (pos[:, 1] > 112)
    before = 0.5 + 3 * pos[:, 0] / 224
    p = np.array([
        L.localisation_did(before, before - 1 + rng.normal(0, 0.5, n), before[:, None] - 1 + rng.normal(0, 0.5, (n, 3)),
                           inside, n_permutations=200, n_bootstrap=20, seed=r)["p_value"]
        for r in range(reps)
    ])
    assert 0.02 <= (p < 0.05).mean() <= 0.09


def test_did_arithmetic_and_controls_averaged_over_seeds():
    before = np.array([3.0, 3.0, 3.0, 3.0])
    after = np.array([1.0, 2.0, 3.0, 3.0])
    ctrl = np.array([[3.0, 2.0], [2.0, 2.0], [2.0, 3.0], [3.0, 3.0]])  # control deficits 0/1, 1/1, 1/0, 0/0
    inside = np.array([True, True, False, False])
    r = L.localisation_did(before, after, ctrl, inside, n_permutations=50, n_bootstrap=50)
    # region: inside 1.5, outside 0; control (seed means 0.5, 1, 0.5, 0): inside 0.75, outside 0.25
    assert r["deficit_inside"] == 1.5 and r["deficit_outside"] == 0.0
    assert r["control_deficit_inside"] == 0.75 and r["control_deficit_outside"] == 0.25
    assert r["did"] == pytest.approx(1.0) and r["n_controls"] == 2
    # per-seed DiDs: 1.5 - (0.5 - 0.5) = 1.5 and 1.5 - (1.0 - 0) = 0.5
    assert r["did_control_sd"] == pytest.approx(np.std([1.5, 0.5], ddof=1))
    again = L.localisation_did(before, after, ctrl, inside, n_permutations=50, n_bootstrap=50)
    assert again == r  # seeded
    with pytest.raises(ValueError, match="n_bootstrap"):
        L.localisation_did(before, after, ctrl, inside, n_bootstrap=0)
    with pytest.raises(ValueError, match="ci"):
        L.localisation_did(before, after, ctrl, inside, ci=95)
    with pytest.raises(ValueError, match="control_after"):
        L.localisation_did(before, after, ctrl[:3], inside)
    with pytest.raises(ValueError, match="metrics"):
        L.localisation_table(synthetic_table(n=40), metrics=["accuracy"])


# --------------------------------------------------------------------------- regions and matched lesions


@pytest.mark.parametrize("bins", [4, 5])
def test_opposite_regions_mirror_and_explicit_masks_complement(bins):
    for name in L.REGIONS:
        a, b = L.region_mask(name, bins), L.opposite_region(name, bins)
        assert not (a & b).any() and a.sum() == b.sum() > 0
        flip = np.flip(a) if "-" in name else (np.flip(a, axis=1) if name in ("left", "right") else np.flip(a, axis=0))
        assert np.array_equal(b, flip)
        assert np.array_equal(L.opposite_region(L.OPPOSITE_REGIONS[name], bins), a)
    m = np.zeros((bins, bins), bool)
    m[0, :2] = True
    assert np.array_equal(L.opposite_region(m, bins), ~m)
    assert L.region_label(m) == ("mask", "complement") and L.region_label("left") == ("left", "right")


def _field_population(bins: int = 4, cells: int = 2, extra_ll: int = 0, seed: int = 0):
    """``cells`` neurons with a single-bin field in every bin (+ ``extra_ll`` more in bin (bins-1, 0)), noise 0.01."""
    rng = np.random.default_rng(seed)
    field_bins = np.r_[np.repeat(np.arange(bins * bins), cells), np.full(extra_ll, (bins - 1) * bins)]
    maps = rng.uniform(0, 0.01, size=(field_bins.size, bins * bins))
    maps[np.arange(field_bins.size), field_bins] = 1.0
    return L.field_maps(maps.reshape(-1, bins, bins), np.full((bins, bins), 3)), field_bins


def test_matched_lesions_pick_each_regions_fields_with_equal_counts():
    fm, fb = _field_population()
    rr, cc = fb // 4, fb % 4
    sets = L.matched_lesions(fm, "lower-left", proportion=0.25, n_control_seeds=3)
    assert [(s.kind, s.seed) for s in sets] == [("region", None), ("opposite", None), ("random", 0), ("random", 1),
                                                ("random", 2)]
    assert {len(s.neurons) for s in sets} == {8}
    reg, opp = sets[0].neurons, sets[1].neurons
    assert ((rr[reg] >= 2) & (cc[reg] < 2)).all() and ((rr[opp] < 2) & (cc[opp] >= 2)).all()
    assert not np.array_equal(sets[2].neurons, sets[3].neurons)
    again = L.matched_lesions(fm, "lower-left", proportion=0.25, n_control_seeds=3)
    assert all(np.array_equal(a.neurons, b.neurons) for a, b in zip(sets, again))
    # "peak": 12 neurons peak in the lower-left, 8 in the upper-right -> both trimmed to 8, best contrast first
    fm2, fb2 = _field_population(extra_ll=4)
    sets2 = L.matched_lesions(fm2, "lower-left", rule="peak", n_control_seeds=1)
    assert {len(s.neurons) for s in sets2} == {8}
    assert set(sets2[1].neurons) == set(np.flatnonzero((fb2 // 4 < 2) & (fb2 % 4 >= 2)))
    score = L.region_contrast(fm2, L.region_mask("lower-left", 4))
    ll = np.flatnonzero(L.region_mask("lower-left", 4).ravel()[fb2])
    assert score[sets2[0].neurons].min() >= np.sort(score[ll])[-8]
    with pytest.raises(ValueError, match="n_control_seeds"):
        L.matched_lesions(fm, "left", n_control_seeds=-1)


# --------------------------------------------------------------------------- model plumbing


class _Attn(torch.nn.Module):
    def forward(self, x):
        return x.clone(), None  # stands in for nn.MultiheadAttention: (out, None)


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = _Attn()

    def forward(self, x):
        return self.attn(x)[0]


def _tiny_study(n_control_seeds: int = 4):
    """4 x 4 bins, 3 stimuli per bin, 2 cells per bin; "circle" only while both cells of the stimulus's bin fire."""
    bins, cells, per_bin = 4, 2, 3
    fm, fb = _field_population(bins, cells)
    b = np.repeat(np.arange(bins * bins), per_bin)
    rc = np.stack([b // bins, b % bins], axis=1)
    pos = (rc[:, ::-1] + np.random.default_rng(1).uniform(0.1, 0.9, size=(b.size, 2))) * (224 / bins)
    act = np.random.default_rng(2).uniform(0, 0.01, size=(b.size, fm.n_neurons))
    act[(fb[None, :] == b[:, None])] = 1.0
    blocks = [_Block(), _Block()]

    def head(h):
        ev = h[:, 0, :].sum(dim=1)
        return torch.stack([ev, torch.full_like(ev, cells - 0.5)], dim=1)

    tower = L.Tower(blocks, lambda x: head(blocks[1](blocks[0](x))), head, torch.float32, torch.device("cpu"))
    x = torch.tensor(act, dtype=torch.float32)[:, None, :]
    cache = L.build_residual_cache(tower, [(x, np.arange(b.size))], b.size, progress=False)
    task = L.ZeroShotTask(torch.eye(2), 10.0, ("circle", "empty"), 0)
    sets = L.matched_lesions(fm, "lower-left", proportion=0.25, n_control_seeds=n_control_seeds)
    df = L.spatial_lesion_study(
        tower, cache, task, sets, pos, rc, L.region_mask("lower-left", bins),
        opposite=L.opposite_region("lower-left", bins), block=1, n_neurons=fm.n_neurons, batch_size=20,
    )
    return tower, cache, task, sets, df


def test_tiny_tower_region_lesion_is_localised_and_doubly_dissociated():
    tower, cache, task, sets, df = _tiny_study()
    assert len(df) == len(sets) * cache.n and (df.groupby("lesion").n_lesioned.unique().map(len) == 1).all()
    reg = df[df.lesion == "region"]
    opp = df[df.lesion == "opposite"]
    assert reg.correct_before.all()
    assert np.array_equal(~reg.correct_after.to_numpy(), reg.inside.to_numpy())  # fails exactly in the region
    assert np.array_equal(~opp.correct_after.to_numpy(), opp.in_opposite.to_numpy())
    # every lesion's embeddings equal an independent truncated forward with that mask
    for s in sets:
        mask = np.zeros(32, bool)
        mask[s.neurons] = True
        ref = task.margin(L.embed_from_cache(tower, cache, 1, mask=mask, block=1))
        got = df[(df.lesion == s.kind) & (df.seed.fillna(-1) == (-1 if s.seed is None else s.seed))].margin_after
        assert np.allclose(got, ref, atol=1e-6)
    tab = L.localisation_table(df, n_permutations=300, n_bootstrap=300)
    assert tab["localised"].all()
    c = L.dissociation_table(df, metrics=["correct"], n_bootstrap=100).set_index(["lesion", "stimuli"])["mean_deficit"]
    assert c[("region", "region")] == c[("opposite", "opposite")] == 1.0
    assert c[("region", "opposite")] == c[("opposite", "region")] == 0.0
    maps = L.lesion_maps(df, 4, EXTENT, stems=("correct",))
    assert set(maps) == {"before", "region", "opposite", "random"} and maps["before"].shape == (1, 4, 4)
    change = (maps["region"] - maps["before"])[0]
    region = L.region_mask("lower-left", 4)
    assert (change[region] == -1).all() and (change[~region] == 0).all()
    with pytest.raises(ValueError, match="region"):
        L.spatial_lesion_study(tower, cache, task, sets[1:], np.zeros((cache.n, 2)), np.zeros((cache.n, 2), int),
                               L.region_mask("left", 4), block=1, n_neurons=32)


def test_margin_is_target_logit_minus_best_other():
    g = torch.Generator().manual_seed(0)
    txt = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=1)
    img = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=1).numpy()
    task = L.ZeroShotTask(txt, 5.0, ("a", "b", "c"), 1)
    lg = 5.0 * img.astype(np.float64) @ txt.numpy().astype(np.float64).T
    assert np.allclose(task.margin(img), lg[:, 1] - np.maximum(lg[:, 0], lg[:, 2]), atol=1e-5)
    correct, _ = task.decide(img)
    assert np.array_equal(correct, task.margin(img) > 0)
    two = L.ZeroShotTask(txt[:2], 5.0, ("a", "b"), 0)
    _, p = two.decide(img)
    assert np.allclose(two.margin(img), np.log(p / (1 - p)), atol=1e-4)


def test_vit_spatial_lesion_study_matches_a_hooked_full_forward(vit_random):
    """Three stimuli through a random ViT-B/32: the region lesion's rows equal a hooked full forward."""
    lm = vit_random
    stim = stimuli.make_stimuli(3, seed=5)
    images = torch.cat([x for x, _ in stimuli.iter_batches(stim, lm.preprocess, 3)])
    tower = L.visual_tower(lm.model)
    cache = L.build_residual_cache(tower, [(images, np.arange(3))], 3, blocks=[9], progress=False)
    fm = L.field_maps(np.random.default_rng(0).normal(size=(768, 4, 4)), np.ones((4, 4)))
    sets = L.matched_lesions(fm, "upper-left", proportion=0.1, n_control_seeds=1)
    pos = stimuli.positions_in_input(stim, lm.preprocess)
    rc = ratemaps.bin_indices(pos, 4, (0.0, float(lm.input_size), 0.0, float(lm.input_size)))
    task = L.zero_shot_task(lm)
    df = L.spatial_lesion_study(tower, cache, task, sets, pos, rc, L.region_mask("upper-left", 4),
                                opposite=L.opposite_region("upper-left", 4), block=9, batch_size=2)
    assert list(df.lesion) == ["region"] * 3 + ["opposite"] * 3 + ["random"] * 3
    with L.ablate_channels(lm.model.visual.transformer.resblocks[9].attn, np.isin(np.arange(768), sets[0].neurons)):
        ref = models.encode_images(lm, images).numpy()
    reg = df[df.lesion == "region"]
    assert np.allclose(reg.margin_after, task.margin(ref), atol=1e-3)
    assert np.allclose(df.p_after, expit(df.margin_after), atol=1e-5)  # two prompts: p = sigmoid(margin)
    assert np.allclose(reg.margin_before, task.margin(cache.embeddings))
    assert not np.allclose(df.margin_after[df.lesion == "opposite"], reg.margin_after)


def test_spatial_figures_draw_every_lesion(tmp_path):
    from helpers import plots

    df = synthetic_table(n=200, local=True, n_seeds=2)
    maps = L.lesion_maps(df, 10, EXTENT, 1.0)
    fig = plots.plot_spatial_lesion(
        maps["before"], maps["region"], L.region_mask("lower-left", 10), opposite=L.opposite_region("lower-left", 10),
        extent=EXTENT, labels=("margin", "P", "performance"), limits=[None, (0, 1), (0, 1)],
        controls={"opposite": maps["opposite"], "random": maps["random"]}, path=tmp_path / "maps.png",
    )
    assert len(fig.axes) == 2 * 3 * 5  # 3 rows x 5 panels, each with a colourbar
    cells = L.dissociation_table(df, metrics=["margin", "p_target"], n_bootstrap=50)
    fig = plots.plot_double_dissociation(cells, names=("lower-left", "upper-right"), path=tmp_path / "dd.png")
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) >= 3
    assert (tmp_path / "maps.png").stat().st_size > 0 and (tmp_path / "dd.png").stat().st_size > 0
