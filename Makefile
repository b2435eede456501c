# Developer tasks. `make test` is the one command that checks everything
# (CI runs it through .ci/run); `make demo` runs the main job.
PY ?= python3
PIP ?= $(PY) -m pip

.PHONY: install dev system-deps demo lint rust-test unsafe-check fuzz py-test py-test-pandas2 test bench bench-live bench-ingest bench-drift bench-rust bench-trust bench-readme clean

install:  ## build (release) and install modeltap
	$(PIP) install ".[collector]"

dev:  ## build and install modeltap with the test and lint tools
	$(PIP) install ".[dev]"

# Debian packages the tests run against: prometheus (and its promtool),
# chromium and its driver (the HTML report in a real browser).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:  ## install the Debian packages the tests need (prometheus, chromium), if missing
	command -v promtool >/dev/null && command -v prometheus >/dev/null && \
		command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		( $(SUDO) apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
			prometheus chromium chromium-driver )

demo: install
	modeltap demo

lint:  ## formatting, clippy, ruff, mypy, stub check
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(PY) -m ruff check python tests benches
	$(PY) -m ruff format --check python tests benches
	$(PY) -m mypy
	$(PY) -m mypy.stubtest modeltap._core

rust-test:  ## the core's unit, property and pipeline tests
	cargo test -p modeltap-core

unsafe-check:  ## loom models and Miri (or valgrind) over the lock-free ring
	bash scripts/check-unsafe.sh

fuzz:  ## cargo-fuzz targets (batch decoder, reference reader, profile decoder), 30 s each
	bash scripts/fuzz.sh 30

py-test:  ## the Python test suite against the installed package
	$(PY) -m pytest

# The drift layout tests again under pandas 2 (whose frames keep a
# row-major block and object strings): a venv holding pandas 2 alone,
# reading everything else (the installed modeltap included) from this
# Python's site-packages, listed after its own.
PANDAS2_VENV := .bench/pandas2-venv
py-test-pandas2:  ## the drift layout tests under pandas 2 (beside the installed modeltap)
	test -x $(PANDAS2_VENV)/bin/python || $(PY) -m venv $(PANDAS2_VENV)
	$(PANDAS2_VENV)/bin/python -m pip install -q --ignore-installed --no-deps "pandas>=2.2,<3" pytz tzdata
	$(PY) -c "import sys; print('\n'.join(p for p in sys.path if p.endswith(('site-packages', 'dist-packages'))))" \
		> "$$($(PANDAS2_VENV)/bin/python -c "import sysconfig as s; print(s.get_paths()['purelib'])")/outer-site.pth"
	$(PANDAS2_VENV)/bin/python -c "import pandas, modeltap; assert pandas.__version__[0] == '2', pandas.__version__"
	$(PANDAS2_VENV)/bin/python -m pytest -p no:cacheprovider tests/test_drift_layouts.py tests/test_drift.py

test: system-deps dev lint rust-test unsafe-check fuzz py-test py-test-pandas2

bench:  ## end-to-end Python bench (release build, OTel baseline)
	$(PIP) install ".[bench]"
	$(PY) benches/bench_agent.py

bench-live:  ## ingest beside a heavy read and a 1 s scrape; report of 1M records over 24 h
	$(PIP) install ".[dev]"
	$(PY) benches/bench_live.py

bench-ingest:  ## agents -> collector -> DuckDB against one message per record
	$(PIP) install ".[bench]"
	$(PY) benches/bench_ingest.py

bench-drift:  ## drift of 1M rows: modeltap vs scipy+numpy vs Evidently (own venv)
	$(PIP) install ".[dev]"
	test -x .bench/evidently-venv/bin/python || ( $(PY) -m venv .bench/evidently-venv && \
		.bench/evidently-venv/bin/pip install evidently "pandas<3" )
	$(PY) benches/bench_drift.py

bench-readme:  ## every README table with its environment (pandas 3 here; pandas 2 + Evidently in .bench/evidently-venv)
	$(PIP) install ".[dev,bench]"
	test -x .bench/evidently-venv/bin/python || ( $(PY) -m venv .bench/evidently-venv && \
		.bench/evidently-venv/bin/pip install evidently "pandas<3" polars )
	.bench/evidently-venv/bin/pip install ".[collector]"
	$(PY) benches/readme.py --pandas2-python .bench/evidently-venv/bin/python

bench-trust:  ## faults (records lost/duplicated), fuzzing, agent memory with wide records
	$(PIP) install ".[dev]"
	$(PY) benches/bench_trust.py

bench-rust:  ## criterion benches of the ring and the profiler
	cargo bench -p modeltap-core --bench ring
	cargo bench -p modeltap-core --bench profile

clean:
	cargo clean
	rm -rf dist build .pytest_cache .ruff_cache .mypy_cache .hypothesis
