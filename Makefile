# Two commands on a fresh machine: `make run` and `make test`.
# python3.11 if present, else python3 if TensorFlow 2.21 and Keras 3.15 support it (3.11-3.13).
PYTHON ?= $(shell for p in python3.11 python3; do \
	$$p -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' \
	>/dev/null 2>&1 && { echo $$p; break; }; done)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test tensorboard bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || test -n "$(PYTHON)" || { echo "make: error: needs python3.11, or a \
	python3 of version 3.11-3.13 (what TensorFlow 2.21 and Keras 3.15 support)" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m experiments all --quick

test: $(STAMP)
	$(PY) -m pytest -q tests

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir runs --host 127.0.0.1 --port 6006

bench: $(STAMP)
	$(PY) -m benchmarks.trainer_vs_fit
	$(PY) -m benchmarks.components

clean:
	rm -rf $(VENV) runs
