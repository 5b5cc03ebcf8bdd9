"""Tests for helpers.scores on planted cells, against references and opexebo."""

from __future__ import annotations

import functools
import importlib
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.stats import spearmanr

from helpers.ratemaps import ratemaps
from helpers.scores import (
    autocorrelogram,
    border_fields,
    border_score,
    compute_scores,
    grid_score,
    shuffle_scores,
    significance,
    spatial_information,
)

pytestmark = pytest.mark.fast


# --------------------------------------------------------------------------
# planted cells (row = y, col = x, coordinates in [0, 1])
# --------------------------------------------------------------------------
def _xy(n: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(n) + 0.5) / n
    return np.meshgrid(c, c)


def hex_grid(n: int, period: float = 0.3, angle: float = 0.0, phase=(0.1, 0.2)) -> np.ndarray:
    """Sum of three plane waves 60 degrees apart; field spacing = period (map units)."""
    x, y = _xy(n)
    k = 4 * np.pi / (np.sqrt(3) * period)
    return sum(
        np.cos(k * ((x - phase[0]) * np.cos(angle + j * np.pi / 3) + (y - phase[1]) * np.sin(angle + j * np.pi / 3)))
        for j in range(3)
    )


def square_grid(n: int, period: float = 0.3, angle: float = 0.0) -> np.ndarray:
    """Sum of two plane waves 90 degrees apart."""
    x, y = _xy(n)
    k = 2 * np.pi / period
    return sum(np.cos(k * (x * np.cos(angle + j * np.pi / 2) + y * np.sin(angle + j * np.pi / 2))) for j in range(2))


def place_field(n: int, cx: float = 0.5, cy: float = 0.5, width: float = 0.1) -> np.ndarray:
    x, y = _xy(n)
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * width**2))


def wall_band(n: int, wall: str = "left", width: float = 0.08) -> np.ndarray:
    x, y = _xy(n)
    d = {"left": x, "right": 1 - x, "top": y, "bottom": 1 - y}[wall]
    return np.exp(-(d**2) / (2 * width**2))


SIZES = (20, 32)
GRID_VARIANTS = ("bnt", "langston")


# --------------------------------------------------------------------------
# planted cells
# --------------------------------------------------------------------------
@pytest.mark.parametrize("n", SIZES)
def test_place_field_high_si_low_grid_negative_border(n):
    maps = np.stack([place_field(n), place_field(n, 0.35, 0.6, 0.12)])
    si = spatial_information(maps)
    assert np.all(si > 1.2)  # bits; a Gaussian field of width 0.1 gives 2.55
    assert np.all(grid_score(maps) < 0.3)
    assert np.all(grid_score(maps, variant="langston") < 0.3)
    assert np.all(border_score(maps) < 0)


@pytest.mark.parametrize("variant", GRID_VARIANTS)
@pytest.mark.parametrize("n", SIZES)
def test_hexagonal_grids_score_above_one_square_grids_low(n, variant):
    hexes = np.stack([hex_grid(n, p, a) for p in (0.25, 0.3, 0.33) for a in (0.0, 0.4, 1.1)])
    squares = np.stack([square_grid(n, p, a) for p in (0.25, 0.3, 0.33) for a in (0.0, 0.4)])
    g_hex, g_sq = grid_score(hexes, variant=variant), grid_score(squares, variant=variant)
    assert np.all(g_hex > 1.0), g_hex
    assert np.all(g_sq < 0.3), g_sq
    # a noisy hexagonal grid is still clearly a grid
    rng = np.random.default_rng(0)
    noisy = hexes[:3] + rng.normal(0, 0.8, size=hexes[:3].shape)
    assert np.all(grid_score(noisy, variant=variant) > 0.7)


@pytest.mark.parametrize("n", SIZES)
def test_wall_bands_have_high_border_score_and_centre_field_negative(n):
    bands = np.stack([wall_band(n, w) for w in ("left", "right", "top", "bottom")])
    b = border_score(bands)
    assert np.all(b > 0.5), b
    assert np.allclose(b, b[0])  # the four walls are treated alike
    assert border_score(place_field(n)) < 0
    assert border_score(place_field(n)) == -1.0  # no wall contact: CM = 0


def test_one_bin_band_has_the_documented_maximum():
    n = 20
    m = np.zeros((n, n))
    m[:, 0] = 1.0
    d = border_score(m, min_field_bins=1, return_details=True)
    assert d["cm"] == 1.0
    assert d["dm"] == pytest.approx(2 / n)
    assert d["score"] == pytest.approx((1 - 2 / n) / (1 + 2 / n))


def test_constant_and_empty_maps():
    const = np.full((20, 20), -3.2)
    assert spatial_information(const) == 0.0
    assert spatial_information(-const, transform="none") == 0.0
    assert np.isnan(grid_score(const))
    assert border_score(const) == -1.0
    empty = np.full((20, 20), np.nan)
    assert np.isnan(spatial_information(empty))
    assert np.isnan(grid_score(empty))
    assert np.isnan(border_score(empty))


# --------------------------------------------------------------------------
# spatial information against an independent textbook loop
# --------------------------------------------------------------------------
def _skaggs_loop(rate_map: np.ndarray, occupancy: np.ndarray) -> float:
    """Textbook Skaggs et al. 1993, one bin at a time."""
    r = rate_map - np.nanmin(rate_map)
    visited = [(i, j) for i in range(r.shape[0]) for j in range(r.shape[1]) if not np.isnan(r[i, j])]
    total = sum(occupancy[i, j] for i, j in visited)
    mean = sum(occupancy[i, j] / total * r[i, j] for i, j in visited)
    info = 0.0
    for i, j in visited:
        if r[i, j] > 0:
            info += occupancy[i, j] / total * r[i, j] / mean * np.log2(r[i, j] / mean)
    return info


def test_spatial_information_matches_textbook_loop():
    rng = np.random.default_rng(5)
    maps = rng.normal(size=(6, 10, 12))
    maps[:, 2, 3] = np.nan
    maps[1, 5:7, :] = np.nan  # per-map NaN pattern
    occ = rng.integers(1, 9, size=(10, 12))
    got = spatial_information(maps, occ)
    ref = [_skaggs_loop(mp, occ) for mp in maps]
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    # uniform occupancy when none is given
    np.testing.assert_allclose(spatial_information(maps), [_skaggs_loop(mp, np.ones((10, 12))) for mp in maps])
    # single map -> float
    assert isinstance(spatial_information(maps[0], occ), float)


def test_spatial_information_of_a_single_bin_field_is_log2_of_bins():
    m = np.zeros((8, 8))
    m[3, 4] = 5.0
    assert spatial_information(m) == pytest.approx(np.log2(64))


# --------------------------------------------------------------------------
# invariances that hold by definition
# --------------------------------------------------------------------------
def test_invariances():
    rng = np.random.default_rng(6)
    maps = np.stack([hex_grid(20), place_field(20), wall_band(20), gaussian_filter(rng.normal(size=(20, 20)), 1.5)])
    maps[:, 4, 7] = np.nan
    a, b = 3.7, -11.0
    # exact in theory; FFT rounding on the near-constant part of the band map ~1e-7
    for variant in GRID_VARIANTS:
        g = grid_score(maps, variant=variant)
        np.testing.assert_allclose(grid_score(a * maps + b, variant=variant), g, atol=1e-6)
        np.testing.assert_allclose(grid_score(-maps, variant=variant), g, atol=1e-6)  # Pearson: any a != 0
    np.testing.assert_allclose(spatial_information(maps + 100.0), spatial_information(maps), rtol=1e-9)
    np.testing.assert_allclose(spatial_information(a * maps + b), spatial_information(maps), rtol=1e-9)
    np.testing.assert_allclose(border_score(a * maps), border_score(maps), atol=1e-12)
    np.testing.assert_allclose(border_score(a * maps + b), border_score(maps), atol=1e-12)
    # with transform="none" SI is only scale invariant
    pos_maps = maps - np.nanmin(maps) + 1.0
    np.testing.assert_allclose(
        spatial_information(a * pos_maps, transform="none"), spatial_information(pos_maps, transform="none")
    )
    assert not np.allclose(
        spatial_information(pos_maps + 5.0, transform="none"), spatial_information(pos_maps, transform="none")
    )


def test_stack_equals_one_map_at_a_time():
    rng = np.random.default_rng(7)
    maps = np.stack([hex_grid(20), place_field(20), wall_band(20)] + [rng.normal(size=(20, 20)) for _ in range(3)])
    maps[2, 0, 0] = np.nan
    maps[4, 5:8, 5:8] = np.nan
    langston = functools.partial(grid_score, variant="langston")
    for fn in (spatial_information, grid_score, langston, border_score):
        stacked = fn(maps)
        single = np.array([fn(m) for m in maps])
        np.testing.assert_allclose(stacked, single, atol=1e-12, equal_nan=True)


# --------------------------------------------------------------------------
# autocorrelogram against a per-lag loop
# --------------------------------------------------------------------------
def test_autocorrelogram_matches_direct_pearson_per_lag():
    rng = np.random.default_rng(8)
    m = rng.normal(size=(7, 9))
    m[1, 2] = m[4, 4] = np.nan
    ac = autocorrelogram(m, min_overlap=5)
    assert ac.shape == (13, 17)
    for ty in range(-6, 7):
        for tx in range(-8, 9):
            a = m[max(0, -ty): 7 - max(0, ty), max(0, -tx): 9 - max(0, tx)]
            b = m[max(0, ty): 7 + min(0, ty), max(0, tx): 9 + min(0, tx)]
            ok = np.isfinite(a) & np.isfinite(b)
            got = ac[ty + 6, tx + 8]
            if ok.sum() < 5:
                assert np.isnan(got)
                continue
            ref = np.corrcoef(a[ok], b[ok])[0, 1]
            assert got == pytest.approx(ref, abs=1e-9), (ty, tx)
    assert ac[6, 8] == pytest.approx(1.0)


@pytest.mark.parametrize("variant", GRID_VARIANTS)
def test_grid_score_survives_missing_bins(variant):
    m = hex_grid(20)
    m[3, 5] = m[10, 11] = m[0, 19] = np.nan
    assert grid_score(m, variant=variant) > 1.0


# --------------------------------------------------------------------------
# agreement with opexebo (the Moser group's reference implementation)
# --------------------------------------------------------------------------
@pytest.fixture
def opexebo_mod(monkeypatch):
    opexebo = pytest.importorskip("opexebo")
    gs = importlib.import_module("opexebo.analysis.grid_score")
    original = gs._findCentreRadius
    # opexebo 0.7.2 calls int() on a 1-element array (TypeError on numpy >= 2.4)
    monkeypatch.setattr(gs, "_findCentreRadius", lambda a, **kw: float(np.ravel(original(a, **kw))[0]))
    return opexebo


def test_border_score_equals_opexebo_with_the_same_fields(opexebo_mod):
    rng = np.random.default_rng(9)
    maps = np.stack(
        [wall_band(20, "left"), wall_band(20, "top", 0.1), place_field(20, 0.1, 0.5), hex_grid(20), square_grid(20)]
        + [gaussian_filter(rng.normal(size=(20, 20)), 1.5) for _ in range(5)]
    )
    ours = border_score(maps)
    labels, rates = border_fields(maps)
    compared = 0
    for j in range(len(maps)):
        ids = np.unique(labels[j][labels[j] > 0])
        fields = [{"field_map": (labels[j] == i).astype(float)} for i in ids]
        if not fields:
            assert ours[j] == -1.0
            continue
        theirs, _ = opexebo_mod.analysis.border_score(rates[j], labels[j], fields, "square")
        assert ours[j] == pytest.approx(theirs, abs=1e-9)
        compared += 1
    assert compared >= 8


def test_spatial_information_relation_to_opexebo(opexebo_mod):
    """opexebo clips log2(r/mean) at 0; adding the clipped terms back gives ours."""
    rng = np.random.default_rng(10)
    maps = np.stack([place_field(20), hex_grid(20)] + [gaussian_filter(rng.normal(size=(20, 20)), 1) for _ in range(3)])
    occ = rng.integers(1, 10, size=(20, 20)).astype(float)
    ours = spatial_information(maps, occ)
    for j, mp in enumerate(maps):
        r = mp - mp.min()
        theirs = opexebo_mod.analysis.rate_map_stats(r, occ)["spatial_information_content"]
        p = occ / occ.sum()
        mean = (p * r).sum()
        below = (r > 0) & (r < mean)
        clipped_terms = (p[below] * r[below] / mean * np.log2(r[below] / mean)).sum()
        assert theirs > ours[j]
        assert ours[j] == pytest.approx(theirs + clipped_terms, rel=1e-9)
    assert spatial_information(place_field(20)) == pytest.approx(2.55, abs=0.01)


def _opexebo_grid_scores(opexebo, maps: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # NaN slices and constant inputs inside opexebo
        warnings.simplefilter("ignore")
        return np.array(
            [opexebo.analysis.grid_score(opexebo.analysis.autocorrelation(m - np.nanmin(m)))[0] for m in maps]
        )


def _grid_battery(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Maps of every kind the grid score meets, and their kinds."""
    rng = np.random.default_rng(n)
    maps = {
        "hex": [hex_grid(n, p, a, ph) for p in (0.2, 0.28, 0.36, 0.45) for a in (0.0, 0.3, 0.8)
                for ph in ((0.1, 0.2), (0.43, 0.71))],
        "square": [square_grid(n, p, a) for p in (0.22, 0.3, 0.4) for a in (0.0, 0.4)],
        "place": [place_field(n, cx, cy, w) for cx, cy in ((0.5, 0.5), (0.3, 0.6), (0.2, 0.25), (0.75, 0.5))
                  for w in (0.06, 0.1, 0.16)],
        # clean bands (0.08 is the tightest case: its far tail is flat to 1e-9, see grid_score's Notes)
        "band": [wall_band(n, wall, w) for wall in ("left", "right", "top", "bottom") for w in (0.08, 0.12)],
        "noisy band": [wall_band(n, wall, w) + rng.normal(0, 0.03, (n, n))
                       for wall, w in (("left", 0.05), ("top", 0.08), ("right", 0.15), ("bottom", 0.2))],
        "noise": [gaussian_filter(rng.normal(size=(n, n)), s) for s in (1.0, 1.5, 2.5) for _ in range(4)],
    }
    kinds = np.concatenate([[kind] * len(group) for kind, group in maps.items()])
    return np.stack(sum(maps.values(), [])), kinds


@pytest.mark.parametrize("n", SIZES)
def test_grid_score_agrees_with_opexebo_on_a_battery(opexebo_mod, n):
    """The default (BNT) grid score is opexebo's on grids, fields, bands and noise."""
    maps, kinds = _grid_battery(n)
    ours, theirs = grid_score(maps), _opexebo_grid_scores(opexebo_mod, maps)
    assert np.all(np.isfinite(ours))
    # opexebo gives NaN where its central field reaches the crop's edge (broad bands)
    defined = np.isfinite(theirs)
    assert defined.sum() >= len(maps) - 8
    np.testing.assert_allclose(ours[defined], theirs[defined], atol=0.1)
    assert spearmanr(ours[defined], theirs[defined])[0] >= 0.95
    # the published reading: hexagonal grids high; squares, fields and bands low
    # (smoothed noise can reach 0.6 by chance: hence shuffle nulls)
    assert np.all(ours[kinds == "hex"] > 1.0)
    assert np.all(ours[np.isin(kinds, ["square", "place", "band", "noisy band"])] < 0.3)


def test_grid_score_inner_radius_is_opexebos_central_field(opexebo_mod):
    """BNT's adaptive central-field search, including its retries, on noise of any smoothness."""
    gs = importlib.import_module("opexebo.analysis.grid_score")
    rng = np.random.default_rng(16)
    maps = np.concatenate(
        [gaussian_filter(rng.normal(size=(40, 20, 20)), (0, s, s)) for s in (0.0, 0.6, 1.5)]
        + [(rng.random((20, 20, 20)) > 0.85).astype(float)]
    )
    details = grid_score(maps, return_details=True)
    theirs = []
    for m in maps:
        acorr = opexebo_mod.analysis.autocorrelation(m - m.min())
        theirs.append(gs._findCentreRadius(acorr / acorr.max()))
    theirs = np.array(theirs)
    found = ~details["inner_radius_fallback"]
    assert found.sum() >= 100
    np.testing.assert_array_equal(details["inner_radius"][found], theirs[found])
    # where no field was found opexebo has none either (radius 0) or one past its crop (NaN score)
    assert np.all((theirs[~found] == 0) | (theirs[~found] >= 17))


def test_every_valid_map_gets_a_finite_grid_score():
    """Finite for any finite, non-constant map of >= 10x10 bins, in both variants."""
    maps = []
    for n, m in ((10, 10), (13, 13), (10, 14), (20, 20), (32, 32)):
        x, y = np.meshgrid((np.arange(m) + 0.5) / m, (np.arange(n) + 0.5) / n)
        one_bin = np.zeros((n, m))
        one_bin[n // 3, m // 2] = 1.0
        maps += [
            x + 0.3 * y,  # ramp: its autocorrelogram is 1 everywhere
            one_bin,
            (np.indices((n, m)).sum(axis=0) % 2).astype(float),  # checkerboard
            (x > 0.5).astype(float),
            np.exp(-((x - 0.05) ** 2 + (y - 0.05) ** 2) / (2 * 0.05**2)),  # field in a corner
            np.random.default_rng(n).normal(size=(n, m)),
        ] + [np.exp(-(d**2) / (2 * w**2)) for d in (x, 1 - y) for w in (0.03, 0.05, 0.1, 0.2, 0.3)]  # bands
    for variant in GRID_VARIANTS:
        scores = [grid_score(m, variant=variant) for m in maps]
        assert np.all(np.isfinite(scores)), variant
        # no central-field edge: the fallback annulus, far from grid-like
        flat = [grid_score(m, variant=variant) for m in maps[::16]]  # the ramps
        np.testing.assert_allclose(flat, 0.0, atol=1e-9)


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
def test_langston_variant_classifies_like_opexebo(opexebo_mod):
    """The max-over-radii variant differs from BNT's sliding mean by up to a
    few tenths, but orders and classifies planted cells like opexebo."""
    n = 20
    rng = np.random.default_rng(11)
    hexes = [hex_grid(n, p, a) for p in (0.22, 0.28, 0.35) for a in (0.0, 0.5)]
    hexes += [h + rng.normal(0, 1.0, size=h.shape) for h in hexes[:3]]
    others = [square_grid(n, p, a) for p in (0.22, 0.3) for a in (0.0, 0.5)]
    others += [place_field(n), place_field(n, 0.3, 0.6, 0.15)]
    maps = np.stack(hexes + others)
    ours = grid_score(maps, variant="langston")
    theirs = _opexebo_grid_scores(opexebo_mod, maps)
    is_hex = np.arange(len(maps)) < len(hexes)
    assert np.all(ours[is_hex] > 1.0) and np.all(theirs[is_hex] > 1.0)
    assert np.all(ours[~is_hex] < 0.3) and np.all(theirs[~is_hex] < 0.3)
    assert spearmanr(ours, theirs)[0] > 0.7
    # max-over-radii sits above opexebo's sliding mean on grids
    diff = ours[is_hex] - theirs[is_hex]
    assert np.all(np.abs(diff) < 0.35), diff


# --------------------------------------------------------------------------
# shuffles and significance
# --------------------------------------------------------------------------
def test_pooled_significance_threshold_and_mask():
    null = np.arange(400, dtype=float).reshape(100, 4)
    res = significance(np.array([390.0, 380.0, np.nan, 379.0]), null, percentile=95, null_model="pooled")
    assert res.threshold == pytest.approx(np.percentile(np.arange(400), 95))
    np.testing.assert_array_equal(res.significant, [True, True, False, False])
    np.testing.assert_array_equal(res.significant, res.significant_pooled)
    with pytest.raises(ValueError, match="percentile"):
        significance(np.zeros(3), null[:, :3], percentile=100)
    with pytest.raises(ValueError, match="observed"):
        significance(np.zeros((3, 2)), null)
    with pytest.raises(ValueError, match="shuffled"):
        significance(np.zeros(3), null)


def _stimuli(n_stim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 224, size=(n_stim, 2))


def test_noise_is_significant_at_the_nominal_rate():
    """Activations independent of position: ~5% false positives per score."""
    pos = _stimuli(1200, 12)
    act = np.random.default_rng(13).normal(size=(1200, 300))
    settings = dict(bins=16, extent=(0, 224, 0, 224), sigma=1.0)
    maps, occ = ratemaps(pos, act, **settings)
    observed = compute_scores(maps, occ)
    null = shuffle_scores(pos, act, **settings, n_shuffles=19, seed=0, progress=False)
    for name, values in observed.items():
        assert null[name].shape == (19, 300)
        res = significance(values, null[name])
        for rate in (res.significant_neuron.mean(), res.significant_pooled.mean()):  # one family: both calibrated
            assert 0.02 <= rate <= 0.09, (name, rate)


def test_planted_cells_are_significant_and_shuffles_are_seeded():
    pos = _stimuli(1500, 14)
    x, y = pos[:, 0] / 224, pos[:, 1] / 224
    rng = np.random.default_rng(15)
    place = np.exp(-((x - 0.4) ** 2 + (y - 0.6) ** 2) / (2 * 0.1**2))
    border = np.exp(-(x**2) / (2 * 0.08**2))
    k = 4 * np.pi / (np.sqrt(3) * 0.3)
    grid = sum(np.cos(k * (x * np.cos(j * np.pi / 3) + y * np.sin(j * np.pi / 3))) for j in range(3))
    act = np.column_stack([place, border, grid, rng.normal(size=(1500, 20))]) - 0.5
    act[:, :3] += rng.normal(0, 0.2, size=(1500, 3))
    settings = dict(bins=20, extent=(0, 224, 0, 224), sigma=1.0)
    maps, occ = ratemaps(pos, act, **settings)
    observed = compute_scores(maps, occ)
    null = shuffle_scores(pos, act, **settings, n_shuffles=19, seed=3, progress=False)
    assert significance(observed["si"], null["si"])[0][0]
    assert significance(observed["border"], null["border"])[0][1]
    assert significance(observed["grid"], null["grid"])[0][2]
    again = shuffle_scores(pos, act, **settings, n_shuffles=10, seed=3, progress=False, scores=("si",))
    np.testing.assert_array_equal(again["si"], null["si"][:10])  # same seed: same first permutations
    other = shuffle_scores(pos, act, **settings, n_shuffles=10, seed=4, progress=False, scores=("si",))
    assert not np.array_equal(other["si"], null["si"][:10])


# --------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------
def test_bad_input_raises_naming_the_parameter():
    m = np.ones((5, 5))
    with pytest.raises(ValueError, match="maps"):
        grid_score(np.ones((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="transform"):
        spatial_information(m, transform="relu")
    with pytest.raises(ValueError, match="transform"):
        spatial_information(-m, transform="none")
    with pytest.raises(ValueError, match="occupancy"):
        spatial_information(m, np.ones((4, 4)))
    with pytest.raises(ValueError, match="field_threshold"):
        border_score(m, field_threshold=0)
    with pytest.raises(ValueError, match="min_field_bins"):
        border_score(m, min_field_bins=0)
    with pytest.raises(ValueError, match="min_overlap"):
        autocorrelogram(m, min_overlap=1)
    with pytest.raises(ValueError, match="maps"):
        grid_score(np.ones((4, 4)))
    with pytest.raises(ValueError, match="maps"):
        grid_score(np.ones((4, 4)), variant="langston")
    with pytest.raises(ValueError, match="variant"):
        grid_score(m, variant="deepmind")
    with pytest.raises(ValueError, match="min_ring_width"):
        grid_score(np.ones((20, 20)), min_ring_width=2)  # a langston-only parameter
    with pytest.raises(ValueError, match="min_ring_width"):
        grid_score(np.ones((20, 20)), variant="langston", min_ring_width=0)
    with pytest.raises(ValueError, match="scores"):
        compute_scores(np.ones((2, 20, 20)), scores=("si", "speed"))
    with pytest.raises(ValueError, match="n_shuffles"):
        shuffle_scores(_stimuli(10, 0), np.ones((10, 2)), n_shuffles=0)
    with pytest.raises(ValueError, match="activations"):
        shuffle_scores(_stimuli(10, 0), np.ones((9, 2)))


# --------------------------------------------------------------------------
# frozen reference: the speed-ups change no number
# --------------------------------------------------------------------------
_REFERENCE = Path(__file__).with_name("data") / "grid_score_reference.npz"


@pytest.mark.parametrize("variant", GRID_VARIANTS)
@pytest.mark.parametrize("n", (8, 10, 20))
def test_grid_score_matches_frozen_reference(n, variant):
    """Grid scores of planted grids, noise, smooth noise and a field (complete, shared and own NaN bins)
    are those of the straightforward implementation, frozen in tests/data (make_grid_score_reference.py)."""
    ref = np.load(_REFERENCE)
    maps, groups, expected = ref[f"maps_{n}"], ref[f"groups_{n}"], ref[f"{variant}_{n}"]
    np.testing.assert_allclose(grid_score(maps, variant=variant), expected, rtol=0, atol=1e-5)
    for group in range(3):  # alone, each group takes its own path (complete, shared unvisited bins, per-map ones)
        kept = groups == group
        np.testing.assert_allclose(grid_score(maps[kept], variant=variant), expected[kept], rtol=0, atol=1e-5)


def test_grid_shuffle_null_and_decisions_match_frozen_reference():
    ref = np.load(_REFERENCE)
    pos, act = ref["shuffle_positions"], ref["shuffle_activations"]
    maps, _ = ratemaps(pos, act, bins=10, extent=(0, 224, 0, 224), sigma=1.0)
    observed = grid_score(maps)
    null = shuffle_scores(pos, act, bins=10, extent=(0, 224, 0, 224), sigma=1.0, n_shuffles=39, seed=3,
                          scores=("grid",), progress=False)["grid"]
    np.testing.assert_allclose(observed, ref["shuffle_observed"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(null, ref["shuffle_null"], rtol=0, atol=1e-5)
    sig = significance(observed, null)
    np.testing.assert_array_equal(sig.significant_neuron, ref["shuffle_significant_neuron"])
    np.testing.assert_array_equal(sig.significant_pooled, ref["shuffle_significant_pooled"])
