"""Notebook 04's table helpers: conditions stacked in order, verdicts per (weights, metric); the model.json check."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from helpers import lesions, models


@pytest.mark.fast
def test_stack_conditions_keeps_rows_in_order_and_leads_with_weights():
    a = pd.DataFrame({"x": [1, 2]})
    b = pd.DataFrame({"x": [3]})
    out = lesions.stack_conditions({"model": a, "random": b})
    assert list(out.columns) == ["weights", "x"]
    assert out.weights.tolist() == ["model", "model", "random"] and out.x.tolist() == [1, 2, 3]
    assert list(out.index) == [0, 1, 2]
    assert list(a.columns) == ["x"]  # the inputs are not changed


@pytest.mark.fast
def test_localisation_verdicts_read_the_outside_reference_only():
    rows = []
    for w in ("model", "random"):
        for metric in ("margin", "p_target"):
            for control, ok in (("opposite", w == "model"), ("random", metric == "margin")):
                rows.append(dict(weights=w, metric=metric, control=control, reference="outside",
                                 localised=ok, literal_localised=True))
                rows.append(dict(weights=w, metric=metric, control=control, reference="opposite",
                                 localised=not ok, literal_localised=False))
    v = lesions.localisation_verdicts(pd.DataFrame(rows))
    assert list(v.columns) == ["DiD vs opposite", "DiD vs random", "blog-literal (region lesion alone)"]
    assert v.loc[("model", "margin")].tolist() == [True, True, True]
    assert v.loc[("random", "p_target")].tolist() == [False, False, True]
    assert v.dtypes.eq(bool).all()


def test_check_identity_refuses_other_weights(vit_random, tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(models.model_identity(vit_random)))
    models.check_identity(vit_random, path)  # the weights 01 designed with: accepted
    path.write_text(json.dumps({**models.model_identity(vit_random), "weights_hash": "0" * 16}))
    with pytest.raises(ValueError, match="weights"):
        models.check_identity(vit_random, path)
