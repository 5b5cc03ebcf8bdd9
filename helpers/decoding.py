"""Population decoding of stimulus position (x, y) in pixels: cross-validated ridge regression from all neurons
of a layer, and without the neurons significant for any spatial score (Luo, Mok & Love, eLife RP 99047).

:func:`decode_position`: ``n_folds`` seeded folds over stimuli (:func:`fold_indices`, the same for every layer and
condition); features standardised with the training fold's mean and SD (constant -> 0), targets centred
(unpenalised intercept). One penalty per fold, shared by x and y, minimises the exact leave-one-out error
(PRESS, hat matrix ``11'/n + U diag(s²/(s²+α)) U'`` from one thin SVD; ties: the larger); penalties per training
stimulus, ``α = n_train · λ`` over :data:`LAMBDAS`. Scores are out-of-fold: ``r2 = 1 - SSE/SST`` pooled over x and
y; ``median_error_px`` the median Euclidean error; ``chance_median_error_px`` that of predicting the training
fold's mean position. Vectorised over neurons: one SVD per layer, neuron set and fold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import scipy.linalg

from helpers.checks import check_int
from helpers.ratemaps import _check_activations
from helpers.ratemaps import _check_positions as check_positions

__all__ = ["LAMBDAS", "fold_indices", "fit_ridge", "decode_position", "significant_any", "decoding_table"]

#: Default ridge penalties per training stimulus (λ = α / n_train), log-spaced.
LAMBDAS: np.ndarray = np.logspace(-4, 4, 33)

#: The two neuron sets of :func:`decoding_table`.
NEURON_SETS: tuple[str, ...] = ("all", "non-significant")


# --------------------------------------------------------------------------- validation


def _check_lambdas(lambdas) -> np.ndarray:
    lam = np.asarray(lambdas, dtype=float).ravel()
    if lam.size == 0 or not np.all(np.isfinite(lam)) or np.any(lam <= 0):
        raise ValueError(f"lambdas must be a non-empty sequence of finite numbers > 0, got {lambdas!r}")
    return np.unique(lam)  # sorted ascending


def _check_positions(positions) -> np.ndarray:
    pos = check_positions(positions)  # (n, 2), finite, float64
    if pos.shape[0] < 3:
        raise ValueError(f"positions must hold at least 3 stimuli, got {pos.shape[0]}")
    return pos


# --------------------------------------------------------------------------- folds and ridge


def fold_indices(n_stimuli: int, n_folds: int = 5, seed: int = 0) -> list[np.ndarray]:
    """Test indices of ``n_folds`` folds over ``n_stimuli`` stimuli (sizes differ by at most 1).

    One seeded permutation split into contiguous chunks; every stimulus is in
    exactly one test fold.
    """
    n = check_int("n_stimuli", n_stimuli, 3)
    k = check_int("n_folds", n_folds, 2, n)
    return [np.sort(f) for f in np.array_split(np.random.default_rng(seed).permutation(n), k)]


class RidgeFit(NamedTuple):
    """A ridge read-out fitted on one training fold (see :func:`fit_ridge`)."""

    mean: np.ndarray       # (k,) feature means of the training fold
    scale: np.ndarray      # (k,) feature SDs (1 for constant features)
    coef: np.ndarray       # (k, d) weights on standardised features
    intercept: np.ndarray  # (d,) the training targets' mean
    lam: float             # chosen penalty per training stimulus (α / n_train)
    loo_mse: np.ndarray    # (len(lambdas),) LOO mean squared error per stimulus, summed over outputs

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions ``(m, d)`` for activations ``X`` ``(m, k)``."""
        return ((np.asarray(X, np.float64) - self.mean) / self.scale) @ self.coef + self.intercept


def fit_ridge(X: np.ndarray, Y: np.ndarray, lambdas: Sequence[float] = LAMBDAS) -> RidgeFit:
    """Ridge regression with the penalty chosen by efficient leave-one-out, from one decomposition.

    The thin SVD of the standardised fold (:func:`_left_singular`) gives the
    fit, the hat diagonal and so the LOO error for every penalty at once.

    Parameters:
    X : (n, k) training activations (standardised here with their own mean and SD).
    Y : (n, d) training targets (centred here; the intercept is not penalised).
    lambdas : penalties per training stimulus, ``α = n · λ`` (see the module docstring).

    Returns:
    RidgeFit, with ``loo_mse[j]`` the LOO ``Σ_outputs mean_i (y_i - ŷ_(-i))²`` at ``lambdas[j]``
    (sorted ascending); ``inf`` where the fit interpolates a stimulus (``h_ii = 1``).
    """
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    lam = _check_lambdas(lambdas)
    n = X.shape[0]
    mean, scale = X.mean(0), X.std(0)
    scale[scale <= 1e-12 * np.maximum(1.0, np.abs(mean))] = 1.0  # constant feature: its centred column is ~0
    Z = (X - mean) / scale
    ym = Y.mean(0)
    Yc = Y - ym
    U, s2 = _left_singular(Z)
    UtY = U.T @ Yc                                    # (r, d)
    shrink = s2 / (s2 + n * lam[:, None])             # (L, r)
    fitted = U @ (shrink[:, :, None] * UtY)           # (L, n, d)
    h = 1.0 / n + (U**2) @ shrink.T                   # (n, L) hat diagonal, intercept included
    with np.errstate(divide="ignore", invalid="ignore"):
        loo = (Yc[None] - fitted) / (1.0 - h.T)[:, :, None]
        loo_mse = np.where(np.all(1.0 - h > 1e-10, axis=0), np.sum(loo**2, axis=(1, 2)) / n, np.inf)
    j = len(lam) - 1 - int(np.argmin(loo_mse[::-1]))  # ties -> the larger penalty
    coef = Z.T @ (U @ (UtY / (s2 + n * lam[j])[:, None]))  # = V diag(s/(s²+α)) U'Y
    return RidgeFit(mean, scale, coef, ym, float(lam[j]), loo_mse)


def _left_singular(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors ``U`` (n, r) and squared singular values ``s²`` (r,) of ``Z`` (n, k).

    From the eigendecomposition of the smaller Gram matrix (``Z Z'`` or
    ``Z'Z``), several times faster than LAPACK's SVD here. Directions with
    ``s² <= s²_max · max(n, k) · 1e3 · eps`` are dropped: the Gram matrix
    holds them only to rounding (~eps · s²_max), and the smallest default
    penalty shrinks them almost to zero anyway.
    """
    n, k = Z.shape
    w, E = scipy.linalg.eigh(Z @ Z.T if n <= k else Z.T @ Z, driver="evd", check_finite=False)
    keep = w > max(w[-1], 0.0) * max(n, k) * 1e3 * np.finfo(float).eps
    w, E = w[keep], E[:, keep]
    U = E if n <= k else (Z @ E) / np.sqrt(w)
    return U, w


# --------------------------------------------------------------------------- decoding


def decode_position(
    activations: np.ndarray,
    positions: np.ndarray,
    *,
    n_folds: int = 5,
    seed: int = 0,
    lambdas: Sequence[float] = LAMBDAS,
) -> dict:
    """Cross-validated ridge decoding of stimulus position from a population.

    Parameters:
    activations : (n, k) activations of k neurons to n stimuli (k >= 1).
    positions : (n, 2) stimulus centres ``(x, y)`` in pixels.
    n_folds : int in [2, n]; seed : seeds the fold permutation.
    lambdas : ridge penalties per training stimulus (see the module docstring).

    Returns:
    dict with ``r2`` (pooled over x and y, out-of-fold), ``median_error_px``,
    ``chance_median_error_px``, ``predictions`` (n, 2) out-of-fold,
    ``lambdas`` (n_folds,) chosen per fold, ``lambda_at_edge`` (folds whose
    choice is an end of the grid), ``n_stimuli``, ``n_folds``.
    """
    pos = _check_positions(positions)
    n = pos.shape[0]
    folds = fold_indices(n, n_folds, seed)
    lam = _check_lambdas(lambdas)
    X = _check_activations(activations, n)
    if X.shape[1] < 1:
        raise ValueError("activations must hold at least one neuron")
    pred, chance = np.empty_like(pos), np.empty_like(pos)
    chosen = np.empty(len(folds))
    for f, test in enumerate(folds):
        train = np.setdiff1d(np.arange(n), test, assume_unique=True)
        fit = fit_ridge(X[train], pos[train], lam)
        pred[test] = fit.predict(X[test])
        chance[test] = fit.intercept
        chosen[f] = fit.lam
    return {
        "r2": 1.0 - np.sum((pos - pred) ** 2) / np.sum((pos - pos.mean(0)) ** 2),
        "median_error_px": float(np.median(np.linalg.norm(pos - pred, axis=1))),
        "chance_median_error_px": float(np.median(np.linalg.norm(pos - chance, axis=1))),
        "predictions": pred,
        "lambdas": chosen,
        "lambda_at_edge": int(np.sum((chosen == lam[0]) | (chosen == lam[-1]))) if lam.size > 1 else 0,
        "n_stimuli": n,
        "n_folds": len(folds),
    }


def significant_any(significant_by_score: Mapping[str, np.ndarray], k: int) -> np.ndarray:
    """Bool ``(k,)``: significant for any score of ``{score: bool (k,)}`` (e.g. si, grid, border)."""
    mask = np.zeros(k, bool)
    for name, m in significant_by_score.items():
        m = np.asarray(m, bool)
        if m.shape != (k,):
            raise ValueError(f"significant[{name!r}] must have shape ({k},), got {m.shape}")
        mask |= m
    return mask


def decoding_table(
    positions: np.ndarray,
    activations_by_condition: Mapping[str, Mapping[str, np.ndarray]],
    significant_by_condition: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]] | None = None,
    *,
    n_folds: int = 5,
    seed: int = 0,
    lambdas: Sequence[float] = LAMBDAS,
    progress: bool = True,
):
    """Decoding of position per condition and layer, from all neurons and without the significant ones.

    Parameters:
    positions : (n, 2) stimulus centres in pixels.
    activations_by_condition : condition -> layer -> (n, k) array (memmaps are read one layer at a time).
    significant_by_condition : condition -> layer -> score -> bool (k,), as — ``results[c]["significant"]`` of
        :func:`helpers.scores.score_layers`; a neuron is removed when it is significant for any score. None: only the
        ``all`` rows.
    n_folds, seed, lambdas : see :func:`decode_position` (the same folds everywhere).

    Returns:
    pandas.DataFrame, one row per condition, layer and neuron set (``all``,
    ``non-significant``), columns ``condition, layer, neurons, n_neurons,
    n_removed, r2, median_error_px, chance_median_error_px, lambdas,
    lambda_at_edge, n_stimuli, n_folds, note``. ``lambdas`` lists the chosen
    penalty per fold (``;``-separated). Rows with no neuron left hold NaN
    scores and say why in ``note``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    pos = _check_positions(positions)
    n = pos.shape[0]
    folds = fold_indices(n, n_folds, seed)  # validates n_folds once, before any layer is read
    lam = _check_lambdas(lambdas)
    rows = []
    work = [(c, layer) for c, layers in activations_by_condition.items() for layer in layers]
    for cond, layer in tqdm(work, desc="decoding", disable=not progress):
        X = _check_activations(activations_by_condition[cond][layer], n, f"activations of {cond}/{layer}")
        k = X.shape[1]
        sets = {"all": np.ones(k, bool)}
        if significant_by_condition is not None:
            sets["non-significant"] = ~significant_any(significant_by_condition[cond][layer], k)
        for name, keep in sets.items():
            row = {"condition": cond, "layer": layer, "neurons": name, "n_neurons": int(keep.sum()),
                   "n_removed": int(k - keep.sum()), "n_stimuli": n, "n_folds": len(folds), "note": ""}
            if keep.any():
                res = decode_position(X[:, keep], pos, n_folds=n_folds, seed=seed, lambdas=lam)
                row.update(r2=res["r2"], median_error_px=res["median_error_px"],
                           chance_median_error_px=res["chance_median_error_px"],
                           lambdas=";".join(f"{v:.3g}" for v in res["lambdas"]),
                           lambda_at_edge=res["lambda_at_edge"])
            else:
                row.update(r2=np.nan, median_error_px=np.nan, chance_median_error_px=np.nan, lambdas="",
                           lambda_at_edge=0, note=f"all {k} neurons are significant for some score: none left")
            rows.append(row)
    cols = ["condition", "layer", "neurons", "n_neurons", "n_removed", "r2", "median_error_px",
            "chance_median_error_px", "lambdas", "lambda_at_edge", "n_stimuli", "n_folds", "note"]
    return pd.DataFrame(rows, columns=cols)
