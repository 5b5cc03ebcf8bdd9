"""The compute floor of the study's method for a preset: the least time its forwards and nulls can take here.

Counts the work each stage must do with every exact shortcut the study takes
(truncated forwards from a residual cache, identity blocks skipped, the last
block for the class token only, block 9's attention computed once, a zeroed
patch embedding embedded once, text lesions re-encoding only the prompts) and
prices it with this machine's measured speed of one residual block, one
class-token-only last block, one MLP half-block and one full image forward
(batch ``batch_size``), and of one stimulus-shuffle and one surrogate null of
a 768-neuron layer on one core (03 scores one layer per core); and, a hard
bound free of timing noise, with the pieces' FLOP counts at this machine's
matmul peak (:data:`_machine.GFLOP_PER_IMAGE` for a forward). Stage times of
``bench_study.py`` above these floors are overhead (I/O, papermill, kernels
below peak); a target below the peak floor cannot be met without changing the
numbers (fewer stimuli, lesions or nulls). 03's figure is the cost of the
current code's nulls, not a hardware bound.

    .venv/bin/python benchmarks/bench_compute_floor.py --params params/blog.yaml
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from _machine import GFLOP_PER_IMAGE, best_time, describe, peaks
from helpers import lesions as L
from helpers import models, scores, study
from helpers.ratemaps import flat_bin_indices, ratemaps_from_bins
from helpers.surrogates import serial_fft
from helpers.sweep import cores

#: Issue 14's targets for the blog preset, seconds (03, and the whole study by dtype).
TARGETS = {"03": 150.0, "float32": 45 * 60.0, "bfloat16": 15 * 60.0}
#: ViT-B/32 image tower: tokens, width, MLP width.
T, C, H = 50, 768, 3072


def gflop_per_image() -> dict[str, float]:
    """Multiply-adds x 2 per image of each piece of :func:`block_seconds` (projections, attention products, MLP)."""
    proj, attn = 2 * C * C, 2 * 2 * T * C  # one token through one C x C projection; one query over T keys and values
    mlp = 2 * 2 * C * H
    return {"forward": GFLOP_PER_IMAGE,
            "block": (T * (4 * proj + mlp) + T * attn) / 1e9,
            "last_cls": (T * 2 * proj + 2 * proj + mlp + attn) / 1e9,  # keys and values for all, the rest for token 0
            "mlp": T * mlp / 1e9,
            "attention": (T * 4 * proj + T * attn) / 1e9}


@torch.no_grad()
def block_seconds(dtype: str, batch_size: int) -> dict[str, float]:
    """Seconds per image: full forward, one block, last block (class token only), MLP half, block attention."""
    lm = models.load_model("ViT-B-32", "random", device="cpu", dtype=dtype, seed=0)
    tower = L.visual_tower(lm.model)
    blk = tower.blocks[5]
    dt = tower.dtype
    images = torch.randn(batch_size, 3, lm.input_size, lm.input_size, dtype=dt)
    x = torch.randn(batch_size, 50, blk.ln_1.normalized_shape[0], dtype=dt)
    per = {
        "forward": lambda: tower.forward(images),
        "block": lambda: blk(x),
        "last_cls": lambda: L.block_cls(blk, x),
        "mlp": lambda: x + blk.ls_2(blk.mlp(blk.ln_2(x))),
        "attention": lambda: blk.attention(q_x=blk.ln_1(x)),
    }
    return {k: best_time(f, 6) / batch_size for k, f in per.items()}  # best of 6: the first call warms up


def null_seconds(bins: int, n: int = 3000, k: int = 768) -> dict[str, float]:
    """Core-seconds per 768-neuron layer: one stimulus shuffle (SI, grid, border) and one surrogate (border), on one
    thread, as each of ``score_layers``' layer threads runs them."""
    rng = np.random.default_rng(0)
    pos, act = rng.uniform(0, 224, (n, 2)), rng.standard_normal((n, k))
    flat = flat_bin_indices(pos, bins, (0.0, 224.0, 0.0, 224.0))
    maps, occ = ratemaps_from_bins(flat, act, bins, 1.0)
    with serial_fft():
        shuffle = best_time(lambda: scores.shuffle_scores(pos, act, bins=bins, sigma=1.0, n_shuffles=2,
                                                          progress=False)) / 2
        surrogate = best_time(lambda: scores.surrogate_scores(maps, occ, n_surrogates=2)) / 2
    return {"shuffle": shuffle, "surrogate": surrogate}


def work(p: dict, n_blocks: int = 12) -> dict[str, dict[str, float]]:
    """Stage -> {piece: images through it}: the forwards each stage must run with the study's shortcuts."""
    n, last = p["n_stimuli"], n_blocks - 1
    record_conds = 1 + bool(p["include_random"])
    perturb_conds = 1 + bool(p["include_random"] and p["perturb_random"])
    runs = 3 + p["n_random_seeds"]  # Targeted, Targeted_Abs, Targeted_raw, Random x seeds
    ks = {L.n_ablated(q, 768) for q in p["proportions"]}
    jobs = runs * len([k for k in ks if 0 < k < 768]) + (768 in ks)
    after = {"block": last - 1 - p["block"], "last_cls": 1}  # blocks after the lesioned one
    lesioned = {"mlp": 1, **after}  # one neuron lesion from the cached attention output
    layer = {"block": sum(last - 1 - k for k in range(last)), "last_cls": last}  # block k lesioned: k+1.. run
    sets = 2 + p["n_control_seeds"]
    per_cond = {"forward": 1, "block": layer["block"] + (jobs + sets) * lesioned["block"],
                "last_cls": layer["last_cls"] + (jobs + sets) * lesioned["last_cls"],
                "mlp": jobs + sets, "attention": 2}
    return {"01": {"forward": n}, "02": {"forward": record_conds * n},
            "04": {k: perturb_conds * n * v for k, v in per_cond.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params/blog.yaml")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    p = {**study.all_declared(study.notebooks()), **study.load_params(args.params)}  # the notebooks' defaults first
    print(describe())
    nulls = null_seconds(p["bins"])
    layers = 12 * (1 + bool(p["include_random"]))
    n_cores = cores()
    floor03 = layers * p["n_shuffles"] * (nulls["shuffle"] + nulls["surrogate"]) / n_cores
    print(f"{args.params}: {p['n_stimuli']} stimuli; 03: {layers} layers x {p['n_shuffles']} x "
          f"(shuffle {nulls['shuffle'] * 1e3:.0f} ms + surrogate {nulls['surrogate'] * 1e3:.0f} ms) / {n_cores} cores "
          f"= {floor03:.0f} s (target {TARGETS['03']:.0f} s)")
    flops = gflop_per_image()
    for dtype in args.dtypes:
        sec = block_seconds(dtype, args.batch_size)
        print(f"{dtype}: per image {', '.join(f'{k} {v * 1e3:.2f} ms ({flops[k] / v:.0f} GFLOP/s)' for k, v in sec.items())}")
        for how, price in (("measured kernels", sec), (f"matmul peak {peaks()[dtype]:.0f} GFLOP/s",
                                                       {k: f / peaks()[dtype] for k, f in flops.items()})):
            stages = {s: sum(imgs * price[k] for k, imgs in w.items()) for s, w in work(p).items()}
            total = sum(stages.values()) + floor03
            print(f"  floor at {how}: 01 {stages['01']:.0f} s, 02 {stages['02']:.0f} s, 03 {floor03:.0f} s, "
                  f"04 {stages['04']:.0f} s; total {total / 60:.1f} min (01+02+04 {(total - floor03) / 60:.1f})")
    print(f"blog targets: 03 {TARGETS['03']:.0f} s; float32 {TARGETS['float32'] / 60:.0f} min, "
          f"bfloat16 {TARGETS['bfloat16'] / 60:.0f} min (quick: 3 and 1.5 min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
