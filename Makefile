# One-command set-up, study and tests. See README.md.
#
#   make study                       blog settings (needs the openai weights)
#   make study WEIGHTS=random N_STIMULI=300
#   make study PARAMS=params/quick.yaml RUN=look
#   make test                        whole test suite, nbval and the browser test included
#   make test-fast                   the tests marked fast (numpy/torch only, no model): under a minute
#   make test-browser                the browser test alone (Voila + Chromium; builds a small run if needed)
#   make explore RUN=<run>           serve notebooks/explore.ipynb on a finished run with Voila (127.0.0.1)
#   make control-models              retrain the two positive-control CLIPs into weights/ (~50 min on 2 idle cores)
#   make sweep SWEEP=params/sweeps/seeds.yaml [CLUSTER=local|slurm] [SCHEDULER=tcp://host:8786] [WORKERS=N]
#                                    one study per point on Dask into data/sweeps/<name>/ (helpers/sweep.py)
#
# Overrides (empty = take the value from PARAMS or the notebook default):
#   MODEL WEIGHTS N_STIMULI SEED DEVICE DTYPE BATCH_SIZE BLOCK RUN PARAMS
# Sweep overrides: SWEEP CLUSTER SCHEDULER WORKERS THREADS MEMORY WALLTIME PARTITION ACCOUNT

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

PARAMS     ?=
RUN        ?=
MODEL      ?=
WEIGHTS    ?=
N_STIMULI  ?=
SEED       ?=
DEVICE     ?=
DTYPE      ?=
BATCH_SIZE ?=
BLOCK      ?=
LAYER      ?=
FORCE      ?=
VERIFY     ?=

SWEEP      ?=
CLUSTER    ?= local
SCHEDULER  ?=
WORKERS    ?=
THREADS    ?=
MEMORY     ?=
WALLTIME   ?=
PARTITION  ?=
ACCOUNT    ?=

# Only the variables that were given become --set overrides (layer=: BLOCK's old name, mapped by
# helpers.params.upgrade with a warning).
SETS := $(if $(MODEL),model=$(MODEL)) \
        $(if $(WEIGHTS),weights=$(WEIGHTS)) \
        $(if $(N_STIMULI),n_stimuli=$(N_STIMULI)) \
        $(if $(SEED),seed=$(SEED)) \
        $(if $(DEVICE),device=$(DEVICE)) \
        $(if $(DTYPE),dtype=$(DTYPE)) \
        $(if $(BATCH_SIZE),batch_size=$(BATCH_SIZE)) \
        $(if $(BLOCK),block=$(BLOCK)) \
        $(if $(LAYER),layer=$(LAYER))

NBVAL_RUN := $(CURDIR)/data/_nbval
PORT      ?= 8866
CHROMIUM  := /usr/bin/chromium

.PHONY: install study test test-fast test-browser explore chromium clean-nbval control-models sweep
.DEFAULT_GOAL := study

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (log: $(VENV)/install.log) ..."
	@$(PY) -m pip install -e ".[oracle,explore]" >$(VENV)/install.log 2>&1 || (tail -30 $(VENV)/install.log; exit 1)
	@touch $(STAMP)
	@echo "installed."

install: $(STAMP)

study: $(STAMP)
	$(PY) -m helpers.study $(if $(PARAMS),--params $(PARAMS)) $(if $(RUN),--run $(RUN)) $(if $(filter 1 yes true,$(FORCE)),--force) $(if $(filter 1 yes true,$(VERIFY)),--verify) $(if $(strip $(SETS)),--set $(strip $(SETS)))

# The notebooks are prepared with small parameters (params/nbval.yaml), then
# nbval re-executes the prepared copies in order, after the unit tests.
# tests/test_browser.py runs here too, on data/_nbval once nbval has executed it.
test: $(STAMP) chromium
	rm -rf $(NBVAL_RUN)
	$(PY) -m helpers.study --params params/nbval.yaml --run $(NBVAL_RUN) --prepare-only
	MPLBACKEND=Agg SHOT_COMMAND="make test" $(PY) -m pytest $(NBVAL_RUN)/0*.ipynb tests --nbval-lax --nbval-current-env -p no:cacheprovider --durations=15

# The browser test alone: reuses a finished data/_nbval, else builds data/_small_run
# (the runner, params/nbval.yaml: a few minutes the first time).
test-browser: $(STAMP) chromium
	MPLBACKEND=Agg SHOT_COMMAND="make test-browser" $(PY) -m pytest tests/test_browser.py -p no:cacheprovider -ra

# Debian's Chromium for Playwright (pointed at it with executable_path; never `playwright install`).
chromium:
	@test -x $(CHROMIUM) || { echo "installing chromium (apt-get) ..."; \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get install -y chromium >/dev/null || { $$SUDO apt-get update >/dev/null && $$SUDO apt-get install -y chromium >/dev/null; }; }
	@test -x $(CHROMIUM) || { echo "$(CHROMIUM) is still missing: install Debian's chromium package"; exit 1; }

# Serve the explorer notebook on a finished run folder: make explore RUN=<run> [PORT=8866].
explore: $(STAMP)
	@test -n "$(RUN)" || { echo "usage: make explore RUN=<run folder: a name under data/ or an absolute path> [PORT=$(PORT)]"; exit 2; }
	@echo "explorer of run $(RUN): http://127.0.0.1:$(PORT)/   (Ctrl-C stops it; or open notebooks/explore.ipynb in JupyterLab: $(VENV)/bin/jupyter lab)"
	EXPLORE_RUN="$(RUN)" $(PY) -m voila notebooks/explore.ipynb --no-browser --port=$(PORT) --Voila.ip=127.0.0.1

# Tests marked `fast` (no CLIP model, no notebook, no study run): under a minute.
test-fast: $(STAMP)
	MPLBACKEND=Agg $(PY) -m pytest tests -m fast -p no:cacheprovider -q

clean-nbval:
	rm -rf $(NBVAL_RUN)

# The positive controls (helpers/control.py): trains control-spatial and
# control-nonspatial from scratch on the CPU and rewrites weights/ (weights,
# loss curves, model cards). Slow; never part of `make test` or CI.
control-models: $(STAMP)
	$(PY) -m helpers.control --variant both

# A sweep of whole studies (helpers/sweep.py): every point of the sweep file is
# checked first, then runs as a Dask task into data/sweeps/<name>/<point>/;
# rerunning completes what is missing. Summary: data/sweeps/<name>/summary.html.
sweep: $(STAMP)
	@test -n "$(SWEEP)" || { echo "usage: make sweep SWEEP=params/sweeps/<name>.yaml [CLUSTER=local|slurm] [SCHEDULER=tcp://host:8786] [WORKERS=N] [THREADS=N]"; exit 2; }
	$(PY) -m helpers.sweep $(SWEEP) --cluster $(CLUSTER) $(if $(SCHEDULER),--scheduler $(SCHEDULER)) $(if $(WORKERS),--workers $(WORKERS)) $(if $(THREADS),--threads $(THREADS)) $(if $(MEMORY),--memory $(MEMORY)) $(if $(WALLTIME),--walltime $(WALLTIME)) $(if $(PARTITION),--queue $(PARTITION)) $(if $(ACCOUNT),--account $(ACCOUNT))
