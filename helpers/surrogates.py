"""Smoothness-preserving surrogates of ratemaps (a null for the border score).

A stimulus shuffle destroys a map's smoothness, so any smooth untuned map (a
blob that happens to touch a wall) beats its rough shuffles on the border
score. The surrogates here keep what an untuned smooth map has -- its spatial
power spectrum (hence its autocorrelation, i.e. smoothness and field size) and
its distribution of values (hence its minimum, peak and field threshold) --
and put its fields anywhere: the iterative amplitude-adjusted Fourier
transform (IAAFT) of Schreiber & Schmitz (1996), the refinement of Theiler et
al.'s (1992) phase randomisation and AAFT, in 2-D.

Two adaptations to ratemaps:

- unvisited (NaN) bins are filled by normalised Gaussian convolution of their
  visited neighbours to estimate the spectrum, are left unconstrained by the
  value-matching step, and are NaN again in every surrogate (the same
  occupancy as the observed map);
- ``boundary="mirror"`` (default) uses the spectrum of the map mirrored
  across its right and bottom edges (2n x 2m, continuous at every seam) and
  keeps the top-left n x m window, so an edge adds no spurious high
  frequencies and fields never wrap around; ``boundary="periodic"``
  randomises the phases of the map's own 2-D FFT, so surrogate fields wrap
  around the edges and a band straddling the seam shows at two opposite
  walls -- border-like by construction, which costs most of the power on
  wall bands (benchmarks/bench_significance_rule.py, README).

Because the autocorrelogram is kept, these surrogates are no null for the grid
score (a surrogate of a grid map is as grid-like as the map), and because the
values are kept, none for spatial information (with uniform occupancy every
surrogate has exactly the map's SI). Test those against stimulus shuffles.

References
----------
- Theiler, Eubank, Longtin, Galdrikian & Farmer (1992). Testing for
  nonlinearity in time series: the method of surrogate data. Physica D 58,
  77-94.
- Schreiber & Schmitz (1996). Improved surrogate data for nonlinearity tests.
  Phys. Rev. Lett. 77, 635-638.
- Schreiber & Schmitz (2000). Surrogate time series. Physica D 142, 346-382
  (multivariate and higher-dimensional surrogates, edge effects).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from helpers.checks import check_int

__all__ = ["BOUNDARIES", "fft_workers", "iaaft_null", "iaaft_surrogates", "serial_fft"]


def _fill_unvisited(arr: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """NaN bins <- Gaussian-weighted mean of visited neighbours (widening until all are filled)."""
    filled = np.where(valid, arr, 0.0)
    todo = ~valid
    sigma = 1.0
    while todo.any() and sigma < 4 * max(arr.shape[1:]):
        w = ndimage.gaussian_filter(valid.astype(np.float64), (0, sigma, sigma), mode="nearest")
        s = ndimage.gaussian_filter(np.where(valid, arr, 0.0), (0, sigma, sigma), mode="nearest")
        ok = todo & (w > 1e-12)
        filled[ok] = s[ok] / w[ok]
        todo &= ~ok
        sigma *= 2
    return filled  # all-NaN maps stay 0


def _mirror(x: np.ndarray) -> np.ndarray:
    """(k, n, m) -> (k, 2n, 2m), mirrored across the bottom and right edges."""
    x = np.concatenate([x, x[:, ::-1]], axis=1)
    return np.concatenate([x, x[:, :, ::-1]], axis=2)


#: How a map's edges enter its spectrum (see the module docstring).
BOUNDARIES: tuple[str, ...] = ("mirror", "periodic")


def iaaft_surrogates(
    maps: np.ndarray, *, seed: int | np.random.Generator = 0, n_iter: int = 10, boundary: str = "mirror"
) -> np.ndarray:
    """One IAAFT surrogate of every map in a stack: same spectrum and values, fields anywhere.

    Parameters
    ----------
    maps : ndarray, shape (k, n, m)
        Ratemaps, NaN = unvisited.
    seed : int or numpy Generator
        Random phases; same seed, same surrogates.
    n_iter : int >= 0, default 10
        Alternations of spectrum matching and value matching after the initial
        phase randomisation (0: AAFT-like, one value-matching step).
    boundary : {"mirror", "periodic"}
        The FFT of the map mirrored across its edges, or of the map itself.

    Returns
    -------
    ndarray of float64, shape (k, n, m)
        Each map's visited bins hold a permutation of its visited values
        (exactly), NaN where the map is NaN; its amplitude spectrum (of the
        mirrored surrogate and map with ``"mirror"``) approximates the map's.
    """
    return next(iaaft_null(maps, 1, seed=seed, n_iter=n_iter, boundary=boundary))


def iaaft_null(
    maps: np.ndarray,
    n_surrogates: int,
    *,
    seed: int | np.random.Generator = 0,
    n_iter: int = 10,
    boundary: str = "mirror",
) -> Iterator[np.ndarray]:
    """``n_surrogates`` IAAFT surrogates of every map, one (k, n, m) stack at a time.

    The same stacks, bit for bit, as ``n_surrogates`` calls of
    :func:`iaaft_surrogates` drawing from one generator (a ``seed`` int starts
    ``numpy.random.default_rng(seed)``), but each map's spectrum, fill and
    sorted values are computed once, and the FFTs run on :func:`fft_workers`
    threads (scipy splits the batch of independent transforms: every value is
    unchanged). Parameters as :func:`iaaft_surrogates`; ``n_surrogates`` >= 1.
    """
    arr = np.asarray(maps, dtype=np.float64)
    if arr.ndim != 3:
        raise ValueError(f"maps must have shape (k, n, m), got {arr.shape}")
    check_int("n_surrogates", n_surrogates, 1)
    check_int("n_iter", n_iter, 0)
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(check_int("seed", seed, 0))
    k, n, m = arr.shape
    valid = np.isfinite(arr)
    filled = _fill_unvisited(arr, valid)
    ext = _mirror(filled) if boundary == "mirror" else filled
    amplitude = np.abs(_rfft2(ext))
    # target values per map, sorted; unvisited bins rank last (+inf) and are never assigned
    flat_valid = valid.reshape(k, -1)
    target = np.sort(np.where(flat_valid, arr.reshape(k, -1), np.inf), axis=1)
    return _iaaft_stacks(rng, int(n_surrogates), int(n_iter), valid, amplitude, target, ext.shape)


def _iaaft_stacks(rng, n_surrogates, n_iter, valid, amplitude, target, shape) -> Iterator[np.ndarray]:
    """The loop of :func:`iaaft_null` over surrogates, given each map's mask, amplitudes and sorted values."""
    k, n, m = valid.shape
    flat_valid = valid.reshape(k, -1)
    rows = np.arange(k)[:, None]
    for _ in range(n_surrogates):
        # random phases with Hermitian symmetry: the phases of white noise's transform
        x = _match_values(_spectral(_rfft2(rng.standard_normal(shape)), amplitude, shape), n, m, flat_valid,
                          target, rows)
        for _ in range(n_iter):
            x = _match_values(_spectral(_rfft2(x), amplitude, shape), n, m, flat_valid, target, rows)
        out = x[:, :n, :m]
        out[~valid] = np.nan
        yield out


_FFT = threading.local()


def fft_workers() -> int:
    """Threads for the FFTs: 1 inside :func:`serial_fft`, else ``OMP_NUM_THREADS`` when set (a sweep point's
    share), else the cores this process may use."""
    from helpers.sweep import cores

    if getattr(_FFT, "serial", False):
        return 1
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else cores()


@contextmanager
def serial_fft() -> Iterator[None]:
    """Run this thread's FFTs (here and in :mod:`helpers.scores`) on one thread, for callers that already run
    one such thread per core. Every value is unchanged: the workers only split a batch of independent transforms."""
    before = getattr(_FFT, "serial", False)
    _FFT.serial = True
    try:
        yield
    finally:
        _FFT.serial = before


def _rfft2(x: np.ndarray) -> np.ndarray:
    return sfft.rfft2(x, axes=(-2, -1), workers=fft_workers())


def _spectral(x_hat: np.ndarray, amplitude: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The field with amplitudes ``amplitude`` and the phases of ``x_hat`` (amplitude itself where ``x_hat`` is 0).

    ``amplitude * (x_hat / |x_hat|)`` in numpy's complex arithmetic, whose division by a real ``|x_hat| > 0``
    is ``x_hat * (1 / |x_hat|)`` part by part: computed so, on the real and imaginary parts, without complex
    temporaries (tests/test_surrogates.py checks it bit for bit against the complex expression).
    """
    size = np.abs(x_hat)
    zero = size == 0
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 * inf where x_hat is 0: set below
        scale = np.divide(1.0, size, out=size)
        for part in (x_hat.real, x_hat.imag):
            part *= scale
            part *= amplitude
    if zero.any():
        x_hat[zero] = amplitude[zero]
    return sfft.irfft2(x_hat, s=shape[1:], axes=(-2, -1), workers=fft_workers(), overwrite_x=True)


def _match_values(x: np.ndarray, n: int, m: int, flat_valid: np.ndarray, target: np.ndarray,
                  rows: np.ndarray) -> np.ndarray:
    """Give the r-th smallest visited bin of each map's n x m window the map's r-th smallest value (in place)."""
    k = x.shape[0]
    window = x[:, :n, :m].reshape(k, -1)
    order = np.argsort(np.where(flat_valid, window, np.inf), axis=1)
    matched = np.empty_like(window)
    matched[rows, order] = target
    x[:, :n, :m] = np.where(flat_valid, matched, window).reshape(k, n, m)
    return x
