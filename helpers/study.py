"""Run the study's notebooks in order with papermill.

``python -m helpers.study --params params/quick.yaml --set weights=random n_stimuli=300``
executes ``notebooks/01_design.ipynb`` … ``04_perturb.ipynb`` into
``data/<run-name>/``. Parameters come from, in increasing priority: the defaults
declared in each notebook's ``parameters`` cell, a YAML file, and ``--set
key=value`` overrides (values parsed as YAML, so ``--set shapes=[circle,square]``
works). Each notebook receives only the parameters its ``parameters`` cell
declares; unknown keys are refused so a typo never goes unnoticed.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from helpers.params import upgrade, validate
from helpers.paths import REPO_ROOT, Run

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def notebooks() -> list[Path]:
    """The numbered study notebooks present, in order."""
    return sorted(p for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def notebook_parameters(nb: Path) -> dict[str, Any]:
    """Defaults declared in a notebook's ``parameters`` cell (via papermill)."""
    import papermill as pm

    return {k: _literal(v["default"]) for k, v in pm.inspect_notebook(str(nb)).items()}


def _literal(text: str) -> Any:
    """A parameters-cell default (Python source) as a value: ``None`` stays None."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["weights=random", "n_stimuli=300"]`` -> ``{"weights": "random", "n_stimuli": 300}``."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        k, v = item.split("=", 1)
        k = k.strip().lower()
        if not k:
            raise ValueError(f"override {item!r} has an empty key")
        try:
            out[k] = yaml.safe_load(v) if v != "" else ""
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(e)})") from None
    return out


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{getattr(e, 'problem', None) or e}{where}"


def load_params(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge a YAML parameters file and overrides (overrides win).

    Weights that imply their model (``weights=control-spatial``) given as an
    override also replace the file's ``model``, unless ``model`` is overridden
    too (a mismatch then fails in :func:`preflight`, naming both).
    """
    params: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_absolute() and not p.exists():
            p = REPO_ROOT / p
        if not p.is_file():
            raise FileNotFoundError(f"parameters file {path} not found")
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"parameters file {p} is not valid YAML: {_yaml_problem(e)}") from None
        if not isinstance(doc, dict):
            raise ValueError(f"parameters file {p} must hold a mapping of name: value")
        params.update(upgrade({str(k).lower(): v for k, v in doc.items()}))
    params.update(with_implied_model(upgrade(overrides or {})))  # an implied model beats the file's, not an explicit one
    return params


def all_declared(nbs: Iterable[Path]) -> dict[str, Any]:
    """Union of every notebook's declared defaults (first notebook wins)."""
    out: dict[str, Any] = {}
    for nb in nbs:
        for k, v in notebook_parameters(nb).items():
            out.setdefault(k, v)
    return out


def default_run_name(params: Mapping[str, Any]) -> str:
    """``<model>_<weights>_n<n_stimuli>``, e.g. ``ViT-B-32_random_n300``."""
    w = Path(str(params.get("weights", "openai"))).stem
    return f"{params.get('model', 'ViT-B-32')}_{w}_n{params.get('n_stimuli', 3000)}"


def with_implied_model(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` plus ``model`` when the weights imply it and it was not given.

    ``weights=control-spatial`` implies ``model=ViT-B-32-control``
    (:func:`helpers.models.model_for_weights`); an explicit other ``model`` is
    kept here and refused by :func:`preflight` with both names.
    """
    from helpers import models

    out = dict(params)
    implied = models.model_for_weights(str(out.get("weights", "")))
    if implied and "model" not in out:
        out["model"] = implied
    return out


def preflight(params: Mapping[str, Any]) -> None:
    """Fail in seconds, before any notebook starts, if the weights can't be had."""
    from helpers import models

    name = params.get("model", "ViT-B-32")
    weights = params.get("weights", "openai")
    models.check_weights_available(name, weights)


def run_study(
    params: Mapping[str, Any],
    *,
    run: str | None = None,
    stages: Iterable[str] | None = None,
    prepare_only: bool = False,
    force: bool = False,
    kernel: str = "python3",
    log_output: bool = False,
    verify: bool = False,
) -> Path:
    """Execute (or only prepare) the study notebooks into the run folder.

    Parameters:
    params : mapping — Parameters for the notebooks; every key must be declared by at least one notebook.
    run : str, optional — Run name or absolute folder; default :func:`default_run_name`.
    stages : iterable of str, optional — Notebook prefixes to run, e.g. ``["01", "02"]``; default all.
    prepare_only : bool — Inject parameters without executing (papermill ``--prepare-only``); used to build the copies
        nbval re-executes.
    force : bool — Rerun every selected stage even when its inputs are unchanged, replacing its artefacts. The record
        of stages not selected is kept.
    verify : bool — Re-hash every artefact; by default files over :data:`ALWAYS_HASH_BYTES` are trusted while their
        size and mtime are unchanged.

    Notes:
    A stage is skipped when its key (:func:`stage_key`: notebook, parameters,
    upstream key and the content hash of the upstream artefacts) equals the one
    recorded when it last finished, its executed notebook exists, and its own
    artefacts (:data:`STAGE_OUTPUTS`) still hash to what it left. The record is
    :attr:`helpers.paths.Run.state`.

    Returns:
    Path — The run folder.
    """
    nbs = notebooks()
    if stages:
        known = {nb.name[:2] for nb in nbs}
        wanted = {str(s).strip().zfill(2) for s in stages}
        if not wanted <= known:
            raise ValueError(f"stages must be among {sorted(known)}, got {sorted(wanted - known)}")
        nbs = [nb for nb in nbs if nb.name[:2] in wanted]
    declared = all_declared(notebooks())
    params = with_implied_model(upgrade(params))
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; the notebooks declare: {sorted(declared)}")
    merged = {**declared, **params}
    validate(merged)
    run_name = run or default_run_name(merged)
    folder = Run(run_name).root
    merged["run_dir"] = str(folder)
    if not prepare_only:
        preflight(merged)
    with run_lock(folder):
        _drop_scratch(folder)  # left by a killed run; never reused
        try:
            _run_stages(folder, nbs, merged, params, prepare_only=prepare_only, force=force, kernel=kernel,
                        log_output=log_output, partial=bool(stages), verify=verify)
        finally:
            _drop_scratch(folder)
    return folder


def _run_stages(folder: Path, nbs: list[Path], merged: dict, params: Mapping[str, Any], *, prepare_only: bool,
                force: bool, kernel: str, log_output: bool, partial: bool, verify: bool) -> None:
    """Run (or skip) each selected stage in order; see :func:`run_study`."""
    import papermill as pm

    run = Run(folder)
    print(f"run folder: {folder}", flush=True)
    state = {} if prepare_only else _read_state(folder)
    t_all = time.perf_counter()
    cached = state.pop(HASH_CACHE, None)
    hashes = _HashCache(cached if isinstance(cached, dict) else None, verify=verify)
    upstream = ""
    previous: tuple[str, ...] = ()
    for nb in notebooks():
        nb_params = {k: merged[k] for k in notebook_parameters(nb) if k in merged}
        key = stage_key(nb, nb_params, upstream, artefacts_hash(folder, previous, hashes))
        upstream, previous = key, STAGE_OUTPUTS.get(nb.stem, ())
        if nb not in nbs:
            continue
        out = run.notebook(nb.stem)
        done = f"{nb.stem}.outputs"
        if (
            not (prepare_only or force)
            and state.get(nb.stem) == key
            and out.is_file()
            and state.get(done) == artefacts_hash(folder, previous, hashes)
        ):
            print(f"[{nb.stem}] skipped: parameters and upstream artefacts unchanged (FORCE=1 reruns)", flush=True)
            continue
        t0 = time.perf_counter()
        print(f"[{nb.stem}] {'preparing' if prepare_only else 'running'} …", flush=True)
        run.params.write_text(yaml.safe_dump(dict(merged), sort_keys=True))
        attempt = f"{nb.stem}.attempt"
        if not prepare_only and "overwrite" in nb_params and "overwrite" not in params:
            # Same inputs as an interrupted attempt: resume its artefacts. Other
            # inputs, a finished stage whose artefacts were changed since, or
            # FORCE: replace them; they belong to another study.
            resume = state.get(attempt) == key and state.get(nb.stem) != key
            nb_params["overwrite"] = force or not resume
        state.pop(nb.stem, None)
        state.pop(done, None)
        state[attempt] = key
        if not prepare_only:
            _write_state(folder, state, hashes)  # a failed stage must not look done
        # Executed into a scratch name: a failed attempt never replaces the last good executed copy.
        running = out if prepare_only else run.running_notebook(nb.stem)
        try:
            pm.execute_notebook(
                str(nb),
                str(running),
                parameters=nb_params,
                kernel_name=kernel,
                prepare_only=prepare_only,
                progress_bar=False,
                log_output=log_output,
                cwd=str(REPO_ROOT),
                extra_arguments=KERNEL_ARGS,
            )
        except pm.PapermillExecutionError as e:
            failed = run.failed_notebook(nb.stem)
            if running.is_file():
                os.replace(running, failed)
            raise StageFailed(f"{nb.name} failed: {e.ename}: {e.evalue}\n  executed copy: {failed}") from e
        if running != out:
            os.replace(running, out)
            run.failed_notebook(nb.stem).unlink(missing_ok=True)
        if not prepare_only:
            state[nb.stem] = key
            state[done] = artefacts_hash(folder, previous, hashes)
            _write_state(folder, state, hashes)
        print(f"[{nb.stem}] done in {time.perf_counter() - t0:.1f} s -> {out}", flush=True)
    if not prepare_only and not partial:  # a partial run could leave stale downstream figures
        from helpers.report import build_report

        report = build_report(folder)
        print(f"study finished in {time.perf_counter() - t_all:.1f} s; report: {report}", flush=True)
    else:
        print(f"done in {time.perf_counter() - t_all:.1f} s: {folder}", flush=True)


#: Kernel options: ipykernel's warning about local TCP transport is noise on every run.
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]

#: glibc malloc settings the kernels inherit (unless already set): blocks up to 1 GiB come from the heap and freed
#: ones stay there, so the activations every batch allocates are not page-faulted in afresh each time (glibc maps
#: blocks over 32 MiB anew by default). Same numbers, bit for bit; faster torch stages (README, "Memory allocation").
KERNEL_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}


class RunLocked(RuntimeError):
    """Another live runner holds the run folder."""


@contextlib.contextmanager
def run_lock(folder: Path):
    """Hold an exclusive lock on a run folder (``Run.lock``, holding the PID) while the block runs.

    The lock is an ``flock``: the kernel drops it when its process dies, however
    it dies, so a stale lock file from a killed runner is simply taken over.

    Raises:
    RunLocked — Another live process holds the folder; the message names its PID.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(Run(folder).lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunLocked(f"run folder {folder} is in use by another runner (PID {holder}); "
                            "wait for it, or use another RUN=") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def _drop_scratch(folder: Path) -> None:
    """Delete scratch: the Perturb stage's residual-stream cache (gigabytes at blog scale), partial notebooks."""
    run = Run(folder, create=False)
    shutil.rmtree(run.cache_root, ignore_errors=True)
    for p in run.running_notebooks():  # a killed stage's partial executed copy
        p.unlink(missing_ok=True)


class StageFailed(RuntimeError):
    """A notebook raised while executing; the message names the executed copy."""


HASH_CACHE = "file_hashes"

#: Data artefacts of each stage (:attr:`helpers.paths.Run.STAGE_OUTPUTS`); the next stage's key includes
#: their hashes and a stage is skipped only while its own are as it left them (figures and scratch left out).
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = Run.STAGE_OUTPUTS


def stage_key(nb: Path, nb_params: Mapping[str, Any], upstream: str, artefacts: str = "") -> str:
    """Identity of a stage's inputs: its notebook, parameters, upstream stage and upstream artefacts.

    Parameters:
    nb : Path — The stage's notebook (its bytes are hashed, so an edited notebook reruns).
    nb_params : mapping — The parameters the notebook receives.
    upstream : str — Key of the previous stage. Chaining makes a changed parameter rerun exactly the stages downstream
        of the first stage that declares it.
    artefacts : str — :func:`artefacts_hash` of the previous stage's outputs as they are on disk now, so a recording
        replaced by hand (or by running a notebook in Jupyter) reruns everything that reads it.

    Returns:
    str — SHA-256 hex digest.
    """
    h = hashlib.sha256()
    h.update(nb.read_bytes())
    h.update(json.dumps(nb_params, sort_keys=True, default=str).encode())
    h.update(upstream.encode())
    h.update(artefacts.encode())
    return h.hexdigest()


#: Files up to this size are always re-hashed; larger ones (recordings) reuse the
#: cached hash while size and mtime are unchanged, unless ``verify`` is set.
ALWAYS_HASH_BYTES = 16 * 2**20


class _HashCache:
    """SHA-256 of files; large files reuse it while size and mtime are unchanged (as git's index does)."""

    def __init__(self, entries: Mapping[str, Any] | None = None, verify: bool = False) -> None:
        self.entries: dict[str, list] = dict(entries or {})
        self.verify = verify

    def sha256(self, path: Path, rel: str) -> str:
        st = path.stat()
        hit = self.entries.get(rel)
        trusted = not self.verify and st.st_size > ALWAYS_HASH_BYTES
        if trusted and hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        self.entries[rel] = [st.st_size, st.st_mtime_ns, h.hexdigest()]
        return h.hexdigest()


def artefacts_hash(folder: Path, outputs: Iterable[str], cache: _HashCache | None = None) -> str:
    """Content hash of a stage's artefacts in the run folder.

    Parameters:
    folder : Path — The run folder.
    outputs : iterable of str — Files or folders relative to ``folder`` (see :data:`STAGE_OUTPUTS`); folders are
        walked recursively, skipping scratch folders named ``cache``.
    cache : _HashCache, optional — Reuses digests of files whose size and mtime are unchanged.

    Returns:
    str — SHA-256 over the sorted (relative path, file digest) pairs; missing files simply don't contribute, so
        deleting one changes the hash.
    """
    cache = cache or _HashCache()
    files: list[Path] = []
    for rel in outputs:
        p = folder / rel
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files += [
                f for f in p.rglob("*")
                if f.is_file() and not set(Run.SCRATCH).intersection(f.relative_to(folder).parts[:-1])
            ]
    h = hashlib.sha256()
    for f in sorted(files):
        rel = f.relative_to(folder).as_posix()
        h.update(f"{rel}\t{cache.sha256(f, rel)}\n".encode())
    return h.hexdigest()


def _read_state(folder: Path) -> dict[str, Any]:
    p = Run(folder, create=False).state
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except json.JSONDecodeError:
        return {}


def _write_state(folder: Path, state: Mapping[str, Any], hashes: _HashCache | None = None) -> None:
    doc = dict(state)
    if hashes is not None:
        doc[HASH_CACHE] = hashes.entries
    Run(folder).state.write_text(json.dumps(doc, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.study", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", help="YAML parameters file (e.g. params/quick.yaml)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="parameter overrides")
    ap.add_argument("--run", help="run name (folder under data/) or absolute path")
    ap.add_argument("--stages", help="comma-separated notebook numbers, e.g. 01,02")
    ap.add_argument("--prepare-only", action="store_true", help="inject parameters, don't execute")
    ap.add_argument("--log-output", action="store_true", help="echo notebook output")
    ap.add_argument("--force", action="store_true", help="rerun stages whose inputs are unchanged")
    ap.add_argument("--verify", action="store_true", help="re-hash every artefact, large ones too")
    args = ap.parse_args(argv)
    for key, value in KERNEL_MALLOC.items():  # read by each kernel's glibc when it starts
        os.environ.setdefault(key, value)
    from helpers.models import WeightsUnavailableError

    try:
        params = load_params(args.params, parse_overrides(args.set))
        run_study(
            params,
            run=args.run,
            stages=args.stages.split(",") if args.stages else None,
            prepare_only=args.prepare_only,
            force=args.force,
            log_output=args.log_output,
            verify=args.verify,
        )
    except (WeightsUnavailableError, ValueError, FileNotFoundError, StageFailed, RunLocked) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished stages are kept; the same command resumes", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
