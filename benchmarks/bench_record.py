"""Speed of the Record stage: prints figures, asserts nothing.

    .venv/bin/python benchmarks/bench_record.py            # 256 stimuli, batch 64
    .venv/bin/python benchmarks/bench_record.py --n 512 --repeats 3

What it measures, for the default recording (CLS token of the 12 attention
sublayers of ViT-B-32, random weights):

1. the machine (benchmarks/_machine.py): CPU capability, native bf16, and its
   fp32 and bf16 matmul peaks, which the model forward is compared against;
2. rendering + preprocessing alone (images/s), as :func:`helpers.stimuli.iter_batches` does it;
3. on the same pre-rendered, preprocessed batches: a plain ``encode_image`` loop
   and :func:`helpers.record.record` (hooks, token selection, memmap writes,
   manifest after every batch), in fp32 and bf16; the overhead of recording
   over the plain loop; achieved GFLOP/s (8.8 GFLOP per 224-px image, see
   shared/reference/NOTES.md) against the measured matmul rate;
4. end to end: ``record`` rendering its own stimuli (DataLoader, 0 workers).

Timings are the best of ``--repeats`` runs, alternating plain and recorded
loops so that load from other processes on the machine hits both alike.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from _machine import GFLOP_PER_IMAGE, describe, peaks
from helpers import record as R
from helpers.models import load_model, weights_hash
from helpers.stimuli import iter_batches, make_stimuli


def render_all(stim, preprocess, batch_size: int) -> tuple[torch.Tensor, float]:
    """All stimuli rendered and preprocessed, and the seconds it took."""
    t = time.perf_counter()
    imgs = torch.cat([x for x, _ in iter_batches(stim, preprocess, batch_size)])
    return imgs, time.perf_counter() - t


class Timer:
    """Wall seconds, and the share of ``threads`` cores this process got (1.0 = no contention)."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w
        self.share = (time.process_time() - self.c) / (self.wall * torch.get_num_threads())
        return False


@torch.inference_mode()
def plain_loop(lm, images: torch.Tensor, batch_size: int) -> Timer:
    """``encode_image`` over the batches (embeddings copied to host, like record)."""
    with Timer() as t:
        for a in range(0, images.shape[0], batch_size):
            lm.model.encode_image(images[a : a + batch_size].to(lm.device, lm.dtype), normalize=True).float().cpu()
    return t


def record_loop(lm, stim, images, batch_size: int, out: Path, whash: str) -> Timer:
    with Timer() as t:
        R.record(lm, stim, out, batch_size=batch_size, images=images, overwrite=True, progress=False,
                 weights_hash=whash)
    return t


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=256, help="stimuli (default 256)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end (rendering) runs")
    args = ap.parse_args(argv)
    n, bs = args.n, args.batch_size

    print(f"python {platform.python_version()} (other processes share these cores)")
    print(describe())
    peak32, peak16 = peaks()["float32"], peaks()["bfloat16"]

    stim = make_stimuli(n, seed=0)
    lm32 = load_model(args.model, "random", device=args.device, dtype="float32", seed=0)
    lm16 = load_model(args.model, "random", device=args.device, dtype="bfloat16", seed=0)
    images, t_render = render_all(stim, lm32.preprocess, bs)
    print(f"render + preprocess: {n / t_render:.0f} images/s ({1e3 * t_render / n:.1f} ms/image, one process)")
    print(f"recording: {len(R.resolve_layers(lm32))} layers ({R.DEFAULT_LAYERS}), tokens=cls, "
          f"n={n}, batch {bs}, storage float32\n")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, lm, peak in (("fp32", lm32, peak32), ("bf16", lm16, peak16)):
            whash = weights_hash(lm.model)
            plain_loop(lm, images[:bs], bs)  # warm-up (oneDNN kernels, allocator)
            plains = [plain_loop(lm, images, bs)]
            recs = [record_loop(lm, stim, images, bs, Path(tmp) / label, whash)]
            for _ in range(args.repeats - 1):
                plains.append(plain_loop(lm, images, bs))
                recs.append(record_loop(lm, stim, images, bs, Path(tmp) / label, whash))
            t_plain, t_rec = min(plains, key=lambda t: t.wall), min(recs, key=lambda t: t.wall)
            timed = [t_plain, t_rec]
            t_e2e = float("nan")
            if not args.skip_e2e:
                with Timer() as e2e:
                    R.record(lm, stim, Path(tmp) / f"{label}_e2e", batch_size=bs, overwrite=True, progress=False,
                             weights_hash=whash)
                t_e2e = e2e.wall
                timed.append(e2e)
            share = min(t.share for t in timed)
            rows.append((label, n / t_plain.wall, n / t_rec.wall, t_rec.wall / t_plain.wall - 1,
                         n / t_rec.wall * GFLOP_PER_IMAGE, peak, peak32, n / t_e2e, share))

    print(f"{'dtype':<6}{'plain img/s':>12}{'record img/s':>14}{'overhead':>10}{'GFLOP/s':>9}"
          f"{'% own peak':>11}{'% fp32 peak':>12}{'end-to-end img/s':>18}{'cpu share':>11}")
    for label, ips_plain, ips_rec, ovh, gf, peak, p32, e2e, share in rows:
        print(f"{label:<6}{ips_plain:>12.1f}{ips_rec:>14.1f}{100 * ovh:>9.1f}%{gf:>9.0f}"
              f"{100 * gf / peak:>10.0f}%{100 * gf / p32:>11.0f}%{e2e:>18.1f}{share:>11.2f}")
    print("\noverhead = record time / plain encode_image time - 1 on identical pre-rendered batches "
          "(target <= 10%);\nGFLOP/s = record img/s x 8.8 GFLOP/image; end-to-end includes rendering in the "
          "main process (DataLoader, 0 workers);\ncpu share = process CPU time / (wall x threads), lowest of the "
          "plain, record and end-to-end runs: well below 1 means other processes took the cores.")
    if not args.skip_e2e:
        parts = [f"{max(0.0, 100 * (1 - r[7] / r[2])):.0f}% of end-to-end {r[0]} time" for r in rows]
        print(f"rendering costs {' and '.join(parts)} (record img/s vs end-to-end img/s).")

if __name__ == "__main__":
    main()
