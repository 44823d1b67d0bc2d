# kdad: `make run` trains and tests the default method on the embedded benchmark; `make test` runs the suite.
# Both create the project venv (.venv) and install kdad into it on first use.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kdad-installed
ARGS ?=
export HF_HUB_OFFLINE ?= 1

.PHONY: install lock run test test-slow lint format bench clean

LOCK := requirements/lock.txt
LOCK_INPUTS := pyproject.toml requirements/pins.in

# The venv holds exactly the locked versions (every package pinned with its hashes), then kdad itself, editable.
$(STAMP): $(LOCK) pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11+); set PYTHON=..."; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m kdad.run $(ARGS)

# The suite (under ~10 minutes on 2 cores); longer trainings are marked `slow` and run by `make test-slow`.
test: install
	WANDB_MODE=offline $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: install
	WANDB_MODE=offline $(PY) -m pytest -q -m slow $(PYTEST_ARGS)

# Speed and memory of every method (bench/conf/bench.yaml; ARGS="bench.device=cuda" on a GPU): table + JSON.
bench: install
	$(PY) -m bench $(ARGS)

lint: install
	$(PY) -m ruff check kdad tests $(wildcard bench)
	$(PY) -m ruff format --check kdad tests $(wildcard bench)

format: install
	$(PY) -m ruff format kdad tests $(wildcard bench)
	$(PY) -m ruff check --fix kdad tests $(wildcard bench)

# Refresh the lock on purpose: newest versions that pyproject.toml's ranges and requirements/pins.in allow,
# for Python 3.11 on Linux x86-64. Review `git diff requirements/lock.txt`, then `make test` before committing.
lock: install
	$(VENV)/bin/pip-compile --quiet --upgrade --generate-hashes --allow-unsafe --all-build-deps --strip-extras \
		--extra dev --extra openvino --constraint requirements/pins.in --no-emit-index-url --no-emit-find-links \
		--output-file $(LOCK) pyproject.toml

clean:
	rm -rf runs multirun .pytest_cache
