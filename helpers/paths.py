"""Run-folder layout shared by every stage.

A run folder ``data/<run-name>/`` holds everything one study run produced::

    params.yaml                      parameters used (written by the runner)
    01_design.ipynb ... 04_perturb.ipynb   executed notebooks
    stimuli.json                     stimulus manifest + content hash      (01)
    zeroshot.csv                     zero-shot table                       (01)
    figures/*.png                    every figure                          (all)
    recordings/<condition>/          one folder per weights condition      (02)
        manifest.json                what was recorded, hashes, complete flag
        <module name>.npy            n_stimuli x [tokens x] neurons
        embeddings.npy               n_stimuli x embed_dim, final image embedding
    analysis/scores.csv              layer x neuron x condition scores     (03)
    analysis/ratemaps_<condition>.npz ratemaps + occupancy                 (03)
    perturb/*.csv                    lesion results                        (04)

Conditions are ``"model"`` (the weights that were asked for) and ``"random"``
(the seeded random-init control of the same architecture, the blog's
"random weights" toggle).
"""

from __future__ import annotations

import shutil
from pathlib import Path

#: Repository root (the folder holding ``helpers/``). Notebooks build paths from
#: here, never from the kernel's working directory (nbval starts kernels in the
#: notebook's folder, papermill in the process's cwd).
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Where run folders live by default.
DATA_DIR = REPO_ROOT / "data"

#: The two weight conditions of the study.
CONDITIONS = ("model", "random")


def run_path(run_dir: str | Path, *, create: bool = True) -> Path:
    """Resolve a run folder: absolute paths stay, relative ones hang off ``data/``.

    Parameters
    ----------
    run_dir : str or Path
        ``"quick"`` means ``<repo>/data/quick``; an absolute path is used as is.
        A relative path that already starts with ``data/`` (``"data/quick"``) is
        taken from the repository root, so it also means ``<repo>/data/quick``
        rather than ``<repo>/data/data/quick``.

    create : bool
        Create the folder if missing (readers of a finished run pass False).

    Returns
    -------
    Path
        The run folder.
    """
    p = Path(run_dir).expanduser()
    if not p.is_absolute():
        p = (REPO_ROOT / p) if p.parts[:1] == (DATA_DIR.name,) else (DATA_DIR / p)
    if create:
        p.mkdir(parents=True, exist_ok=True)
    return p


def _subdir(run_dir: str | Path, name: str) -> Path:
    p = run_path(run_dir) / name
    p.mkdir(parents=True, exist_ok=True)
    return p


def figures_dir(run_dir: str | Path) -> Path:
    """``<run>/figures``, created if missing."""
    return _subdir(run_dir, "figures")


def stimuli_manifest(run_dir: str | Path) -> Path:
    """Path of the stimulus manifest written by 01."""
    return run_path(run_dir) / "stimuli.json"


def model_json(run_dir: str | Path) -> Path:
    """Path of the model identity (``models.model_identity``) written by 01."""
    return run_path(run_dir) / "model.json"


def recordings_dir(run_dir: str | Path, condition: str) -> Path:
    """``<run>/recordings/<condition>`` (not created)."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    return run_path(run_dir) / "recordings" / condition


def analysis_dir(run_dir: str | Path) -> Path:
    """``<run>/analysis``, created if missing."""
    return _subdir(run_dir, "analysis")


def perturb_dir(run_dir: str | Path) -> Path:
    """``<run>/perturb``, created if missing."""
    return _subdir(run_dir, "perturb")


class DiskSpaceError(OSError):
    """Not enough free disk for an array about to be written (a full disk would kill the kernel with SIGBUS)."""


#: Free space kept in reserve on top of what an allocation needs.
DISK_MARGIN_BYTES = 64 * 2**20


def require_free_space(folder: str | Path, nbytes: int, what: str) -> None:
    """Refuse to allocate ``nbytes`` under ``folder`` unless that much (plus a margin) is free.

    Raises
    ------
    DiskSpaceError
        Naming the folder, the bytes needed and the bytes free.
    """
    free = shutil.disk_usage(folder).free
    if nbytes + DISK_MARGIN_BYTES > free:
        raise DiskSpaceError(
            f"{what} needs {nbytes:,} bytes ({nbytes / 2**30:.2f} GiB) in {folder}, but only {free:,} bytes "
            f"({free / 2**30:.2f} GiB) are free; free some space or choose another run folder (RUN=)"
        )
