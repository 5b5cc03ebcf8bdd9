"""The one integer check shared by every module (numpy-only, imported by all, importing no helper)."""

from __future__ import annotations

from typing import Any

import numpy as np


def is_int(v: Any, lo: int | None = None, hi: int | None = None) -> bool:
    """Whether ``v`` is an integer (Python or numpy, bools excluded) in ``[lo, hi]`` (None: unbounded)."""
    return (isinstance(v, (int, np.integer)) and not isinstance(v, bool)
            and (lo is None or v >= lo) and (hi is None or v <= hi))


def check_int(name: str, v: Any, lo: int | None = None, hi: int | None = None) -> int:
    """``int(v)``, or ValueError naming ``name`` and its range unless :func:`is_int` (v, lo, hi)."""
    if not is_int(v, lo, hi):
        rng = "" if lo is None and hi is None else (
            f" >= {lo}" if hi is None else f" <= {hi}" if lo is None else f" in [{lo}, {hi}]")
        raise ValueError(f"{name} must be an integer{rng}, got {v!r}")
    return int(v)
