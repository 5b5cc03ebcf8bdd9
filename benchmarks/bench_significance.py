"""Benchmark: calibration and power of the per-neuron and pooled shuffle nulls (issue 10, item 3).

Same inputs as the issue's audit, both decisions from the same shuffles
(:func:`helpers.scores.score_layers` always reports both):

- **calibration**: 1500 random positions, 300 untuned neurons in one layer (100
  Gaussian, 100 Student-t with 2 d.f., 100 sparse: 98 % zeros, else
  exponential with mean 5), 20x20 maps, sigma = 1, 20 shuffles; the fraction
  significant at the 95th percentile by family, for SI and the border score
  (``--grid`` adds the slower grid score);
- **power**: 60 place cells (Gaussian fields, peak 1, SD 25 px, centres
  anywhere on the 224 px field, plus noise of SD 0.5), on their own and in a
  layer that also holds 100 sparse untuned neurons; 40 shuffles; fraction of
  place cells significant by SI.

Each line is the mean over ``--seeds`` independent draws, with the range.

Usage::

    .venv/bin/python benchmarks/bench_significance.py --seeds 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import describe  # noqa: E402
from helpers.scores import score_layers  # noqa: E402

SETTINGS = dict(bins=20, extent=(0.0, 224.0, 0.0, 224.0), sigma=1.0, percentile=95.0, progress=False)
FAMILIES = ("gaussian", "student_t2", "sparse")
NULLS = ("pooled", "neuron")


def untuned(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """(n, 3k): k Gaussian, k Student-t (2 d.f.) and k sparse neurons, independent of position."""
    sparse = (rng.random((n, k)) < 0.02) * rng.exponential(5.0, size=(n, k))
    return np.column_stack([rng.normal(size=(n, k)), rng.standard_t(2, size=(n, k)), sparse])


def place_cells(rng: np.random.Generator, pos: np.ndarray, k: int) -> np.ndarray:
    centres = rng.uniform(0, 224, size=(k, 2))
    d2 = ((pos[:, None, :] - centres[None]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * 25.0**2)) + rng.normal(0, 0.5, size=(pos.shape[0], k))


def one_seed(seed: int, scores: tuple[str, ...]) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    pos = rng.uniform(0, 224, size=(1500, 2))
    res = score_layers(pos, {"L": untuned(rng, 1500, 100)}, n_shuffles=20, seed=seed, scores=scores, **SETTINGS)
    for null in NULLS:
        for s in scores:
            sig = res[f"significant_{null}"]["L"][s]
            out[f"{null} {s} layer"] = sig.mean()
            for i, fam in enumerate(FAMILIES):
                out[f"{null} {s} {fam}"] = sig[i * 100:(i + 1) * 100].mean()
    place = place_cells(rng, pos, 60)
    sparse = untuned(rng, 1500, 100)[:, 200:]
    for case, act in (("alone", place), ("with 100 sparse", np.column_stack([place, sparse]))):
        res = score_layers(pos, {"L": act}, n_shuffles=40, seed=seed, scores=("si",), **SETTINGS)
        for null in NULLS:
            out[f"{null} power si {case}"] = res[f"significant_{null}"]["L"]["si"][:60].mean()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="independent draws (default 5)")
    ap.add_argument("--grid", action="store_true", help="also the grid score (slow)")
    args = ap.parse_args()
    print(describe())
    scores = ("si", "border", "grid") if args.grid else ("si", "border")
    t0 = time.perf_counter()
    runs = [one_seed(seed, scores) for seed in range(args.seeds)]
    print(f"{args.seeds} seeds in {time.perf_counter() - t0:.1f} s; fraction significant at the 95th percentile")
    print(f"{'null':8s} {'score':6s} {'case':18s} {'mean':>6s}  range")
    for key in runs[0]:
        v = np.array([r[key] for r in runs])
        null, score, case = key.split(" ", 2)
        print(f"{null:8s} {score:6s} {case:18s} {v.mean():6.3f}  {v.min():.2f}-{v.max():.2f}")


if __name__ == "__main__":
    main()
