"""The tuning floor of the significance rule: calibration on untuned maps of every shape, power on planted cells.

A shuffle null asks whether a score depends on position, not whether the map is grid-like: on small maps the
shuffles' grid scores are strongly negative, so a map with a grid score <= 0 (not grid-like by definition) can
beat them all. The default rule (``significance_rule="floor"``) also needs the score above its tuning floor
(grid and border score > 0). These tests plant data at the study's small map sizes (8x8 bins from 96 stimuli,
nbval; 10x10 from 300, quick) and check, with the same shuffles for both rules:

- untuned maps (white noise; smooth ramps in random directions; Gaussian-filtered random fields): the floor
  rule's grid false-positive rate is <= alpha within binomial tolerance, and no significant neuron has a score
  <= 0, while the threshold-only rule calls such neurons significant;
- planted hexagonal grid cells and wall-band border cells are still found.

The border score is tested here against the stimulus shuffle (``border_null="shuffle"``), under which smooth
random fields pass at 6-15 % under either rule (up to 25 % for fields that wrap around the edges): a shuffle
null cannot tell a border cell from a smooth blob touching a wall. The default border null, surrogates of each
map, is calibrated in tests/test_border_null.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from planted import smooth_field

from helpers.scores import (
    SIGNIFICANCE_RULES,
    TUNING_FLOORS,
    score_layers,
    scores_table,
    significance,
    significance_table,
)

pytestmark = pytest.mark.fast

SIDE = 224.0
ALPHA = 0.05
K = 300  # neurons per shape: binomial SD sqrt(0.05 * 0.95 / 300) = 0.0126
TOLERANCE = ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / K)  # 0.088
SIZES = {"nbval": (96, 8), "quick": (300, 10)}  # (stimuli, bins) of the presets
SHAPES = ("noise", "ramp", "smooth")


def _noise(rng, pos, k):
    return rng.normal(size=(pos.shape[0], k))


def _ramps(rng, pos, k):
    """Linear ramps in uniformly random directions (no noise)."""
    theta = rng.uniform(0, 2 * np.pi, k)
    return (pos / SIDE - 0.5) @ np.stack([np.cos(theta), np.sin(theta)])


def _grid_cells(rng, pos, k, noise=0.5):
    """Hexagonal rate maps (three plane waves 60 deg apart, period 90-110 px, random orientation and phase) + noise."""
    period = rng.uniform(90, 110, k)
    angle = rng.uniform(0, np.pi / 3, k)
    phase = rng.uniform(0, SIDE, (k, 2))
    wave = 4 * np.pi / (np.sqrt(3) * period)
    rate = sum(np.cos(wave * ((pos[:, :1] - phase[:, 0]) * np.cos(angle + j * np.pi / 3)
                              + (pos[:, 1:] - phase[:, 1]) * np.sin(angle + j * np.pi / 3))) for j in range(3))
    return rate / 3 + rng.normal(0, noise, size=rate.shape)


def _border_cells(rng, pos, k, noise=0.5):
    """A band along one wall (SD 20 px from it), a random wall per neuron, + noise."""
    wall = rng.integers(0, 4, k)
    dist = np.stack([pos[:, 0], SIDE - pos[:, 0], pos[:, 1], SIDE - pos[:, 1]], axis=1)[:, wall]
    return np.exp(-dist**2 / (2 * 20.0**2)) + rng.normal(0, noise, size=dist.shape)


@pytest.fixture(scope="module", params=list(SIZES))
def layer(request) -> dict:
    """One layer: K neurons of each untuned shape, then K grid cells and K border cells; both rules' calls.

    Returns ``{"size", "scores", "floor", "null_only"}``; the last three map score -> (6K,) arrays.
    """
    n_stimuli, bins = SIZES[request.param]
    rng = np.random.default_rng(n_stimuli)
    pos = rng.uniform(0, SIDE, size=(n_stimuli, 2))
    acts = np.column_stack([f(rng, pos, K) for f in (_noise, _ramps, smooth_field, _grid_cells, _border_cells)])
    res = score_layers(pos, {"L": acts}, bins=bins, extent=(0.0, SIDE, 0.0, SIDE), sigma=1.0, n_shuffles=19, seed=1,
                       border_null="shuffle", progress=False)  # the shuffle null's floor; surrogates: test_border_null
    return {"size": request.param, "scores": res["scores"]["L"], "floor": res["significant"]["L"],
            "null_only": res["significant_null_only"]["L"]}


def _part(values: np.ndarray, i: int) -> np.ndarray:
    return values[i * K:(i + 1) * K]


@pytest.mark.parametrize("shape", SHAPES)
def test_floor_rule_is_calibrated_on_untuned_maps_and_never_calls_a_non_grid_map_a_grid_cell(layer, shape):
    """Grid score, untuned maps of each shape: false-positive rate <= alpha, and no call with a score <= 0.

    Measured by benchmarks/bench_significance_rule.py (19 shuffles, 600 neurons per shape): 8x8 maps,
    threshold-only 0.060 / 0.000 / 0.027 (noise, ramps, smooth fields of 30 px), floor 0.022 / 0.000 / 0.010;
    10x10 maps 0.052 / 0.000 / 0.015 and 0.037 / 0.000 / 0.012.
    """
    i = SHAPES.index(shape)
    score, floor = _part(layer["scores"]["grid"], i), _part(layer["floor"]["grid"], i)
    assert floor.mean() <= TOLERANCE, (layer["size"], shape, floor.mean())
    assert not (floor & (score <= TUNING_FLOORS["grid"])).any()
    assert floor.sum() <= _part(layer["null_only"]["grid"], i).sum()  # the floor only removes calls


def test_threshold_only_rule_calls_anti_grid_noise_significant(layer):
    """The confound the floor removes: white-noise maps whose grid score is <= 0 but beats all 19 shuffles.

    Expected about 0.01-0.04 of K noise neurons (measured 0.043 on 8x8, 0.009 on 10x10), so >= 1 of 300.
    """
    score, null_only = _part(layer["scores"]["grid"], 0), _part(layer["null_only"]["grid"], 0)
    assert (null_only & (score <= 0)).sum() >= 1, layer["size"]


def test_floor_changes_no_spatial_information_call(layer):
    """SI >= 0, and 0 only for constant maps, which never beat their shuffles: identical calls under both rules."""
    np.testing.assert_array_equal(layer["floor"]["si"], layer["null_only"]["si"])


def test_planted_grid_cells_are_found_by_the_floor_rule(layer):
    """Hexagonal maps (period 90-110 px) + noise of SD 0.5 on 10x10 maps of 300 stimuli: measured power 0.84
    (threshold-only 0.84). On 8x8 maps of 96 stimuli (a third of the bins empty) the grid score cannot see these
    grids: the median score of noiseless ones is 0.0 and power is 0.46 without noise, 0.07-0.08 with it
    (threshold-only 0.52 and 0.12-0.13), so nbval-sized runs say nothing about grid cells either way."""
    if layer["size"] == "nbval":
        pytest.skip("8x8 maps of 96 stimuli are too coarse for the grid score (see docstring)")
    found = _part(layer["floor"]["grid"], 3)
    assert found.mean() >= 0.7, (layer["size"], found.mean())


def test_planted_border_cells_are_found_by_the_floor_rule(layer):
    """Wall bands (SD 20 px) + noise of SD 0.5: measured power 0.33 on 8x8 maps of 96 stimuli, 0.82 on 10x10 maps
    of 300, identical under both rules (a band at a wall has border score > 0): the floor costs no power here."""
    found = _part(layer["floor"]["border"], 4)
    assert found.mean() >= {"nbval": 0.2, "quick": 0.7}[layer["size"]], (layer["size"], found.mean())
    np.testing.assert_array_equal(found, _part(layer["null_only"]["border"], 4))


def test_significance_floor_is_the_null_decision_and_the_score_above_the_floor():
    rng = np.random.default_rng(4)
    null = rng.normal(-0.5, 0.2, size=(19, 200))
    obs = rng.uniform(-1.0, 1.0, 200)
    obs[:3] = np.nan
    for null_model in ("neuron", "pooled"):
        plain = significance(obs, null, null_model=null_model)
        res = significance(obs, null, null_model=null_model, floor=0.0)
        beats = res.p_values <= ALPHA if null_model == "neuron" else obs > res.threshold
        np.testing.assert_array_equal(res.significant, beats & (obs > 0))
        np.testing.assert_array_equal(res.significant_null_only, beats)
        np.testing.assert_array_equal(res.significant_null_only, plain.significant)
        np.testing.assert_array_equal(res.above_floor, np.nan_to_num(obs, nan=-1) > 0)
        assert res.significant.any() and (plain.significant & (obs <= 0)).any()  # the planted case occurs
    with pytest.raises(ValueError, match="floor"):
        significance(obs, null, floor=np.nan)


def test_rule_option_and_tables_report_both_rules():
    rng = np.random.default_rng(5)
    pos = rng.uniform(0, SIDE, size=(96, 2))
    acts = {"a": rng.normal(size=(96, 400))}
    kw = dict(bins=8, extent=(0.0, SIDE, 0.0, SIDE), sigma=1.0, n_shuffles=19, seed=2, scores=("grid", "border"),
              progress=False)
    with pytest.raises(ValueError, match="significance_rule"):
        score_layers(pos, acts, significance_rule="sound", **kw)
    floor = score_layers(pos, acts, **kw)
    literal = score_layers(pos, acts, significance_rule="null_only", **kw)
    assert floor["significance_rule"] == "floor" and literal["significance_rule"] == "null_only"
    for s in ("grid", "border"):
        obs = floor["scores"]["a"][s]
        np.testing.assert_array_equal(literal["significant"]["a"][s], floor["significant_null_only"]["a"][s])
        np.testing.assert_array_equal(literal["significant"]["a"][s], literal["significant_null_only"]["a"][s])
        np.testing.assert_array_equal(floor["significant"]["a"][s], literal["significant"]["a"][s] & (obs > 0))
    table = significance_table({"model": floor, "random": literal})
    for rule, t in table.groupby("significance_rule"):
        res = floor if rule == "floor" else literal
        row = t[t.score == "grid"].iloc[0]
        null_only = res["significant_null_only"]["a"]["grid"]
        obs = res["scores"]["a"]["grid"]
        assert row.fraction_significant_null_only == null_only.mean()
        assert row.fraction_significant_floor == (null_only & (obs > 0)).mean()
        assert row.n_null_only_at_or_below_floor == (null_only & (obs <= 0)).sum() > 0
        assert row.fraction_significant == res["significant"]["a"]["grid"].mean()
        assert row.tuning_floor == 0.0 and row.n_neurons == 400
    cols = scores_table({"model": floor}).columns
    assert {"grid_sig", "grid_sig_null_only", "border_sig_null_only"} <= set(cols)
