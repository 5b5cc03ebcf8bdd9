"""Ratemaps: mean activation of each neuron per ``bins x bins`` square bin of the visual field.

Positions are stimulus centres ``(x, y)`` in pixels, y down; map row = y bin (row 0 = top), column = x bin;
``extent = (xmin, xmax, ymin, ymax)`` px, edges ``linspace(min, max, bins + 1)``, the upper edge in the last bin,
stimuli outside ignored (bin ``-1``); unvisited bins are NaN in the maps, 0 in the occupancy. One sparse
``(bins², n) @ (n, k)`` product per layer, cheap enough for shuffles.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.ndimage import gaussian_filter

from helpers.checks import check_int

__all__ = [
    "resolve_extent",
    "bin_indices",
    "flat_bin_indices",
    "ratemaps",
    "ratemaps_from_bins",
    "smooth_maps",
    "values_at_bins",
]

Extent = tuple[float, float, float, float]


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------
def _check_bins(bins: int) -> int:
    return check_int("bins", bins, 2)


def _check_sigma(sigma: float | None) -> float:
    if sigma is None:
        return 0.0
    try:
        s = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"sigma must be None or a finite number >= 0 (in bins), got {sigma!r}") from None
    if not np.isfinite(s) or s < 0:
        raise ValueError(f"sigma must be None or a finite number >= 0 (in bins), got {sigma!r}")
    return s


def _check_positions(positions: np.ndarray) -> np.ndarray:
    pos = np.asarray(positions, dtype=float)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"positions must have shape (n, 2) holding (x, y) in pixels, got shape {pos.shape}")
    if pos.shape[0] == 0:
        raise ValueError("positions must hold at least one stimulus, got n = 0")
    if not np.all(np.isfinite(pos)):
        raise ValueError("positions must be finite (no NaN or inf)")
    return pos


def _check_activations(activations: np.ndarray, n: int, name: str = "activations") -> np.ndarray:
    """(n, k) float64 finite array (a 1-D array is one neuron), or ValueError naming ``name``."""
    act = np.asarray(activations)
    if act.ndim == 1:
        act = act[:, None]
    if act.ndim != 2 or act.shape[0] != n:
        raise ValueError(f"{name} must have shape (n_stimuli={n}, neurons), got shape {act.shape}")
    # Every float dtype (float16 recordings included, which scipy.sparse refuses) and
    # integers are accumulated in float64; a float64 array is not copied.
    act = act.astype(np.float64, copy=False)
    if not np.all(np.isfinite(act)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return act


def resolve_extent(positions: np.ndarray, extent: Sequence[float] | None = None) -> Extent:
    """Return the binning extent ``(xmin, xmax, ymin, ymax)`` in pixels.

    Parameters:
    positions : ndarray, shape (n, 2) — Stimulus centres ``(x, y)`` in pixels.
    extent : sequence of 4 floats or None — Explicit ``(xmin, xmax, ymin, ymax)``; ``None`` means the min/max of
        ``positions`` along each axis.

    Returns:
    tuple of 4 floats

    Raises:
    ValueError — If ``extent`` does not have 4 finite entries with ``xmin < xmax`` and ``ymin < ymax`` (also raised
        when all positions share an x or y value and no extent is given).
    """
    pos = _check_positions(positions)
    if extent is None:
        ext = (pos[:, 0].min(), pos[:, 0].max(), pos[:, 1].min(), pos[:, 1].max())
    else:
        ext = tuple(np.asarray(extent, dtype=float).ravel())
        if len(ext) != 4:
            raise ValueError(f"extent must be (xmin, xmax, ymin, ymax), got {extent!r}")
    xmin, xmax, ymin, ymax = (float(v) for v in ext)
    if not all(np.isfinite([xmin, xmax, ymin, ymax])) or not (xmin < xmax and ymin < ymax):
        raise ValueError(
            f"extent must be finite (xmin, xmax, ymin, ymax) with xmin < xmax and ymin < ymax, "
            f"got {(xmin, xmax, ymin, ymax)}"
        )
    return (xmin, xmax, ymin, ymax)


def bin_indices(
    positions: np.ndarray, bins: int = 20, extent: Sequence[float] | None = None
) -> np.ndarray:
    """Bin of each stimulus: ``(row, col)`` = ``(y bin, x bin)``.

    This is the "which bin is this stimulus in" lookup used for per-stimulus
    lesions: ``maps[:, row, col]`` is every neuron's ratemap value at the
    stimulus location (see :func:`values_at_bins`).

    Parameters:
    positions : ndarray, shape (n, 2) — Stimulus centres ``(x, y)`` in pixels, ``y`` growing downwards.
    bins : int — Bins per side (>= 2).
    extent : sequence of 4 floats or None — ``(xmin, xmax, ymin, ymax)`` in pixels; default min/max of positions.

    Returns:
    ndarray of int64, shape (n, 2) — ``[:, 0]`` = row (y bin), ``[:, 1]`` = column (x bin), each in ``0 .. bins-1``;
        both are ``-1`` for stimuli outside ``extent``.
    """
    bins = _check_bins(bins)
    pos = _check_positions(positions)
    xmin, xmax, ymin, ymax = resolve_extent(pos, extent)
    x, y = pos[:, 0], pos[:, 1]
    inside = (x >= xmin) & (x <= xmax) & (y >= ymin) & (y <= ymax)
    # floor of the scaled coordinate; the upper edge belongs to the last bin
    # (as in np.histogram2d), and clipping also absorbs rounding at the edges.
    col = np.clip(np.floor((x - xmin) / (xmax - xmin) * bins), 0, bins - 1).astype(np.int64)
    row = np.clip(np.floor((y - ymin) / (ymax - ymin) * bins), 0, bins - 1).astype(np.int64)
    col[~inside] = -1
    row[~inside] = -1
    return np.stack([row, col], axis=1)


def flat_bin_indices(
    positions: np.ndarray, bins: int = 20, extent: Sequence[float] | None = None
) -> np.ndarray:
    """Flat bin index ``row * bins + col`` of each stimulus (``-1`` outside).

    Returns:
    ndarray of int64, shape (n,)
    """
    rc = bin_indices(positions, bins, extent)
    flat = rc[:, 0] * bins + rc[:, 1]
    flat[rc[:, 0] < 0] = -1
    return flat


def ratemaps_from_bins(
    flat_bins: np.ndarray, activations: np.ndarray, bins: int, sigma: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Ratemaps from precomputed flat bin indices (the fast path for shuffles).

    Parameters:
    flat_bins : ndarray of int, shape (n,) — ``row * bins + col`` per stimulus, ``-1`` to ignore a stimulus (see
        :func:`flat_bin_indices`).
    activations : ndarray, shape (n, k) or (n,) — Activation of each of ``k`` neurons for each stimulus; any float
        dtype (float16, float32, float64), summed in float64.
    bins : int — Bins per side (>= 2).
    sigma : float or None — Gaussian smoothing width in bins (see :func:`smooth_maps`); ``None`` or 0 means no
        smoothing.

    Returns:
    maps : ndarray of float64, shape (k, bins, bins) — Mean activation per bin, NaN where no stimulus fell.
    occupancy : ndarray of int64, shape (bins, bins) — Number of stimuli per bin.
    """
    bins = _check_bins(bins)
    sigma = _check_sigma(sigma)
    idx = np.asarray(flat_bins)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"flat_bins must be a 1-D integer array, got dtype {idx.dtype} shape {idx.shape}")
    if np.any(idx >= bins * bins) or np.any(idx < -1):
        raise ValueError(f"flat_bins must lie in -1 .. bins**2 - 1 = {bins * bins - 1}")
    act = _check_activations(activations, idx.shape[0])
    keep = idx >= 0
    cols = np.flatnonzero(keep)
    # One-hot (bins², n) matrix: one product sums every neuron at once.
    onehot = sp.csr_matrix(
        (np.ones(cols.size), (idx[keep], cols)), shape=(bins * bins, idx.shape[0])
    )
    sums = np.asarray(onehot @ act, dtype=np.float64).T.reshape(act.shape[1], bins, bins)
    occupancy = np.bincount(idx[keep], minlength=bins * bins).reshape(bins, bins).astype(np.int64)
    if sigma > 0:
        return smooth_maps(sums, occupancy, sigma), occupancy
    with np.errstate(invalid="ignore", divide="ignore"):
        maps = sums / occupancy
    maps[:, occupancy == 0] = np.nan
    return maps, occupancy


def smooth_maps(sums: np.ndarray, occupancy: np.ndarray, sigma: float) -> np.ndarray:
    """NaN-respecting Gaussian smoothing by normalised convolution.

    ``smoothed = G * sums / G * occupancy`` where ``G *`` is a Gaussian filter
    of width ``sigma`` bins over the two spatial axes (zero padding outside the
    field, truncated at 4 sigma). Unvisited bins contribute nothing to their
    neighbours and stay NaN; a constant field stays exactly constant (up to
    rounding). This is the usual "smooth spikes and occupancy separately"
    estimator of neuroscience ratemaps.

    Parameters:
    sums : ndarray, shape (k, bins, bins) — Sum of activations per bin (0 in unvisited bins).
    occupancy : ndarray, shape (bins, bins) — Stimuli per bin.
    sigma : float — Gaussian standard deviation in bins (>= 0; 0 means plain mean).

    Returns:
    ndarray of float64, shape (k, bins, bins)
    """
    sigma = _check_sigma(sigma)
    sums = np.asarray(sums, dtype=np.float64)
    occ = np.asarray(occupancy, dtype=np.float64)
    if sums.ndim != 3 or sums.shape[1:] != occ.shape:
        raise ValueError(f"sums must have shape (k, *occupancy.shape); got {sums.shape} and {occ.shape}")
    visited = occ > 0
    if sigma > 0:
        s = gaussian_filter(sums, sigma=(0.0, sigma, sigma), mode="constant", cval=0.0)
        c = gaussian_filter(occ, sigma=sigma, mode="constant", cval=0.0)
    else:
        s, c = sums, occ
    out = np.full(sums.shape, np.nan)
    out[:, visited] = s[:, visited] / c[visited]
    return out


def ratemaps(
    positions: np.ndarray,
    activations: np.ndarray,
    bins: int = 20,
    extent: Sequence[float] | None = None,
    sigma: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean activation of every neuron in each spatial bin of the visual field.

    Parameters:
    positions : ndarray, shape (n, 2) — Stimulus centres ``(x, y)`` in pixels, ``y`` growing downwards.
    activations : ndarray, shape (n, k) or (n,) — Activation of each of ``k`` neurons (a 1-D array is one neuron) for
        each stimulus. Must be finite. Any float dtype (float16 recordings included); the maps are accumulated in
        float64.
    bins : int, default 20 — Bins per side (>= 2). Map row = y bin, column = x bin.
    extent : (xmin, xmax, ymin, ymax) or None — Field covered by the bins, in pixels. Default: min/max of
        ``positions``. Stimuli outside are ignored. Keep it fixed (e.g. ``(0, 224, 0, 224)``) to compare maps across
        runs.
    sigma : float or None — Gaussian smoothing width in **bins**; ``None``/0 = no smoothing. The smoothing is a
        normalised convolution (see :func:`smooth_maps`), so unvisited bins stay NaN.

    Returns:
    maps : ndarray of float64, shape (k, bins, bins) — Mean activation per bin; NaN where no stimulus fell.
    occupancy : ndarray of int64, shape (bins, bins) — Stimuli per bin.

    Raises:
    ValueError — Bad shapes, non-finite values, ``bins < 2``, ``sigma < 0`` or an empty/degenerate extent; the message
        names the parameter.

    Examples:
    >>> pos = np.array([[1.0, 1.0], [9.0, 9.0]])
    >>> maps, occ = ratemaps(pos, np.array([[2.0], [4.0]]), bins=2, extent=(0, 10, 0, 10))
    >>> maps[0]
    array([[ 2., nan],
           [nan,  4.]])
    """
    bins = _check_bins(bins)
    _check_sigma(sigma)
    pos = _check_positions(positions)
    act = _check_activations(activations, pos.shape[0])
    flat = flat_bin_indices(pos, bins, extent)
    return ratemaps_from_bins(flat, act, bins, sigma)


def values_at_bins(maps: np.ndarray, rows_cols: np.ndarray) -> np.ndarray:
    """Ratemap value of every neuron at each stimulus's bin.

    Parameters:
    maps : ndarray, shape (k, bins, bins)
    rows_cols : ndarray of int, shape (n, 2) — Output of :func:`bin_indices`; rows with ``-1`` give NaN.

    Returns:
    ndarray of float64, shape (n, k) — ``out[i, j] = maps[j, row_i, col_i]``.
    """
    maps = np.asarray(maps, dtype=np.float64)
    rc = np.asarray(rows_cols)
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (k, bins, bins), got {maps.shape}")
    if rc.ndim != 2 or rc.shape[1] != 2 or not np.issubdtype(rc.dtype, np.integer):
        raise ValueError(f"rows_cols must be an (n, 2) integer array, got {rc.dtype} {rc.shape}")
    if np.any(rc >= np.array(maps.shape[1:])) or np.any(rc < -1):
        raise ValueError("rows_cols must lie inside the maps (or be -1 for 'outside')")
    out = maps[:, rc[:, 0], rc[:, 1]].T.copy()
    out[rc[:, 0] < 0] = np.nan
    return out


# --------------------------------------------------------------------------- storage


def save_ratemaps(
    path,
    maps_by_layer: "dict[str, np.ndarray]",
    occupancy: np.ndarray,
    *,
    extent: Sequence[float],
    bins: int,
    sigma: float | None,
) -> "Path":
    """Write every layer's ratemaps of one condition to one ``.npz``.

    Keys: ``maps`` (layers, k, bins, bins) float32, ``occupancy`` (bins, bins),
    ``layers`` (layer names, in order), ``extent`` (xmin, xmax, ymin, ymax),
    ``bins``, ``sigma`` (NaN for none).
    """
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    layers = list(maps_by_layer)
    np.savez(
        path,
        maps=np.stack([np.asarray(maps_by_layer[name], dtype=np.float32) for name in layers]),
        occupancy=np.asarray(occupancy),
        layers=np.asarray(layers),
        extent=np.asarray(extent, dtype=float),
        bins=np.asarray(int(bins)),
        sigma=np.asarray(np.nan if sigma is None else float(sigma)),
    )
    return path


def load_ratemaps(path) -> dict:
    """Read :func:`save_ratemaps` output.

    Returns:
    dict with ``maps`` {layer: (k, bins, bins)}, ``occupancy``, ``extent``
    (tuple), ``bins`` (int) and ``sigma`` (float or None).
    """
    with np.load(path, allow_pickle=False) as z:
        layers = [str(s) for s in z["layers"]]
        sigma = float(z["sigma"])
        return {
            "maps": {name: z["maps"][i] for i, name in enumerate(layers)},
            "occupancy": z["occupancy"],
            "extent": tuple(float(v) for v in z["extent"]),
            "bins": int(z["bins"]),
            "sigma": None if np.isnan(sigma) else sigma,
        }
