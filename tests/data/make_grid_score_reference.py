"""Regenerate tests/data/grid_score_reference.npz (frozen grid scores of the straightforward implementation).

Run once, at commit d731f02 (before the grid-score speed-ups), with::

    PYTHONPATH=. .venv/bin/python tests/data/make_grid_score_reference.py

The maps are stored with the scores, so the test does not depend on this script's generators.
"""

from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from helpers.ratemaps import ratemaps
from helpers.scores import grid_score, shuffle_scores, significance

SIZES = (8, 10, 20)


def battery(n: int, rng: np.random.Generator) -> np.ndarray:
    c = (np.arange(n) + 0.5) / n
    x, y = np.meshgrid(c, c)
    maps = []
    for period in (0.25, 0.35, 0.5):
        for angle in (0.0, 0.4):
            kk = 4 * np.pi / (np.sqrt(3) * period)
            maps.append(sum(np.cos(kk * ((x - 0.1) * np.cos(angle + j * np.pi / 3) + (y - 0.2) * np.sin(angle + j * np.pi / 3)))
                            for j in range(3)))
    maps += [rng.normal(size=(n, n)) for _ in range(6)]  # noise
    maps += [gaussian_filter(rng.normal(size=(n, n)), s) for s in (1.0, 1.5, 2.0) for _ in range(2)]  # smooth
    maps += [np.exp(-((x - 0.5) ** 2 + (y - 0.4) ** 2) / 0.02)]  # a field
    maps = np.stack(maps)
    noisy_grids = maps[:6] + 0.5 * rng.normal(size=(6, n, n))
    shared = maps.copy()  # every map misses the same bins (an unvisited bin of the occupancy)
    shared[:, rng.integers(n), rng.integers(n)] = np.nan
    shared[:, 0, n - 1] = np.nan
    own = maps.copy()  # each map misses its own bins
    for m in own:
        m[rng.integers(n, size=3), rng.integers(n, size=3)] = np.nan
    groups = np.repeat([0, 0, 1, 2], [len(maps), len(noisy_grids), len(shared), len(own)])
    return np.concatenate([maps, noisy_grids, shared, own]), groups


def main() -> None:
    rng = np.random.default_rng(14)
    out = {}
    for n in SIZES:
        maps, groups = battery(n, rng)
        out[f"maps_{n}"], out[f"groups_{n}"] = maps, groups  # 0 complete, 1 the same unvisited bins, 2 their own
        out[f"bnt_{n}"] = grid_score(maps)
        out[f"langston_{n}"] = grid_score(maps, variant="langston")
    # a small layer with planted grid cells, and its shuffle null
    pos = rng.uniform(0, 224, size=(400, 2))
    act = rng.normal(size=(400, 24))
    kk = 4 * np.pi / (np.sqrt(3) * 0.45)
    u, v = pos[:, 0] / 224, pos[:, 1] / 224
    for j in range(0, 24, 3):
        a = 0.3 * j
        act[:, j] += (0.2 + j / 6) * sum(np.cos(kk * (u * np.cos(a + i * np.pi / 3) + v * np.sin(a + i * np.pi / 3)))
                                       for i in range(3))
    maps, _ = ratemaps(pos, act, bins=10, extent=(0, 224, 0, 224), sigma=1.0)
    null = shuffle_scores(pos, act, bins=10, extent=(0, 224, 0, 224), sigma=1.0, n_shuffles=39, seed=3,
                          scores=("grid",), progress=False)["grid"]
    observed = grid_score(maps)
    sig = significance(observed, null)
    out.update(shuffle_positions=pos, shuffle_activations=act, shuffle_observed=observed, shuffle_null=null,
               shuffle_significant_neuron=sig.significant_neuron, shuffle_significant_pooled=sig.significant_pooled)
    np.savez_compressed(Path(__file__).with_name("grid_score_reference.npz"), **out)


if __name__ == "__main__":
    main()
