# Every target creates the venv from the lock first; nothing is assumed installed.
SHELL := /bin/bash
PY := .venv/bin/python
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
UV_VERSION := 0.13.8

.PHONY: setup test test-unit test-cluster demo bench lint clean

$(UV):
	python3 -m venv .tools && .tools/bin/pip install -q uv==$(UV_VERSION)

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra infra --extra dev --python 3.11
	touch $@

setup: .venv/.synced

test: setup
	$(PY) -m pytest

test-unit: setup
	$(PY) -m pytest -m "not cluster"

test-cluster: setup
	$(PY) -m pytest -m cluster

demo: setup
	$(PY) -m demo

bench: setup
	$(PY) -m bench

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf .venv .tools .ray-local
