# Every target creates the venv from the lock first; nothing is assumed installed.
SHELL := /bin/bash
PY := .venv/bin/python
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
UV_VERSION := 0.13.8

.PHONY: setup test test-unit test-cluster e2e demo bench bench-tools lint clean

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

# `ray up` to `ray down` on fake VMs (Linux namespaces; needs root): tests/e2e/.
e2e: setup
	$(PY) -m pytest --e2e -m e2e -s -v tests/e2e

demo: setup
	$(PY) -m demo

bench: setup bench-tools
	$(PY) -m bench

# The serve comparison's load generator is wrk (compiled; Debian package).
bench-tools:
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then APT=apt-get; \
	  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then APT="sudo apt-get"; \
	  else echo "make bench needs wrk: install it with your package manager (Debian: apt-get install wrk)" >&2; exit 1; fi; \
	  $$APT update -qq && DEBIAN_FRONTEND=noninteractive $$APT install -y -qq wrk >/dev/null; }

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf .venv .tools .ray-local
