# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned here only (the CPU wheel on these machines); the package asks for torch>=2.3.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo lint test test-slow docs bench venv clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" -e ".[test,docs,bench,demo]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m tfx.demo

# Lint first (ruff's config is in pyproject.toml); the type check runs in the suite
# (tests/test_typing.py).
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check tfx tests benchmarks
	$(VENV)/bin/ruff format --check tfx tests benchmarks

test: lint
	HF_HUB_OFFLINE=1 HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q

test-slow: $(VENV)/.installed
	HF_HUB_OFFLINE=1 HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q -m slow

docs: $(VENV)/.installed
	$(VENV)/bin/mkdocs build --strict --site-dir site

bench: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) site .pytest_cache .hypothesis .mypy_cache .ruff_cache
