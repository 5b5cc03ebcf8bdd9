"""The single-page report: self-contained, every figure embedded, numbers equal to the CSVs."""

import base64
import csv
import json
import re
from html.parser import HTMLParser

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from helpers.report import MAX_TABLE_ROWS, build_report


class _Cells(HTMLParser):
    """Collect every table (by data-source) as a list of rows of cell texts, and every <img>."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.imgs: list[dict] = []
        self.links: list[str] = []
        self._src = None
        self._row = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._src = a.get("data-source")
            self.tables[self._src] = []
        elif tag == "tr" and self._src is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""
        elif tag == "img":
            self.imgs.append(a)
        elif tag in ("link", "script") and (a.get("href") or a.get("src")):
            self.links.append(a.get("href") or a.get("src"))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._src].append(self._row)
            self._row = None
        elif tag == "table":
            self._src = None


def parse_report(path):
    p = _Cells()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def check_report(run):
    """Assertions shared with the end-to-end test: embeds every figure, numbers match CSVs."""
    report = run / "report.html"
    assert report.is_file()
    doc = parse_report(report)
    assert not doc.links, f"report must be self-contained, found external refs {doc.links}"
    pngs = sorted(p.name for p in (run / "figures").glob("*.png"))
    embedded = sorted(i["data-file"] for i in doc.imgs)
    assert embedded == pngs
    for img in doc.imgs:
        assert img["src"].startswith("data:image/png;base64,")
        raw = base64.b64decode(img["src"].split(",", 1)[1])
        assert raw == (run / "figures" / img["data-file"]).read_bytes()
    text = report.read_text(encoding="utf-8")
    for csv_path in run.rglob("*.csv"):
        rows = list(csv.reader(open(csv_path, newline="")))
        if len(rows) - 1 > MAX_TABLE_ROWS:
            assert f'data-source="{csv_path.name}"><em>{len(rows) - 1} rows' in text, csv_path.name
            continue
        shown = doc.tables[csv_path.name]
        assert shown[0] == rows[0]
        for got, want in zip(shown[1:], rows[1:]):
            for g, w in zip(got, want):
                try:
                    wf = float(w)
                except ValueError:
                    assert g == w
                    continue
                if wf != wf:
                    assert g == ""
                else:
                    assert float(g) == pytest.approx(wf, rel=1e-5, abs=1e-12), (csv_path.name, g, w)
    return doc


def test_report_embeds_figures_and_tables(tmp_path):
    run = tmp_path / "run"
    (run / "figures").mkdir(parents=True)
    (run / "perturb").mkdir()
    for name in ("design_examples", "analyse_top5_model", "perturb_layers"):
        fig, ax = plt.subplots(figsize=(1, 1))
        ax.plot([0, 1], [0, 1])
        fig.savefig(run / "figures" / f"{name}.png")
        plt.close(fig)
    (run / "zeroshot.csv").write_text("prompts,circle_mean,empty_mean\nshape only,0.8812345,\n+ empty,0.09,0.91\n")
    (run / "perturb" / "layer_lesions.csv").write_text("layer,performance\nvisual.conv1,0.125\n")
    (run / "params.yaml").write_text("weights: random\nn_stimuli: 10\n")
    (run / "model.json").write_text('{"model": "ViT-B-32", "weights_hash": "abc123"}')
    build_report(run)
    doc = check_report(run)
    text = (run / "report.html").read_text()
    assert "abc123" in text and "n_stimuli" in text
    # design section comes before perturb
    assert text.index("Design") < text.index("Perturb")
    assert doc.tables["zeroshot.csv"][1][1] == "0.881235"


def test_long_tables_are_pointed_at_not_rendered(tmp_path):
    run = tmp_path / "run"
    (run / "analysis").mkdir(parents=True)
    rows = "\n".join(f"model,L0,{i},0.5" for i in range(MAX_TABLE_ROWS + 1))
    (run / "analysis" / "scores.csv").write_text("condition,layer,neuron,si\n" + rows + "\n")
    build_report(run)
    check_report(run)
    assert "scores.csv" not in parse_report(run / "report.html").tables


def test_report_detects_mismatch(tmp_path):
    """The checker itself must be able to fail: a table edited after the report is caught."""
    run = tmp_path / "run"
    (run / "figures").mkdir(parents=True)
    (run / "zeroshot.csv").write_text("prompts,circle_mean\nshape only,0.5\n")
    build_report(run)
    (run / "zeroshot.csv").write_text("prompts,circle_mean\nshape only,0.6\n")
    with pytest.raises(AssertionError):
        check_report(run)


def _planted_run(tmp_path, weights="random", proportions=(0.0, 0.1, 0.5)):
    """A run folder whose tables hold known numbers for every key finding."""
    run = tmp_path / "run"
    (run / "analysis").mkdir(parents=True)
    (run / "perturb").mkdir()
    (run / "params.yaml").write_text("percentile: 95.0\nblock: 8\ntop_k: 5\nregion: lower-left\nn_stimuli: 10\n")
    (run / "model.json").write_text(json.dumps({"model": "ViT-B-32", "weights": weights}))
    (run / "zeroshot.csv").write_text("prompts,circle_mean,circle_sd,empty_mean,empty_sd\nshape only,0.5,0.1,,\n"
                                      "+ empty,0.25,0.1,0.75,0.1\n")
    sig = ["condition,layer,score,null_model,n_shuffles,fraction_significant"]
    for cond, fracs in (("model", (0.10, 0.30)), ("random", (0.02, 0.04))):
        for layer, f in zip(("visual.transformer.resblocks.0.attn", "visual.transformer.resblocks.1.attn"), fracs):
            sig += [f"{cond},{layer},si,neuron,19,{f}", f"{cond},{layer},grid,neuron,19,0.0"]
    (run / "analysis" / "significance.csv").write_text("\n".join(sig) + "\n")
    ll = ["weights,tower,unit,label,block,part,mode,performance,baseline_performance,delta"]
    ll += ["model,visual,u3,resblock 3,3,block,all,0.9,1.0,-0.1", "model,visual,u9,resblock 9,9,block,all,0.25,1.0,-0.75",
           "model,text,t0,resblock 0,0,block,all,1.0,1.0,0.0", "random,visual,u3,resblock 3,3,block,all,0.0,0.0,0.0"]
    (run / "perturb" / "layer_lesions.csv").write_text("\n".join(ll) + "\n")
    tl = ["weights,condition,seed,proportion,performance"]
    for p in proportions:
        tl += [f"model,Targeted,,{p},{0.4 if p else 1.0}", f"model,Random,0,{p},{0.8 if p else 1.0}",
               f"model,Random,1,{p},{0.6 if p else 1.0}"]
    (run / "perturb" / "targeted_lesions.csv").write_text("\n".join(tl) + "\n")
    (run / "perturb" / "spatial_localisation.csv").write_text(
        "weights,metric,control,reference,did,ci_low,ci_high,p_value,localised\n"
        "model,margin,random,outside,0.0123,0.004,0.02,0.01,True\n"
        "model,margin,random,opposite region,0.5,0.4,0.6,0.01,True\n"
        "model,p_target,random,outside,0.7,0.6,0.8,0.01,True\n"
    )
    return run


def _findings_text(run):
    text = (run / "report.html").read_text(encoding="utf-8")
    section = text[text.index('<section id="key-findings">'):text.index("</section>")]
    return text, re.sub(r"<[^>]+>", "", section)


def test_report_leads_with_key_findings_computed_from_the_tables(tmp_path):
    run = _planted_run(tmp_path)
    build_report(run)
    text, found = _findings_text(run)
    assert re.findall(r"<h2[^>]*>([^<]*)</h2>", text)[0] == "Key findings"
    assert "circle 0.50 (blog 0.88)" in found and "empty 0.75 (blog 0.90)" in found  # prompt table beside the blog's
    assert "si 0.10–0.30 (peak block 1)" in found and "si 0.02–0.04 (peak block 1)" in found
    assert "grid 0.00–0.00 (none in any layer)" in found
    assert "visual resblock 9 (1.00 → 0.25)" in found  # largest fall, not the first row
    assert "no lesion lowers performance (unlesioned 0.00" in found  # random condition: nothing to lose
    assert "Block-8 lesions at 10% of neurons" in found and "Targeted 0.40, Random 0.70" in found  # Random: mean over seeds
    assert "0.0123 [0.0040, 0.0200], p = 0.01 localised" in found  # margin, reference outside only
    assert "0.5000" not in found and "0.7000" not in found
    assert "≠ the blog's openai" in found and "random weights (the blog's control)" in found
    # parameters last, collapsed
    assert text.rindex("<h2>") == text.index("<h2>Parameters and model</h2>")
    assert "<details><summary>model identity" in text


def test_findings_mark_only_weights_that_differ_from_the_blog(tmp_path):
    run = _planted_run(tmp_path, weights="openai")
    build_report(run)
    _, found = _findings_text(run)
    assert "≠ the blog's" not in found and "(openai, as the blog)" in found


def test_targeted_finding_says_when_10_percent_is_missing(tmp_path):
    run = _planted_run(tmp_path, proportions=(0.0, 0.5, 1.0))
    build_report(run)
    _, found = _findings_text(run)
    assert "at 50% of neurons (this run has no 10%; nearest lesion 50%)" in found


def test_targeted_finding_reads_the_block_of_a_run_made_before_the_rename(tmp_path):
    run = _planted_run(tmp_path)
    params = run / "params.yaml"
    params.write_text(params.read_text().replace("block: 8", "layer: 5"))  # the parameter's old name
    build_report(run)
    _, found = _findings_text(run)
    assert "Block-5 lesions at 10% of neurons" in found


def test_missing_tables_are_named_not_invented(tmp_path):
    run = _planted_run(tmp_path)
    (run / "perturb" / "targeted_lesions.csv").unlink()
    build_report(run)
    _, found = _findings_text(run)
    assert "Not in this run" in found and "targeted" in found and "Targeted 0.40" not in found


def test_empty_top_ratemap_panels_are_explained(tmp_path):
    run = _planted_run(tmp_path)
    rows = ["condition,layer,neuron,si,grid,border"]
    for n in range(6):
        rows.append(f"model,visual.transformer.resblocks.0.attn,{n},0.1,{'' if n else 0.3},0.2")  # 1 finite grid
        rows.append(f"model,visual.transformer.resblocks.1.attn,{n},0.1,0.3,0.2")
    (run / "analysis" / "scores.csv").write_text("\n".join(rows) + "\n")
    build_report(run)
    text = (run / "report.html").read_text(encoding="utf-8")
    note = re.sub(r"<[^>]+>", "", text[text.index('class="note"'):])
    assert "grid: 1 of 2 layers have fewer than 5 neurons with a finite score (block 0: 1)" in note
    assert "si:" not in note.split(".")[0]


def test_long_tables_are_collapsed(tmp_path):
    run = _planted_run(tmp_path)
    build_report(run)
    text = (run / "report.html").read_text(encoding="utf-8")
    # significance.csv: 8 rows, shown open; make one of 40 rows and it is collapsed
    assert "<summary><code>analysis/significance.csv" not in text
    rows = "\n".join(f"model,visual.transformer.resblocks.{i}.attn,si,neuron,19,0.1" for i in range(40))
    (run / "analysis" / "significance.csv").write_text("condition,layer,score,null_model,n_shuffles,fraction_significant\n"
                                                       + rows + "\n")
    build_report(run)
    text = (run / "report.html").read_text(encoding="utf-8")
    assert "<details><summary><code>analysis/significance.csv</code> (40 rows)</summary><table" in text
    check_report(run)


def test_layer_lesion_finding_uses_balanced_performance_when_the_table_has_it(tmp_path):
    """conv1 blinds the model: circles stay at 1.00 (one answer for every image) but the blank is lost."""
    run = _planted_run(tmp_path)
    cols = "weights,tower,unit,label,block,part,mode,performance,baseline_performance,delta,"
    cols += "control_performance,baseline_control_performance,balanced_performance,baseline_balanced_performance"
    rows = ["model,visual,conv1,conv1,,conv1,all,1.0,1.0,0.0,0.0,1.0,0.5,1.0",
            "model,visual,u3,resblock 3,3,block,all,0.8,1.0,-0.2,1.0,1.0,0.9,1.0"]
    (run / "perturb" / "layer_lesions.csv").write_text("\n".join([cols, *rows]) + "\n")
    build_report(run)
    _, found = _findings_text(run)
    assert "visual conv1 (1.00 → 0.50; circles only 1.00 → 1.00)" in found
    assert "resblock 3 (" not in found
    # only the model condition was lesioned: the report says why the random control is missing from Perturb
    assert "not lesioned" in found


def test_significance_finding_says_what_the_threshold_only_rule_would_add(tmp_path):
    """Where the blog's threshold-only rule calls neurons significant with a score at or below its tuning floor,
    the finding gives their number and both fractions; where the two rules agree it says nothing more."""
    run = _planted_run(tmp_path)
    head = ("condition,layer,score,null_model,significance_rule,n_shuffles,fraction_significant,"
            "fraction_significant_floor,fraction_significant_null_only,n_null_only_at_or_below_floor,tuning_floor")
    rows = [head]
    for cond, n_below in (("model", (30, 12)), ("random", (0, 0))):
        for layer, n in zip(("visual.transformer.resblocks.0.attn", "visual.transformer.resblocks.1.attn"), n_below):
            rows += [f"{cond},{layer},grid,neuron,floor,19,0.05,0.05,{0.05 + n / 100},{n},0.0",
                     f"{cond},{layer},si,neuron,floor,19,0.07,0.07,0.07,0,0.0"]
    (run / "analysis" / "significance.csv").write_text("\n".join(rows) + "\n")
    build_report(run)
    _, found = _findings_text(run)
    model, random_ = found.split("random weights (the blog's control)")[:2]
    assert "neuron null, floor rule" in found
    assert "42 neurons with a grid score ≤ 0 (grid 0.26 instead of 0.05, mean over layers)" in model
    assert "threshold-only" not in random_ and "si score" not in model


def test_significance_finding_gives_the_border_fraction_under_both_nulls(tmp_path):
    """The border score is tested against surrogates and stimulus shuffles; the finding gives both fractions
    (mean over layers), naming the one the run used first, and nothing for scores tested under one null."""
    run = _planted_run(tmp_path)
    head = ("condition,layer,score,null_model,n_shuffles,fraction_significant,score_null,"
            "fraction_significant_shuffle,fraction_significant_surrogate")
    rows = [head]
    for layer, (shuf, surr) in zip(("visual.transformer.resblocks.0.attn", "visual.transformer.resblocks.1.attn"),
                                   ((0.20, 0.04), (0.10, 0.02))):
        for cond in ("model", "random"):
            rows += [f"{cond},{layer},border,neuron,19,{surr},surrogate,{shuf},{surr}",
                     f"{cond},{layer},grid,neuron,19,0.05,shuffle,0.05,"]
    (run / "analysis" / "significance.csv").write_text("\n".join(rows) + "\n")
    build_report(run)
    _, found = _findings_text(run)
    assert "border 0.03 against smoothness-preserving surrogates (0.15 against stimulus shuffles)" in found
    assert "grid 0.05 against" not in found
