"""Wall time of the whole study (01 -> 04) for a parameter preset.

Runs the study through the same runner as ``make study`` (with FORCE, so every
stage executes) and prints the time of each stage and the total.

    .venv/bin/python benchmarks/bench_study.py --params params/quick.yaml --dtype float32
    .venv/bin/python benchmarks/bench_study.py --params params/quick.yaml --dtype bfloat16
    .venv/bin/python benchmarks/bench_study.py --params params/blog.yaml --dtype bfloat16
    .venv/bin/python benchmarks/bench_study.py --params params/blog.yaml --dtype float32   # ~70 min on 2 cores

Weights are ``random`` (the pretrained ones are not available offline); the
amount of compute is the same for any weights of the architecture.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from _machine import describe

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params/quick.yaml")
    ap.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value overrides")
    args = ap.parse_args()
    run = ROOT / "data" / f"bench_{Path(args.params).stem}_{args.dtype}"
    cmd = [
        sys.executable, "-m", "helpers.study", "--params", args.params, "--run", str(run), "--force",
        "--set", "weights=random", f"dtype={args.dtype}", f"device={args.device}", *args.set,
    ]
    print(describe())
    print("command:", " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    total = time.perf_counter() - t0
    stages = re.findall(r"\[(\d\d_\w+)\] done in ([\d.]+) s", proc.stdout)
    for name, secs in stages:
        print(f"  {name:<12} {float(secs):8.1f} s")
    print(f"  {'total':<12} {total:8.1f} s  ({total / 60:.1f} min, including kernel start-up and report)")
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
