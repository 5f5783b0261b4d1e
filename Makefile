# tierfs: `make test` sets everything up and runs the whole suite; `make setup` alone installs.
VENV := .venv
PYTHON := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: setup run test lint typecheck bench clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml uv.lock test-servers/package-lock.json scripts/install-system-packages.sh
	scripts/install-system-packages.sh
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q "uv==$(UV_VERSION)"
	$(UV) sync --frozen --inexact --python $(PYTHON)
	npm ci --prefix test-servers --no-audit --no-fund --loglevel=error
	touch $@

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

# src, tests and bench: the files of pyproject's [tool.mypy]
typecheck: setup
	$(VENV)/bin/mypy

# The main job on the embedded default: a sample bucket on -cloud-provider local, mounted.
run: setup
	scripts/run-demo.sh

# Real FUSE mounts, a cluster, components on real servers, units: the slowest first, so
# the run does not end waiting on one. Three processes take tests in turn (each its own
# servers) on 2 cores: most of a test's time is spent waiting on servers and mounts.
test: lint typecheck
	$(VENV)/bin/pytest --numprocesses 3 --dist worksteal tests/t4_fuse tests/t5_cluster tests/t2_components tests/t1_unit

# The rivals of bench/fuse.py: Debian 12's rclone 1.60 and s3fs 1.90.
bench: setup
	scripts/install-system-packages.sh rclone s3fs
	$(PYTHON) bench/cloud.py
	$(PYTHON) bench/tier1.py
	$(PYTHON) bench/fuse.py
	$(PYTHON) bench/coordinator.py
	$(PYTHON) bench/cluster.py

clean:
	rm -rf $(VENV) test-servers/node_modules .pytest_cache .mypy_cache .ruff_cache
