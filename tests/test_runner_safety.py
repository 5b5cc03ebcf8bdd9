"""The study runner under failure (issue 12): locks, refused runs, failed stages, scratch, bad input.

Reuses the stub stages of test_incremental (a fake papermill), so nothing here runs a model.
"""

import os
import signal
import subprocess
import sys
import time

import papermill as pm
import pytest

from helpers import paths, study
from test_incremental import stub  # noqa: F401  (fixture)


def _holder(folder):
    """A separate live process holding the run lock, as a second runner would see it."""
    code = ("import sys, time; from pathlib import Path; from helpers import study\n"
            "with study.run_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_runner_refuses_and_a_dead_holders_lock_is_taken_over(stub):  # noqa: F811
    stub.run.mkdir()
    p = _holder(stub.run)
    try:
        with pytest.raises(study.RunLocked, match=str(p.pid)):
            stub()
        assert stub.calls == []  # refused before any stage
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert paths.Run(stub.run).lock.read_text() == str(p.pid)  # stale file left by the dead holder
    assert stub() == ["01_make", "02_use", "03_last"]


def test_a_refused_run_leaves_params_and_notebooks_alone(stub, monkeypatch):  # noqa: F811
    stub()
    params_before = (stub.run / "params.yaml").read_bytes()

    def refuse(params):
        raise ValueError("model=ViT-B-99 is not an open_clip model")

    monkeypatch.setattr(study, "preflight", refuse)
    with pytest.raises(ValueError):
        stub({"a": 99})
    assert (stub.run / "params.yaml").read_bytes() == params_before


def test_a_failed_stage_keeps_the_last_good_executed_notebook(stub, monkeypatch):  # noqa: F811
    stub()
    good = (stub.run / "02_use.ipynb").read_bytes()
    real = pm.execute_notebook

    def dies_in_02(src, out, **kw):
        if "02_use" in str(src):
            open(out, "w").write('{"failed": true}')
            raise pm.PapermillExecutionError(0, 1, "boom", "RuntimeError", "boom", [])
        return real(src, out, **kw)

    monkeypatch.setattr(pm, "execute_notebook", dies_in_02)
    with pytest.raises(study.StageFailed, match="02_use.failed.ipynb"):
        stub({"b": 4})
    assert (stub.run / "02_use.ipynb").read_bytes() == good
    assert (stub.run / "02_use.failed.ipynb").read_text() == '{"failed": true}'
    monkeypatch.setattr(pm, "execute_notebook", real)
    assert stub({"b": 4}) == ["02_use", "03_last"]
    assert not (stub.run / "02_use.failed.ipynb").exists()


def test_no_scratch_cache_survives_a_run_whatever_happened_before(stub, monkeypatch):  # noqa: F811
    cache = stub.run / "perturb" / "cache" / "model"
    cache.mkdir(parents=True)  # as left by a study killed during 04
    (cache / "block_9.npy").write_bytes(b"0" * 1000)
    (stub.run / ".02_use.running.ipynb").write_text("{}")
    stub()
    assert not (stub.run / "perturb" / "cache").exists()
    assert not (stub.run / ".02_use.running.ipynb").exists()
    real = pm.execute_notebook

    def dies_in_03(src, out, **kw):  # a stage that fails after filling the cache
        if "03_last" in str(src):
            cache.mkdir(parents=True)
            raise pm.PapermillExecutionError(0, 1, "boom", "RuntimeError", "boom", [])
        return real(src, out, **kw)

    monkeypatch.setattr(pm, "execute_notebook", dies_in_03)
    with pytest.raises(study.StageFailed):
        stub({"c": 9})
    assert not (stub.run / "perturb" / "cache").exists()


def test_unknown_stages_and_bad_yaml_are_refused_with_names(stub, tmp_path, capsys):  # noqa: F811
    with pytest.raises(ValueError, match="stages"):
        stub(stages=["5"])
    assert stub.calls == []
    bad = tmp_path / "bad.yaml"
    bad.write_text("bins: [1, 2\nsigma: 1\n")
    assert study.main(["--params", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err
    assert study.main(["--set", "proportions=[0,1"]) == 2
    assert "proportions" in capsys.readouterr().err


def _edit_keeping_size_and_mtime(path, text):
    st = path.stat()
    assert len(text) == st.st_size
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # what `touch -r` does


def test_an_edit_that_keeps_size_and_mtime_is_still_caught(stub, monkeypatch):  # noqa: F811
    stub()
    _edit_keeping_size_and_mtime(stub.run / "derived" / "x.txt", "a=9 b=2")  # small artefact: always hashed
    assert stub() == ["02_use"]
    assert (stub.run / "derived" / "x.txt").read_text() == "a=1 b=2"
    monkeypatch.setattr(study, "ALWAYS_HASH_BYTES", 0)  # every artefact counts as large now
    stub()
    _edit_keeping_size_and_mtime(stub.run / "derived" / "x.txt", "a=9 b=2")
    assert stub() == []  # large files are trusted by (size, mtime) ...
    assert stub(verify=True) == ["02_use"]  # ... unless --verify
    assert (stub.run / "derived" / "x.txt").read_text() == "a=1 b=2"
