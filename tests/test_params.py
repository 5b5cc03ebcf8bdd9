"""Parameters are declared once (helpers.params.SPEC) and refused before any stage runs (issue 12 case 2)."""

import papermill as pm
import pytest
import yaml

from helpers import params, study
from helpers.paths import REPO_ROOT


def test_every_notebook_parameter_is_declared_and_every_default_and_preset_is_valid():
    declared = study.all_declared(study.notebooks())
    assert set(declared) == set(params.SPEC)
    params.validate(declared)
    for preset in sorted((REPO_ROOT / "params").glob("*.yaml")):
        params.validate({**declared, **(yaml.safe_load(preset.read_text()) or {})})


@pytest.mark.parametrize(
    "bad",
    [
        {"proportions": [1.5]}, {"proportions": []}, {"block": 12}, {"block": -1}, {"bins": 4}, {"bins": 2.5},
        {"n_stimuli": 0}, {"n_stimuli": True}, {"tokens": "patches"}, {"tokens": "foo"}, {"device": "cuda:99"},
        {"model": "ViT-B-99"}, {"dtype": "int8"}, {"percentile": 100}, {"sigma": -1}, {"region": "middle"},
        {"prompts": {"circle": "a black circle"}}, {"n_lesion_stimuli": 10_000}, {"diameter_min": 90.0},
        {"shapes": ["hexagon"]}, {"region_proportion": 0}, {"batch_size": 0}, {"decoding_folds": 1},
        {"decoding_folds": 5000}, {"n_shuffles": 5}, {"null_model": "layer"}, {"significance_rule": "sound"}, {"border_null": "permutation"},
    ],
)
def test_a_bad_value_is_refused_before_any_stage_and_named(bad, tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(pm, "execute_notebook", lambda *a, **k: ran.append(a))
    with pytest.raises(ValueError) as err:
        study.run_study({"weights": "random", **bad}, run=str(tmp_path / "run"))
    assert next(iter(bad)) in str(err.value)
    assert ran == [] and not (tmp_path / "run").exists()


def test_every_bad_parameter_is_listed_at_once():
    declared = study.all_declared(study.notebooks())
    with pytest.raises(ValueError) as err:
        params.validate({**declared, "bins": 1, "block": 40, "lesion_mode": "some"})
    assert all(name in str(err.value) for name in ("bins", "block", "lesion_mode"))


def test_the_old_name_layer_still_sets_block_with_a_warning(tmp_path, monkeypatch):
    old = tmp_path / "old.yaml"
    old.write_text("layer: 5\n")
    with pytest.warns(FutureWarning, match="block"):
        got = study.load_params(old)
    assert got == {"block": 5}
    new = tmp_path / "new.yaml"
    new.write_text("block: 5\n")
    with pytest.warns(FutureWarning):  # an override under the old name beats the file's new one
        assert study.load_params(new, {"layer": 7}) == {"block": 7}
    with pytest.raises(ValueError, match="layer"):
        params.upgrade({"layer": 5, "block": 6})
    ran = []
    monkeypatch.setattr(pm, "execute_notebook", lambda *a, **k: ran.append(a))
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="block"):
        study.run_study({"weights": "random", "layer": 12}, run=str(tmp_path / "run"))
    assert ran == [] and not (tmp_path / "run").exists()
