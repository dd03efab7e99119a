# The targets the README and CI name. `make test` is the README's test command.
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: dev install-test fake-nvml test test-rust test-python lint ptx-check format docs wheel bench bench-smoke

dev:  ## build the extension in place (editable install) with the test extra
	$(PYTHON) -m pip install -e '.[test]'

# How install-test installs (a test sets it to `true` to see only what it would say).
PIP_INSTALL ?= $(PYTHON) -m pip install

# What the tests need: the package (if missing) and its test extra. Installing changes the
# environment $(PYTHON) belongs to, so it says so first, and what it replaces there.
install-test:
	@$(PYTHON) -c "import runwarden._core, pytest, httpx, h2, psutil, websockets, grpc, starlette" 2>/dev/null || { \
		echo "make test: installing this checkout, editable, with its test extra into the environment of $$($(PYTHON) -c 'import sys; print(sys.prefix)') (pip install -e '.[test]')"; \
		$(PYTHON) -c "import os, runwarden; print('make test: this replaces the runwarden installed there from', os.path.dirname(runwarden.__file__))" 2>/dev/null || true; \
		echo "make test: to keep that environment as it is, test in one of its own: python3 -m venv .venv && . .venv/bin/activate && make test"; \
		$(PIP_INSTALL) -e '.[test]'; }

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

ptx-check:  ## the canary's PTX assembled by NVIDIA's ptxas for every data-centre GPU (.ci/ptx)
	bash .ci/ptx

# zig (the `ziglang` package) links against glibc 2.17: one wheel for every manylinux2014 host.
ZIG_DIR = $$($(PYTHON) -c "import os, ziglang; print(os.path.dirname(ziglang.__file__))")
FAKE_NVML = python/runwarden/testing/fake_nvml/libnvidia-ml.so.1

wheel:  ## a manylinux2014 abi3 wheel in dist/, carrying the fault kit's fake NVML driver
	$(PYTHON) -c "import ziglang, maturin" 2>/dev/null || $(PYTHON) -m pip install -q "ziglang>=0.13" "maturin>=1.9,<2"
	PYTHON=$(PYTHON) CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=$(CURDIR)/rust/fake-nvml/zig-cc \
		cargo build -p fake-nvml -p fake-cuda --release --target x86_64-unknown-linux-gnu
	mkdir -p $(dir $(FAKE_NVML))
	cp target/x86_64-unknown-linux-gnu/release/libnvidia_ml.so $(FAKE_NVML)
	cp target/x86_64-unknown-linux-gnu/release/libcuda.so $(dir $(FAKE_NVML))libcuda.so.1
	PATH="$(ZIG_DIR):$$PATH" $(PYTHON) -m maturin build --release --zig --compatibility manylinux2014 --out dist

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
	$(PYTHON) -m benches --only gpu --smoke
