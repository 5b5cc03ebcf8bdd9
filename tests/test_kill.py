"""Killing a study (issue 12): no kernel outlives its runner, an interrupted recording resumes byte-identically,
and a study killed during 04 leaves no cache after the rerun and the same tables.

Real processes and real signals: a runner executing a stub notebook through
papermill, a recording in a child interpreter, and the real 04 notebook on a
copy of the nbval run folder (skipped when nbval has not run first).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import record
from helpers.paths import REPO_ROOT
from helpers.stimuli import make_stimuli
from stub_notebooks import write_stage

DRIVER = """
import signal, sys
from pathlib import Path
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even when started in the background
from helpers import study
study.NOTEBOOK_DIR = Path(sys.argv[1])
study.preflight = lambda params: None
sys.exit(study.main(["--run", sys.argv[2]]))
"""


def _wait_for(predicate, what: str, limit: float = 120.0) -> None:
    """Liveness bound for a process event (generous: the machine may be loaded); not a speed assertion."""
    end = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"{what} did not happen within {limit:.0f} s")
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_no_kernel_outlives_its_runner(tmp_path, sig):
    nbs, run = tmp_path / "nb", tmp_path / "run"
    write_stage(nbs / "01_sleep.ipynb", "run_dir = 'x'\n",
                "import os, time\nfrom pathlib import Path\n"
                "Path(run_dir, 'kernel.pid').write_text(str(os.getpid()))\ntime.sleep(600)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    runner = subprocess.Popen([sys.executable, "-c", DRIVER, str(nbs), str(run)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (run / "kernel.pid").is_file() and (run / "kernel.pid").read_text(), "the kernel start")
        kernel = int((run / "kernel.pid").read_text())
        runner.send_signal(sig)
        runner.wait(timeout=120)
        _wait_for(lambda: not _alive(kernel), f"the kernel's exit after {sig.name}")
    finally:
        runner.kill()
        runner.wait()
    if sig == signal.SIGINT:
        assert runner.returncode == 130
        assert not list(run.glob(".*.running.ipynb"))
    assert "without encryption" not in runner.stderr.read()  # ipykernel's TCP warning is silenced


CHILD = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from helpers import models, record, stimuli
lm = models.load_model("ViT-B-32", "random", device="cpu", dtype="float32", seed=0)
def slow(info):
    print("batch", info["n_done"], flush=True)
    time.sleep(30)  # killed here, after the first batch was flushed
record.record(lm, stimuli.make_stimuli(12, seed=2), sys.argv[1], batch_size=4, progress=False, on_batch=slow)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_killed_recording_resumes_byte_identically(vit_random, tmp_path, sig):
    stim = make_stimuli(12, seed=2)
    record.record(vit_random, stim, tmp_path / "ref", batch_size=4, progress=False)
    record_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(record_dir)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "batch 4"
        child.send_signal(sig)
        child.wait(timeout=60)
    finally:
        child.kill()
    assert record.read_manifest(record_dir)["progress"]["n_done"] == 4
    record.record(vit_random, stim, record_dir, batch_size=4, progress=False)
    for f in sorted((tmp_path / "ref").glob("*.npy")):
        assert (record_dir / f.name).read_bytes() == f.read_bytes(), f.name
    _, got, _ = record.load_recording(record_dir)
    _, want, _ = record.load_recording(tmp_path / "ref")
    assert all(np.array_equal(got[k], want[k]) for k in want)


PERTURB_SMALL = ["n_lesion_stimuli=16", "proportions=[0,1]", "n_random_seeds=1", "n_control_seeds=1",
                 "include_random=false", "n_permutations=50", "n_bootstrap=50"]
NO_OUTPUTS = ("perturb", "figures", "*.ipynb", "report.html", ".*")


def _perturb_cmd(run: Path) -> list[str]:
    return [sys.executable, "-m", "helpers.study", "--params", "params/nbval.yaml", "--run", str(run),
            "--stages", "04", "--set", *PERTURB_SMALL]


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split(")")[-1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _copy_nbval(dest: Path) -> Path:
    """A copy of the nbval run folder without 04's outputs (skips when nbval has not run first)."""
    import shutil

    from helpers.paths import DATA_DIR

    nbval = DATA_DIR / "_nbval"
    if not (nbval / "analysis" / "scores.csv").is_file():
        pytest.skip("needs the small study of `make test` (data/_nbval executed by nbval)")
    shutil.copytree(nbval, dest, ignore=shutil.ignore_patterns(*NO_OUTPUTS))
    return dest


def _run_04(run: Path) -> None:
    """04 on ``run`` to completion; a failure shows what the runner printed."""
    done = subprocess.run(_perturb_cmd(run), cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"04 exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}"


def _kill_during_04_cache(run: Path, sig: signal.Signals) -> None:
    """Start 04 on ``run``, send ``sig`` once its residual cache exists, and wait until its kernel has exited."""
    log = run.parent / f"runner_{sig.name}.log"
    with log.open("w") as out:
        runner = subprocess.Popen(_perturb_cmd(run), cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        started = lambda: (run / "perturb" / "cache").is_dir() or runner.poll() is not None  # noqa: E731
        try:
            _wait_for(started, "04's residual cache", limit=600)
        except AssertionError as hung:
            raise AssertionError(f"{hung}; the runner printed:\n{log.read_text()[-3000:]}") from None
        assert runner.poll() is None, f"the runner exited ({runner.returncode}) before 04's cache existed:\n" + \
            log.read_text()[-3000:]
        kernels = _children(runner.pid)
        assert kernels, "the runner's kernel was not found among its children"
        runner.send_signal(sig)
        runner.wait(timeout=120)
        for k in kernels:  # the orphaned kernel must stop writing before the rerun
            _wait_for(lambda: not _alive(k), "the kernel's exit")
    finally:
        runner.kill()


@pytest.fixture(scope="module")
def perturb_reference(tmp_path_factory):
    """An uninterrupted small 04 on a copy of the nbval run folder (checked at run time, after nbval ran)."""
    ref = _copy_nbval(tmp_path_factory.mktemp("perturb") / "ref")
    _run_04(ref)
    return ref


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_study_killed_during_04_leaves_no_cache_and_reruns_to_identical_tables(perturb_reference, tmp_path, sig):
    """A signal while 04 fills its residual cache, then the same command: no cache, tables as an uninterrupted run's."""
    run = _copy_nbval(tmp_path / "run")
    _kill_during_04_cache(run, sig)
    # SIGKILL leaves the cache behind (the rerun removes it); Ctrl-C removes it on the way out
    assert (run / "perturb" / "cache").is_dir() == (sig == signal.SIGKILL)
    _run_04(run)
    assert not (run / "perturb" / "cache").exists()
    tables = sorted(p.name for p in (perturb_reference / "perturb").glob("*.csv"))
    assert tables and tables == sorted(p.name for p in (run / "perturb").glob("*.csv"))
    for name in tables:
        assert (run / "perturb" / name).read_bytes() == (perturb_reference / "perturb" / name).read_bytes(), name


def test_a_study_killed_during_02_resumes_to_the_same_recordings(tmp_path):
    """SIGKILL after 02 has flushed a batch, then the same command: recordings byte-identical to nbval's."""
    import shutil

    from helpers.paths import DATA_DIR

    nbval = DATA_DIR / "_nbval"
    if not (nbval / "recordings" / "random" / "manifest.json").is_file():
        pytest.skip("needs the small study of `make test` (data/_nbval executed by nbval)")
    run = tmp_path / "run"
    shutil.copytree(nbval, run, ignore=shutil.ignore_patterns("recordings", "analysis", "perturb", "figures",
                                                              "*.ipynb", "report.html", ".*"))
    cmd = [sys.executable, "-m", "helpers.study", "--params", "params/nbval.yaml", "--run", str(run), "--stages", "02"]
    manifest = run / "recordings" / "model" / "manifest.json"

    def part_done() -> bool:
        try:
            man = json.loads(manifest.read_text())
        except (OSError, ValueError):
            return False
        return man["progress"]["n_done"] > 0

    runner = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(part_done, "02's first flushed batch", limit=600)
        kernels = _children(runner.pid)
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=60)
        for k in kernels:
            _wait_for(lambda: not _alive(k), "the kernel's exit")
    finally:
        runner.kill()
    assert not json.loads(manifest.read_text())["complete"]  # killed mid-recording, not after it
    subprocess.run(cmd, cwd=REPO_ROOT, check=True, capture_output=True, timeout=900)
    for cond in ("model", "random"):
        want = sorted((nbval / "recordings" / cond).glob("*.npy"))
        assert want and [p.name for p in want] == sorted(p.name for p in (run / "recordings" / cond).glob("*.npy"))
        for f in want:
            assert (run / "recordings" / cond / f.name).read_bytes() == f.read_bytes(), f"{cond}/{f.name}"
