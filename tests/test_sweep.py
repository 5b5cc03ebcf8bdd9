"""Sweeps of whole studies (helpers.sweep): real points on a LocalCluster, rerun of an incomplete point,
refused points, the SLURM job script, and the summary's arithmetic on planted run folders."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import sweep as sw
from helpers.study import run_lock
from helpers.sweep_summary import write_summary

# Stage 01 only, on the small control model: the cheapest real runner call.
TINY = {
    "base": "params/nbval.yaml",
    "params": {"weights": "control-spatial", "n_stimuli": 16, "batch_size": 16},
    "grid": {"seed": [3, 0, 2]},  # seed-3's folder is held by the test: it fails fast, first
    "stages": [1],
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A three-point sweep run once; seed-3's run folder is locked by another 'runner' (this test)."""
    tmp = tmp_path_factory.mktemp("sweep")
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY, sort_keys=False))
    root = tmp / "out"
    with run_lock(root / "tiny" / "seed-3"):
        folder, results = sw.run_sweep(path, root=root, workers=2, progress=False)
    return path, root, folder, {r["point"]: r for r in results}


def test_two_points_complete_on_local_cluster_and_summary_has_both(tiny):
    _, _, folder, results = tiny
    for name in ("seed-0", "seed-2"):
        assert results[name]["status"] == "done" and results[name]["stages_run"] == ["01"]
        assert (folder / name / "01_design.ipynb").is_file()
        params = yaml.safe_load((folder / name / "params.yaml").read_text())
        assert params["seed"] == int(name[-1]) and params["n_stimuli"] == 16
        assert params["model"] == "ViT-B-32-control"  # implied by the weights
    stim = [json.loads((folder / n / "stimuli.json").read_text()) for n in ("seed-0", "seed-2")]
    assert stim[0] != stim[1]  # the seed draws the stimuli
    points = pd.read_csv(folder / "points.csv").set_index("point")
    assert set(points.index) == {"seed-0", "seed-2", "seed-3"}
    for name in ("seed-0", "seed-2"):
        ident = json.loads((folder / name / "model.json").read_text())
        assert points.loc[name, "status"] == "done"
        assert points.loc[name, "weights_hash"] == ident["weights_hash"]
        assert points.loc[name, "wall_s"] > 0
    page = (folder / "summary.html").read_text()
    assert "seed-0" in page and "seed-2" in page and "2/3 points done" in page


def test_failed_point_is_reported_with_its_log_and_others_finish(tiny):
    _, _, folder, results = tiny
    failed = results["seed-3"]
    assert failed["status"] == "failed" and failed["returncode"] != 0
    assert "in use by another runner" in (folder / "points" / "seed-3.log").read_text()
    assert pd.read_csv(folder / "points.csv").set_index("point").loc["seed-3", "status"] == "failed"


def test_rerun_completes_only_the_incomplete_point(tiny):
    path, root, folder, _ = tiny
    (folder / "seed-2" / "model.json").unlink()  # a stage-01 artefact gone: that point is incomplete
    kept = (folder / "seed-0" / "01_design.ipynb").stat().st_mtime_ns
    with run_lock(folder / "seed-3"):  # still held: it fails again, fast
        _, results = sw.run_sweep(path, root=root, workers=2, progress=False)
    results = {r["point"]: r for r in results}
    assert results["seed-0"]["status"] == "done" and results["seed-0"]["stages_run"] == []
    assert (folder / "seed-0" / "01_design.ipynb").stat().st_mtime_ns == kept
    assert results["seed-2"]["status"] == "done" and results["seed-2"]["stages_run"] == ["01"]
    assert (folder / "seed-2" / "model.json").is_file()
    assert results["seed-3"]["status"] == "failed" and results["seed-3"]["stages_run"] == []
    assert "2/3 points done" in (folder / "summary.html").read_text()


def test_bad_points_are_refused_before_anything_runs(tmp_path):
    doc = {"base": "params/nbval.yaml", "params": {"weights": "random"},
           "grid": {"seed": [0, 1], "bins": [8, 2]}, "points": [{"seed": 0, "bins": 8, "n_stimuli": 96}]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    sweep = sw.load_sweep(path)
    with pytest.raises(ValueError) as e:
        sw.check_points(sweep)
    msg = str(e.value)
    assert "seed-0_bins-2" in msg and "bins=2" in msg  # invalid value, named with its point
    assert "seed-1_bins-8" in msg and "random_seed" in msg  # the model condition would be the control
    assert "seed-0_bins-8:" not in msg
    doc["grid"] = {"seed": [0], "bins": [8]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    sweep = sw.load_sweep(path)
    ok = sw.check_points(sweep)
    assert list(ok) == ["seed-0_bins-8"]  # the listed point is the same study (nbval has 96 stimuli)
    assert any("same study" in n for n in sweep.notes)
    assert not (tmp_path / "out").exists()


def test_workers_times_threads_never_exceed_cores():
    assert sw.local_workers(n_points=5, threads=1, n_cores=2) == 2
    assert sw.local_workers(n_points=5, threads=2, n_cores=4) == 2
    assert sw.local_workers(n_points=1, threads=1, n_cores=8) == 1
    with pytest.raises(ValueError, match="workers=3"):
        sw.local_workers(n_points=5, threads=1, workers=3, n_cores=2)
    with pytest.raises(ValueError, match="threads=4"):
        sw.local_workers(n_points=5, threads=4, n_cores=2)
    assert sw.thread_env(3)["OMP_NUM_THREADS"] == "3"


def test_slurm_job_script_carries_cores_memory_and_time(tmp_path):
    cluster = sw.slurm_cluster(tmp_path, threads=3, memory="6GB", walltime="00:42:00", queue="short",
                               account="lab")
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    assert "#SBATCH --cpus-per-task=3" in lines
    assert "#SBATCH -t 00:42:00" in lines
    assert "#SBATCH -p short" in lines and "#SBATCH -A lab" in lines
    mem = [line for line in lines if line.startswith("#SBATCH --mem=")]
    assert len(mem) == 1 and mem[0].endswith("G") and 5.5 < float(mem[0].split("=")[1][:-1]) <= 6
    assert "--resources point=1" in script  # one point at a time per worker
    assert "export OMP_NUM_THREADS=3" in lines


def _planted_sweep(folder, fractions, r2):
    """A sweep folder by hand: two weights x seeds, with planted fractions and R² for one layer and score."""
    points = {}
    for (w, s), f in fractions.items():
        name = f"weights-{w}_seed-{s}"
        points[name] = {"weights": w, "seed": s}
        run = folder / name
        (run / "analysis").mkdir(parents=True)
        (run / "perturb").mkdir()
        pd.DataFrame({"condition": ["model"], "layer": ["L0"], "score": ["grid"],
                      "fraction_significant": [f]}).to_csv(run / "analysis" / "significance.csv", index=False)
        pd.DataFrame({"condition": ["model"], "layer": ["L0"], "neurons": ["all"],
                      "r2": [r2[w, s]]}).to_csv(run / "analysis" / "decoding.csv", index=False)
        pd.DataFrame({"weights": "model", "condition": "Random", "proportion": [0, 1, 0, 1], "seed": [0, 0, 1, 1],
                      "performance": [1.0, f, 1.0, f]}).to_csv(run / "perturb" / "targeted_lesions.csv", index=False)
        (run / "model.json").write_text(json.dumps({"weights": w, "weights_hash": f"h{w}{s}"}))
        (folder / "points").mkdir(exist_ok=True)
        status = "failed" if s == 9 else "done"
        (folder / "points" / f"{name}.json").write_text(json.dumps({"status": status, "wall_s": 1.0}))
    (folder / "sweep.json").write_text(json.dumps({"name": "planted", "axes": ["weights", "seed"],
                                                   "points": points}))


def test_summary_is_mean_and_sd_over_seeds_per_group(tmp_path):
    rng = np.random.default_rng(0)
    fractions = {(w, s): float(rng.uniform()) for w in ("a", "b") for s in (0, 1, 2)}
    fractions["a", 9] = 0.999  # a failed point: its stale CSVs must not count
    r2 = {k: float(rng.uniform()) for k in fractions}
    _planted_sweep(tmp_path, fractions, r2)
    write_summary(tmp_path)
    sig = pd.read_csv(tmp_path / "significance.csv").set_index("weights")
    dec = pd.read_csv(tmp_path / "decoding.csv").set_index("weights")
    for w in ("a", "b"):
        f = [fractions[w, s] for s in (0, 1, 2)]
        assert sig.loc[w, "mean"] == pytest.approx(np.mean(f))
        assert sig.loc[w, "sd"] == pytest.approx(np.std(f, ddof=1))
        assert sig.loc[w, "n_seeds"] == 3
        assert dec.loc[w, "mean"] == pytest.approx(np.mean([r2[w, s] for s in (0, 1, 2)]))
    curves = pd.read_csv(tmp_path / "targeted_lesions.csv")
    assert len(curves.point.unique()) == 6  # every finished point's curve, overlaid
    end = curves[(curves.point == "weights-b_seed-1") & (curves.proportion == 1)]
    assert end["mean"].item() == pytest.approx(fractions["b", 1])
    points = pd.read_csv(tmp_path / "points.csv").set_index("point")
    assert points.loc["weights-a_seed-9", "status"] == "failed"
    assert points.loc["weights-b_seed-2", "weights_hash"] == "hb2"
    assert (tmp_path / "figures" / "sweep_lesions.png").is_file()
    assert os.path.getsize(tmp_path / "summary.html") > 1000
