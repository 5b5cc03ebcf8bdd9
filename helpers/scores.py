"""Spatial scores of ratemaps, vectorised over neurons: spatial information, grid score, border score.

Input: ratemaps ``(k, n, m)`` or one ``(n, m)`` (:func:`helpers.ratemaps.ratemaps`: row = y bin, NaN = unvisited);
output ``(k,)`` or a float. Activations are signed, the definitions assume rates >= 0: SI and border score use
``transform="subtract_min"`` (default; invariant under ``a*map + b``, ``a > 0``) or ``"none"`` (under ``a*map``);
the grid score needs none (Pearson; ``a != 0``). Shuffles apply the same transform.

References: Skaggs et al. (1993) NIPS 5:1030 (SI); Sargolini et al. (2006) Science 312:758 (gridness, computed as
BNT/opexebo does by default: central field, radius range, 3-radius sliding mean); Langston et al. (2010) Science
328:1576 (``variant="langston"``); Solstad et al. (2008) Science 322:1865 (border); Phipson & Smyth (2010) SAGMB
9:39 (p-values); Vincent (1993) IEEE TIP 2:176 (central-field reconstruction). opexebo 0.7.2 and DeepMind's
grid-cells ``scores.py`` were read for conventions, no code copied (opexebo is the tests' oracle); differences
are in each function's Notes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from typing import Literal, NamedTuple

import numpy as np
import scipy.fft as sfft
import scipy.sparse as sp
from scipy import ndimage

from helpers.checks import check_int
from helpers.ratemaps import _check_activations, _check_bins, _check_positions, _check_sigma
from helpers.ratemaps import flat_bin_indices, ratemaps, ratemaps_from_bins, resolve_extent
from helpers.surrogates import fft_workers, iaaft_null, serial_fft

__all__ = [
    "SCORE_NAMES",
    "spatial_information",
    "autocorrelogram",
    "grid_score",
    "border_fields",
    "border_score",
    "compute_scores",
    "shuffle_scores",
    "surrogate_scores",
    "BORDER_NULLS",
    "significance",
    "monte_carlo_p",
    "min_shuffles",
    "NULL_MODELS",
    "SIGNIFICANCE_RULES",
    "TUNING_FLOORS",
    "Significance",
    "top_neurons",
]

#: Short names of the scores, in the order used by figures and tables.
SCORE_NAMES: tuple[str, ...] = ("si", "grid", "border")

Transform = Literal["subtract_min", "none"]
_TRANSFORMS = ("subtract_min", "none")

#: Rotation angles (degrees) of the gridness correlations.
GRID_ANGLES: tuple[int, ...] = (30, 60, 90, 120, 150)


# --------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------
def _as_stack(maps: np.ndarray, name: str = "maps") -> tuple[np.ndarray, bool]:
    """Return ``(float64 array (k, n, m), was_single_map)``."""
    arr = np.asarray(maps, dtype=np.float64)
    if arr.ndim == 2:
        return arr[None], True
    if arr.ndim != 3:
        raise ValueError(f"{name} must have shape (k, n, m) or (n, m), got shape {arr.shape}")
    if arr.shape[1] < 2 or arr.shape[2] < 2:
        raise ValueError(f"{name} must be at least 2x2 bins, got {arr.shape[1:]}")
    if np.isinf(arr).any():
        raise ValueError(f"{name} must not contain inf (use NaN for unvisited bins)")
    return arr, False


def _out(values: np.ndarray, single: bool) -> np.ndarray | float:
    return float(values[0]) if single else values


#: Neurons per block of the grid score's memory-bound steps (autocorrelogram,
#: annulus sums): a block's arrays stay in cache; every map is computed alone,
#: so the block size changes no number.
_BLOCK = 64


def _by_blocks(fn, k: int, *arrays: np.ndarray) -> dict:
    """``fn`` on blocks of ``_BLOCK`` neurons (axis 0 of every array); its dict of per-neuron arrays, joined."""
    parts = [fn(*(a[i : i + _BLOCK] for a in arrays)) for i in range(0, max(k, 1), _BLOCK)]  # k = 0: one empty block
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _nonnegative(maps: np.ndarray, transform: str, name: str = "transform") -> np.ndarray:
    """Apply the documented non-negativity transform; NaN bins stay NaN.

    ``subtract_min`` subtracts each map's minimum over its visited bins (so
    the least active bin is 0); ``none`` requires the maps to be >= 0.
    """
    if transform not in _TRANSFORMS:
        raise ValueError(f"{name} must be one of {_TRANSFORMS}, got {transform!r}")
    if transform == "none":
        if np.nanmin(maps, initial=0.0) < 0:
            raise ValueError(
                f"{name}='none' needs non-negative maps; these have negative bins "
                "(use transform='subtract_min')"
            )
        return maps
    finite = np.isfinite(maps)
    mins = np.min(np.where(finite, maps, np.inf), axis=(1, 2), keepdims=True)
    mins[~np.isfinite(mins)] = 0.0  # all-NaN maps
    return maps - mins


# --------------------------------------------------------------------------
# spatial information
# --------------------------------------------------------------------------
def spatial_information(
    maps: np.ndarray,
    occupancy: np.ndarray | None = None,
    *,
    transform: Transform = "subtract_min",
) -> np.ndarray | float:
    r"""Skaggs spatial information content, in bits per unit activation.

    .. math:: I = \sum_i p_i \frac{r_i}{\bar r} \log_2 \frac{r_i}{\bar r},
              \qquad \bar r = \sum_i p_i r_i

    (Skaggs et al. 1993), summed over visited (non-NaN) bins ``i``, with
    ``0 log 0 = 0``. For spiking neurons the unit is bits/spike; here it is
    "bits per unit activation" (the value is dimensionless and invariant to
    the scale of ``r``).

    Parameters:
    maps : ndarray, shape (k, n, m) or (n, m) — Ratemaps; NaN marks unvisited bins.
    occupancy : ndarray, shape (n, m), optional — Stimuli (or time) per bin; ``p_i = occupancy_i / sum(occupancy)``
        over the bins visited in that map. ``None`` = uniform over visited bins.
    transform : {"subtract_min", "none"} — How signed activations are made non-negative rates ``r``.
        ``"subtract_min"`` (default): subtract each map's minimum over visited bins, so the score is invariant under
        ``a*map + b`` (``a > 0``). ``"none"``: use the maps as they are (must be >= 0; invariant under ``a*map``). Use
        the same transform for observed and shuffled maps.

    Returns:
    ndarray, shape (k,), or float — Bits per unit activation (>= 0). A constant map gives 0; an all-NaN map gives NaN.

    Notes:
    This is the textbook formula. opexebo's ``rate_map_stats`` clips the log
    argument at 1 (``log2(max(r/r̄, 1))``), dropping the negative terms of
    below-mean bins, so its values are larger (e.g. 2.64 vs 2.55 bits on a
    Gaussian field). ``subtract_min`` makes the score depend on the map's
    range only: tiny fluctuations of an almost constant map are stretched to
    full scale, so rank neurons by SI together with a shuffle null
    (:func:`shuffle_scores`).
    """
    arr, single = _as_stack(maps)
    valid = np.isfinite(arr)
    if occupancy is None:
        weights = valid.astype(np.float64)
    else:
        occ = np.asarray(occupancy, dtype=np.float64)
        if occ.shape != arr.shape[1:]:
            raise ValueError(f"occupancy must have shape {arr.shape[1:]} (one value per bin), got {occ.shape}")
        if not np.all(np.isfinite(occ)) or np.any(occ < 0):
            raise ValueError("occupancy must be finite and >= 0")
        weights = np.where(valid, occ[None], 0.0)
    total = weights.sum(axis=(1, 2))
    rates = np.where(valid, _nonnegative(arr, transform), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = weights / total[:, None, None]
        mean = np.einsum("kij,kij->k", p, rates)
        ratio = rates / mean[:, None, None]
        terms = np.where(ratio > 0, p * ratio * np.log2(np.where(ratio > 0, ratio, 1.0)), 0.0)
    # I is a KL divergence (>= 0); clip rounding noise such as -1e-16
    info = np.maximum(terms.sum(axis=(1, 2)), 0.0)
    info[mean <= 0] = 0.0  # constant (after transform) map carries no information
    info[total <= 0] = np.nan  # nothing visited
    return _out(info, single)


# --------------------------------------------------------------------------
# spatial autocorrelogram
# --------------------------------------------------------------------------
def autocorrelogram(maps: np.ndarray, *, min_overlap: int = 20) -> np.ndarray:
    r"""Overlap-normalised Pearson spatial autocorrelogram, NaN-aware.

    For each lag :math:`\tau = (\tau_y, \tau_x)` the value is the Pearson
    correlation between the map and the map shifted by :math:`\tau`, computed
    over the bins where both are visited (Sargolini et al. 2006, the
    "overlap-normalised" autocorrelogram of BNT/opexebo and DeepMind). The
    pair sums are cross-correlations computed with FFTs batched over neurons
    (sums over the rectangular windows of maps without NaN, less the pairs
    of the few unvisited bins that every map shares), in blocks of neurons.

    Parameters:
    maps : ndarray, shape (k, n, m) or (n, m) — Ratemaps; NaN = unvisited. Any real values (no transform needed).
    min_overlap : int, default 20 — Lags where fewer than this many bin pairs overlap are NaN.

    Returns:
    ndarray, shape (k, 2n-1, 2m-1) or (2n-1, 2m-1) — Zero lag at index ``(n-1, m-1)``; row offset = y lag, column
        offset = x lag. Values in [-1, 1]; NaN where the overlap is too small or one side is constant (its variance
        below 1e-9 of the map's); the whole array is NaN for a constant or empty map.

    Notes:
    opexebo (``autocorrelation``) replaces NaN bins by 0 before correlating
    and crops the result to about 1.8 times the map size; here NaN bins are
    left out of every sum and the full ``(2n-1)²`` array is returned.
    """
    arr, single = _as_stack(maps)
    check_int("min_overlap", min_overlap, 2)
    acorr = _autocorrelogram(arr, int(min_overlap))
    return acorr[0] if single else acorr


@lru_cache(maxsize=16)
def _lag_phase(shape: tuple[int, int], n: int, m: int) -> np.ndarray:
    """rfft2-domain factor that shifts an array by (n-1, m-1) bins (circularly, in ``shape``)."""
    fy = np.exp(-2j * np.pi * np.arange(shape[0]) * (n - 1) / shape[0])
    fx = np.exp(-2j * np.pi * np.arange(shape[1] // 2 + 1) * (m - 1) / shape[1])
    return fy[:, None] * fx[None, :]


@lru_cache(maxsize=16)
def _window_matrix(n: int) -> np.ndarray:
    """(2n-1, n) indicator: row ``n-1+tau`` marks the bins ``u`` (0..n-1) with ``u + tau`` in 0..n-1."""
    partner = np.arange(n)[None, :] + np.arange(1 - n, n)[:, None]
    return ((partner >= 0) & (partner < n)).astype(np.float64)


def _window_sums(x: np.ndarray) -> np.ndarray:
    """(k, n, m) -> (k, 2n-1, 2m-1): for each lag tau, the sum of ``x[u]`` over
    the bins ``u`` whose partner ``u + tau`` is in the map (separable: one
    indicator product per axis)."""
    _, n, m = x.shape
    return _window_matrix(n) @ x @ _window_matrix(m).T


def _autocorrelogram(arr: np.ndarray, min_overlap: int) -> np.ndarray:
    return _by_blocks(lambda block: {"r": _autocorrelogram_block(block, min_overlap)}, arr.shape[0], arr)["r"]


def _autocorrelogram_block(arr: np.ndarray, min_overlap: int) -> np.ndarray:
    k, n, m = arr.shape
    valid = np.isfinite(arr)
    count = valid.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, np.nansum(arr, axis=(1, 2)) / np.maximum(count, 1), 0.0)
        centred = np.where(valid, arr - mean[:, None, None], 0.0)
        std = np.sqrt((centred**2).sum(axis=(1, 2)) / np.maximum(count, 1))
    ok = std > 0
    # Standardise (Pearson is invariant to it) to keep the sums well scaled.
    x = np.where(ok[:, None, None], centred / np.where(ok, std, 1.0)[:, None, None], 0.0)
    shape = (sfft.next_fast_len(2 * n - 1, real=True), sfft.next_fast_len(2 * m - 1, real=True))
    phase = _lag_phase(shape, n, m)

    workers = fft_workers()

    def fft(a: np.ndarray) -> np.ndarray:
        return sfft.rfft2(a, s=shape, axes=(-2, -1), workers=workers)

    def xcorr(fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
        """sum_u a[u] b[u + tau] for tau in [-(n-1), n-1] x [-(m-1), m-1] (b shifted by n-1, m-1)."""
        full = sfft.irfft2(np.conj(fa) * (fb * phase), s=shape, axes=(-2, -1), workers=workers)
        return full[..., : 2 * n - 1, : 2 * m - 1]

    fx = fft(x)
    s_xy = xcorr(fx, fx)
    if valid.all():  # complete maps: rectangular windows, exact sums without FFTs
        n_pairs = np.outer(n - np.abs(np.arange(1 - n, n)), m - np.abs(np.arange(1 - m, m))).astype(np.float64)
        s_x, s_xx = _window_sums(x), _window_sums(x * x)  # sums of the first element of each pair
    else:
        mask = valid.astype(np.float64)
        shared = bool(np.all(valid == valid[:1]))
        fm = fft(mask[:1] if shared else mask)
        n_pairs = np.rint(xcorr(fm, fm))
        holes = np.argwhere(~valid[0])
        if shared and len(holes) <= n * m // 8:  # a few unvisited bins, the same in every map
            s_x, s_xx = _window_sums(x), _window_sums(x * x)
            # less the pairs whose partner u + tau is the hole v: x[u] lands on lag v - u (x is 0 at holes)
            flipped = x[:, ::-1, ::-1]
            flipped_sq = flipped * flipped
            for vy, vx in holes:
                s_x[:, vy : vy + n, vx : vx + m] -= flipped
                s_xx[:, vy : vy + n, vx : vx + m] -= flipped_sq
        else:
            s_x, s_xx = xcorr(fx, fm), xcorr(fft(x * x), fm)
    # the second element of each pair: the tau -> -tau mirror (n_pairs is symmetric)
    s_y = s_x[:, ::-1, ::-1]
    var_x = n_pairs * s_xx
    var_x -= s_x**2
    var_y = var_x[:, ::-1, ::-1]
    r = n_pairs * s_xy
    r -= s_x * s_y
    with np.errstate(invalid="ignore", divide="ignore"):
        r /= np.sqrt(var_x * var_y)
    flat = var_x <= 1e-9 * n_pairs**2  # a constant side (to rounding)
    r[flat | flat[:, ::-1, ::-1] | (n_pairs < min_overlap) | ~ok[:, None, None]] = np.nan
    return np.clip(r, -1.0, 1.0, out=r)


# --------------------------------------------------------------------------
# grid score
# --------------------------------------------------------------------------
GridVariant = Literal["bnt", "langston"]
_GRID_VARIANTS = ("bnt", "langston")

#: BNT's adaptive central-field search (``placefieldAdaptive``): attempts
#: of (first, second, growth thresholds), as fractions of the central peak.
#: The field is measured at 0.95 and 0.93 (retried at 0.96/0.95 ... 1.0/0.99
#: if either has a hole), then grown down from 0.95 (or the retry's second
#: threshold) to 0.2 in ~0.02 steps (a linspace rounded to 2 decimals, as
#: BNT/opexebo).
_BNT_ATTEMPTS = [
    (first, second, np.round(np.linspace(start, 0.2, int((start - 0.2) / 0.02) + 1), 2))
    for first, second, start in [(0.95, 0.95 - 0.02, 0.95)]
    + [(j, j - 0.01, j - 0.01) for j in np.linspace(0.95 + 0.01, 1.0, 4)]
]
_BNT_MIN_FIELD_BINS = 5
_BNT_WINDOW = 3  # radii averaged by the sliding mean


@lru_cache(maxsize=16)
def _grid_geometry(n: int, m: int, radius: int) -> dict:
    """Disk pixels sorted by distance class, and the rotation operator.

    Pixels of the ``(2n-1, 2m-1)`` autocorrelogram within ``radius`` bins of
    the zero lag get a distance class ``2*floor(d) + (d is not an
    integer)``, so that for an integer ``t`` the disk ``d <= t`` is classes
    ``<= 2t`` and ``d < t`` is classes ``<= 2t - 1``: cumulative sums over
    classes give every annulus of both variants. The autocorrelogram and its
    rotations are even (``a(-p) = a(p)``), so only the half disk ``dy > 0 or
    (dy = 0, dx >= 0)`` is kept: ``classes`` is the sparse (classes, pixels)
    matrix with weight 2 per pixel (1 for the zero lag), whose products are
    the whole disk's sums. For each angle a sparse bilinear-interpolation
    matrix maps the flattened autocorrelogram to its rotated values at the
    kept pixels.
    """
    h, w = 2 * n - 1, 2 * m - 1
    cy, cx = n - 1, m - 1
    yy, xx = np.mgrid[0:h, 0:w]
    dy, dx = (yy - cy).ravel(), (xx - cx).ravel()
    d2 = dy * dy + dx * dx
    root = np.floor(np.sqrt(d2)).astype(int)  # exact integer square root:
    root -= root * root > d2
    root += (root + 1) ** 2 <= d2
    klass = 2 * root + (root * root != d2)
    half = (dy > 0) | ((dy == 0) & (dx >= 0))
    disk = np.flatnonzero((klass <= 2 * radius) & half)
    n_classes = 2 * radius + 1
    weight = np.where(d2[disk] == 0, 1.0, 2.0)  # each kept pixel stands for itself and its mirror
    classes = sp.csr_matrix((weight, (klass[disk], np.arange(disk.size))), shape=(n_classes, disk.size))

    n_ang = len(GRID_ANGLES)
    fy0, fx0 = dy[disk].astype(float), dx[disk].astype(float)
    r_idx, c_idx, vals = [], [], []
    for a_i, angle in enumerate(GRID_ANGLES):
        th = np.deg2rad(angle)
        # value of the rotated autocorrelogram at pixel p = value at R(th) p
        sy = np.round(np.cos(th) * fy0 + np.sin(th) * fx0 + cy, 9)
        sx = np.round(-np.sin(th) * fy0 + np.cos(th) * fx0 + cx, 9)
        y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
        fy, fx = sy - y0, sx - x0
        for oy, ox, wt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                           (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
            yi, xi = np.clip(y0 + oy, 0, h - 1), np.clip(x0 + ox, 0, w - 1)
            keep = wt > 1e-12
            # row p * n_ang + angle: the product reshapes to (P, n_ang * k) for free
            r_idx.append(np.arange(disk.size)[keep] * n_ang + a_i)
            c_idx.append((yi * w + xi)[keep])
            vals.append(wt[keep])
    rotation = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(r_idx), np.concatenate(c_idx))),
        shape=(disk.size * n_ang, h * w),
    )
    return {
        "disk": disk,
        "classes": classes,
        "rotation": rotation,
    }


def _class_cumsum(q: np.ndarray, geo: dict) -> np.ndarray:
    """(P,) or (P, x) values at the disk pixels -> sums over classes <= b: (n_classes, [x])."""
    return np.cumsum(geo["classes"] @ q, axis=0)


def _annulus_sums(acorr: np.ndarray, geo: dict) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """Cumulative sums for the rotational Pearson correlations on any annulus.

    ``acorr`` (k, h*w); undefined (NaN) values count as 0, as in opexebo.
    Returns the cumulative class sums ``n, a, b, aa, bb, ab`` of the
    unrotated values ``a`` and rotated values ``b`` (n_classes, 1 or angles,
    1 or k), and the sums of the defined values and their number
    (n_classes, k) for the radial profile.
    """
    k = acorr.shape[0]
    n_ang = len(GRID_ANGLES)
    a_flat = np.ascontiguousarray(acorr.T)  # (h*w, k)
    a_valid = np.isfinite(a_flat)
    a_fill = np.where(a_valid, a_flat, 0.0)
    a = a_fill[geo["disk"]]  # (P, k)
    P = a.shape[0]
    b = (geo["rotation"] @ a_fill).reshape(P, n_ang, k)  # rotated values

    # one sparse product for every sum: columns a, aa, valid (k each), then b, bb, ab (angles * k each)
    columns = np.empty((P, 3 + 3 * n_ang, k))
    columns[:, 0], columns[:, 1], columns[:, 2] = a, a * a, a_valid[geo["disk"]]
    columns[:, 3 : 3 + n_ang] = b
    np.multiply(b, b, out=columns[:, 3 + n_ang : 3 + 2 * n_ang])
    np.multiply(a[:, None, :], b, out=columns[:, 3 + 2 * n_ang :])
    c = _class_cumsum(columns.reshape(P, -1), geo).reshape(-1, 3 + 3 * n_ang, k)
    sums = {"n": _class_cumsum(np.ones(P), geo)[:, None, None], "a": c[:, 0:1], "aa": c[:, 1:2]}
    sums.update(b=c[:, 3 : 3 + n_ang], bb=c[:, 3 + n_ang : 3 + 2 * n_ang], ab=c[:, 3 + 2 * n_ang :])
    return sums, (c[:, 0], c[:, 2])


def _gridness(sums: dict, inner: np.ndarray, outer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gridness on the annuli ``inner < class <= outer`` for each outer class.

    ``inner`` (k,) and ``outer`` (R,) are class indices. Returns gridness
    ``min(r60, r120) - max(r30, r90, r150)`` (R, k) and the correlations
    (R, angles, k). A correlation with a constant side (e.g. the flat
    autocorrelogram of a linear ramp) counts as 0; NaN for annuli with < 3
    bins.
    """
    kk = np.arange(inner.size)

    def annulus(c: np.ndarray) -> np.ndarray:
        # the pixel counts ``n`` are shared by all maps (last axis of size 1)
        inside = c[inner, :, kk] if c.shape[-1] > 1 else c[inner, :, 0]  # (k, angles)
        return c[outer] - inside.T[None]

    s_n, s_a, s_b = annulus(sums["n"]), annulus(sums["a"]), annulus(sums["b"])
    s_aa, s_bb, s_ab = annulus(sums["aa"]), annulus(sums["bb"]), annulus(sums["ab"])
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = s_n * s_ab - s_a * s_b
        var_a = s_n * s_aa - s_a**2
        var_b = s_n * s_bb - s_b**2
        corr = cov / np.sqrt(var_a * var_b)
    corr = np.where((var_a <= 1e-12 * s_n**2) | (var_b <= 1e-12 * s_n**2), 0.0, corr)
    corr[np.broadcast_to(s_n < 3, corr.shape)] = np.nan
    r30, r60, r90, r120, r150 = np.moveaxis(corr, 1, 0)  # each (R, k)
    gridness = np.minimum(r60, r120) - np.maximum(np.maximum(r30, r90), r150)
    return gridness, corr


def _bnt_lag_limits(n: int, m: int) -> tuple[int, int]:
    """Half-sizes (bins) of BNT's autocorrelogram crop: ``round(1.8 * size)``, made odd."""
    sizes = [int(np.round(s + s * 0.8)) for s in (n, m)]
    return tuple((s - 1 if s % 2 == 0 else s) // 2 for s in sizes)


def _erode(x: np.ndarray) -> np.ndarray:
    """Min over each bin's 3x3 cross of (h, w, k) arrays (edges replicated, as skimage's default)."""
    out = x.copy()
    for lo, hi in ((np.s_[1:], np.s_[:-1]), (np.s_[:-1], np.s_[1:])):
        np.minimum(out[lo], x[hi], out=out[lo])
        np.minimum(out[:, lo], x[:, hi], out=out[:, lo])
    return out


def _dilate(r: np.ndarray, diagonal: bool) -> np.ndarray:
    """Max over each bin's 4-neighbourhood (3x3 square if ``diagonal``) of (h, w, k) arrays."""
    out = r.copy()
    np.maximum(out[1:], r[:-1], out=out[1:])
    np.maximum(out[:-1], r[1:], out=out[:-1])
    src = out.copy() if diagonal else r  # separable square, or the plain cross
    np.maximum(out[:, 1:], src[:, :-1], out=out[:, 1:])
    np.maximum(out[:, :-1], src[:, 1:], out=out[:, :-1])
    return out


def _reconstruct(seed: np.ndarray, mask: np.ndarray, diagonal: bool) -> np.ndarray:
    """Greyscale reconstruction by dilation of ``seed`` under ``mask``.

    Arrays (h, w, k), maps last. ``r(p)`` = max over paths from any ``q`` to
    ``p`` of ``min(seed(q), mask along the path)``, with 4-connected paths
    (8-connected if ``diagonal``). One round of line sweeps (down, up,
    right, left; each step vectorised over a row or column of every map)
    carries values along long paths, then geodesic dilations are repeated on
    the maps that still change until none does (Vincent 1993).
    """
    out = np.minimum(seed, mask)
    for rr, mm in ((out, mask), (out.swapaxes(0, 1), mask.swapaxes(0, 1))):
        length = rr.shape[0]
        for order, step in ((range(1, length), 1), (range(length - 2, -1, -1), -1)):
            for i in order:
                prev = rr[i - step]
                if diagonal:
                    prev = prev.copy()
                    np.maximum(prev[1:], rr[i - step][:-1], out=prev[1:])
                    np.maximum(prev[:-1], rr[i - step][1:], out=prev[:-1])
                np.minimum(np.maximum(rr[i], prev), mm[i], out=rr[i])
    todo = np.arange(out.shape[-1])
    r, msk = out, mask
    while todo.size:
        grown = np.minimum(_dilate(r, diagonal), msk)
        changed = (grown != r).reshape(-1, todo.size).any(axis=0)
        r = grown
        if changed.sum() < 0.75 * todo.size:  # drop the finished maps
            out[..., todo] = r
            todo, r, msk = todo[changed], r[..., changed], msk[..., changed]
    return out


def _opened_centre(a0: np.ndarray) -> np.ndarray:
    """Value at the centre of the opening by reconstruction of (h, w, k) maps: (k,).

    Reconstructed in a 7x7 window first; that value ``v`` is exact when the
    8-connected region of bins >= ``v`` around the centre stays inside the
    window (no better path can come from outside); the other maps are
    reconstructed whole.
    """
    h, w, _ = a0.shape
    cy, cx = h // 2, w // 2
    rw = min(3, cy - 1, cx - 1)
    around = a0[cy - rw - 1 : cy + rw + 2, cx - rw - 1 : cx + rw + 2]  # the window and its neighbours
    win = a0[cy - rw : cy + rw + 1, cx - rw : cx + rw + 1]
    value = _reconstruct(_erode(around)[1:-1, 1:-1], win, diagonal=True)[rw, rw]
    seed = np.zeros(win.shape, dtype=np.int8)
    seed[rw, rw] = 1
    region = _reconstruct(seed, (win >= value).astype(np.int8), diagonal=True)
    spills = region[[0, -1]].any(axis=(0, 1)) | region[:, [0, -1]].any(axis=(0, 1))
    if spills.any():
        whole = a0[..., spills]
        value[spills] = _reconstruct(_erode(whole), whole, diagonal=True)[cy, cx]
    return value


def _bnt_central_radius(crop: np.ndarray) -> np.ndarray:
    """Radius (bins) of the central field of autocorrelogram crops (k, 2Ly+1, 2Lx+1) by BNT's adaptive search.

    As BNT's ``placefieldAdaptive`` seeded at the zero lag: open by reconstruction,
    then the 4-connected field >= t x centre at t = 0.95, 0.93, grown down to 0.2
    (``_BNT_ATTEMPTS``) until it gets a hole, grows 3x faster than at first or
    stalls for 10 steps; radius ``floor(sqrt(area / pi))`` of a field of >= 5 bins,
    else 0. All thresholds at once, on per-bin threshold levels and max-min path
    levels from the centre (a hole: some bin with ``m <= j < g``).
    """
    k, h, w = crop.shape
    cy, cx = h // 2, w // 2
    a0 = np.ascontiguousarray(crop.transpose(1, 2, 0))  # maps last
    undefined = np.isnan(a0)
    a0[undefined] = 0.0
    peak = _opened_centre(a0)
    ok = peak > 0
    thresholds, below, inside = _bnt_levels()
    n_thr = thresholds.size
    # level = number of thresholds <= a0 / peak (0 for failed maps), exactly:
    # the thresholds below the value's 1/1024 bucket, plus those inside it
    rel = a0 / np.where(ok, peak, np.inf)
    bucket = np.clip(rel * 1024, 0, 1024).astype(np.intp)  # exact: scaling by a power of 2
    levels = below[bucket]
    for inner in inside:
        levels += rel >= inner[bucket]
    opened = _reconstruct(_erode(levels), levels, diagonal=True)
    seed = np.zeros_like(opened)
    seed[cy, cx] = opened[cy, cx]
    m = _reconstruct(seed, opened, diagonal=False)
    border = np.full_like(m, -n_thr - 1)
    for edge in (np.s_[0], np.s_[-1]):
        border[edge] = -m[edge]
        border[:, edge] = -m[:, edge]
    g = -_reconstruct(border, -m, diagonal=False)

    g[undefined] = 0  # BNT ignores holes made of unvisited bins

    def above(x: np.ndarray) -> np.ndarray:
        """(k, thresholds): number of bins whose level exceeds j, for each j."""
        where = np.flatnonzero(x)  # level-0 bins exceed nothing (most bins)
        code = (where % k) * (n_thr + 1) + x.flat[where]  # (map, level)
        hist = np.bincount(code, minlength=k * (n_thr + 1)).reshape(k, n_thr + 1)
        return np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]

    area = above(m)
    has_hole = above(g) > area

    def col(t: float) -> int:
        return int(np.searchsorted(thresholds, t))

    field = np.zeros(k, dtype=np.int64)
    todo = ok.copy()  # maps still looking for a first field without holes
    for first, second, grow in _BNT_ATTEMPTS:
        start = todo & ~has_hole[:, col(first)] & ~has_hole[:, col(second)]
        todo &= ~start
        if not start.any():
            continue
        change0 = area[:, col(second)] / np.maximum(area[:, col(first)], 1)
        last = area[:, col(second)].astype(np.float64)
        same = np.zeros(k, dtype=np.int64)
        active = start
        # areas only grow as the threshold falls, so BNT's "shrank 3 times" stop never fires
        for t in grow:
            a_t = area[:, col(t)]
            with np.errstate(invalid="ignore", divide="ignore"):
                change = a_t / last
            same = np.where(change == 1, same + 1, 0)
            active = active & ~has_hole[:, col(t)] & (np.floor(change / change0) <= 2) & (same < 10)
            field = np.where(active, a_t, field)
            last = np.where(active, a_t, last)
    return np.where(field >= _BNT_MIN_FIELD_BINS, np.floor(np.sqrt(field / np.pi)), 0).astype(np.int64)


@lru_cache(maxsize=1)
def _bnt_levels() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The ascending thresholds of ``_BNT_ATTEMPTS``; for each 1/1024-wide
    bucket ``[b, b+1)/1024`` of relative values (b = 0..1024), the number of
    thresholds below it (int8) and the thresholds inside it (+inf padded)."""
    thresholds = np.unique(np.concatenate([np.r_[a, b, grow] for a, b, grow in _BNT_ATTEMPTS]))
    edges = np.arange(1026) / 1024
    below = np.searchsorted(thresholds, edges[:-1], side="left").astype(np.int8)
    counts = np.searchsorted(thresholds, edges[1:], side="left") - below
    inside = [np.full(1025, np.inf) for _ in range(counts.max())]
    for b in np.flatnonzero(counts):
        for i, t in enumerate(thresholds[below[b] : below[b] + counts[b]]):
            inside[i][b] = t
    return thresholds, below, inside


@lru_cache(maxsize=16)
def _bnt_radii(limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Outer radii of BNT's gridness curve for every inner radius ``c < limit``.

    ``radii[c]`` = ``int(linspace(max(3, c + 1), limit, limit - c))`` padded
    with -1; ``counts[c]`` = ``limit - c``.
    """
    radii = np.full((limit, max(limit - 1, 1)), -1, dtype=np.int64)
    for c in range(1, limit):
        radii[c, : limit - c] = np.linspace(max(3, c + 1), limit, limit - c).astype(int)
    return radii, limit - np.arange(limit)


def _bnt_score(arr: np.ndarray, acorr: np.ndarray) -> dict:
    """BNT/opexebo gridness of each map; see :func:`grid_score`."""
    k, n, m = arr.shape
    ly, lx = _bnt_lag_limits(n, m)
    limit = min(ly, lx)
    crop = acorr[:, n - 1 - ly : n + ly, m - 1 - lx : m + lx]
    detected = _bnt_central_radius(crop)
    inner = np.where(detected < 1, 1, np.where(detected >= limit, limit - _BNT_WINDOW, detected))
    details = _by_blocks(lambda a, i: _bnt_curve(a, i, _grid_geometry(n, m, limit), limit), k, acorr, inner)
    details["inner_radius_fallback"] = inner != detected
    return details


def _bnt_curve(acorr: np.ndarray, inner: np.ndarray, geo: dict, limit: int) -> dict:
    """BNT's gridness curve over outer radii and its best sliding mean, given the inner radii (k,)."""
    k = acorr.shape[0]
    sums, _ = _annulus_sums(acorr.reshape(k, -1), geo)
    outer = np.arange(limit + 1)
    # annulus inner < d < R: classes 2*inner < class <= 2R - 1
    gridness, corr = _gridness(sums, 2 * inner, np.maximum(2 * outer - 1, 0))
    radii, counts = _bnt_radii(limit)
    steps = counts[inner]  # (k,)
    kk = np.arange(k)
    idx = radii[inner]  # (k, S)
    curve = np.where(idx >= 0, gridness[np.maximum(idx, 0), kk[:, None]], np.nan)
    # sliding mean over 3 radii; BNT takes the windows starting at 0 .. steps-4
    # (or the mean of the whole curve when it has <= 4 radii)
    filled, seen = np.nan_to_num(curve), np.isfinite(curve)
    csum = np.concatenate([np.zeros((k, 1)), np.cumsum(filled, axis=1)], axis=1)
    cnt = np.concatenate([np.zeros((k, 1)), np.cumsum(seen, axis=1)], axis=1)
    w = _BNT_WINDOW
    with np.errstate(invalid="ignore", divide="ignore"):
        window = (csum[:, w:] - csum[:, :-w]) / (cnt[:, w:] - cnt[:, :-w])
        window[np.arange(window.shape[1])[None, :] > steps[:, None] - w - 1] = np.nan
        whole = csum[kk, steps] / cnt[kk, steps]
    short = steps <= w + 1
    score = np.full(k, np.nan)
    score[short] = whole[short]
    has_window = ~short & np.isfinite(window).any(axis=1)
    score[has_window] = np.nanmax(window[has_window], axis=1)
    best = np.where(seen.any(axis=1), idx[kk, np.argmax(np.where(seen, curve, -np.inf), axis=1)], -1)
    return {
        "score": score,
        "inner_radius": inner,
        "best_outer_radius": best,
        "correlations": corr[np.maximum(best, 0), :, kk],
    }


def _langston_score(
    arr: np.ndarray, acorr: np.ndarray, central_threshold: float, min_ring_width: int, max_radius_fraction: float
) -> dict:
    """Max-over-radii gridness (Langston et al. 2010) of each map; see :func:`grid_score`."""
    k, n, m = arr.shape
    r_max = int(np.floor(max_radius_fraction * (min(n, m) - 1)))
    geo = _grid_geometry(n, m, r_max)
    return _by_blocks(lambda a: _langston_block(a, geo, r_max, central_threshold, min_ring_width), k, acorr)


def _langston_block(acorr: np.ndarray, geo: dict, r_max: int, central_threshold: float, min_ring_width: int) -> dict:
    k = acorr.shape[0]
    sums, (p_sum, p_count) = _annulus_sums(acorr.reshape(k, -1), geo)
    # radial profile over rings t = 1..r_max (pixels at distance (t-1, t]),
    # mean of the defined values
    with np.errstate(invalid="ignore", divide="ignore"):
        profile = (p_sum[2::2] - p_sum[:-2:2]) / (p_count[2::2] - p_count[:-2:2])  # (r_max, k)
        # ring t ends the central peak when it is below the threshold or is
        # the first local minimum of the radial profile
        below = profile < central_threshold
        below[:-1] |= profile[:-1] < profile[1:]
    has_edge = below.any(axis=0)
    detected = np.where(has_edge, np.argmax(below, axis=0) + 1, r_max)
    # fallback: a central peak reaching past the last annulus (or a profile
    # that never turns) is cut at the innermost radius of that annulus
    inner = np.minimum(detected, r_max - min_ring_width)
    radii = np.arange(r_max + 1)
    gridness, corr = _gridness(sums, 2 * inner, 2 * radii)
    allowed = radii[:, None] >= inner[None, :] + min_ring_width
    gridness = np.where(allowed & np.isfinite(gridness), gridness, -np.inf)
    best = np.argmax(gridness, axis=0)
    kk = np.arange(k)
    score = gridness[best, kk]
    score[~np.isfinite(score)] = np.nan
    return {
        "score": score,
        "inner_radius": inner,
        "inner_radius_fallback": ~has_edge | (detected > inner),
        "best_outer_radius": np.where(np.isfinite(score), best, -1),
        "correlations": corr[best, :, kk],
    }


def _grid_params(n, m, variant, min_overlap, central_threshold, min_ring_width, max_radius_fraction):
    """Validated ``(min_overlap, central_threshold, min_ring_width, max_radius_fraction)`` for :func:`grid_score`."""
    if variant not in _GRID_VARIANTS:
        raise ValueError(f"variant must be one of {_GRID_VARIANTS}, got {variant!r}")
    if variant == "bnt":
        langston_only = {"min_overlap": min_overlap, "central_threshold": central_threshold,
                         "min_ring_width": min_ring_width, "max_radius_fraction": max_radius_fraction}
        given = [name for name, val in langston_only.items() if val is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply to variant='langston'")
        if min(_bnt_lag_limits(n, m)) < _BNT_WINDOW + 1:
            raise ValueError(f"maps of {n}x{m} bins are too small for variant='bnt' (need at least 5x5)")
        min_overlap = 2
    else:
        min_overlap = 20 if min_overlap is None else min_overlap
        central_threshold = 0.0 if central_threshold is None else central_threshold
        min_ring_width = 3 if min_ring_width is None else min_ring_width
        max_radius_fraction = 0.9 if max_radius_fraction is None else max_radius_fraction
        check_int("min_ring_width", min_ring_width, 1)
        if not (0 < float(max_radius_fraction) <= 1):
            raise ValueError(f"max_radius_fraction must be in (0, 1], got {max_radius_fraction!r}")
        if not np.isfinite(central_threshold) or not (-1 <= central_threshold < 1):
            raise ValueError(f"central_threshold must be in [-1, 1), got {central_threshold!r}")
        r_max = int(np.floor(max_radius_fraction * (min(n, m) - 1)))
        if r_max < 1 + min_ring_width:
            raise ValueError(
                f"maps of {n}x{m} bins are too small for max_radius_fraction={max_radius_fraction} "
                f"and min_ring_width={min_ring_width} (largest radius {r_max} bins)"
            )
    return min_overlap, central_threshold, min_ring_width, max_radius_fraction


def grid_score(
    maps: np.ndarray,
    *,
    variant: GridVariant = "bnt",
    min_overlap: int | None = None,
    central_threshold: float | None = None,
    min_ring_width: int | None = None,
    max_radius_fraction: float | None = None,
    return_details: bool = False,
) -> np.ndarray | float | dict:
    r"""Gridness score (Sargolini et al. 2006) of ratemaps (k, n, m) or (n, m); NaN = unvisited bin.

    ``min(r60, r120) - max(r30, r90, r150)``, the Pearson correlations of
    annuli of the autocorrelogram with its rotations, all maps at once.
    ``variant="bnt"`` (default): BNT's ``gridnessScore`` as ported by opexebo
    0.7.2 (adaptive central field, max of the 3-radius sliding mean over outer
    radii). ``variant="langston"``: maximum over outer radii (Langston et al.
    2010); ``min_overlap`` (20), ``central_threshold`` (0.0), ``min_ring_width``
    (3 bins) and ``max_radius_fraction`` (0.9) apply to it only. The procedure
    step by step and the differences from opexebo: README, "Grid score".

    Returns (k,) scores in [-2, 2] (a float for one map; NaN for empty or
    constant maps), or with ``return_details`` a dict of (k,) arrays:
    ``score``, ``inner_radius``, ``inner_radius_fallback``,
    ``best_outer_radius`` (bins, -1 if none), ``correlations`` (k, 5).
    """
    arr, single = _as_stack(maps)
    k, n, m = arr.shape
    min_overlap, central_threshold, min_ring_width, max_radius_fraction = _grid_params(
        n, m, variant, min_overlap, central_threshold, min_ring_width, max_radius_fraction
    )
    acorr = autocorrelogram(arr, min_overlap=min_overlap)
    if variant == "bnt":
        details = _bnt_score(arr, acorr)
    else:
        details = _langston_score(arr, acorr, central_threshold, int(min_ring_width), float(max_radius_fraction))
    undefined = ~np.isfinite(acorr[:, n - 1, m - 1])  # constant or empty map
    details["score"][undefined] = np.nan
    details["best_outer_radius"][undefined | ~np.isfinite(details["score"])] = -1
    if not return_details:
        return _out(details["score"], single)
    if single:
        details = {key: val[0] for key, val in details.items()}
    return details


# --------------------------------------------------------------------------
# border score
# --------------------------------------------------------------------------
_FIELD_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_FIELD_STRUCTURE[1] = ndimage.generate_binary_structure(2, 1)  # 4-connected, never across neurons


def _default_min_field_bins(n: int, m: int) -> int:
    # Solstad et al. 2008: fields >= 200 cm² in a 1 m² box, i.e. 2% of the arena.
    return max(1, int(np.ceil(0.02 * n * m)))


def border_fields(
    maps: np.ndarray,
    *,
    field_threshold: float = 0.3,
    min_field_bins: int | None = None,
    transform: Transform = "subtract_min",
) -> tuple[np.ndarray, np.ndarray]:
    """Firing fields as in Solstad et al. (2008), for all maps at once.

    A field is a 4-connected group of visited bins with rate
    ``>= field_threshold * peak`` of the non-negative (transformed) map and at
    least ``min_field_bins`` bins. All maps are labelled in one
    ``scipy.ndimage.label`` call on the ``(k, n, m)`` stack with a structure
    that never connects along the neuron axis.

    Parameters:
    maps : ndarray, shape (k, n, m) or (n, m)
    field_threshold : float in (0, 1], default 0.3
    min_field_bins : int, optional — Default ``ceil(0.02 * n * m)`` (Solstad's 200 cm² in a 1 m² box = 2% of the
        arena): 8 bins for 20x20 maps, 21 for 32x32.
    transform : {"subtract_min", "none"} — See :func:`border_score`.

    Returns:
    labels : ndarray of int, shape (k, n, m) (or (n, m)) — 0 outside fields, field ids unique over the whole stack.
    rates : ndarray of float64, same shape — The transformed (non-negative) maps, NaN where unvisited.
    """
    arr, single = _as_stack(maps)
    labels, rates, _ = _border_fields(arr, field_threshold, min_field_bins, transform)
    return (labels[0], rates[0]) if single else (labels, rates)


def _border_fields(
    arr: np.ndarray, field_threshold: float, min_field_bins: int | None, transform: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k, n, m = arr.shape
    if not np.isfinite(field_threshold) or not (0 < field_threshold <= 1):
        raise ValueError(f"field_threshold must be in (0, 1] (fraction of the peak), got {field_threshold!r}")
    if min_field_bins is None:
        min_field_bins = _default_min_field_bins(n, m)
    check_int("min_field_bins", min_field_bins, 1)
    rates = _nonnegative(arr, transform)
    finite = np.isfinite(rates)
    peak = np.max(np.where(finite, rates, -np.inf), axis=(1, 2))
    peak = np.where(np.isfinite(peak), peak, 0.0)
    in_field = finite & (rates >= field_threshold * peak[:, None, None]) & (peak[:, None, None] > 0)
    labels, n_labels = ndimage.label(in_field, structure=_FIELD_STRUCTURE)
    sizes = np.bincount(labels.ravel(), minlength=n_labels + 1)
    keep = sizes >= min_field_bins
    keep[0] = False
    labels = np.where(keep[labels], labels, 0)
    return labels, rates, keep


def border_score(
    maps: np.ndarray,
    *,
    field_threshold: float = 0.3,
    min_field_bins: int | None = None,
    transform: Transform = "subtract_min",
    return_details: bool = False,
) -> np.ndarray | float | dict:
    """Border score of Solstad et al. (2008), ``(CM - DM) / (CM + DM)``, of maps (k, n, m) or (n, m).

    Fields: :func:`border_fields` (4-connected bins >= ``field_threshold`` x peak of
    the transformed map, at least ``min_field_bins``). ``CM``: the largest fraction
    of one wall's visited bins covered by one field. ``DM``: rate-weighted mean
    distance to the nearest wall over all field bins (BNT convention: a bin touching
    a wall is 1 bin away), over half the shorter side. Returns (k,) in [-1, 1)
    (-1: no field; NaN: all-NaN map); ``return_details`` adds ``cm`` and ``dm``.
    Equal to opexebo on complete maps with the same fields (tested to 1e-9).
    """
    arr, single = _as_stack(maps)
    k, n, m = arr.shape
    labels, rates, keep = _border_fields(arr, field_threshold, min_field_bins, transform)
    n_labels = keep.size - 1
    # neuron owning each label (labels never cross neurons)
    owner = np.zeros(n_labels + 1, dtype=np.int64)
    owner[labels.ravel()] = np.repeat(np.arange(k), n * m)
    finite = np.isfinite(arr)

    walls_labels = (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1])
    walls_valid = (finite[:, 0, :], finite[:, -1, :], finite[:, :, 0], finite[:, :, -1])
    coverage = np.zeros(n_labels + 1)
    for wall_lab, wall_ok in zip(walls_labels, walls_valid):  # 4 walls, not neurons
        covered = np.bincount(wall_lab.ravel(), minlength=n_labels + 1).astype(np.float64)
        length = wall_ok.sum(axis=1)[owner]
        with np.errstate(invalid="ignore", divide="ignore"):
            coverage = np.maximum(coverage, np.where(length > 0, covered / length, 0.0))
    coverage[~keep] = 0.0
    cm = np.zeros(k)
    np.maximum.at(cm, owner[keep], coverage[keep])

    ii, jj = np.mgrid[0:n, 0:m]
    dist = np.minimum(np.minimum(ii + 1, n - ii), np.minimum(jj + 1, m - jj)).astype(np.float64)
    weights = np.where(labels > 0, rates, 0.0)
    total = weights.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        dm = (weights * dist).sum(axis=(1, 2)) / total / (min(n, m) / 2.0)
        score = (cm - dm) / (cm + dm)
    has_field = total > 0
    score[~has_field] = -1.0
    dm[~has_field] = np.nan
    score[~finite.any(axis=(1, 2))] = np.nan
    if not return_details:
        return _out(score, single)
    details = {"score": score, "cm": cm, "dm": dm}
    if single:
        details = {key: float(val[0]) for key, val in details.items()}
    return details


# --------------------------------------------------------------------------
# all scores, shuffles, significance
# --------------------------------------------------------------------------
def _check_score_names(scores: Iterable[str]) -> tuple[str, ...]:
    names = tuple(scores) if not isinstance(scores, str) else (scores,)
    if not names:
        raise ValueError(f"scores must name at least one of {SCORE_NAMES}")
    for name in names:
        if name not in SCORE_NAMES:
            raise ValueError(f"scores must be a subset of {SCORE_NAMES}, got {name!r}")
    return names


def compute_scores(
    maps: np.ndarray,
    occupancy: np.ndarray | None = None,
    *,
    scores: Sequence[str] = SCORE_NAMES,
    transform: Transform = "subtract_min",
) -> dict[str, np.ndarray]:
    """All requested scores of a stack of maps.

    Parameters:
    maps : ndarray, shape (k, n, m)
    occupancy : ndarray, shape (n, m), optional — Passed to :func:`spatial_information`.
    scores : sequence of {"si", "grid", "border"}
    transform : {"subtract_min", "none"} — Non-negativity transform for SI and border score (grid score needs none).

    Returns:
    dict — name -> ndarray (k,)
    """
    names = _check_score_names(scores)
    arr, _ = _as_stack(maps)
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name == "si":
            out[name] = spatial_information(arr, occupancy, transform=transform)
        elif name == "grid":
            out[name] = grid_score(arr)
        else:
            out[name] = border_score(arr, transform=transform)
    return out


def shuffle_scores(
    positions: np.ndarray,
    activations: np.ndarray,
    *,
    bins: int = 20,
    extent: Sequence[float] | None = None,
    sigma: float | None = None,
    n_shuffles: int = 100,
    seed: int = 0,
    scores: Sequence[str] = SCORE_NAMES,
    transform: Transform = "subtract_min",
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Shuffle null distributions of the scores of one layer.

    Each shuffle draws one permutation of the stimuli and pairs stimulus
    position ``perm[i]`` with activation row ``i`` -- shared by every neuron of
    the layer, which keeps the neurons' joint structure and vectorises the
    whole layer. The permutation is applied *before* binning and smoothing;
    the maps are rebuilt with the same ``bins``/``extent``/``sigma`` and
    rescored with the same settings (same SI/border ``transform``).
    (Permuting after binning would leave SI of one-stimulus-per-bin,
    unsmoothed maps exactly unchanged.)

    Parameters
    ----------
    positions : ndarray, shape (n, 2)
        Stimulus centres (x, y) in pixels.
    activations : ndarray, shape (n, k)
        Activations of the layer's ``k`` neurons.
    bins, extent, sigma
        As in :func:`helpers.ratemaps.ratemaps`; use the values of the
        observed maps. ``extent=None`` resolves to the min/max of positions
        (unchanged by permutation).
    n_shuffles : int, default 100
    seed : int, default 0
        Seed of ``numpy.random.default_rng``; same seed, same null.
    scores : sequence of {"si", "grid", "border"}
    transform : {"subtract_min", "none"}
    progress : bool
        Show a ``tqdm.auto`` progress bar over shuffles.

    Returns
    -------
    dict
        name -> ndarray (n_shuffles, k) of shuffled scores.

    Notes
    -----
    Score the observed maps the same way, i.e.
    ``compute_scores(*ratemaps(positions, activations, bins=..., extent=...,
    sigma=...), transform=...)``, then call :func:`significance` per layer and
    score (each neuron against its own column of the null by default). Grid
    and border scores use their default parameters here.
    """
    names = _check_score_names(scores)
    bins = _check_bins(bins)
    sigma = _check_sigma(sigma)
    pos = _check_positions(positions)
    act = _check_activations(activations, pos.shape[0])
    check_int("n_shuffles", n_shuffles, 1)
    if transform not in _TRANSFORMS:
        raise ValueError(f"transform must be one of {_TRANSFORMS}, got {transform!r}")
    from tqdm.auto import tqdm

    flat = flat_bin_indices(pos, bins, resolve_extent(pos, extent))
    rng = np.random.default_rng(seed)
    null = {name: np.empty((n_shuffles, act.shape[1])) for name in names}
    for s in tqdm(range(n_shuffles), desc="shuffles", disable=not progress, leave=False):
        perm = rng.permutation(flat.size)
        maps, occupancy = ratemaps_from_bins(flat[perm], act, bins, sigma)
        for name, values in compute_scores(maps, occupancy, scores=names, transform=transform).items():
            null[name][s] = values
    return null


def surrogate_scores(
    maps: np.ndarray,
    occupancy: np.ndarray | None = None,
    *,
    n_surrogates: int = 100,
    seed: int = 0,
    scores: Sequence[str] = ("border",),
    transform: Transform = "subtract_min",
    boundary: str = "mirror",
) -> dict[str, np.ndarray]:
    """Null distributions of the scores from smoothness-preserving surrogates of the maps themselves.

    Each surrogate (:func:`helpers.surrogates.iaaft_null`) keeps a map's
    amplitude spectrum (its smoothness and field size) and its values, with the
    fields anywhere, and keeps its unvisited bins; it is scored like the map.
    Valid for the border score only: surrogates keep the autocorrelogram (so
    the grid score) and the values (so SI, exactly with uniform occupancy);
    other ``scores`` are computed for benchmarks that show this.

    Parameters
    ----------
    maps : ndarray, shape (k, n, m)
        Observed ratemaps (NaN = unvisited).
    occupancy : ndarray, shape (n, m), optional
        Passed to :func:`spatial_information`.
    n_surrogates : int >= 1, default 100
    seed : int >= 0
        Seed of ``numpy.random.default_rng``; same seed, same null.
    scores, transform
        As in :func:`compute_scores`.
    boundary : {"mirror", "periodic"}
        See :func:`helpers.surrogates.iaaft_surrogates`.

    Returns
    -------
    dict
        name -> ndarray (n_surrogates, k), like :func:`shuffle_scores`.
    """
    names = _check_score_names(scores)
    arr, _ = _as_stack(maps)
    check_int("n_surrogates", n_surrogates, 1)
    null = {name: np.empty((n_surrogates, arr.shape[0])) for name in names}
    for i, surrogate in enumerate(iaaft_null(arr, n_surrogates, seed=check_int("seed", seed, 0), boundary=boundary)):
        for name, values in compute_scores(surrogate, occupancy, scores=names, transform=transform).items():
            null[name][i] = values
    return null


#: Null distributions the border score can be tested against (see :func:`score_layers`):
#: ``"surrogate"`` (default), smoothness-preserving IAAFT surrogates of each map
#: (:func:`surrogate_scores`); ``"shuffle"``, the stimulus shuffle (:func:`shuffle_scores`), which
#: passes smooth untuned maps that touch a wall. SI and grid score always use the shuffle.
BORDER_NULLS: tuple[str, ...] = ("surrogate", "shuffle")


#: Reference distributions a neuron's observed score can be tested against
#: (see :func:`significance`): its own shuffles (default) or its layer's pooled
#: shuffles (the blog's literal procedure).
NULL_MODELS: tuple[str, ...] = ("neuron", "pooled")

#: How a score that beats its null becomes a "significant" call (see :func:`score_layers`):
#: ``"floor"`` (default) also needs the score above its tuning floor (:data:`TUNING_FLOORS`);
#: ``"null_only"`` is the blog's literal rule, beating the null is enough.
SIGNIFICANCE_RULES: tuple[str, ...] = ("floor", "null_only")

#: The value each score must exceed to describe tuning of its kind at all. Grid score <= 0: the
#: autocorrelogram is no more similar at 60/120 deg than at 30/90/150 deg (not grid-like by
#: definition, Sargolini et al. 2006). Border score <= 0: the field is no nearer the wall than its
#: coverage of it, CM <= DM (Solstad et al. 2008). Spatial information is >= 0 by construction and
#: 0 only for a map constant after the transform, which never beats its shuffles: its floor changes
#: no decision and is there so that one rule covers every score.
TUNING_FLOORS: dict[str, float] = {"si": 0.0, "grid": 0.0, "border": 0.0}


class Significance(NamedTuple):
    """Output of :func:`significance` for one layer and score (``k`` neurons)."""

    significant: np.ndarray  #: bool (k,): the decision of the chosen null model (and floor, if any)
    p_values: np.ndarray  #: float (k,): per-neuron Monte-Carlo p-values (NaN for a NaN score)
    threshold: float  #: the percentile of the layer's pooled null (NaN if all NaN)
    significant_neuron: np.ndarray  #: bool (k,): ``p_values <= alpha`` (and ``above_floor``)
    significant_pooled: np.ndarray  #: bool (k,): ``observed > threshold`` (and ``above_floor``)
    above_floor: np.ndarray  #: bool (k,): ``observed > floor`` (every finite score if no floor)
    significant_null_only: np.ndarray  #: bool (k,): the chosen null model's decision without the floor


def _alpha(percentile: float) -> float:
    """``1 - percentile/100`` after checking ``percentile`` lies in (0, 100)."""
    try:
        pct = float(percentile)
    except (TypeError, ValueError):
        raise ValueError(f"percentile must be a number in (0, 100), got {percentile!r}") from None
    if not np.isfinite(pct) or not (0 < pct < 100):
        raise ValueError(f"percentile must be in (0, 100), got {percentile!r}")
    return round(1.0 - pct / 100.0, 12)  # 95 -> 0.05 exactly, so p = 1/20 ties at the boundary


def min_shuffles(percentile: float = 95.0) -> int:
    """Fewest shuffles with which the per-neuron test can call a neuron significant.

    The smallest Monte-Carlo p-value is ``1 / (1 + n_shuffles)``, so the test
    needs ``1 / (1 + n_shuffles) <= alpha = 1 - percentile/100``, i.e.
    ``n_shuffles >= ceil(1/alpha) - 1``: 19 at the 95th percentile, 99 at the 99th.
    """
    alpha = _alpha(percentile)
    n = max(int(np.ceil(1.0 / alpha)) - 1, 1)
    while 1.0 / (1 + n) > alpha:  # guard the float rounding of 1/alpha
        n += 1
    return n


def _check_null_model(null_model: str) -> str:
    if null_model not in NULL_MODELS:
        raise ValueError(f"null_model must be one of {NULL_MODELS}, got {null_model!r}")
    return null_model


def _check_significance_rule(significance_rule: str) -> str:
    if significance_rule not in SIGNIFICANCE_RULES:
        raise ValueError(f"significance_rule must be one of {SIGNIFICANCE_RULES}, got {significance_rule!r}")
    return significance_rule


def _check_enough_shuffles(n_shuffles: int, percentile: float, null_model: str) -> None:
    need = min_shuffles(percentile)
    if null_model == "neuron" and n_shuffles < need:
        raise ValueError(
            f"n_shuffles = {n_shuffles} is too few for the per-neuron null at percentile = {percentile}: "
            f"the smallest p-value 1/(1 + n_shuffles) must be <= 1 - percentile/100, so use "
            f"n_shuffles >= {need} (or null_model='pooled')"
        )


def monte_carlo_p(observed: np.ndarray, shuffled: np.ndarray) -> np.ndarray:
    """Per-neuron Monte-Carlo p-values of observed scores against their own shuffles.

    ``p_j = (1 + #{i: shuffled[i, j] >= observed[j]}) / (1 + n_j)``, with ``n_j``
    the number of finite shuffled scores of neuron ``j`` (NaN shuffles are left
    out). Counting the observed pairing as one of the permutations makes the
    test valid, ``P(p <= alpha) <= alpha`` under the null, and ``p`` never 0
    (Phipson & Smyth 2010). Ties count against the neuron.

    Parameters
    ----------
    observed : ndarray, shape (k,)
    shuffled : ndarray, shape (n_shuffles, k)

    Returns
    -------
    ndarray, shape (k,)
        In ``[1/(1 + n_shuffles), 1]``; NaN where ``observed`` is NaN.
    """
    obs, shuf = _check_observed_shuffled(observed, shuffled)
    finite = np.isfinite(shuf)
    with np.errstate(invalid="ignore"):
        exceed = np.count_nonzero(finite & (shuf >= obs[None, :]), axis=0)
    p = (1.0 + exceed) / (1.0 + np.count_nonzero(finite, axis=0))
    p[~np.isfinite(obs)] = np.nan
    return p


def _check_observed_shuffled(observed: np.ndarray, shuffled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    obs = np.asarray(observed, dtype=np.float64)
    shuf = np.asarray(shuffled, dtype=np.float64)
    if obs.ndim != 1:
        raise ValueError(f"observed must be 1-D (one score per neuron), got shape {obs.shape}")
    if shuf.ndim != 2 or shuf.shape[1] != obs.shape[0] or shuf.shape[0] == 0:
        raise ValueError(
            f"shuffled must have shape (n_shuffles >= 1, k = {obs.shape[0]}) as from shuffle_scores, "
            f"got shape {shuf.shape}"
        )
    return obs, shuf


def significance(
    observed: np.ndarray,
    shuffled: np.ndarray,
    percentile: float = 95.0,
    *,
    null_model: str = "neuron",
    floor: float | None = None,
) -> Significance:
    """Which neurons' scores beat the shuffle null, under both null models, and their tuning floor.

    - ``"neuron"`` (default): neuron ``j`` is significant when its Monte-Carlo
      p-value against its own shuffles (:func:`monte_carlo_p`) is
      ``<= alpha = 1 - percentile/100``. This is calibrated per neuron,
      whatever the shape of its activation distribution.
    - ``"pooled"``: significant when ``observed[j]`` exceeds the ``percentile``
      of all the layer's shuffled scores pooled (the blog's procedure). Neurons
      whose activation distribution gives high scores by chance (e.g. sparse,
      heavy-tailed) then set the threshold for all the others.

    Both decisions come from the same shuffles and are always returned; the
    chosen one is ``significant``. With a ``floor`` a neuron must also score
    above it (``observed > floor``; :data:`TUNING_FLOORS`): a shuffle null
    only asks whether the score depends on position, so without the floor a
    spatially structured map that is *less anti-grid* than its shuffles
    (grid score <= 0) counts as a grid cell. The floor can only remove calls,
    so the per-neuron test stays valid (``P(call) <= alpha`` under the null).

    Parameters
    ----------
    observed : ndarray, shape (k,)
        Observed scores of a layer's neurons.
    shuffled : ndarray, shape (n_shuffles, k)
        Their shuffled scores (:func:`shuffle_scores`), NaN ignored.
    percentile : float in (0, 100), default 95
    null_model : {"neuron", "pooled"}
    floor : float or None, default None
        The score's tuning floor; None: no floor (the threshold-only rule).

    Returns
    -------
    Significance
        ``significant`` (bool (k,)), ``p_values`` (k,), ``threshold`` (float,
        the pooled percentile), ``significant_neuron``, ``significant_pooled``
        (each null model's decision, with the floor), ``above_floor`` and
        ``significant_null_only`` (the chosen null model without the floor).
        NaN scores are never significant.

    Raises
    ------
    ValueError
        With ``null_model="neuron"``, when ``n_shuffles < min_shuffles(percentile)``
        (then nothing could ever be significant).
    """
    alpha = _alpha(percentile)
    _check_null_model(null_model)
    if floor is not None and (isinstance(floor, bool) or not np.isfinite(floor)):
        raise ValueError(f"floor must be a finite number or None, got {floor!r}")
    obs, shuf = _check_observed_shuffled(observed, shuffled)
    _check_enough_shuffles(shuf.shape[0], percentile, null_model)
    p = monte_carlo_p(obs, shuf)
    finite = shuf[np.isfinite(shuf)]
    threshold = float(np.percentile(finite, float(percentile))) if finite.size else float("nan")
    with np.errstate(invalid="ignore"):
        by_neuron = p <= alpha
        pooled = obs > threshold
        above = np.isfinite(obs) if floor is None else obs > floor
    null_only = by_neuron if null_model == "neuron" else pooled
    by_neuron, pooled = by_neuron & above, pooled & above
    return Significance(by_neuron if null_model == "neuron" else pooled, p, threshold, by_neuron, pooled,
                        above, null_only)


def top_neurons(values: np.ndarray, top_k: int = 5) -> np.ndarray:
    """Indices of the ``top_k`` highest scores, best first, NaN never chosen.

    Parameters
    ----------
    values : ndarray, shape (k,)
    top_k : int >= 1

    Returns
    -------
    ndarray of int, shape (min(top_k, number of finite scores),)
    """
    vals = np.asarray(values, dtype=np.float64)
    if vals.ndim != 1:
        raise ValueError(f"values must be 1-D (one score per neuron), got shape {vals.shape}")
    check_int("top_k", top_k, 1)
    finite = np.flatnonzero(np.isfinite(vals))
    order = finite[np.argsort(-vals[finite], kind="stable")]
    return order[:top_k]


# --------------------------------------------------------------------------- study level


def _layer_nulls(positions, a, maps, occ, obs, *, n_shuffles, seed, transform, percentile, null_model, floors,
                 score_nulls, ratemap_args) -> dict:
    """One layer's :class:`Significance` per score and null: score -> null name -> result. Every score against
    ``n_shuffles`` stimulus shuffles, the border score also against as many surrogates; with ``n_shuffles=0`` an
    all-False result under each score's own null."""
    names = tuple(obs)
    if not n_shuffles:
        k = a.shape[1]
        none = np.zeros(k, bool)
        return {s: {score_nulls[s]: Significance(none, np.full(k, np.nan), float("nan"), none, none, none, none)}
                for s in names}
    nulls = {"shuffle": shuffle_scores(positions, a, **ratemap_args, n_shuffles=n_shuffles, seed=seed, scores=names,
                                       transform=transform, progress=False)}
    if "border" in names:
        nulls["surrogate"] = surrogate_scores(maps, occ, n_surrogates=n_shuffles, seed=seed, scores=("border",),
                                              transform=transform)
    return {s: {name: significance(obs[s], null[s], percentile, null_model=null_model, floor=floors[s])
                for name, null in nulls.items() if s in null} for s in names}


def _score_layer(positions, layer: str, acts, *, names, transform, ratemap_args, null_args) -> tuple:
    """One layer of :func:`score_layers`: its maps, occupancy, scores and :func:`_layer_nulls`."""
    a = np.asarray(acts, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"activations of {layer} must be (n_stimuli, neurons), got shape {a.shape}")
    maps, occ = ratemaps(positions, a, **ratemap_args)
    obs = compute_scores(maps, occ, scores=names, transform=transform)
    by_null = _layer_nulls(positions, a, maps, occ, obs, transform=transform, ratemap_args=ratemap_args, **null_args)
    return maps, occ, obs, by_null


def _map_layers(score_one, items: list, threads: int, progress: bool) -> Iterator:
    """``score_one(*item)`` for each of ``items``, in order, ``threads`` at a time, each with one-thread FFTs."""
    from tqdm.auto import tqdm

    def serial(item):
        with serial_fft():
            return score_one(*item)

    pool = ThreadPoolExecutor(threads, thread_name_prefix="score_layers") if threads > 1 else None
    results = pool.map(serial, items) if pool else (score_one(*item) for item in items)
    try:
        yield from tqdm(results, total=len(items), desc="layers", disable=not progress)
    finally:  # on an error or interrupt: drop the queued layers and return at once (running ones end unread)
        if pool:
            pool.shutdown(wait=False, cancel_futures=True)


def score_layers(
    positions: np.ndarray,
    activations_by_layer: "Mapping[str, np.ndarray]",
    *,
    bins: int = 20,
    extent: Sequence[float] | None = None,
    sigma: float | None = None,
    n_shuffles: int = 100,
    percentile: float = 95.0,
    null_model: str = "neuron",
    significance_rule: str = "floor",
    border_null: str = "surrogate",
    seed: int = 0,
    scores: Sequence[str] = SCORE_NAMES,
    transform: Transform = "subtract_min",
    progress: bool = True,
    threads: int | None = None,
) -> dict:
    """Ratemaps, scores and shuffle significance for every layer of one condition.

    ``positions`` (n, 2) pixels; ``activations_by_layer``: layer -> (n, k), read ``threads``
    layers at a time (memory: ~185 MB a layer for 768 neurons, 3000 stimuli, 20 bins). Each
    neuron is tested against its own ``n_shuffles`` shuffles (``null_model="neuron"``) or
    the layer's pooled ones (``"pooled"``); ``significance_rule="floor"`` also needs the
    score above :data:`TUNING_FLOORS` (``"null_only"``: the blog's threshold-only rule,
    kept as ``significant_null_only`` either way). SI and grid: stimulus shuffles; border:
    ``border_null`` ``"surrogate"`` (:func:`surrogate_scores`) or ``"shuffle"``, both kept
    in ``significant_by_null``. ``n_shuffles=0`` skips significance. ``threads`` layers are
    scored at once (default :func:`helpers.surrogates.fft_workers`: the cores, or
    ``OMP_NUM_THREADS``), which changes no value.

    Returns a dict: ``maps`` layer -> (k, bins, bins); ``occupancy`` (bins, bins);
    ``scores``, ``significant``, ``significant_neuron``, ``significant_pooled``,
    ``significant_null_only``, ``p_values``: layer -> score -> (k,); ``thresholds``:
    layer -> score -> float; ``significant_by_null``: layer -> score -> null -> (k,)
    (the run's null model and rule; "shuffle" for every score, "surrogate" for the
    border score); ``score_nulls``: score -> the null its ``significant`` used; and
    the settings ``null_model, significance_rule, border_null, n_shuffles,
    percentile, extent, bins, sigma``.
    """
    check_int("n_shuffles", n_shuffles, 0)
    threads = fft_workers() if threads is None else check_int("threads", threads, 1)
    _alpha(percentile)
    _check_null_model(null_model)
    _check_significance_rule(significance_rule)
    if border_null not in BORDER_NULLS:
        raise ValueError(f"border_null must be one of {BORDER_NULLS}, got {border_null!r}")
    if n_shuffles:
        _check_enough_shuffles(int(n_shuffles), percentile, null_model)
    names = _check_score_names(scores)
    floors = {s: TUNING_FLOORS[s] if significance_rule == "floor" else None for s in names}
    score_nulls = {s: border_null if s == "border" else "shuffle" for s in names}
    ext = resolve_extent(np.asarray(positions, dtype=float), extent)
    out: dict = {"maps": {}, "scores": {}, "significant": {}, "significant_neuron": {}, "significant_pooled": {},
                 "significant_null_only": {}, "p_values": {}, "thresholds": {}, "null_model": null_model,
                 "significant_by_null": {}, "score_nulls": score_nulls, "border_null": border_null,
                 "significance_rule": significance_rule, "n_shuffles": int(n_shuffles),
                 "percentile": float(percentile), "extent": ext, "bins": bins, "sigma": sigma, "occupancy": None}
    ratemap_args = {"bins": bins, "extent": ext, "sigma": sigma}
    null_args = {"n_shuffles": n_shuffles, "seed": seed, "percentile": percentile, "null_model": null_model,
                 "floors": floors, "score_nulls": score_nulls}
    score_one = partial(_score_layer, positions, names=names, transform=transform, ratemap_args=ratemap_args,
                        null_args=null_args)
    items = list(activations_by_layer.items())
    scored = _map_layers(score_one, items, min(threads, max(len(items), 1)), progress)
    for (layer, _), (maps, occ, obs, by_null) in zip(items, scored):
        out["maps"][layer] = maps
        out["occupancy"] = occ
        out["scores"][layer] = obs
        sig = {s: by_null[s][score_nulls[s]] for s in names}
        out["significant"][layer] = {s: r.significant for s, r in sig.items()}
        out["significant_neuron"][layer] = {s: r.significant_neuron for s, r in sig.items()}
        out["significant_pooled"][layer] = {s: r.significant_pooled for s, r in sig.items()}
        out["significant_null_only"][layer] = {s: r.significant_null_only for s, r in sig.items()}
        out["p_values"][layer] = {s: r.p_values for s, r in sig.items()}
        out["thresholds"][layer] = {s: r.threshold for s, r in sig.items()}
        out["significant_by_null"][layer] = {s: {name: r.significant for name, r in d.items()}
                                             for s, d in by_null.items()}
    return out


def scores_table(results_by_condition: "Mapping[str, dict]"):
    """One row per condition x layer x neuron: the scores and their significance.

    Parameters
    ----------
    results_by_condition : mapping condition -> output of :func:`score_layers`.

    Returns
    -------
    pandas.DataFrame with columns ``condition, layer, neuron`` and, per score,
    ``<score>``, ``<score>_sig`` (under the run's null model and rule), ``<score>_p``
    (per-neuron Monte-Carlo p-value), ``<score>_sig_neuron`` and ``<score>_sig_pooled``
    (each null model, the run's rule) and ``<score>_sig_null_only`` (the run's null
    model without the tuning floor: the blog's literal rule) and, for the border score,
    ``border_sig_shuffle`` and ``border_sig_surrogate`` (each border null, the run's null
    model and rule; ``border_sig`` is the one named by the run's ``border_null``).
    """
    import pandas as pd

    frames = []
    for cond, res in results_by_condition.items():
        for layer, sc in res["scores"].items():
            k = len(next(iter(sc.values())))
            cols = {"condition": cond, "layer": layer, "neuron": np.arange(k)}
            for s, v in sc.items():
                cols[s] = v
                cols[f"{s}_sig"] = res["significant"][layer][s]
                cols[f"{s}_p"] = res["p_values"][layer][s]
                cols[f"{s}_sig_neuron"] = res["significant_neuron"][layer][s]
                cols[f"{s}_sig_pooled"] = res["significant_pooled"][layer][s]
                cols[f"{s}_sig_null_only"] = res["significant_null_only"][layer][s]
                if s == "border":
                    for name, v_sig in res["significant_by_null"][layer][s].items():
                        cols[f"border_sig_{name}"] = v_sig
            frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True)


def significance_table(results_by_condition: "Mapping[str, dict]"):
    """Per condition, layer and score: the fraction of significant neurons under both null models and both rules.

    Returns
    -------
    pandas.DataFrame with columns ``condition, layer, score, null_model,
    significance_rule, n_shuffles, n_neurons, fraction_significant`` (under
    ``null_model`` and ``significance_rule``), ``fraction_significant_neuron``,
    ``fraction_significant_pooled`` (each null model, the run's rule),
    ``fraction_calls_differ`` (neurons significant under one null model only),
    ``fraction_significant_floor`` and ``fraction_significant_null_only`` (the
    run's null model under each rule), ``n_null_only_at_or_below_floor`` (neurons
    the null-only rule calls significant whose score is <= its ``tuning_floor``,
    e.g. grid-significant with a grid score <= 0), ``tuning_floor``,
    ``pooled_threshold`` (the pooled null's percentile), ``score_null`` (the null the
    score was tested against: "shuffle", or for the border score the run's
    ``border_null``), ``fraction_significant_shuffle`` and
    ``fraction_significant_surrogate`` (each null, the run's null model and rule; NaN
    where not computed: the surrogate null is for the border score only) and ``note``. With
    ``n_shuffles=0`` the fractions and counts are NaN and ``note`` says "not computed".
    """
    import pandas as pd

    rows = []
    for cond, res in results_by_condition.items():
        tested = res["n_shuffles"] > 0

        def frac(mask: np.ndarray) -> float:  # NaN, not 0.0, when nothing was tested: 0.0 reads as a finding
            return float(np.mean(mask)) if tested else float("nan")

        for layer in res["scores"]:
            for s, values in res["scores"][layer].items():
                null_only = res["significant_null_only"][layer][s]
                by_null = res["significant_by_null"][layer][s]
                with np.errstate(invalid="ignore"):
                    above = values > TUNING_FLOORS[s]
                rows.append({
                    "condition": cond,
                    "layer": layer,
                    "score": s,
                    "null_model": res["null_model"],
                    "significance_rule": res["significance_rule"],
                    "n_shuffles": res["n_shuffles"],
                    "n_neurons": len(values),
                    "fraction_significant": frac(res["significant"][layer][s]),
                    "fraction_significant_neuron": frac(res["significant_neuron"][layer][s]),
                    "fraction_significant_pooled": frac(res["significant_pooled"][layer][s]),
                    "fraction_calls_differ": frac(
                        res["significant_neuron"][layer][s] != res["significant_pooled"][layer][s]),
                    "fraction_significant_floor": frac(null_only & above),
                    "fraction_significant_null_only": frac(null_only),
                    "n_null_only_at_or_below_floor": int(np.sum(null_only & ~above)) if tested else float("nan"),
                    "tuning_floor": TUNING_FLOORS[s],
                    "pooled_threshold": res["thresholds"][layer][s],
                    "score_null": res["score_nulls"][s],
                    "fraction_significant_shuffle": frac(by_null["shuffle"]) if "shuffle" in by_null else np.nan,
                    "fraction_significant_surrogate": frac(by_null["surrogate"]) if "surrogate" in by_null else np.nan,
                    "note": "" if tested else "not computed: n_shuffles=0",
                })
    return pd.DataFrame(rows)
