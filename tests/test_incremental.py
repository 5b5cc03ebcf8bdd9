"""Incremental reruns of the study runner (issue 6, item 4).

Three stub stages stand in for the notebooks and a fake papermill writes their
artefacts, so the skip/rerun logic is tested in milliseconds: skipped when
nothing changed, exactly the downstream stages after a parameter change, all
of them with ``force``, and reruns when an artefact on disk was replaced or
deleted behind the runner's back.
"""

from pathlib import Path

import papermill as pm
import pytest

from helpers import report, study
from stub_notebooks import write_stage

STAGES = {
    "01_make": "a = 1\nweights = 'random'\n",
    "02_use": "b = 2\noverwrite = False\n",
    "03_last": "c = 3\n",
}
OUTPUTS = {"01_make": ("thing.txt",), "02_use": ("derived",), "03_last": ("final.csv",)}


@pytest.fixture
def stub(tmp_path, monkeypatch):
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    for stem, src in STAGES.items():
        write_stage(nb_dir / f"{stem}.ipynb", src)
    monkeypatch.setattr(study, "NOTEBOOK_DIR", nb_dir)
    monkeypatch.setattr(study, "STAGE_OUTPUTS", OUTPUTS)
    monkeypatch.setattr(study, "preflight", lambda params: None)
    monkeypatch.setattr(report, "build_report", lambda folder: Path(folder) / "report.html")
    calls: list[tuple[str, dict]] = []
    salt = [""]

    def fake_execute(src, out, *, parameters, **kw):
        stem = Path(src).stem
        calls.append((stem, dict(parameters)))
        run = Path(parameters.get("run_dir", Path(out).parent))
        if stem == "01_make":
            (run / "thing.txt").write_text(f"a={parameters['a']}{salt[0]}")
        elif stem == "02_use":
            (run / "derived").mkdir(exist_ok=True)
            (run / "derived" / "x.txt").write_text((run / "thing.txt").read_text() + f" b={parameters['b']}")
            (run / "derived" / "cache").mkdir(exist_ok=True)  # scratch: never part of the hash
            (run / "derived" / "cache" / "tmp.bin").write_bytes(str(len(calls)).encode())
        else:
            (run / "final.csv").write_text((run / "derived" / "x.txt").read_text() + f" c={parameters['c']}")
        Path(out).write_text("{}")

    monkeypatch.setattr(pm, "execute_notebook", fake_execute)
    run = tmp_path / "run"

    def go(params=None, **kw):
        calls.clear()
        study.run_study(params or {}, run=str(run), **kw)
        return [stem for stem, _ in calls]

    go.run = run
    go.calls = calls
    go.salt = salt
    return go


def test_unchanged_inputs_skip_every_stage(stub, capsys):
    assert stub() == ["01_make", "02_use", "03_last"]
    assert (stub.run / "final.csv").read_text() == "a=1 b=2 c=3"
    assert stub() == []
    assert capsys.readouterr().out.count("skipped") == 3


def test_a_changed_parameter_reruns_exactly_the_downstream_stages(stub):
    stub()
    assert stub({"b": 5}) == ["02_use", "03_last"]
    assert (stub.run / "final.csv").read_text() == "a=1 b=5 c=3"
    assert stub({"b": 5, "c": 0}) == ["03_last"]
    assert stub({"a": 7, "b": 5, "c": 0}) == ["01_make", "02_use", "03_last"]


def test_force_reruns_everything_and_replaces_artefacts(stub):
    stub()
    assert stub(force=True) == ["01_make", "02_use", "03_last"]
    assert stub.calls[1][1]["overwrite"] is True


def test_an_artefact_replaced_by_hand_is_regenerated(stub):
    stub()
    (stub.run / "derived" / "x.txt").write_text("recorded elsewhere")
    # 02's artefact no longer is what 02 left, so 02 reruns with overwrite and
    # restores it; what 03 read is then unchanged, so 03 stays skipped.
    assert stub() == ["02_use"]
    assert stub.calls[0][1]["overwrite"] is True
    assert (stub.run / "derived" / "x.txt").read_text() == "a=1 b=2"
    assert stub() == []


def test_a_changed_upstream_artefact_reruns_its_readers(stub):
    stub()
    # Stage 01 is not deterministic this time (a new library version, say):
    # rerunning only 01 changes its artefact, and with it everything downstream.
    stub.salt[0] = "!"
    assert stub(stages=["01"], force=True) == ["01_make"]
    assert stub() == ["02_use", "03_last"]
    assert (stub.run / "final.csv").read_text() == "a=1! b=2 c=3"


def test_forcing_some_stages_keeps_the_record_of_the_others(stub):
    stub()
    assert stub(stages=["03"], force=True) == ["03_last"]
    assert stub() == []


def test_deleted_artefacts_rerun_their_stage(stub):
    stub()
    (stub.run / "final.csv").unlink()
    assert stub() == ["03_last"]
    assert (stub.run / "final.csv").is_file()


def test_scratch_cache_is_not_an_input(stub):
    stub()
    (stub.run / "derived" / "cache" / "tmp.bin").write_bytes(b"different")
    assert stub() == []


def test_an_interrupted_attempt_resumes_and_a_changed_one_starts_afresh(stub, monkeypatch):
    stub()
    real = pm.execute_notebook

    def dies_in_02(src, out, **kw):
        if Path(src).stem == "02_use":
            raise pm.PapermillExecutionError(0, 1, "boom", "RuntimeError", "boom", [])
        return real(src, out, **kw)

    monkeypatch.setattr(pm, "execute_notebook", dies_in_02)
    with pytest.raises(study.StageFailed, match="02_use"):
        stub({"b": 4})
    monkeypatch.setattr(pm, "execute_notebook", real)
    # Same inputs as the failed attempt: resume (overwrite=False).
    assert stub({"b": 4}) == ["02_use", "03_last"]
    assert stub.calls[0][1]["overwrite"] is False
    assert stub({"b": 6}) == ["02_use", "03_last"]
    assert stub.calls[0][1]["overwrite"] is True


def test_artefacts_hash_tracks_content_not_timestamps(tmp_path):
    (tmp_path / "d").mkdir()
    f = tmp_path / "d" / "x.npy"
    f.write_bytes(b"abc")
    cache = study._HashCache()
    h1 = study.artefacts_hash(tmp_path, ["d"], cache)
    f.write_bytes(b"abc")  # rewritten, same content
    assert study.artefacts_hash(tmp_path, ["d"], study._HashCache()) == h1
    f.write_bytes(b"abd")  # same size, new content
    assert study.artefacts_hash(tmp_path, ["d"], cache) != h1
    f.unlink()
    assert study.artefacts_hash(tmp_path, ["d"], cache) != h1
