"""Benchmark: false-positive rate and power of the two significance rules at the presets' map sizes.

Untuned maps of each shape that occurs -- white noise, linear ramps in random
directions, Gaussian-filtered random fields (SD 30 and 60 px, on a 224 px field)
-- and planted hexagonal grid cells (period 90-110 px) and wall-band border
cells (SD 20 px), both + noise of SD 0.5; 8x8 bins from 96 stimuli (nbval) and
10x10 from 300 (quick), sigma = 1, 19 shuffles, per-neuron null. For each
shape, size and score: the fraction called significant by the threshold-only
rule (``null_only``, the blog's) and with the tuning floor (``floor``, the
default), from the same shuffles, and how many threshold-only calls have a
score <= 0. Tuned shapes (ramps, smooth fields) do depend on position, so their
SI calls are correct; their grid and border calls are false positives.

Usage::

    .venv/bin/python benchmarks/bench_significance_rule.py --neurons 600
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers.scores import score_layers  # noqa: E402

SIDE = 224.0


def shapes(rng: np.random.Generator, pos: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """name -> (n, k) activations."""
    n = pos.shape[0]
    theta = rng.uniform(0, 2 * np.pi, k)
    out = {"noise": rng.normal(size=(n, k)),
           "ramps": (pos / SIDE - 0.5) @ np.stack([np.cos(theta), np.sin(theta)])}
    cell = SIDE / 64
    ix, iy = np.clip((pos / cell).astype(int), 0, 63).T
    for length in (30, 60):
        field = ndimage.gaussian_filter(rng.normal(size=(k, 64, 64)), (0, length / cell, length / cell))
        out[f"smooth {length} px"] = field[:, iy, ix].T
    period, angle, phase = rng.uniform(90, 110, k), rng.uniform(0, np.pi / 3, k), rng.uniform(0, SIDE, (k, 2))
    wave = 4 * np.pi / (np.sqrt(3) * period)
    grid = sum(np.cos(wave * ((pos[:, :1] - phase[:, 0]) * np.cos(angle + j * np.pi / 3)
                              + (pos[:, 1:] - phase[:, 1]) * np.sin(angle + j * np.pi / 3))) for j in range(3))
    out["grid cells"] = grid / 3 + rng.normal(0, 0.5, size=(n, k))
    wall = rng.integers(0, 4, k)
    dist = np.stack([pos[:, 0], SIDE - pos[:, 0], pos[:, 1], SIDE - pos[:, 1]], axis=1)[:, wall]
    out["border cells"] = np.exp(-dist**2 / (2 * 20.0**2)) + rng.normal(0, 0.5, size=(n, k))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neurons", type=int, default=600, help="neurons per shape")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    k = args.neurons
    heads = " ".join(f"{s + ' null_only/floor (n<=0)':>28s}" for s in ("si", "grid", "border"))
    print(f"{'size':8s} {'shape':14s} {heads}")
    for n_stim, bins in ((96, 8), (300, 10)):
        rng = np.random.default_rng(args.seed + n_stim)
        pos = rng.uniform(0, SIDE, size=(n_stim, 2))
        for name, acts in shapes(rng, pos, k).items():
            res = score_layers(pos, {"L": acts}, bins=bins, extent=(0.0, SIDE, 0.0, SIDE), sigma=1.0, n_shuffles=19,
                               seed=1, progress=False)
            cells = []
            for s in ("si", "grid", "border"):
                null_only, floor = res["significant_null_only"]["L"][s], res["significant"]["L"][s]
                below = int(np.sum(null_only & (res["scores"]["L"][s] <= 0)))
                cells.append(f"{null_only.mean():.3f} / {floor.mean():.3f} ({below:3d})")
            print(f"{bins}x{bins:<5d} {name:14s} " + " ".join(f"{c:>28s}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
