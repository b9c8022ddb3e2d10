# One-command entry points. `make train` and `make test` set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?=
ARGS   ?=

.PHONY: install browser train test test-fast lint bench bench-serve clean

install: $(STAMP)

# Re-install only when the package metadata changes; the package itself is editable.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# `make train` trains on CIFAR-10 from Keras (needs network once);
# `make train DATA=dir` trains on a local folder with one subfolder per class.
train: install
ifeq ($(strip $(DATA)),)
	$(BIN)/imgclf train $(ARGS)
else
	$(BIN)/imgclf train --data-dir $(DATA) $(ARGS)
endif

# Debian's chromium and its driver, for the browser test of `imgclf serve`'s page (nothing can
# download a browser here, so the test drives the distribution's). Needs root or sudo once.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver; \
	fi

# Two pytest workers, a test file each at a time (its module fixtures built once): on average a
# test keeps one core of two busy (TensorFlow's import, subprocesses, Python between the ops).
TEST_WORKERS ?= 2

# --no-loadscope-reorder: in the order tests/conftest.py sorts the files (the longest first), not
# xdist's own (the most tests first, which left the heavy few-test files for the end).
test: install browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(ARGS)

# Everything but the tests marked slow (trainings, new processes, notebooks, real CIFAR-10).
test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

lint: install
	$(BIN)/ruff check src tests notebooks

bench: install
	$(BIN)/imgclf bench $(ARGS)

bench-serve: install
	$(BIN)/imgclf bench-serve $(ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
