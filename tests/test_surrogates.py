"""The fast IAAFT null (helpers.surrogates.iaaft_null) against the straightforward computation, bit for bit.

The reference below is IAAFT written plainly (Schreiber & Schmitz 1996, in 2-D with the module's mirror and NaN
conventions): every surrogate recomputes the fill, spectrum and sorted values, the phases are
``x_hat / |x_hat|`` in complex arithmetic, value matching by argsort and put_along_axis, single-threaded FFTs.
The module computes each map's spectrum once per null, splits the FFT batch over cores and works on real and
imaginary parts in place; none of that may change a bit of any surrogate, score or decision.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft as sfft
from scipy import ndimage

from helpers import surrogates
from helpers.scores import border_score, significance, surrogate_scores
from helpers.surrogates import _fill_unvisited, _mirror, iaaft_null, iaaft_surrogates

pytestmark = pytest.mark.fast


def reference_iaaft(maps, rng, n_iter=10, boundary="mirror"):
    """One surrogate of every map, computed the straightforward way."""
    k, n, m = maps.shape
    valid = np.isfinite(maps)
    filled = _fill_unvisited(maps, valid)
    ext = _mirror(filled) if boundary == "mirror" else filled
    amplitude = np.abs(sfft.rfft2(ext, axes=(-2, -1), workers=1))
    flat_valid = valid.reshape(k, -1)
    target = np.sort(np.where(flat_valid, maps.reshape(k, -1), np.inf), axis=1)

    def spectral(x_hat):
        with np.errstate(invalid="ignore", divide="ignore"):
            unit = np.where(np.abs(x_hat) > 0, x_hat / np.abs(x_hat), 1.0)
        return sfft.irfft2(amplitude * unit, s=ext.shape[1:], axes=(-2, -1), workers=1)

    def match_values(x):
        window = x[:, :n, :m].reshape(k, -1)
        order = np.argsort(np.where(flat_valid, window, np.inf), axis=1)
        matched = np.empty_like(window)
        np.put_along_axis(matched, order, target, axis=1)
        x = x.copy()
        x[:, :n, :m] = np.where(flat_valid, matched, window).reshape(k, n, m)
        return x

    x = match_values(spectral(sfft.rfft2(rng.standard_normal(ext.shape), axes=(-2, -1), workers=1)))
    for _ in range(n_iter):
        x = match_values(spectral(sfft.rfft2(x, axes=(-2, -1), workers=1)))
    out = x[:, :n, :m].copy()
    out[~valid] = np.nan
    return out


def _maps(seed=0, k=60, side=12):
    """Smooth and rough maps with unvisited bins, a constant map, a two-valued map and an all-NaN map."""
    rng = np.random.default_rng(seed)
    maps = ndimage.gaussian_filter(rng.normal(size=(k, side, side)), (0, 1.5, 1.5))
    maps[k // 2 :] = rng.gamma(0.5, size=(k - k // 2, side, side))  # heavy-tailed, rough
    maps[:, 0, :3] = np.nan
    maps[:, side // 2, side // 2] = np.nan
    maps[1] = np.where(np.isnan(maps[1]), np.nan, 2.0)  # constant: every spectrum bin but DC is 0
    maps[2] = np.where(np.isnan(maps[2]), np.nan, (np.arange(side) < side // 3)[None, :] * 1.0)  # ties in values
    maps[3] = np.nan
    return maps


@pytest.mark.parametrize("boundary", surrogates.BOUNDARIES)
@pytest.mark.parametrize("n_iter", [0, 3])
def test_iaaft_null_equals_the_straightforward_computation_bit_for_bit(boundary, n_iter):
    maps = _maps(seed=n_iter)
    rng = np.random.default_rng(7)
    expected = [reference_iaaft(maps, rng, n_iter, boundary) for _ in range(4)]
    got = [s.copy() for s in iaaft_null(maps, 4, seed=7, n_iter=n_iter, boundary=boundary)]
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)
    np.testing.assert_array_equal(iaaft_surrogates(maps, seed=7, n_iter=n_iter, boundary=boundary), expected[0])
    assert not np.array_equal(np.nan_to_num(got[0]), np.nan_to_num(got[1]))  # a fresh surrogate each time


def test_iaaft_null_at_blog_map_size_and_with_a_generator_seed():
    """20x20 maps (mirrored to 40x40, the blog's bins), smooth as ratemaps are; a Generator continues its stream."""
    rng = np.random.default_rng(3)
    maps = ndimage.gaussian_filter(rng.normal(size=(32, 20, 20)), (0, 1, 1))
    maps[:, 19, 0] = np.nan
    ref_rng, rng = np.random.default_rng(11), np.random.default_rng(11)
    for e, g in zip([reference_iaaft(maps, ref_rng) for _ in range(2)], iaaft_null(maps, 2, seed=rng)):
        np.testing.assert_array_equal(g, e)
    np.testing.assert_array_equal(rng.random(3), ref_rng.random(3))  # the same draws were consumed


def test_surrogate_scores_and_decisions_equal_the_straightforward_null():
    maps = _maps(seed=2, k=40, side=10)
    rng = np.random.default_rng(5)
    expected = np.array([border_score(reference_iaaft(maps, rng)) for _ in range(19)])
    got = surrogate_scores(maps, n_surrogates=19, seed=5)["border"]
    np.testing.assert_array_equal(got, expected)
    obs = border_score(maps)
    for floor in (None, 0.0):
        a, b = significance(obs, got, floor=floor), significance(obs, expected, floor=floor)
        np.testing.assert_array_equal(a.p_values, b.p_values)
        np.testing.assert_array_equal(a.significant_neuron, b.significant_neuron)
        assert a.threshold == b.threshold


def test_iaaft_null_validates_at_the_call():
    maps = _maps()
    for kwargs in ({"n_surrogates": 0}, {"n_surrogates": 1, "n_iter": -1}, {"n_surrogates": 1, "boundary": "wrap"}):
        with pytest.raises(ValueError):
            iaaft_null(maps, **kwargs)  # raised before the first surrogate is asked for
