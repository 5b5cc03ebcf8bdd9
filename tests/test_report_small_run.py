"""End-to-end report check on a finished small study (fixture ``small_run``, tests/conftest.py).

Under ``make test`` that is data/_nbval, which nbval executed (01 -> 04) before
``tests/`` runs; run on its own, the fixture builds the same small study with
the runner. The report is built from that real run folder and checked: it
embeds every figure the notebooks wrote, its numbers equal the CSV tables, and
it opens with the key findings of every stage.
"""

from helpers.report import build_report

from test_report import check_report

EXPECTED_FIGURES = ("design_", "record_", "analyse_top_ratemaps_", "analyse_fraction_significant",
                    "analyse_decoding",
                    "perturb_layer_lesions_", "perturb_targeted_", "perturb_spatial_",
                    "perturb_double_dissociation_")


def test_report_of_the_small_study(small_run):
    build_report(small_run)
    doc = check_report(small_run)
    names = [i["data-file"] for i in doc.imgs]
    for prefix in EXPECTED_FIGURES:
        assert any(n.startswith(prefix) for n in names), f"no {prefix}* figure in the report"
    for table in ("zeroshot.csv", "significance.csv", "decoding.csv", "layer_lesions.csv", "targeted_lesions.csv",
                  "spatial_localisation.csv", "spatial_dissociation.csv"):
        assert table in doc.tables, table
    assert any(row[0] == "weights_hash" for row in doc.tables["model.json"])
    text = (small_run / "report.html").read_text(encoding="utf-8")
    findings = text[text.index('<section id="key-findings">'):text.index("</section>")]
    for stage in ("Design.", "Analyse.", "Perturb."):
        assert stage in findings, stage
    assert "Not in this run" not in findings  # every finding's table was written by the small study
    assert "the blog" in findings and "random weights (the blog's control)" in findings
