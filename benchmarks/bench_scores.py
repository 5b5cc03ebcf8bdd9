"""Throughput of the Analyse scores (a script, not a test).

Usage::

    .venv/bin/python benchmarks/bench_scores.py [--neurons 768] [--bins 20] [--opexebo-neurons 48] [--clock process]

Prints, for a realistic layer (3000 stimuli, ``--neurons`` neurons, ``bins x
bins`` maps smoothed with sigma = 1 bin):

- neurons/s of ``spatial_information``, ``grid_score`` (default BNT variant,
  and ``variant="langston"``) and ``border_score`` (vectorised over the
  layer) and of building the ratemaps;
- the same scores computed with a per-neuron loop over opexebo (the Moser
  group's reference implementation) on the first ``--opexebo-neurons`` maps,
  and the speed ratio;
- the projected time of the full study's shuffle nulls:
  12 layers x 768 neurons x 2 conditions x 100 shuffles;
- one layer's border surrogate null (``helpers.surrogates.iaaft_null``, 10
  IAAFT iterations, + border score), per surrogate (mean of ``--surrogates``),
  and its projection to the same 2400 layer-surrogates.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers.ratemaps import flat_bin_indices, ratemaps, ratemaps_from_bins  # noqa: E402
from helpers.surrogates import iaaft_null  # noqa: E402
from _machine import best_time, describe  # noqa: E402
from helpers.scores import (  # noqa: E402
    border_score,
    compute_scores,
    grid_score,
    spatial_information,
)

EXTENT = (0.0, 224.0, 0.0, 224.0)


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
clock = CLOCKS["wall"]


def make_layer(n_stimuli: int, n_neurons: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stimulus positions and activations: noise plus a few planted cells."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 224, size=(n_stimuli, 2))
    x, y = pos[:, 0] / 224, pos[:, 1] / 224
    act = rng.normal(size=(n_stimuli, n_neurons)).astype(np.float32)
    for j in range(0, n_neurons, 8):  # every 8th neuron gets a place field
        cx, cy = rng.uniform(size=2)
        act[:, j] += 2 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.02)
    return pos, act


def opexebo_loop(maps: np.ndarray, occupancy: np.ndarray) -> dict[str, float]:
    """Seconds per neuron for each score with a per-neuron opexebo loop."""
    import opexebo
    from scipy import ndimage

    gs = importlib.import_module("opexebo.analysis.grid_score")
    original = gs._findCentreRadius
    gs._findCentreRadius = lambda a, **kw: float(np.ravel(original(a, **kw))[0])  # numpy >= 2.4 fix
    rates = maps - np.nanmin(maps, axis=(1, 2), keepdims=True)
    k = len(maps)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = clock()
        for r in rates:
            opexebo.analysis.rate_map_stats(r, occupancy)
        out["si"] = (clock() - t) / k
        t = clock()
        for r in rates:
            opexebo.analysis.grid_score(opexebo.analysis.autocorrelation(r))
        out["grid"] = (clock() - t) / k
        t = clock()
        min_bins = int(np.ceil(0.02 * r.size))
        for r in rates:  # field detection per neuron, then opexebo's border score
            labels, n = ndimage.label(r >= 0.3 * np.nanmax(r))
            sizes = np.bincount(labels.ravel())
            fields = [{"field_map": (labels == i).astype(float)} for i in range(1, n + 1) if sizes[i] >= min_bins]
            keep = np.isin(labels, [i for i in range(1, n + 1) if sizes[i] >= min_bins])
            opexebo.analysis.border_score(r, np.where(keep, labels, 0), fields, "square")
        out["border"] = (clock() - t) / k
    gs._findCentreRadius = original
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stimuli", type=int, default=3000)
    parser.add_argument("--neurons", type=int, default=768)
    parser.add_argument("--bins", type=int, default=20)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--opexebo-neurons", type=int, default=48)
    parser.add_argument("--surrogates", type=int, default=5, help="surrogates timed for the border null")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    print(describe())

    pos, act = make_layer(args.stimuli, args.neurons)
    maps, occ = ratemaps(pos, act, bins=args.bins, extent=EXTENT, sigma=args.sigma)
    k = args.neurons
    print(f"workload: {args.stimuli} stimuli, {k} neurons, {args.bins}x{args.bins} bins, sigma={args.sigma}, "
          f"clock={args.clock}")
    grid_score(maps[:2])  # build the cached rotation operators once

    ours = {
        "ratemaps": best_time(lambda: ratemaps(pos, act, bins=args.bins, extent=EXTENT, sigma=args.sigma), clock=clock),
        "si": best_time(lambda: spatial_information(maps, occ), clock=clock),
        "grid": best_time(lambda: grid_score(maps), clock=clock),  # variant="bnt", the default
        "grid_langston": best_time(lambda: grid_score(maps, variant="langston"), clock=clock),
        "border": best_time(lambda: border_score(maps), clock=clock),
    }
    print("\nvectorised (helpers.scores), whole layer at once:")
    for name, sec in ours.items():
        print(f"  {name:13s} {sec * 1e3:8.1f} ms/layer  {k / sec:12,.0f} neurons/s")

    try:
        ref = opexebo_loop(maps[: args.opexebo_neurons], occ)
    except ImportError:
        ref = None
        print("\nopexebo not installed: no per-neuron reference")
    if ref is not None:
        print(f"\nper-neuron loop over opexebo ({args.opexebo_neurons} neurons):")
        for name in ("si", "grid", "border"):
            rate_ref = 1 / ref[name]
            speedup = (k / ours[name]) / rate_ref
            print(f"  {name:9s} {rate_ref:12,.0f} neurons/s   ours is {speedup:7.1f}x faster")
        total_ref = sum(ref.values())
        total_ours = (ours["si"] + ours["grid"] + ours["border"]) / k
        print(f"  all three: ours is {total_ref / total_ours:.1f}x faster")

    # one shuffle = permute, rebuild the maps, all three scores
    flat = flat_bin_indices(pos, args.bins, EXTENT)
    rng = np.random.default_rng(0)

    def one_shuffle() -> None:
        m, o = ratemaps_from_bins(flat[rng.permutation(flat.size)], act, args.bins, args.sigma)
        compute_scores(m, o)

    per_shuffle = best_time(one_shuffle, clock=clock)
    n_iter = 12 * 2 * 100
    scale = 768 / k
    projected = per_shuffle * scale * n_iter
    print(f"\none shuffle of the layer (maps + 3 scores): {per_shuffle * 1e3:.0f} ms")
    print(
        f"projected: 12 layers x 768 neurons x 2 conditions x 100 shuffles = {n_iter} layer-shuffles "
        f"-> {projected / 60:.1f} min on this machine"
    )
    if ref is not None:
        print(f"           (per-neuron opexebo loop: {total_ref * 12 * 768 * 2 * 100 / 3600:.1f} h)")

    def surrogate_null() -> None:
        for surrogate in iaaft_null(maps, args.surrogates, seed=0):
            border_score(surrogate)

    per_surrogate = best_time(surrogate_null, repeats=2, clock=clock) / args.surrogates
    print(f"\none surrogate of the layer (IAAFT, 10 iterations, + border score; mean of {args.surrogates}): "
          f"{per_surrogate * 1e3:.0f} ms")
    print(f"projected: {n_iter} layer-surrogates (the border null of the blog preset) "
          f"-> {per_surrogate * scale * n_iter / 60:.1f} min on this machine")


if __name__ == "__main__":
    main()
