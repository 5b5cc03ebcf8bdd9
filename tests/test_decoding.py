"""Tests for helpers.decoding: planted position codes, shuffles, references for the ridge and its LOO."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.decoding import decode_position, decoding_table, fit_ridge, fold_indices

pytestmark = pytest.mark.fast

SIZE = 224.0  # px, the model's input frame
BINS = 20     # ratemap bins per side: "under one bin" = SIZE / BINS px


def planted(n: int, k_code: int, k_noise: int = 0, *, noise_px: float = 5.0, seed: int = 0):
    """Positions (n, 2) uniform in the frame; activations (n, k_code + k_noise).

    The first ``k_code`` neurons are random linear read-ins of (x, y) plus
    Gaussian noise (``noise_px`` in position units), with means and scales
    that differ by orders of magnitude; the other ``k_noise`` carry no
    position at all.
    """
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, SIZE, (n, 2))
    code = (pos @ rng.normal(size=(2, k_code)) + noise_px * rng.normal(size=(n, k_code))) / SIZE
    acts = np.hstack([code, rng.normal(size=(n, k_noise))])
    acts = acts * 10.0 ** rng.uniform(-3, 3, acts.shape[1]) + rng.normal(0, 100, acts.shape[1])
    return pos, acts


# --------------------------------------------------------------------------- planted ground truth


def test_planted_linear_code_is_decoded_to_within_a_bin():
    pos, acts = planted(500, 40)
    res = decode_position(acts, pos, n_folds=5, seed=0)
    assert res["r2"] > 0.99
    assert res["median_error_px"] < SIZE / BINS
    assert res["chance_median_error_px"] > 5 * SIZE / BINS  # the mean-position guess is far off
    assert res["predictions"].shape == (500, 2) and res["n_folds"] == 5 and res["n_stimuli"] == 500


def test_shuffled_positions_give_r2_near_zero():
    pos, acts = planted(800, 40)
    shuffled = np.random.default_rng(1).permutation(pos)
    res = decode_position(acts, shuffled, n_folds=5, seed=0)
    assert abs(res["r2"]) < 0.05
    assert res["median_error_px"] > 0.9 * res["chance_median_error_px"]


def test_removing_the_informative_neurons_removes_the_position_code(tmp_path):
    pos, acts = planted(600, 8, 60, seed=2)
    np.save(tmp_path / "layer.npy", acts.astype(np.float32))
    layer = np.load(tmp_path / "layer.npy", mmap_mode="r")  # as recordings are read
    informative = np.arange(68) < 8
    significant = {"model": {"L0": {"si": informative & (np.arange(68) % 2 == 0),
                                    "grid": np.zeros(68, bool),
                                    "border": informative & (np.arange(68) % 2 == 1)}}}
    df = decoding_table(pos, {"model": {"L0": layer}}, significant, n_folds=5, seed=0, progress=False)
    rows = df.set_index("neurons")
    assert rows.loc["all", "n_neurons"] == 68 and rows.loc["all", "n_removed"] == 0
    assert rows.loc["non-significant", "n_neurons"] == 60 and rows.loc["non-significant", "n_removed"] == 8
    assert rows.loc["all", "r2"] > 0.95
    assert abs(rows.loc["non-significant", "r2"]) < 0.05
    assert len(rows.loc["all", "lambdas"].split(";")) == 5


def test_no_neuron_left_gives_nan_with_a_reason():
    pos, acts = planted(60, 4)
    significant = {"random": {"L3": {"si": np.ones(4, bool), "grid": np.zeros(4, bool)}}}
    df = decoding_table(pos, {"random": {"L3": acts}}, significant, n_folds=3, progress=False)
    row = df[df["neurons"] == "non-significant"].iloc[0]
    assert row["n_neurons"] == 0 and row["n_removed"] == 4
    assert np.isnan(row["r2"]) and np.isnan(row["median_error_px"])
    assert row["note"]
    assert df[df["neurons"] == "all"]["r2"].iloc[0] > 0.9


def test_penalty_is_large_on_noise_and_small_on_clean_signal():
    for seed in range(5):
        rng = np.random.default_rng(seed)
        pos = rng.uniform(0, SIZE, (300, 2))
        noise = fit_ridge(rng.normal(size=(300, 30)), pos)
        clean_pos, clean = planted(300, 30, seed=seed)
        signal = fit_ridge(clean, clean_pos)
        # lambda is per training stimulus: >= 1 shrinks every direction of a standardised noise
        # population (s^2 ~ n) by half or more; 1e-3 leaves a clean code untouched.
        assert noise.lam >= 1.0, (seed, noise.lam)
        assert signal.lam <= 1e-3, (seed, signal.lam)


# --------------------------------------------------------------------------- independent references


def _standardise(X):
    mean, sd = X.mean(0), X.std(0)
    sd[sd == 0] = 1.0
    return (X - mean) / sd, mean, sd


def _ridge_normal_equations(Z, Y, alpha):
    """Intercept + weights from (A'A + alpha*diag(0, 1, ..., 1)) b = A'Y with A = [1, Z]."""
    A = np.hstack([np.ones((len(Z), 1)), Z])
    P = alpha * np.eye(A.shape[1])
    P[0, 0] = 0.0
    b = np.linalg.solve(A.T @ A + P, A.T @ Y)
    return b[0], b[1:]


@pytest.mark.parametrize("k", [12, 150])  # fewer and more neurons than training stimuli
def test_one_fold_matches_the_normal_equations(k):
    pos, acts = planted(120, 6, k - 6, seed=3)
    test = fold_indices(120, 5, seed=0)[0]
    train = np.setdiff1d(np.arange(120), test)
    lam = np.array([1e-2, 1.0, 100.0])
    for one in lam:  # a one-value grid fixes the penalty
        fit = fit_ridge(acts[train], pos[train], [one])
        Z, mean, sd = _standardise(acts[train])
        b0, w = _ridge_normal_equations(Z, pos[train], one * len(train))
        np.testing.assert_allclose(fit.coef, w, rtol=1e-6, atol=1e-8 * np.abs(w).max())
        np.testing.assert_allclose(fit.intercept, b0, rtol=1e-9)
        ref_pred = (acts[test] - mean) / sd @ w + b0
        np.testing.assert_allclose(fit.predict(acts[test]), ref_pred, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k", [8, 60])
def test_efficient_loo_matches_refitting_without_each_stimulus(k):
    pos, acts = planted(40, 4, k - 4, seed=4)
    lambdas = np.array([1e-3, 1e-1, 10.0])
    fit = fit_ridge(acts, pos, lambdas)
    Z, _, _ = _standardise(acts)  # the fold's standardisation stays fixed, as documented
    n = len(Z)
    for j, lam in enumerate(lambdas):
        sq = 0.0
        for i in range(n):  # brute force: refit n times (test-only loop over stimuli)
            rest = np.arange(n) != i
            b0, w = _ridge_normal_equations(Z[rest], pos[rest], lam * n)
            sq += np.sum((pos[i] - (Z[i] @ w + b0)) ** 2)
        assert fit.loo_mse[j] == pytest.approx(sq / n, rel=1e-6)
    assert fit.lam == lambdas[np.argmin(fit.loo_mse)]


# --------------------------------------------------------------------------- invariants


def test_decoding_is_invariant_to_rescaling_neurons_and_shifting_the_frame():
    pos, acts = planted(200, 10, 5, seed=5)
    rng = np.random.default_rng(6)
    a = decode_position(acts, pos)
    b = decode_position(acts * rng.uniform(0.01, 100, 15) - 7.0, pos + [30.0, -12.0])
    assert b["r2"] == pytest.approx(a["r2"], abs=1e-9)
    assert b["median_error_px"] == pytest.approx(a["median_error_px"], rel=1e-7)
    np.testing.assert_array_equal(a["lambdas"], b["lambdas"])


def test_folds_partition_the_stimuli_reproducibly():
    folds = fold_indices(23, 5, seed=7)
    assert sorted(np.concatenate(folds).tolist()) == list(range(23))
    assert {len(f) for f in folds} <= {4, 5}
    assert all(np.array_equal(f, g) for f, g in zip(folds, fold_indices(23, 5, seed=7)))
    assert not all(np.array_equal(f, g) for f, g in zip(folds, fold_indices(23, 5, seed=8)))


def test_a_constant_neuron_is_ignored():
    pos, acts = planted(150, 6, seed=8)
    with_const = np.hstack([acts, np.full((150, 1), 3.0)])
    assert decode_position(with_const, pos)["r2"] == pytest.approx(decode_position(acts, pos)["r2"], abs=1e-9)


# --------------------------------------------------------------------------- parameters at the boundary


@pytest.mark.parametrize("n_folds", [1, 0, 31, True, 5.0, "5"])
def test_n_folds_must_be_an_integer_between_2_and_n_stimuli(n_folds):
    pos, acts = planted(30, 3)
    with pytest.raises(ValueError, match="n_folds"):
        decode_position(acts, pos, n_folds=n_folds)
    with pytest.raises(ValueError, match="n_folds"):
        decoding_table(pos, {"model": {"L0": acts}}, n_folds=n_folds, progress=False)


@pytest.mark.parametrize("lambdas", [[], [0.0, 1.0], [-1.0], [np.nan], [np.inf]])
def test_lambdas_must_be_positive_and_finite(lambdas):
    pos, acts = planted(30, 3)
    with pytest.raises(ValueError, match="lambdas"):
        decode_position(acts, pos, lambdas=lambdas)


def test_shapes_and_values_are_checked():
    pos, acts = planted(30, 3)
    with pytest.raises(ValueError, match="positions"):
        decode_position(acts, pos[:, :1])
    with pytest.raises(ValueError, match="positions"):
        decode_position(acts[:2], pos[:2])
    with pytest.raises(ValueError, match="activations"):
        decode_position(acts[:-1], pos)
    bad = acts.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="activations"):
        decode_position(bad, pos)
    with pytest.raises(ValueError, match="significant"):
        decoding_table(pos, {"m": {"L0": acts}}, {"m": {"L0": {"si": np.zeros(2, bool)}}}, progress=False)


# --------------------------------------------------------------------------- figure


def test_decoding_figure_draws_every_condition_and_marks_empty_sets(tmp_path):
    from helpers.plots import plot_decoding

    pos, acts = planted(60, 4)
    significant = {c: {"a": {"si": np.ones(4, bool)}, "b": {"si": np.eye(4, dtype=bool)[0]}}
                   for c in ("model", "random")}
    df = decoding_table(pos, {c: {"a": acts, "b": acts} for c in ("model", "random")}, significant,
                        n_folds=3, progress=False)
    fig = plot_decoding(df, layer_labels={"a": "L0", "b": "L1"}, path=tmp_path / "analyse_decoding.png")
    assert (tmp_path / "analyse_decoding.png").is_file()
    r2_ax, err_ax, frac_ax = fig.axes
    assert len(r2_ax.lines) == 1 + 4  # zero line + 2 conditions x 2 neuron sets
    assert [t.get_text() for t in r2_ax.get_xticklabels()] == ["L0", "L1"]
    assert sum(t.get_text() == "none left" for t in r2_ax.texts) == 2
    np.testing.assert_allclose(frac_ax.lines[0].get_ydata(), [1.0, 0.25])
