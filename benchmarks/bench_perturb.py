"""Benchmark: the default perturbation study, efficient vs naive.

The default study (04_perturb's defaults) for one weights condition:

- layer lesions, mode "all": visual.conv1, 12 visual and 12 text resblocks (25 lesions);
- targeted lesions at block 9: Targeted, Targeted_Abs, Targeted_raw and 5 Random seeds x 8 proportions (64 lesions);
- one regional (lower-left) lesion.

*Efficient* (``helpers.lesions``): one unlesioned pass caching every block input,
truncated forwards from block k, text lesions re-encoding only the prompts,
proportion 0 read from the baseline and proportion 1 computed once.
*Naive*: one full forward over all stimuli (and the prompts) per lesion, plus the baseline.

Both produce the same tables; the script checks that and prints the largest
difference. Ratemaps (20 bins, sigma 1) and the leave-one-out selection values
are built beforehand from a hook recording and are not timed (in the study the
activations come from stage 02 and the ratemaps from stage 03).

Wall time at 3000 stimuli is extrapolated linearly from ``--n`` (the cost of
every step is proportional to the number of stimuli; fixed costs such as
encoding two prompts are negligible).

Usage::

    .venv/bin/python benchmarks/bench_perturb.py --n 128 --dtypes float32 bfloat16
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _machine import GFLOP_PER_IMAGE, describe, share
from helpers import lesions as L
from helpers import models, stimuli
from helpers.ratemaps import bin_indices, ratemaps

BLOCK = 9
PROPORTIONS = L.DEFAULT_PROPORTIONS
N_SEEDS = 5
REGION = "lower-left"
BINS, SIGMA = 20, 1.0


def _prepare(dtype: str, n: int, batch_size: int):
    lm = models.load_model("ViT-B-32", "random", device="cpu", dtype=dtype, seed=0)
    stim = stimuli.make_stimuli(n, seed=0)
    pos = stimuli.positions_in_input(stim, lm.preprocess)
    extent = (0.0, float(lm.input_size), 0.0, float(lm.input_size))
    batches = lambda: stimuli.iter_batches(stim, lm.preprocess, batch_size)  # noqa: E731
    rec = []
    h = lm.model.visual.transformer.resblocks[BLOCK].attn.register_forward_hook(
        lambda m, a, o: rec.append(o[0][:, 0].float().numpy())
    )
    try:
        with torch.no_grad():
            for x, _ in batches():
                lm.model.encode_image(x.to(lm.dtype))
    finally:
        h.remove()
    acts = np.concatenate(rec)
    fm = L.field_maps(*ratemaps(pos, acts, bins=BINS, extent=extent, sigma=SIGMA))
    rc = bin_indices(pos, fm.bins, extent)
    return lm, stim, pos, extent, batches, fm, rc, L.held_out_values(acts, rc, BINS, SIGMA)


def efficient(lm, n, pos, batches, fm, rc, hv, batch_size):
    tower = L.visual_tower(lm.model)
    cache = L.build_residual_cache(tower, batches(), n, progress=False)
    layer_df = L.layer_lesion_study(lm, cache, batches, mode="all", batch_size=batch_size, progress=False)
    task = L.zero_shot_task(lm)
    targ_df = L.targeted_lesion_study(
        tower, cache, task, hv, block=BLOCK, proportions=PROPORTIONS, n_random_seeds=N_SEEDS,
        batch_size=batch_size, progress=False,
    )
    region = L.region_mask(REGION, fm.bins)
    neurons = L.region_neurons(fm, region)
    spat_df = L.spatial_lesion_study(tower, cache, task, neurons, pos, rc, region, block=BLOCK, batch_size=batch_size)
    return layer_df, targ_df, spat_df


@torch.no_grad()
def _full(lm, batches, masks=None):
    """Full forward over all stimuli; ``masks`` (n, C) ablates block-9 attention channels per stimulus."""
    tower = L.visual_tower(lm.model)
    out = []
    for x, idx in batches():
        if masks is None:
            out.append(L.embed(tower.forward(x.to(lm.dtype))).numpy())
        else:
            m = masks[idx] if masks.ndim == 2 else masks
            with L.ablate_channels(tower.blocks[BLOCK].attn, m):
                out.append(L.embed(tower.forward(x.to(lm.dtype))).numpy())
    return np.concatenate(out)


def naive(lm, pos, batches, fm, rc, hv):
    task = L.zero_shot_task(lm)
    base = task.decide(_full(lm, batches))
    layer_rows = []
    for unit in L.lesion_units(lm.model):
        with L.lesion(lm.model, unit.name, "all"):
            t = L.zero_shot_task(lm)
            c, p = t.decide(_full(lm, batches))
        layer_rows.append((unit.name, c.mean(), p.mean()))
    targ_rows = []
    C = fm.n_neurons
    runs = [("Targeted", None), ("Targeted_Abs", None), ("Targeted_raw", None)] + [("Random", s) for s in range(N_SEEDS)]
    for cond, seed in runs:
        ranks = L.neuron_ranks(hv, cond, seed)
        for p in PROPORTIONS:
            k = L.n_ablated(p, C)
            c, pt = task.decide(_full(lm, batches, ranks < k))
            targ_rows.append((cond, seed, p, c.mean(), pt.mean()))
    region = L.region_mask(REGION, fm.bins)
    mask = np.zeros(C, bool)
    mask[L.region_neurons(fm, region)] = True
    after = task.decide(_full(lm, batches, mask))
    return base, layer_rows, targ_rows, after


def compare(eff, nai) -> float:
    layer_df, targ_df, spat_df = eff
    base, layer_rows, targ_rows, after = nai
    d = [abs(layer_df["baseline_p_target"].iloc[0] - base[1].mean())]
    li = layer_df.set_index("unit")
    for name, c, p in layer_rows:
        d += [abs(li.loc[name, "performance"] - c), abs(li.loc[name, "p_target"] - p)]
    for (cond, seed, p, c, pt), (_, r) in zip(targ_rows, targ_df.iterrows()):
        assert r["condition"] == cond and r["proportion"] == p
        d += [abs(r["performance"] - c), abs(r["p_target"] - pt)]
    d += [np.abs(spat_df["p_after"].to_numpy() - after[1]).max(),
          float(np.abs(spat_df["correct_after"].to_numpy().astype(float) - after[0]).max())]
    return float(max(d))


#: Full image forwards per stimulus of the naive way: baseline, 25 layer lesions, 8 x 8 targeted, 1 regional.
NAIVE_FORWARDS = 1 + 25 + (3 + N_SEEDS) * len(PROPORTIONS) + 1


def _rate(n: int, seconds: float) -> float:
    """GFLOP/s of the naive way's work (NAIVE_FORWARDS x 8.8 GFLOP per stimulus) done in ``seconds``."""
    return NAIVE_FORWARDS * n * GFLOP_PER_IMAGE / seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=128, help="stimuli (default 128)")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--skip-naive", action="store_true")
    args = ap.parse_args(argv)
    print(describe())
    print(f"n={args.n}, batch_size={args.batch_size} (other processes on the cores inflate wall times)")
    print("default study: 25 layer lesions (mode all) + 8 x 8 targeted lesions at block 9 + 1 regional lesion")
    for dtype in args.dtypes:
        lm, stim, pos, extent, batches, fm, rc, hv = _prepare(dtype, args.n, args.batch_size)
        t0, c0 = time.perf_counter(), time.process_time()
        eff = efficient(lm, args.n, pos, batches, fm, rc, hv, args.batch_size)
        t_eff, c_eff = time.perf_counter() - t0, time.process_time() - c0
        print(f"[{dtype}] efficient: wall {t_eff:7.1f} s (cpu {c_eff:7.1f} s) at n={args.n}"
              f" -> {t_eff * 3000 / args.n / 60:6.1f} min wall at n=3000 (linear extrapolation)", flush=True)
        print(f"[{dtype}] efficient: {_rate(args.n, t_eff):.0f} naive-equivalent GFLOP/s"
              f" = {100 * share(_rate(args.n, t_eff), dtype):.0f}% of this machine's {dtype} matmul peak", flush=True)
        if not args.skip_naive:
            t0, c0 = time.perf_counter(), time.process_time()
            nai = naive(lm, pos, batches, fm, rc, hv)
            t_nai, c_nai = time.perf_counter() - t0, time.process_time() - c0
            diff = compare(eff, nai)
            print(f"[{dtype}] naive:     wall {t_nai:7.1f} s (cpu {c_nai:7.1f} s) at n={args.n}"
                  f" -> {t_nai * 3000 / args.n / 60:6.1f} min wall at n=3000", flush=True)
            print(f"[{dtype}] naive:     {_rate(args.n, t_nai):.0f} GFLOP/s"
                  f" = {100 * share(_rate(args.n, t_nai), dtype):.0f}% of this machine's {dtype} matmul peak", flush=True)
            print(f"[{dtype}] speed-up {t_nai / t_eff:4.1f}x wall, {c_nai / c_eff:4.1f}x cpu;"
                  f" max |diff| between the two ways' table values {diff:.2e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
