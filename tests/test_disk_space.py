"""A disk too small for a recording or the residual cache is refused up front, by name (issue 12 case 3).

Without the check, numpy's memory maps are created sparse and the kernel dies
with SIGBUS when a page can't be written; the user saw "Kernel died".
"""

from collections import namedtuple

import numpy as np
import pytest

from helpers import lesions, paths, record
from helpers.stimuli import iter_batches, make_stimuli

Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def tiny_disk(monkeypatch):
    monkeypatch.setattr(paths.shutil, "disk_usage", lambda p: Usage(2**30, 2**30 - 2**20, 2**20))


def test_recording_refused_when_the_disk_is_too_small_and_earlier_artefacts_kept(vit_random, tmp_path, tiny_disk):
    earlier = tmp_path / "model" / "kept.csv"
    earlier.parent.mkdir()
    earlier.write_text("a,b\n1,2\n")
    folder = tmp_path / "random"
    with pytest.raises(paths.DiskSpaceError) as err:
        record.record(vit_random, make_stimuli(4, seed=1), folder, batch_size=4, progress=False)
    msg = str(err.value)
    assert str(folder) in msg and "free" in msg
    need = 12 * 4 * 768 * 4 + 4 * 512 * 4  # 12 layers x 4 stimuli x 768 float32, plus the embeddings
    assert f"{need:,}" in msg and f"{2**20:,}" in msg
    assert not list(folder.glob("*.npy"))
    assert earlier.read_text() == "a,b\n1,2\n"


def test_residual_cache_refused_when_the_disk_is_too_small(vit_random, tmp_path, tiny_disk):
    stim = make_stimuli(4, seed=1)
    tower = lesions.visual_tower(vit_random.model)
    with pytest.raises(paths.DiskSpaceError, match=str(tmp_path / "cache")):
        lesions.build_residual_cache(tower, iter_batches(stim, vit_random.preprocess, 4), 4,
                                     directory=tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("*.npy"))


def test_enough_room_is_not_refused(tmp_path):
    paths.require_free_space(tmp_path, 1024, "a small file")
    with pytest.raises(paths.DiskSpaceError):
        paths.require_free_space(tmp_path, 2**62, "an impossible file")


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 1 MiB tmpfs (needs root and mount rights; skipped where the sandbox refuses)."""
    import subprocess

    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_real_full_disk_gives_the_clear_error_and_keeps_earlier_artefacts(vit_random, small_tmpfs):
    earlier = small_tmpfs / "zeroshot.csv"
    earlier.write_text("label,p\ncircle,0.5\n")
    with pytest.raises(paths.DiskSpaceError, match=str(small_tmpfs / "model")):
        record.record(vit_random, make_stimuli(16, seed=1), small_tmpfs / "model", batch_size=8, progress=False)
    assert earlier.read_text() == "label,p\ncircle,0.5\n"
    assert not list((small_tmpfs / "model").glob("*.npy"))
