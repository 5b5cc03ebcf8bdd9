"""Benchmark: false-positive rate and power of the significance rules and the border nulls at the presets' map sizes.

Untuned maps of each shape that occurs -- white noise, linear ramps in random
directions, Gaussian-filtered random fields (SD 30 and 60 px, on a 224 px field)
-- reflected at the field's edges or wrapped around them -- and planted hexagonal grid cells (period 90-110 px) and wall-band border
cells (SD 20 px), both + noise of SD 0.5; 8x8 bins from 96 stimuli (nbval) and
10x10 from 300 (quick), sigma = 1, 19 shuffles, per-neuron null. For each
shape, size and score: the fraction called significant by the threshold-only
rule (``null_only``, the blog's) and with the tuning floor (``floor``, the
default), from the same shuffles, and how many threshold-only calls have a
score <= 0. Tuned shapes (ramps, smooth fields) do depend on position, so their
SI calls are correct; their grid and border calls are false positives.

Then, under the floor rule, each score against each null: stimulus
``shuffle``; ``surrogate`` (IAAFT surrogates of each map, mirrored
boundary, the default border null); and for the border score also
``periodic`` surrogates (the map's own FFT). Surrogates keep the
autocorrelogram and the values, so their SI and grid columns show why they
are no null for those scores.

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

from helpers.scores import TUNING_FLOORS, score_layers, significance, surrogate_scores  # noqa: E402

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
        for mode, tag in (("reflect", ""), ("wrap", " w")):
            field = ndimage.gaussian_filter(rng.normal(size=(k, 64, 64)), (0, length / cell, length / cell), mode=mode)
            out[f"smooth {length} px{tag}"] = field[:, iy, ix].T
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
    null_heads = "   si shuf/surr  grid shuf/surr  border shuf/surr/periodic"
    print(f"{'size':8s} {'shape':16s} {heads} |{null_heads}")
    for n_stim, bins in ((96, 8), (300, 10)):
        rng = np.random.default_rng(args.seed + n_stim)
        pos = rng.uniform(0, SIDE, size=(n_stim, 2))
        for name, acts in shapes(rng, pos, k).items():
            res = score_layers(pos, {"L": acts}, bins=bins, extent=(0.0, SIDE, 0.0, SIDE), sigma=1.0, n_shuffles=19,
                               seed=1, border_null="shuffle", progress=False)
            cells = []
            for s in ("si", "grid", "border"):
                null_only, floor = res["significant_null_only"]["L"][s], res["significant"]["L"][s]
                below = int(np.sum(null_only & (res["scores"]["L"][s] <= 0)))
                cells.append(f"{null_only.mean():.3f} / {floor.mean():.3f} ({below:3d})")
            print(f"{bins}x{bins:<5d} {name:16s} " + " ".join(f"{c:>28s}" for c in cells) + " | "
                  + _by_null(res), flush=True)


def _by_null(res: dict) -> str:
    """Floor-rule fractions of each score under each null (shuffles from ``res``, surrogates computed here)."""
    maps, occ, obs = res["maps"]["L"], res["occupancy"], res["scores"]["L"]
    surr = surrogate_scores(maps, occ, n_surrogates=19, seed=1, scores=("si", "grid"))
    surr["periodic"] = surrogate_scores(maps, occ, n_surrogates=19, seed=1, boundary="periodic")["border"]

    def frac(s: str, null: np.ndarray) -> float:
        return significance(obs[s], null, floor=TUNING_FLOORS[s]).significant.mean()

    by_null = res["significant_by_null"]["L"]
    return (f"{by_null['si']['shuffle'].mean():.3f}/{frac('si', surr['si']):.3f}  "
            f"{by_null['grid']['shuffle'].mean():.3f}/{frac('grid', surr['grid']):.3f}  "
            f"{by_null['border']['shuffle'].mean():.3f}/{by_null['border']['surrogate'].mean():.3f}/"
            f"{frac('border', surr['periodic']):.3f}")


if __name__ == "__main__":
    main()
