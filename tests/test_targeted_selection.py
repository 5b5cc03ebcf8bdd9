"""Tests of the targeted-lesion selection rules (helpers.lesions): spatial z-ranking,
leave-one-out maps and selection specificity, on planted populations (no model needed).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from helpers import lesions as L
from helpers import ratemaps

pytestmark = pytest.mark.fast

EXTENT = (0.0, 224.0, 0.0, 224.0)
BINS, SIGMA = 10, 1.0


def _population(n: int = 1200, seed: int = 0):
    """Loud untuned channels (means 1..2) beside quiet place cells (mean 0.01, fields of amplitude 0.05).

    Channels 0..19: loud, untuned; 20..28: place cells, one field each, centred
    in the bins (r, c) for r, c in {1, 5, 8}; 29..59: quiet, untuned. Every
    channel has noise of SD 0.002, so the loud channels' means are 100x the
    place cells' modulation and 1000x their own spatial SD.
    """
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 224, size=(n, 2))
    w = 224 / BINS
    centres = np.array([((c + 0.5) * w, (r + 0.5) * w) for r in (1, 5, 8) for c in (1, 5, 8)])  # (x, y)
    loud = np.linspace(1.0, 2.0, 20)
    quiet = rng.uniform(0, 0.02, 31)
    d2 = ((pos[:, None, :] - centres[None]) ** 2).sum(-1)
    tuned = 0.01 + 0.05 * np.exp(-d2 / (2 * 10.0**2))
    act = np.concatenate([np.broadcast_to(loud, (n, 20)), tuned, np.broadcast_to(quiet, (n, 31))], axis=1)
    act = act + rng.normal(0, 0.002, act.shape)
    return pos, act, centres, np.arange(20), np.arange(20, 29)


@pytest.fixture(scope="module")
def population():
    pos, act, centres, loud, tuned = _population()
    rc = ratemaps.bin_indices(pos, BINS, EXTENT)
    return pos, act, rc, centres, loud, tuned, L.held_out_values(act, rc, BINS, SIGMA)


def test_z_ranking_picks_the_place_cell_at_its_field_raw_ranking_the_loud_channels(population):
    pos, act, rc, centres, loud, tuned, hv = population
    d = np.sqrt(((pos[:, None, :] - centres[None]) ** 2).sum(-1))
    near = d.min(axis=1) < 8.0  # stimuli close to a field centre
    assert near.sum() > 20
    for rule in ("Targeted", "Targeted_Abs"):
        top = np.argmin(L.neuron_ranks(hv, rule), axis=1)
        assert np.array_equal(top[near], tuned[d[near].argmin(axis=1)])
    pairs = L.stimulus_pairs(len(pos), 3000, seed=1)
    k = 3
    z_spec = L.selection_specificity(L.neuron_ranks(hv, "Targeted"), k, pairs)
    raw_ranks = L.neuron_ranks(hv, "Targeted_raw")
    raw_spec = L.selection_specificity(raw_ranks, k, pairs)
    assert z_spec["jaccard"] < 0.3 and z_spec["n_common"] == 0
    assert raw_spec["jaccard"] > 0.95 and raw_spec["n_common"] == k
    assert np.isin(np.flatnonzero(raw_ranks[0] < k), loud).all()  # the highest-mean channels
    rnd = L.selection_specificity(L.neuron_ranks(hv, "Random", seed=0), k, pairs)["jaccard"]
    assert abs(rnd - k / (2 * 60 - k)) < 0.01  # expected Jaccard of two random k-sets of 60 is about k/(2C-k)


def test_a_stimulus_never_selects_its_own_neurons(population):
    pos, act, rc, centres, loud, tuned, hv = population
    i = 7
    same_bin = np.flatnonzero((rc == rc[i]).all(axis=1) & (np.arange(len(rc)) != i))
    j, quiet = same_bin[0], 40
    changed = act.copy()
    changed[i] = act[i] * 3.0
    changed[i, quiet] += 1.0  # a huge response of stimulus i's own
    hv_i = L.held_out_values(changed, rc, BINS, SIGMA)
    for rule in ("Targeted", "Targeted_Abs", "Targeted_raw"):
        assert np.array_equal(L.neuron_ranks(hv_i, rule)[i], L.neuron_ranks(hv, rule)[i])
    for a, b in ((hv_i.value, hv.value), (hv_i.mean, hv.mean), (hv_i.sd, hv.sd)):
        assert np.abs(a[i] - b[i]).max() <= 1e-12 * max(1.0, np.abs(b[i]).max())
    changed = act.copy()
    changed[j, quiet] += 1.0  # the same response, from a neighbour in the same bin
    hv_j = L.held_out_values(changed, rc, BINS, SIGMA)
    assert L.neuron_ranks(hv, "Targeted")[i, quiet] > 0 and L.neuron_ranks(hv_j, "Targeted")[i, quiet] == 0


@pytest.mark.parametrize("bins,sigma,n", [(6, 1.0, 40), (4, 0.0, 200), (5, 0.7, 12)])
def test_held_out_values_equal_maps_rebuilt_without_the_stimulus(bins, sigma, n):
    rng = np.random.default_rng(bins)
    rc = rng.integers(0, bins, (n, 2))
    act = rng.normal(size=(n, 5)) * 0.01 + rng.normal(size=5) * 3.0
    hv = L.held_out_values(act, rc, bins, sigma)
    flat = rc[:, 0] * bins + rc[:, 1]
    alone = 0
    for i in range(n):
        fb = flat.copy()
        fb[i] = -1
        fm = L.field_maps(*ratemaps.ratemaps_from_bins(fb, act, bins, sigma))
        assert np.abs(hv.mean[i] - fm.mean).max() <= 1e-10
        assert np.abs(hv.sd[i] - fm.sd).max() <= 1e-10 * fm.sd.max()
        if fm.visited[rc[i, 0], rc[i, 1]]:
            assert np.abs(hv.value[i] - fm.maps[:, rc[i, 0], rc[i, 1]]).max() <= 1e-10
        else:  # alone in its bin: the smoothed estimate from the neighbours
            alone += 1
            keep = fb >= 0
            s = np.zeros((5, bins * bins))
            np.add.at(s.T, fb[keep], act[keep])
            o = np.bincount(fb[keep], minlength=bins * bins).astype(float)
            s = gaussian_filter(s.reshape(5, bins, bins), (0, sigma, sigma), mode="constant")
            o = gaussian_filter(o.reshape(bins, bins), sigma, mode="constant")
            assert np.abs(hv.value[i] - s[:, rc[i, 0], rc[i, 1]] / o[rc[i, 0], rc[i, 1]]).max() <= 1e-10
    assert alone > 0 or sigma == 0  # the smoothed cases include stimuli alone in their bin


def test_held_out_values_validate():
    rc = np.array([[0, 0], [0, 0], [1, 1]])
    act = np.ones((3, 2))
    with pytest.raises(ValueError, match="sigma"):  # stimulus 2 is alone and nothing smooths into its bin
        L.held_out_values(act, rc, 2, 0.0)
    with pytest.raises(ValueError, match="rows_cols"):
        L.held_out_values(act, np.array([[0, 0], [0, 0], [2, 0]]), 2, 1.0)
    with pytest.raises(ValueError, match="activations"):
        L.held_out_values(act[:, 0], rc, 2, 1.0)
    flat = L.held_out_values(act, rc, 2, 1.0)  # constant channels: sd 0, z 0
    assert (flat.sd == 0).all() and (flat.z == 0).all()
    with pytest.raises(ValueError, match="rule"):
        L.neuron_ranks(flat, "Targeted_max")


def test_selection_specificity_matches_set_arithmetic():
    rng = np.random.default_rng(3)
    ranks = rng.permuted(np.tile(np.arange(12), (9, 1)), axis=1)
    ranks[:, :] = np.argsort(np.argsort(ranks, axis=1), axis=1)  # still permutations
    pairs = L.stimulus_pairs(9, 100)
    assert len(pairs[0]) == 36 and (pairs[0] != pairs[1]).all()
    for k in (1, 4, 11):
        sets = [set(np.flatnonzero(r < k)) for r in ranks]
        ref = np.mean([len(sets[i] & sets[j]) / len(sets[i] | sets[j]) for i, j in zip(*pairs)])
        common = set.intersection(*sets)
        out = L.selection_specificity(ranks, k, pairs)
        assert out["jaccard"] == pytest.approx(ref) and out["n_common"] == len(common)
    assert L.selection_specificity(ranks, 12, pairs) == dict(jaccard=1.0, n_common=12)
    assert np.isnan(L.selection_specificity(ranks, 0, pairs)["jaccard"])
    i, j = L.stimulus_pairs(400, 500, seed=2)
    assert len(i) == 500 and (i != j).all() and ((0 <= j) & (j < 400)).all()
    assert np.array_equal(i, L.stimulus_pairs(400, 500, seed=2)[0])


def test_specificity_figure_draws_every_rule(tmp_path):
    import matplotlib.pyplot as plt
    import pandas as pd

    from helpers import plots

    rows = [dict(condition=c, seed=s, proportion=p, n_ablated=round(p * 10), performance=0.5, p_target=0.5,
                 n_stimuli=4, jaccard=(np.nan if p == 0 else j), n_common=round(p * 10 * j))
            for c, s, j in (("Targeted", None, 0.1), ("Targeted_raw", None, 1.0), ("Random", 0, 0.05), ("Random", 1, 0.07))
            for p in (0, 0.5, 1)]
    df = pd.DataFrame(rows)
    fig = plots.plot_selection_specificity(df, block=9, n_neurons=10, path=tmp_path / "spec.png")
    assert (tmp_path / "spec.png").stat().st_size > 0
    left = fig.axes[0]
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["Targeted (z)", "Targeted_raw (blog: raw value)", "Random"]
    raw = left.get_lines()[1]
    assert np.allclose(raw.get_xdata(), [0.5, 1]) and np.allclose(raw.get_ydata(), [1.0, 1.0])  # p = 0 has no set
    assert np.allclose(left.get_lines()[2].get_ydata(), [0.06, 0.06])  # Random: mean over seeds
    plt.close(fig)
