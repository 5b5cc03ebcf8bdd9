# One-command set-up, study and tests. See README.md.
#
#   make study                       blog settings (needs the openai weights)
#   make study WEIGHTS=random N_STIMULI=300
#   make study PARAMS=params/quick.yaml RUN=look
#   make test                        whole test suite, nbval included
#   make test-fast                   the tests marked fast (numpy/torch only, no model): under a minute
#   make control-models              retrain the two positive-control CLIPs into weights/ (~30-60 min, CPU)
#
# Overrides (empty = take the value from PARAMS or the notebook default):
#   MODEL WEIGHTS N_STIMULI SEED DEVICE DTYPE BATCH_SIZE LAYER RUN PARAMS

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
LAYER      ?=
FORCE      ?=
VERIFY     ?=

# Only the variables that were given become --set overrides.
SETS := $(if $(MODEL),model=$(MODEL)) \
        $(if $(WEIGHTS),weights=$(WEIGHTS)) \
        $(if $(N_STIMULI),n_stimuli=$(N_STIMULI)) \
        $(if $(SEED),seed=$(SEED)) \
        $(if $(DEVICE),device=$(DEVICE)) \
        $(if $(DTYPE),dtype=$(DTYPE)) \
        $(if $(BATCH_SIZE),batch_size=$(BATCH_SIZE)) \
        $(if $(LAYER),layer=$(LAYER))

NBVAL_RUN := $(CURDIR)/data/_nbval

.PHONY: install study test test-fast clean-nbval control-models
.DEFAULT_GOAL := study

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (log: $(VENV)/install.log) ..."
	@$(PY) -m pip install -e ".[oracle]" >$(VENV)/install.log 2>&1 || (tail -30 $(VENV)/install.log; exit 1)
	@touch $(STAMP)
	@echo "installed."

install: $(STAMP)

study: $(STAMP)
	$(PY) -m helpers.study $(if $(PARAMS),--params $(PARAMS)) $(if $(RUN),--run $(RUN)) $(if $(filter 1 yes true,$(FORCE)),--force) $(if $(filter 1 yes true,$(VERIFY)),--verify) $(if $(strip $(SETS)),--set $(strip $(SETS)))

# The notebooks are prepared with small parameters (params/nbval.yaml), then
# nbval re-executes the prepared copies in order, after the unit tests.
test: $(STAMP)
	rm -rf $(NBVAL_RUN)
	$(PY) -m helpers.study --params params/nbval.yaml --run $(NBVAL_RUN) --prepare-only
	MPLBACKEND=Agg $(PY) -m pytest $(NBVAL_RUN)/0*.ipynb tests --nbval-lax --nbval-current-env -p no:cacheprovider --durations=15

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
