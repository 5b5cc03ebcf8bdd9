"""What machine a benchmark ran on, so that figures compare across machines.

Every benchmark prints :func:`describe` first: the CPU, ATen's vector capability,
whether bf16 is native there (:func:`helpers.models.native_bf16`, the rule
``dtype="auto"`` uses), the load, and the measured fp32 and bf16 matmul peaks
(:func:`helpers.models.matmul_peaks`, 1024 x 1024, about 1-2 s). Throughput is then
reported as a share of this machine's own peak (:func:`share`): the issue-14 targets
hold in absolute terms on the AVX-512 machine and as the same share of the fp32
peak elsewhere.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from helpers.models import matmul_peaks, native_bf16

#: Forward cost of one 224-px image through the ViT-B/32 image tower (shared/reference/NOTES.md).
GFLOP_PER_IMAGE = 8.8

#: Square size of the matmul probe.
PROBE_SIZE = 1024


def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peaks() -> dict[str, float]:
    """fp32 and bf16 matmul peaks of this machine, GFLOP/s (probe run once per process)."""
    return matmul_peaks(PROBE_SIZE, 0.5)


def describe() -> str:
    """Lines naming the CPU, its capability, native bf16, threads, load and matmul peaks."""
    p = peaks()
    native, why = native_bf16("cpu")
    return (f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"load average {os.getloadavg()[0]:.2f}\n"
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {'yes' if native else 'no'} ({why})\n"
            f"matmul peak ({PROBE_SIZE}^2, fastest of ~0.5 s): fp32 {p['float32']:.0f} GFLOP/s, "
            f"bf16 {p['bfloat16']:.0f} GFLOP/s")


def share(gflops: float, dtype: str = "float32") -> float:
    """``gflops`` as a fraction of this machine's measured ``dtype`` matmul peak."""
    return gflops / peaks()[dtype]


def best_time(fn, repeats: int = 3, clock=time.perf_counter) -> float:
    """Best time of ``repeats`` calls of ``fn``, in seconds of ``clock`` (wall by default; ``time.process_time``
    gives the CPU time of all threads, steadier on a shared machine: with threaded FFTs that is the cost, not the
    latency)."""
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return min(times)
