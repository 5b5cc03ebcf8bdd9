"""Tests for helpers.ratemaps: binning, NaN handling, smoothing, vectorisation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from helpers.ratemaps import (
    bin_indices,
    flat_bin_indices,
    ratemaps,
    ratemaps_from_bins,
    resolve_extent,
    smooth_maps,
    values_at_bins,
)

pytestmark = pytest.mark.fast

EXTENT = (0.0, 224.0, 0.0, 224.0)


def _centre(row: int, col: int, bins: int, size: float = 224.0) -> tuple[float, float]:
    """Pixel (x, y) of the centre of bin (row, col)."""
    w = size / bins
    return ((col + 0.5) * w, (row + 0.5) * w)


def test_planted_values_come_back_exactly_in_their_bins():
    bins = 4
    # two stimuli in bin (row 0, col 3) = top right, one in (2, 1)
    pos = np.array([_centre(0, 3, bins), _centre(0, 3, bins), _centre(2, 1, bins)])
    act = np.array([[1.0, -2.0], [3.0, 4.0], [5.0, 7.0]])
    maps, occ = ratemaps(pos, act, bins=bins, extent=EXTENT)
    assert maps.shape == (2, bins, bins)
    assert occ.dtype.kind == "i"
    assert maps[0, 0, 3] == 2.0 and maps[1, 0, 3] == 1.0  # means
    assert maps[0, 2, 1] == 5.0 and maps[1, 2, 1] == 7.0
    assert occ[0, 3] == 2 and occ[2, 1] == 1 and occ.sum() == 3
    empty = occ == 0
    assert np.isnan(maps[:, empty]).all()
    assert np.isfinite(maps[:, ~empty]).all()


def test_row_is_y_and_y_grows_downwards():
    # a stimulus near the top-left of the image (small y) lands in row 0
    pos = np.array([[10.0, 5.0], [10.0, 220.0], [220.0, 5.0]])
    rc = bin_indices(pos, bins=10, extent=EXTENT)
    np.testing.assert_array_equal(rc, [[0, 0], [9, 0], [0, 9]])


def test_edges_and_outside_points():
    pos = np.array([[0.0, 0.0], [224.0, 224.0], [224.0, 0.0], [-1.0, 5.0], [5.0, 230.0]])
    rc = bin_indices(pos, bins=8, extent=EXTENT)
    np.testing.assert_array_equal(rc, [[0, 0], [7, 7], [0, 7], [-1, -1], [-1, -1]])
    flat = flat_bin_indices(pos, bins=8, extent=EXTENT)
    np.testing.assert_array_equal(flat, [0, 63, 7, -1, -1])
    maps, occ = ratemaps(pos, np.ones((5, 1)), bins=8, extent=EXTENT)
    assert occ.sum() == 3  # outside stimuli are ignored


def test_default_extent_is_min_max_of_positions():
    pos = np.array([[10.0, 20.0], [30.0, 60.0], [20.0, 40.0]])
    assert resolve_extent(pos) == (10.0, 30.0, 20.0, 60.0)
    maps, occ = ratemaps(pos, np.array([1.0, 2.0, 3.0]), bins=2)
    assert occ[0, 0] == 1 and occ[1, 1] == 2  # max goes into the last bin
    assert maps.shape == (1, 2, 2)  # 1-D activations = one neuron


def test_occupancy_counts_match_histogram2d():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 224, size=(2000, 2))
    _, occ = ratemaps(pos, rng.normal(size=(2000, 3)), bins=16, extent=EXTENT)
    ref, _, _ = np.histogram2d(pos[:, 1], pos[:, 0], bins=16, range=[[0, 224], [0, 224]])
    np.testing.assert_array_equal(occ, ref.astype(int))


def _reference_maps(pos, act, bins, extent):
    """Straightforward per-neuron, per-stimulus loop."""
    xmin, xmax, ymin, ymax = extent
    k = act.shape[1]
    sums = np.zeros((k, bins, bins))
    counts = np.zeros((bins, bins))
    for (x, y), a in zip(pos, act):
        col = min(int((x - xmin) / (xmax - xmin) * bins), bins - 1)
        row = min(int((y - ymin) / (ymax - ymin) * bins), bins - 1)
        counts[row, col] += 1
        for j in range(k):
            sums[j, row, col] += a[j]
    with np.errstate(invalid="ignore"):
        return sums / counts, counts


def test_vectorised_equals_per_neuron_reference():
    rng = np.random.default_rng(1)
    pos = rng.uniform(0, 224, size=(300, 2))
    act = rng.normal(size=(300, 7))
    maps, occ = ratemaps(pos, act, bins=12, extent=EXTENT)
    ref, counts = _reference_maps(pos, act, 12, EXTENT)
    np.testing.assert_array_equal(occ, counts)
    np.testing.assert_allclose(maps, ref, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_smoothing_keeps_nan_bins_nan_and_constant_field_constant():
    rng = np.random.default_rng(2)
    pos = rng.uniform(0, 224, size=(150, 2))
    pos = pos[~((pos[:, 0] < 80) & (pos[:, 1] < 80))]  # leave a hole top-left
    act = np.column_stack([np.full(len(pos), 3.5), rng.normal(size=len(pos))])
    raw, occ = ratemaps(pos, act, bins=10, extent=EXTENT)
    smooth, occ2 = ratemaps(pos, act, bins=10, extent=EXTENT, sigma=1.5)
    np.testing.assert_array_equal(occ, occ2)
    assert (occ == 0).any()
    np.testing.assert_array_equal(np.isnan(smooth), np.isnan(raw))
    np.testing.assert_allclose(smooth[0][occ > 0], 3.5, rtol=1e-12)
    assert not np.allclose(smooth[1][occ > 0], raw[1][occ > 0])  # it did smooth
    # normalised convolution by hand
    sums = np.nan_to_num(raw[1]) * occ
    ref = gaussian_filter(sums, 1.5, mode="constant") / gaussian_filter(occ.astype(float), 1.5, mode="constant")
    np.testing.assert_allclose(smooth[1][occ > 0], ref[occ > 0], rtol=1e-12)


def test_sigma_zero_equals_no_smoothing_and_from_bins_matches():
    rng = np.random.default_rng(3)
    pos = rng.uniform(0, 224, size=(200, 2))
    act = rng.normal(size=(200, 4))
    a, _ = ratemaps(pos, act, bins=8, extent=EXTENT, sigma=0)
    b, _ = ratemaps(pos, act, bins=8, extent=EXTENT)
    c, _ = ratemaps_from_bins(flat_bin_indices(pos, 8, EXTENT), act, 8)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, equal_nan=True)
    np.testing.assert_allclose(a, c, equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.longdouble])
def test_every_float_dtype_gives_the_maps_of_its_float64_upcast(dtype, tmp_path):
    """float16 recordings (record(storage_dtype="float16")) used to crash scipy.sparse; all dtypes sum in float64."""
    from helpers.scores import shuffle_scores

    rng = np.random.default_rng(4)
    pos = rng.uniform(0, 224, size=(400, 2))
    act = rng.normal(0, 3, size=(400, 5)).astype(dtype)
    stored = np.lib.format.open_memmap(tmp_path / "layer.npy", mode="w+", dtype=act.dtype, shape=act.shape)
    stored[:] = act  # as the recorder stores it: a memory-mapped .npy
    upcast = act.astype(np.float64)
    for sigma in (None, 1.0):
        maps, occ = ratemaps(pos, stored, bins=10, extent=EXTENT, sigma=sigma)
        ref, occ_ref = ratemaps(pos, upcast, bins=10, extent=EXTENT, sigma=sigma)
        assert maps.dtype == np.float64
        np.testing.assert_array_equal(occ, occ_ref)
        np.testing.assert_array_equal(maps, ref)
    flat = flat_bin_indices(pos, 10, EXTENT)
    np.testing.assert_array_equal(ratemaps_from_bins(flat, act[:, 0], 10)[0], ratemaps_from_bins(flat, upcast[:, 0], 10)[0])
    kw = dict(bins=10, extent=EXTENT, sigma=1.0, n_shuffles=2, scores=("si",), progress=False)
    np.testing.assert_array_equal(shuffle_scores(pos, stored, **kw)["si"], shuffle_scores(pos, upcast, **kw)["si"])


def test_values_at_bins_looks_up_each_stimulus_bin():
    maps = np.arange(2 * 3 * 3, dtype=float).reshape(2, 3, 3)
    rc = np.array([[0, 0], [2, 1], [-1, -1]])
    out = values_at_bins(maps, rc)
    assert out.shape == (3, 2)
    np.testing.assert_array_equal(out[:2], [[0, 9], [7, 16]])
    assert np.isnan(out[2]).all()


def test_large_layer_equals_per_neuron_maps():
    """A whole blog-size layer at once gives each neuron's own map (speed lives in benchmarks/)."""
    rng = np.random.default_rng(4)
    pos = rng.uniform(0, 224, size=(3000, 2))
    act = rng.normal(size=(3000, 768)).astype(np.float32)
    maps, occ = ratemaps(pos, act, bins=20, extent=EXTENT, sigma=1.0)
    assert maps.shape == (768, 20, 20) and occ.sum() == 3000
    for j in (0, 383, 767):
        one, _ = ratemaps(pos, act[:, [j]], bins=20, extent=EXTENT, sigma=1.0)
        np.testing.assert_allclose(maps[j], one[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(bins=1), "bins"),
        (dict(bins=2.5), "bins"),
        (dict(sigma=-1), "sigma"),
        (dict(sigma="wide"), "sigma"),
        (dict(extent=(0, 0, 0, 10)), "extent"),
        (dict(extent=(0, 10, 0)), "extent"),
    ],
)
def test_bad_parameters_raise_naming_the_parameter(kwargs, match):
    pos = np.array([[1.0, 1.0], [5.0, 5.0]])
    with pytest.raises(ValueError, match=match):
        ratemaps(pos, np.ones((2, 1)), **{"bins": 4, **kwargs})


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="positions"):
        ratemaps(np.ones((3, 3)), np.ones((3, 1)))
    with pytest.raises(ValueError, match="activations"):
        ratemaps(np.ones((3, 2)), np.ones((4, 1)))
    with pytest.raises(ValueError, match="activations"):
        ratemaps(np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([[np.nan], [1.0]]))
    with pytest.raises(ValueError, match="positions"):
        ratemaps(np.array([[np.nan, 0.0], [1.0, 1.0]]), np.ones((2, 1)))
    with pytest.raises(ValueError, match="sums"):
        smooth_maps(np.ones((2, 3, 3)), np.ones((4, 4)), 1.0)
