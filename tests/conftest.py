"""Shared fixtures. Models are built once per session: a ViT-B/32 build takes seconds."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest


@pytest.fixture(scope="session")
def vit_random():
    """Seeded random-init ViT-B/32 (QuickGELU, as the openai architecture), fp32, CPU."""
    from helpers.models import load_model

    return load_model("ViT-B-32", "random", device="cpu", dtype="float32", seed=0)


#: Files a finished small run must hold for the report and explorer tests (03 and 04 both done).
SMALL_RUN_FILES = (
    "model.json", "zeroshot.csv", "analysis/scores.csv", "analysis/significance.csv", "analysis/decoding.csv",
    "analysis/ratemaps_model.npz", "analysis/ratemaps_random.npz", "perturb/layer_lesions.csv",
    "perturb/targeted_lesions.csv", "perturb/spatial_localisation.csv", "perturb/spatial_dissociation.csv",
)


def _finished(run) -> bool:
    return all((run / f).is_file() for f in SMALL_RUN_FILES)


@pytest.fixture(scope="session")
def small_run():
    """A finished run of the small study (``params/nbval.yaml``: 96 stimuli, random weights).

    ``make test`` passes the prepared notebooks to pytest before ``tests/``, so
    nbval has executed ``data/_nbval`` (01 -> 04) by the time a test asks for
    this fixture: that folder is reused when every file of
    :data:`SMALL_RUN_FILES` is there. Otherwise (a test module run on its own,
    or an nbval failure) the study runner builds the same small study into
    ``data/_small_run``, about 3-5 min on 2 CPU cores, and nothing when an
    earlier build there is complete and unchanged (the runner skips finished stages).
    """
    import subprocess
    import sys

    from helpers.paths import DATA_DIR, REPO_ROOT

    nbval_run = DATA_DIR / "_nbval"
    if _finished(nbval_run):
        return nbval_run
    run = DATA_DIR / "_small_run"
    subprocess.run(
        [sys.executable, "-m", "helpers.study", "--params", str(REPO_ROOT / "params" / "nbval.yaml"), "--run", str(run)],
        check=True, cwd=REPO_ROOT,
    )
    assert _finished(run), f"the study runner finished but {run} lacks some of {SMALL_RUN_FILES}"
    return run
