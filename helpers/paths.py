"""Every file name of a run folder, in one place: :class:`Run` (and the recording folder's names).

A run folder ``data/<run-name>/`` (names on disk are fixed: older runs must still load)::

    params.yaml, .stages.json, 0N_<stage>.ipynb        runner
    stimuli.json, model.json, zeroshot.csv             01
    recordings/<condition>/manifest.json, <module>.npy, embeddings.npy   02
    analysis/scores.csv, significance.csv, decoding.csv, ratemaps_<condition>.npz   03
    perturb/*.csv (cache/<condition>/ is scratch)      04
    figures/<stage>_*.png, report.html, screenshots/   all stages, report, browser test

Weights conditions are ``"model"`` and ``"random"`` (seeded random init, the blog's toggle).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

#: Repository root (the folder holding ``helpers/``); notebooks never use the kernel's cwd.
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Where run folders live by default, and sweep folders.
DATA_DIR = REPO_ROOT / "data"
SWEEPS_DIR = DATA_DIR / "sweeps"

#: The two weight conditions of the study.
CONDITIONS = ("model", "random")

#: A recording folder (``Run.recordings(condition)``): its manifest and its embeddings array.
RECORDING_MANIFEST = "manifest.json"
RECORDING_EMBEDDINGS = "embeddings.npy"


def recording_array(module: str) -> str:
    """File name of one module's activations in a recording folder."""
    return f"{module}.npy"


def run_path(run_dir: str | os.PathLike, *, create: bool = True) -> Path:
    """``"quick"`` and ``"data/quick"`` mean ``<repo>/data/quick``; an absolute path stays; created unless ``create=False``."""
    p = Path(run_dir).expanduser()
    if not p.is_absolute():
        p = (REPO_ROOT / p) if p.parts[:1] == (DATA_DIR.name,) else (DATA_DIR / p)
    if create:
        p.mkdir(parents=True, exist_ok=True)
    return p


class Run(os.PathLike):
    """One run folder and every artefact in it (``Run(run)`` of a ``Run`` is the same folder).

    ``create=True`` (writers) makes the folder and, on access, ``figures/``, ``analysis/``
    and ``perturb/``; readers pass ``create=False`` and nothing is made.
    """

    #: Data artefacts of each stage, relative to the root (files, or folders taken
    #: recursively); the runner hashes them to decide what to rerun.
    STAGE_OUTPUTS = {
        "01_design": ("stimuli.json", "model.json", "zeroshot.csv"),
        "02_record": ("recordings",),
        "03_analyse": ("analysis",),
        "04_perturb": ("perturb",),
    }
    #: Scratch folder names inside stage outputs (never hashed, deleted by the runner).
    SCRATCH = ("cache",)
    #: Sub-folder -> report stage of the tables in it.
    TABLE_STAGES = {"analysis": "analyse", "perturb": "perturb", "recordings": "record"}

    def __init__(self, run_dir: str | os.PathLike, *, create: bool = True) -> None:
        self.root = run_path(run_dir, create=create)
        self.create = create

    def __fspath__(self) -> str:
        return str(self.root)

    def __str__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Run) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    @property
    def name(self) -> str:
        return self.root.name

    def _dir(self, name: str) -> Path:
        p = self.root / name
        if self.create:
            p.mkdir(parents=True, exist_ok=True)
        return p

    # runner
    params = property(lambda self: self.root / "params.yaml")
    state = property(lambda self: self.root / ".stages.json")
    lock = property(lambda self: self.root / ".lock")

    def notebook(self, stage: str) -> Path:
        """The executed copy of ``stage`` (``"03_analyse"``)."""
        return self.root / f"{stage}.ipynb"

    def running_notebook(self, stage: str) -> Path:
        """Scratch copy of ``stage`` while it executes (never replaces the last good copy)."""
        return self.root / f".{stage}.running.ipynb"

    def failed_notebook(self, stage: str) -> Path:
        """Executed copy of a stage that raised (kept beside the last good copy)."""
        return self.root / f"{stage}.failed.ipynb"

    def running_notebooks(self) -> list[Path]:
        return sorted(self.root.glob(".*.running.ipynb"))

    # 01
    stimuli = property(lambda self: self.root / "stimuli.json")
    model = property(lambda self: self.root / "model.json")
    zeroshot = property(lambda self: self.root / "zeroshot.csv")

    # 02
    def recordings(self, condition: str) -> Path:
        """``recordings/<condition>`` (not created)."""
        if condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
        return self.root / "recordings" / condition

    def recorded(self, condition: str) -> bool:
        """Whether ``condition`` has a recording manifest."""
        return (self.recordings(condition) / RECORDING_MANIFEST).is_file()

    # 03
    analysis = property(lambda self: self._dir("analysis"))
    scores = property(lambda self: self.analysis / "scores.csv")
    significance = property(lambda self: self.analysis / "significance.csv")
    decoding = property(lambda self: self.analysis / "decoding.csv")

    def ratemaps(self, condition: str) -> Path:
        return self.analysis / f"ratemaps_{condition}.npz"

    # 04
    perturb = property(lambda self: self._dir("perturb"))
    layer_lesions = property(lambda self: self.perturb / "layer_lesions.csv")
    targeted_lesions = property(lambda self: self.perturb / "targeted_lesions.csv")
    selection_specificity = property(lambda self: self.perturb / "selection_specificity.csv")
    spatial_lesion = property(lambda self: self.perturb / "spatial_lesion.csv")
    spatial_localisation = property(lambda self: self.perturb / "spatial_localisation.csv")
    spatial_dissociation = property(lambda self: self.perturb / "spatial_dissociation.csv")
    cache_root = property(lambda self: self.root / "perturb" / "cache")

    def cache(self, condition: str) -> Path:
        """Scratch residual-stream cache of 04 (deleted at the end of the stage and by the runner)."""
        return self.cache_root / condition

    # figures and report
    figures = property(lambda self: self._dir("figures"))
    report = property(lambda self: self.root / "report.html")
    screenshots = property(lambda self: self.root / "screenshots")

    def figure(self, name: str) -> Path:
        """``figures/<name>.png``; ``name`` starts with its stage (``analyse_decoding``)."""
        return self.figures / f"{name}.png"

    def figure_files(self) -> list[Path]:
        d = self.root / "figures"
        return sorted(d.glob("*.png")) if d.is_dir() else []

    def tables(self) -> list[Path]:
        """Every CSV in the run, sorted."""
        return sorted(self.root.rglob("*.csv"))

    def table_stage(self, path: Path) -> str:
        """Report stage of a CSV from where it lives (``""``: unknown)."""
        rel = Path(path).relative_to(self.root).parts
        if len(rel) == 1:
            return "design" if Path(path) == self.zeroshot else ""
        return self.TABLE_STAGES.get(rel[0], "")


class SweepFolder:
    """A sweep folder ``data/sweeps/<name>/``: its record, points and summary (each point is a :class:`Run`)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.root = Path(folder)

    meta = property(lambda self: self.root / "sweep.json")
    points_dir = property(lambda self: self.root / "points")
    summary = property(lambda self: self.root / "summary.html")
    points_table = property(lambda self: self.root / "points.csv")
    figures = property(lambda self: self.root / "figures")
    slurm_logs = property(lambda self: self.root / "slurm-logs")

    def table(self, name: str) -> Path:
        return self.root / f"{name}.csv"

    def figure(self, name: str) -> Path:
        return self.figures / f"{name}.png"

    def run_dir(self, point: str) -> Path:
        return self.root / point

    def run(self, point: str) -> Run:
        return Run(self.run_dir(point), create=False)

    def point_file(self, point: str, suffix: str) -> Path:
        """``points/<point>.<suffix>`` (``yaml`` parameters, ``json`` outcome, ``log``)."""
        return self.points_dir / f"{point}.{suffix}"


class DiskSpaceError(OSError):
    """Not enough free disk for an array about to be written (a full disk would kill the kernel with SIGBUS)."""


#: Free space kept in reserve on top of what an allocation needs.
DISK_MARGIN_BYTES = 64 * 2**20


def require_free_space(folder: str | Path, nbytes: int, what: str) -> None:
    """Refuse to allocate ``nbytes`` under ``folder`` unless that much (plus a margin) is free.

    Raises:
    DiskSpaceError — Naming the folder, the bytes needed and the bytes free.
    """
    free = shutil.disk_usage(folder).free
    if nbytes + DISK_MARGIN_BYTES > free:
        raise DiskSpaceError(
            f"{what} needs {nbytes:,} bytes ({nbytes / 2**30:.2f} GiB) in {folder}, but only {free:,} bytes "
            f"({free / 2**30:.2f} GiB) are free; free some space or choose another run folder (RUN=)"
        )
