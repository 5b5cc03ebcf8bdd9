"""Sweeps of whole studies on Dask: one run folder per point, from a laptop to a SLURM cluster.

A sweep file (``params/sweeps/<name>.yaml``)::

    base: params/quick.yaml          # a parameters preset (optional)
    params: {dtype: bfloat16}        # overrides shared by every point (optional)
    grid: {seed: [0, 1, 2, 3, 4]}    # one point per combination ...
    points: [{weights: openai}]      # ... and/or explicit points (a "name" key names the folder)
    stages: [1, 2, 3, 4]             # optional; default every stage
    threads: 1                       # torch threads per point
    resources: {memory: 8GB, walltime: "02:00:00"}   # SLURM, per point (also queue, account, job_extra)

Each point runs ``python -m helpers.study`` into its run folder (finished stages skipped, interrupted ones resumed)
as a Dask task on a ``LocalCluster``, a ``SLURMCluster`` or a given scheduler; every point is checked first
(:func:`check_points`: no ``weights=random`` with ``seed == random_seed``, no invalid parameters or missing weights,
no two points in one folder; identical studies collapsed with a note). A failed point is reported with its log.
Folder layout: :class:`helpers.paths.SweepFolder`; :mod:`helpers.sweep_summary` writes the summary.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from helpers.paths import REPO_ROOT, SWEEPS_DIR, SweepFolder

#: Keys a sweep file may hold.
SWEEP_KEYS = {"name", "base", "params", "grid", "points", "stages", "threads", "resources"}

#: Per-point resources for SLURM (dask-jobqueue's names), with their defaults.
DEFAULT_RESOURCES = {"memory": "8GB", "walltime": "02:00:00", "queue": None, "account": None, "job_extra": []}

#: Environment variables that cap the math libraries' threads in the runner and its kernels.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Point:
    """One study of a sweep: its folder name and the overrides it adds to the sweep's base."""

    name: str
    values: dict[str, Any]


@dataclass
class Sweep:
    """A parsed sweep file (see the module docstring)."""

    name: str
    base: str | None
    params: dict[str, Any]
    points: list[Point]
    stages: list[str] | None = None
    threads: int = 1
    resources: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def axes(self) -> list[str]:
        """Parameters that vary between points, in first-seen order."""
        keys = dict.fromkeys(k for p in self.points for k in p.values)
        return [k for k in keys if len({json.dumps(p.values.get(k), default=str) for p in self.points}) > 1]


def load_sweep(path: str | Path) -> Sweep:
    """Read a sweep file and expand its grid and point list.

    Raises:
    ValueError — Unknown keys, a grid value that is not a non-empty list, no points, bad ``threads`` or ``stages``, or
        two points with one folder name.
    """
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = REPO_ROOT / p
    if not p.is_file():
        raise FileNotFoundError(f"sweep file {path} not found")
    doc = yaml.safe_load(p.read_text()) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"sweep file {p} must hold a mapping with keys among {sorted(SWEEP_KEYS)}")
    unknown = sorted(set(doc) - SWEEP_KEYS)
    if unknown:
        raise ValueError(f"sweep file {p}: unknown key(s) {unknown}; allowed: {sorted(SWEEP_KEYS)}")
    threads = doc.get("threads", 1)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"sweep file {p}: threads={threads!r} must be an integer >= 1")
    stages = doc.get("stages")
    if stages is not None and (not isinstance(stages, list) or not stages):
        raise ValueError(f"sweep file {p}: stages={stages!r} must be a non-empty list such as [1, 2]")
    points = _expand(doc.get("grid") or {}, doc.get("points") or [], where=str(p))
    points, notes = _collapse_same_names(points, where=str(p))
    return Sweep(
        name=str(doc.get("name") or p.stem),
        base=doc.get("base"),
        params={str(k).lower(): v for k, v in (doc.get("params") or {}).items()},
        points=points,
        stages=[str(s).zfill(2) for s in stages] if stages else None,
        threads=threads,
        resources={**DEFAULT_RESOURCES, **(doc.get("resources") or {})},
        notes=notes,
    )


def _expand(grid: Mapping[str, Any], listed: list, *, where: str) -> list[Point]:
    """Grid combinations, then the explicit points, each named from its values."""
    if not isinstance(grid, Mapping):
        raise ValueError(f"{where}: grid must map parameter names to lists of values")
    for k, vals in grid.items():
        if not isinstance(vals, list) or not vals:
            raise ValueError(f"{where}: grid value of {k!r} must be a non-empty list, got {vals!r}")
    keys = [str(k).lower() for k in grid]
    combos = [dict(zip(keys, vals)) for vals in itertools.product(*grid.values())] if grid else []
    if not isinstance(listed, list) or not all(isinstance(x, Mapping) for x in listed):
        raise ValueError(f"{where}: points must be a list of mappings of parameter: value")
    combos += [{str(k).lower(): v for k, v in x.items()} for x in listed]
    if not combos:
        raise ValueError(f"{where}: no points; give a grid, a points list, or both")
    out = []
    for values in combos:
        name = values.pop("name", None)
        out.append(Point(name=_safe(str(name)) if name else point_name(values), values=values))
    return out


def point_name(values: Mapping[str, Any]) -> str:
    """Folder name of a point from its values: ``{"weights": "random", "seed": 3}`` -> ``weights-random_seed-3``."""
    if not values:
        return "base"
    parts = []
    for k, v in values.items():
        text = Path(v).stem if k == "weights" and isinstance(v, str) and "/" in v else v
        text = json.dumps(text) if isinstance(text, (list, dict)) else str(text)
        parts.append(f"{k}-{text}")
    return _safe("_".join(parts))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=+-]+", "_", text).strip("_.")[:120] or "point"


def _collapse_same_names(points: list[Point], *, where: str) -> tuple[list[Point], list[str]]:
    """Identical points listed twice are collapsed; two different points under one name are refused."""
    seen: dict[str, Point] = {}
    notes = []
    for p in points:
        if p.name in seen:
            if seen[p.name].values != p.values:
                raise ValueError(f"{where}: two different points share the folder name {p.name!r}; "
                                 "give one of them a 'name'")
            notes.append(f"point {p.name} is listed twice: run once")
            continue
        seen[p.name] = p
    return list(seen.values()), notes


def point_params(sweep: Sweep, point: Point) -> dict[str, Any]:
    """The runner's parameters for a point: base file, then the sweep's params, then the point's values.

    Weights that imply their model (``control-spatial``) also set ``model``
    unless the sweep or the point gives one, as on the runner's command line.
    """
    from helpers.study import load_params

    return load_params(sweep.base, {**sweep.params, **point.values})


def check_points(sweep: Sweep) -> dict[str, dict[str, Any]]:
    """Check every point as the runner would, before anything is submitted.

    Returns:
    dict — Point name -> runner parameters (:func:`point_params`), in order, with points that resolve to the same
        study collapsed into the first (noted in ``sweep.notes``).

    Raises:
    ValueError — Listing every bad point with its reasons (unknown or invalid parameters, weights that can't be had,
        ``weights=random`` with ``seed == random_seed``).
    """
    from helpers.models import WeightsUnavailableError
    from helpers.params import validate
    from helpers.study import all_declared, notebooks, preflight, with_implied_model

    declared = all_declared(notebooks())
    errors, out, studies = [], {}, {}
    for point in sweep.points:
        try:
            params = point_params(sweep, point)
            merged = {**declared, **with_implied_model(params)}
            unknown = sorted(set(params) - set(declared))
            if unknown:
                raise ValueError(f"unknown parameter(s) {unknown}")
            validate(merged)
            _refuse_nonsense(merged)
            preflight(merged)
        except (ValueError, FileNotFoundError, WeightsUnavailableError) as e:
            errors.append(f"{point.name}: {e}")
            continue
        key = json.dumps(merged, sort_keys=True, default=str)
        if key in studies:
            sweep.notes.append(f"point {point.name} is the same study as {studies[key]}: run once, as {studies[key]}")
            continue
        studies[key] = point.name
        out[point.name] = params
    if errors:
        raise ValueError("refused points (nothing was submitted):\n  - " + "\n  - ".join(errors))
    return out


def _refuse_nonsense(p: Mapping[str, Any]) -> None:
    if p.get("weights") == "random" and p.get("include_random") and p.get("seed") == p.get("random_seed"):
        raise ValueError(
            f"weights='random' with seed={p.get('seed')!r} equal to random_seed={p.get('random_seed')!r}: the model "
            "condition would be the random control itself; pick another seed or set random_seed"
        )


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def local_workers(n_points: int, threads: int, workers: int | None = None, n_cores: int | None = None) -> int:
    """Workers for a LocalCluster: ``workers`` (checked) or as many as the cores allow, at most one per point.

    Raises:
    ValueError — ``workers * threads`` exceeds the cores: the points would oversubscribe the machine.
    """
    n_cores = n_cores or cores()
    if threads > n_cores:
        raise ValueError(f"threads={threads} per point exceeds the {n_cores} cores of this machine")
    if workers is None:
        return max(1, min(n_points, n_cores // threads))
    if workers < 1 or workers * threads > n_cores:
        raise ValueError(f"workers={workers} x threads={threads} must be between 1 and the {n_cores} cores of "
                         f"this machine; use at most workers={n_cores // threads}")
    return workers


def thread_env(threads: int) -> dict[str, str]:
    """Environment that caps torch's and BLAS's threads at ``threads`` in the runner and its kernels."""
    return {v: str(threads) for v in THREAD_VARS}


def run_point(name: str, run_dir: str, params_file: str, log_file: str, threads: int,
              stages: list[str] | None = None) -> dict[str, Any]:
    """Run one point with the study runner in a subprocess (a Dask task, executed on a worker).

    The runner's output goes to ``log_file``; its exit status decides the
    outcome. Torch threads are capped through :func:`thread_env`. If the
    worker dies, the runner is sent SIGINT (Linux), and stops as after Ctrl-C.

    Returns:
    dict with ``point, status ("done"|"failed"), returncode, wall_s,
    stages_run (stage numbers that ran, not skipped), log, host``.
    """
    import socket

    cmd = [sys.executable, "-m", "helpers.study", "--params", params_file, "--run", run_dir]
    if stages:
        cmd += ["--stages", ",".join(stages)]
    t0 = time.perf_counter()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env={**os.environ, **thread_env(threads)}, stdout=log,
                                stderr=subprocess.STDOUT, preexec_fn=_interrupt_on_parent_death())
        try:
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.send_signal(2)
                proc.wait()
    text = Path(log_file).read_text(errors="replace")
    return {
        "point": name,
        "status": "done" if rc == 0 else "failed",
        "returncode": rc,
        "wall_s": round(time.perf_counter() - t0, 1),
        "stages_run": re.findall(r"^\[(\d\d)_\w+\] running", text, flags=re.M),
        "log": str(log_file),
        "host": socket.gethostname(),
    }


def _interrupt_on_parent_death():
    """A ``preexec_fn`` asking Linux to send SIGINT to the runner when its worker dies (None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, 2)  # PR_SET_PDEATHSIG, SIGINT


def slurm_cluster(sweep_dir: Path, *, threads: int, memory: str, walltime: str, queue: str | None = None,
                  account: str | None = None, job_extra: list[str] | None = None, job_name: str = "sweep"):
    """A dask-jobqueue ``SLURMCluster``: one SLURM job per worker, one point at a time per worker.

    Each job asks for ``threads`` cores (``--cpus-per-task``), ``memory`` and
    ``walltime``; the worker advertises the resource ``point=1`` and every
    point asks for it, so a worker never runs two points at once.
    ``job_extra`` adds ``#SBATCH`` directives (e.g. ``["--gres=gpu:1"]``).
    """
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(
        cores=threads, processes=1, memory=memory, walltime=walltime, queue=queue, account=account,
        job_name=job_name, log_directory=str(SweepFolder(sweep_dir).slurm_logs), job_extra_directives=list(job_extra or []),
        worker_extra_args=["--resources", "point=1"], scheduler_options={"dashboard_address": ":0"},
        job_script_prologue=[f"cd {REPO_ROOT}"] + [f"export {k}={v}" for k, v in thread_env(threads).items()],
    )


def run_sweep(
    path: str | Path,
    *,
    cluster: str = "local",
    scheduler: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    root: str | Path | None = None,
    resources: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> tuple[Path, list[dict[str, Any]]]:
    """Check every point, run the points as Dask tasks, and write the summary.

    Parameters:
    path : sweep file.
    cluster : ``"local"`` (a LocalCluster of process workers) or ``"slurm"``.
    scheduler : address of an existing Dask scheduler (``tcp://host:8786``); overrides ``cluster``.
    workers : local: worker processes (default: cores // threads, at most one per point); slurm: jobs (default: one
        per point).
    threads : torch threads per point (default: the sweep file's ``threads``).
    root : folder holding sweeps (default ``data/sweeps``).
    resources : per-point SLURM resources overriding the sweep file's (memory, walltime, queue, account).

    Returns:
    (sweep folder, one outcome dict per point as :func:`run_point` returns).
    """
    from distributed import Client, as_completed

    from helpers.sweep_summary import write_summary

    sweep = load_sweep(path)
    threads = threads or sweep.threads
    params = check_points(sweep)
    for note in sweep.notes:
        print(f"note: {note}", flush=True)
    folder = Path(root or SWEEPS_DIR) / sweep.name
    sw = SweepFolder(folder)
    sw.points_dir.mkdir(parents=True, exist_ok=True)
    for name, p in params.items():
        sw.point_file(name, "yaml").write_text(yaml.safe_dump(p, sort_keys=True))
        sw.point_file(name, "json").unlink(missing_ok=True)  # "not finished" until this sweep says otherwise
    sw.meta.write_text(json.dumps(
        {"name": sweep.name, "base": sweep.base, "params": sweep.params, "axes": sweep.axes,
         "points": {n: params[n] for n in params}, "stages": sweep.stages, "threads": threads}, indent=1,
        default=str))
    res = {**sweep.resources, **{k: v for k, v in (resources or {}).items() if v}}
    dask_cluster, submit_kw = _cluster(cluster, scheduler, folder, sweep, len(params), workers, threads, res)
    results = []
    try:
        with Client(scheduler or dask_cluster) as client:
            futures = {
                client.submit(run_point, name, str(sw.run_dir(name)), str(sw.point_file(name, "yaml")),
                              str(sw.point_file(name, "log")), threads, sweep.stages, key=f"point-{sweep.name}-{name}",
                              pure=False, **submit_kw): name
                for name in params
            }
            results = _collect(futures, as_completed, sw, progress)
    finally:
        if dask_cluster is not None:
            dask_cluster.close()
    summary = write_summary(folder)
    print(f"sweep {sweep.name}: {sum(r['status'] == 'done' for r in results)}/{len(results)} points done; "
          f"summary: {summary}", flush=True)
    return folder, results


def _cluster(kind, scheduler, folder, sweep, n_points, workers, threads, res):
    """The Dask cluster to create (None for an existing scheduler) and the submit options."""
    if scheduler:
        return None, {}
    if kind == "local":
        from distributed import LocalCluster

        n = local_workers(n_points, threads, workers)
        print(f"LocalCluster: {n} worker process(es) x 1 point x {threads} torch thread(s) on {cores()} cores",
              flush=True)
        return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None), {}
    if kind == "slurm":
        c = slurm_cluster(folder, threads=threads, memory=res["memory"], walltime=res["walltime"],
                          queue=res.get("queue"), account=res.get("account"), job_extra=res.get("job_extra"),
                          job_name=f"sweep-{sweep.name}")
        c.scale(jobs=workers or n_points)
        print(f"SLURMCluster: {workers or n_points} job(s) of {threads} core(s), {res['memory']}, "
              f"{res['walltime']}; dashboard: {c.dashboard_link}", flush=True)
        return c, {"resources": {"point": 1}}
    raise ValueError(f"cluster={kind!r} must be 'local' or 'slurm' (or give a scheduler address)")


def _collect(futures, as_completed, sw: SweepFolder, progress: bool) -> list[dict[str, Any]]:
    """Wait for the points, reporting each as it ends (a failure with its log) under a progress bar."""
    from tqdm.auto import tqdm

    results = []
    with tqdm(total=len(futures), unit="point", desc="sweep", disable=not progress) as bar:
        for fut in as_completed(futures):
            name = futures[fut]
            try:
                r = fut.result()
            except Exception as e:  # the task itself died (worker lost, ...): the point failed
                r = {"point": name, "status": "failed", "returncode": None, "wall_s": None, "stages_run": [],
                     "log": str(sw.point_file(name, "log")), "error": f"{type(e).__name__}: {e}"}
            sw.point_file(name, "json").write_text(json.dumps(r, indent=1))
            results.append(r)
            bar.write(_outcome_line(r))
            bar.update()
    return results


def _outcome_line(r: Mapping[str, Any]) -> str:
    if r["status"] == "done":
        ran = ",".join(r["stages_run"]) or "none (up to date)"
        return f"  done   {r['point']}: {r['wall_s']} s, stages run: {ran}"
    tail = ""
    log = Path(r["log"])
    if log.is_file():
        tail = "\n".join("      | " + line for line in log.read_text(errors="replace").splitlines()[-15:])
    return f"  FAILED {r['point']} (exit {r['returncode']}{'; ' + r['error'] if r.get('error') else ''}); " \
           f"log: {log}\n{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", help="sweep file, e.g. params/sweeps/seeds.yaml")
    ap.add_argument("--cluster", default="local", choices=["local", "slurm"])
    ap.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    ap.add_argument("--workers", type=int, help="local: worker processes; slurm: jobs")
    ap.add_argument("--threads", type=int, help="torch threads (cores) per point")
    ap.add_argument("--memory", help="SLURM memory per point, e.g. 8GB")
    ap.add_argument("--walltime", help="SLURM time limit per job, e.g. 02:00:00")
    ap.add_argument("--queue", help="SLURM partition")
    ap.add_argument("--account", help="SLURM account")
    ap.add_argument("--root", help="folder holding sweeps (default data/sweeps)")
    ap.add_argument("--check", action="store_true", help="check the points and exit")
    ap.add_argument("--job-script", action="store_true", help="print the SLURM job script and exit")
    ap.add_argument("--summary-only", action="store_true", help="rebuild summary.html from the run folders")
    args = ap.parse_args(argv)
    from helpers.models import WeightsUnavailableError

    try:
        if args.summary_only:
            from helpers.sweep_summary import write_summary

            print(write_summary(Path(args.root or SWEEPS_DIR) / load_sweep(args.sweep).name))
            return 0
        if args.check or args.job_script:
            sweep = load_sweep(args.sweep)
            params = check_points(sweep)
            print("\n".join([f"note: {n}" for n in sweep.notes] + [f"ok: {n}" for n in params]))
            if args.job_script:
                given = {k: getattr(args, k, None) for k in DEFAULT_RESOURCES}
                res = {**sweep.resources, **{k: v for k, v in given.items() if v}}
                print(slurm_cluster(Path(args.root or SWEEPS_DIR) / sweep.name, threads=args.threads or sweep.threads,
                                    memory=res["memory"], walltime=res["walltime"], queue=res["queue"],
                                    account=res["account"], job_extra=res["job_extra"]).job_script())
            return 0
        _, results = run_sweep(
            args.sweep, cluster=args.cluster, scheduler=args.scheduler, workers=args.workers, threads=args.threads,
            root=args.root, resources={k: getattr(args, k, None) for k in DEFAULT_RESOURCES},
        )
    except (ValueError, FileNotFoundError, WeightsUnavailableError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished points and stages are kept; the same command completes the rest",
              file=sys.stderr)
        return 130
    return 0 if all(r["status"] == "done" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
