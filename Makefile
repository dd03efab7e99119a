# The targets the README and CI name. `make test` is the README's test command.
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: dev install-test fake-nvml test test-rust test-python lint format docs bench bench-smoke

dev:  ## build the extension in place (editable install) with the test extra
	$(PYTHON) -m pip install -e '.[test]'

install-test:  ## what the tests need: the package (if missing) and its test extra
	@$(PYTHON) -c "import runwarden._core, pytest, httpx, psutil" 2>/dev/null \
		|| $(PYTHON) -m pip install -e '.[test]'

fake-nvml:  ## the fake libnvidia-ml.so.1 used by the GPU tests
	$(PYTHON) -m runwarden.testing build

test: install-test test-rust test-python

test-rust:
	cargo test --workspace

test-python: fake-nvml
	$(PYTHON) -m pytest $(PYTEST_ARGS)

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	ruff check python tests $(wildcard benches)
	ruff format --check python tests $(wildcard benches)
	mypy python/
	$(PYTHON) -m mypy.stubtest runwarden._core --allowlist python/runwarden/_core.stubtest-allowlist

docs:  ## regenerate docs/settings.md from the settings table (a test checks it is current)
	$(PYTHON) -m runwarden.settings > docs/settings.md

format:
	cargo fmt --all
	ruff format python tests $(wildcard benches)
	ruff check --fix python tests $(wildcard benches)

bench: install-test fake-nvml  ## criterion, then every section of the runner; rewrites benches/RESULTS.md
	cargo bench --bench core
	$(PYTHON) -m benches

bench-smoke: install-test fake-nvml  ## every benchmark path once, in seconds; measures nothing (CI)
	$(PYTHON) -m benches --smoke
