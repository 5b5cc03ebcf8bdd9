"""End-to-end report check on the small study that `make test` runs under nbval.

`make test` prepares the notebooks into data/_nbval/ and nbval executes them
(01 -> 04) *before* this module runs (the notebooks are passed to pytest first).
Here the report is built from that real run folder and checked: it exists,
embeds every figure the notebooks wrote, and its numbers equal the CSV tables.
"""

import pytest

from helpers.paths import DATA_DIR
from helpers.report import build_report

from test_report import check_report

RUN = DATA_DIR / "_nbval"
EXPECTED_FIGURES = ("design_", "record_", "analyse_top_ratemaps_", "analyse_fraction_significant",
                    "analyse_decoding",
                    "perturb_layer_lesions_", "perturb_targeted_", "perturb_spatial_",
                    "perturb_double_dissociation_")


def test_report_of_the_small_study():
    # checked at run time: nbval writes these files after collection
    if not (RUN / "perturb" / "targeted_lesions.csv").is_file():
        pytest.skip("needs the small study of `make test` (data/_nbval executed by nbval)")
    build_report(RUN)
    doc = check_report(RUN)
    names = [i["data-file"] for i in doc.imgs]
    for prefix in EXPECTED_FIGURES:
        assert any(n.startswith(prefix) for n in names), f"no {prefix}* figure in the report"
    for table in ("zeroshot.csv", "significance.csv", "decoding.csv", "layer_lesions.csv", "targeted_lesions.csv",
                  "spatial_localisation.csv", "spatial_dissociation.csv"):
        assert table in doc.tables, table
    assert any(row[0] == "weights_hash" for row in doc.tables["model.json"])
