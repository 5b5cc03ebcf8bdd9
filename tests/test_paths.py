"""paths.Run names every artefact of a run folder; the names on disk are fixed, so runs made before still load."""

from __future__ import annotations

import pytest

from helpers import paths
from helpers.names import block_label, block_module, hook_name, label, unit_label

pytestmark = pytest.mark.fast

#: The layout every earlier run has on disk (written out here, independently of paths.py).
LAYOUT = {
    "params": "params.yaml", "state": ".stages.json", "lock": ".lock", "stimuli": "stimuli.json",
    "model": "model.json", "zeroshot": "zeroshot.csv", "scores": "analysis/scores.csv",
    "significance": "analysis/significance.csv", "decoding": "analysis/decoding.csv",
    "layer_lesions": "perturb/layer_lesions.csv", "targeted_lesions": "perturb/targeted_lesions.csv",
    "selection_specificity": "perturb/selection_specificity.csv", "spatial_lesion": "perturb/spatial_lesion.csv",
    "spatial_localisation": "perturb/spatial_localisation.csv",
    "spatial_dissociation": "perturb/spatial_dissociation.csv", "report": "report.html",
    "screenshots": "screenshots", "cache_root": "perturb/cache",
}


def test_every_artefact_keeps_its_name_on_disk(tmp_path):
    run = paths.Run(tmp_path / "r")
    for attr, rel in LAYOUT.items():
        assert getattr(run, attr).relative_to(run.root).as_posix() == rel, attr
    assert run.ratemaps("random").relative_to(run.root).as_posix() == "analysis/ratemaps_random.npz"
    assert run.recordings("model").relative_to(run.root).as_posix() == "recordings/model"
    assert run.figure("analyse_decoding").relative_to(run.root).as_posix() == "figures/analyse_decoding.png"
    assert run.notebook("03_analyse").name == "03_analyse.ipynb"
    assert run.cache("model").relative_to(run.root).as_posix() == "perturb/cache/model"
    assert (paths.RECORDING_MANIFEST, paths.RECORDING_EMBEDDINGS) == ("manifest.json", "embeddings.npy")
    assert paths.recording_array("visual.conv1") == "visual.conv1.npy"
    assert paths.Run.STAGE_OUTPUTS == {"01_design": ("stimuli.json", "model.json", "zeroshot.csv"),
                                       "02_record": ("recordings",), "03_analyse": ("analysis",),
                                       "04_perturb": ("perturb",)}
    with pytest.raises(ValueError, match="condition"):
        run.recordings("Targeted")


def test_readers_create_nothing_and_writers_create_stage_folders(tmp_path):
    reader = paths.Run(tmp_path / "r", create=False)
    assert not reader.scores.exists() and not reader.figure_files() and not (tmp_path / "r").exists()
    writer = paths.Run(tmp_path / "r")
    assert writer.scores.parent.is_dir() and writer.figure("x").parent.is_dir()
    assert paths.Run(writer) == writer and str(paths.Run(writer)) == str(tmp_path / "r")  # a Run is a path


def test_recorded_and_table_stage(tmp_path):
    run = paths.Run(tmp_path / "r")
    assert not run.recorded("model")
    run.recordings("model").mkdir(parents=True)
    (run.recordings("model") / paths.RECORDING_MANIFEST).write_text("{}")
    assert run.recorded("model") and not run.recorded("random")
    assert [run.table_stage(p) for p in (run.zeroshot, run.scores, run.layer_lesions, run.root / "x.csv")] == [
        "design", "analyse", "perturb", ""]


def test_module_names_and_labels_derive_from_the_open_clip_path():
    name = block_module(9)
    assert name == "visual.transformer.resblocks.9.attn" and block_module(0, None, "text") == "transformer.resblocks.0"
    assert (hook_name(name), label(name), block_label(name)) == ("image.blocks.9.hook_attn_out", "L9 attn", "block 9")
    assert [unit_label(None, "conv1"), unit_label(9, "block"), unit_label(9, "mlp")] == [
        "conv1", "resblock 9", "resblock 9 mlp"]
