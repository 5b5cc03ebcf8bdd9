"""The single-page report: self-contained, every figure embedded, numbers equal to the CSVs."""

import base64
import csv
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
