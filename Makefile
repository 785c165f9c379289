# Two commands do everything: `make run` (the main job) and `make test`.
# Both build .venv from requirements.txt first when it is missing or older than it.
PYTHON  ?= $(shell command -v python3.11 || command -v python3)
VENV    := .venv
STAMP   := $(VENV)/.installed
# Datasets: $DATA_DIR, else the workplace's pre-downloaded copy when present, else ./data
# (downloaded there on first use; offline, each project falls back to labelled stand-in data).
DATA_DIR ?= $(firstword $(wildcard ../shared/data) data)
PROFILE  ?= full
PROJECTS ?=
# Papermill parameters for every notebook of the run, e.g. PARAMS="DATASET=landmark_gldv2"
PARAMS   ?=
# PyTorch's OpenMP threads wait passively instead of spinning: 10-100x faster on busy cores (common/__init__.py)
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: run test venv clean-venv help

help:
	@echo "make run   [PROFILE=quick|full] [PROJECTS='bike_sharing_autogluon ...'] [DATA_DIR=...] [PARAMS='KEY=VALUE ...']"
	@echo "           run the notebooks headless, write reports/, regenerate the README report"
	@echo "make test  [PYTEST_ARGS=...]   run the test suite"
	@echo "make app   [PORT=...]   the landmark app as a web page on 127.0.0.1 (prints its URL)"
	@echo "make venv  build .venv from requirements.txt (both targets do this when needed)"

$(STAMP): requirements.txt requirements-nodeps.txt requirements-tools.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install -r requirements.txt
	$(VENV)/bin/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(VENV)/bin/python -m pip install --quiet --no-deps -e .
	# checkers whose pins clash with the project's (checkov: boto3 1.35) live in their own venv
	$(PYTHON) -m venv $(VENV)/tools
	$(VENV)/tools/bin/python -m pip install --quiet -r requirements-tools.txt
	touch $@

venv: $(STAMP)

run: $(STAMP)
	DATA_DIR=$(DATA_DIR) $(VENV)/bin/python -m common.run --profile $(PROFILE) \
		$(foreach p,$(PARAMS),--param $(p)) $(PROJECTS)

test: $(STAMP)
	DATA_DIR=$(DATA_DIR) MPLBACKEND=Agg $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)

.PHONY: app
# The landmark app as a web page: Voila serves landmark_classifier/app.ipynb on 127.0.0.1 (a free
# port unless PORT=...) and prints the URL; Ctrl+C stops it. `jupyter lab` opens the same notebook.
app: $(STAMP)
	$(VENV)/bin/python -m landmark_classifier.src.app $(if $(PORT),--port $(PORT))
