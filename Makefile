# dam_dagster: two commands do all the set-up on a fresh machine.
#   make dev    install, then run the Dagster UI (sensors and automation on) on 127.0.0.1:3000
#               and the library browser on 127.0.0.1:3001; Ctrl-C stops both
#   make test   install, then run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 3000

# Debian packages for off-screen OpenGL: EGL with Mesa's drivers (llvmpipe where there is no GPU).
SYSTEM_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libglvnd0
# A real browser for the library browser's tests and screenshots (driven by Selenium).
BROWSER_PACKAGES := chromium chromium-driver
# FUSE for the test share that behaves like a NAS (dam_dagster_tests/slowshare.py); PostgreSQL
# and Redis for the distributed test (dam_dagster_tests/test_distributed.py, docs/CLUSTER.md).
TEST_PACKAGES := fuse3 postgresql redis-server

.PHONY: install dev serve test lint system-deps test-deps sample bench-dedup bench-render bench-scale bench-browse bench-faults bench-share bench-sensor bench-cluster screenshots clean

install: system-deps $(STAMP)

# Re-installs only when pyproject.toml (or the one C file, core/_fastio.c, which the install
# compiles) changed since the last install.
$(STAMP): pyproject.toml dam_dagster/core/_fastio.c
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,cluster]'
	@touch $(STAMP)

# Mesa's EGL is what pyrender draws with. As root we install it; otherwise we say what to run.
system-deps:
	@if ldconfig -p 2>/dev/null | grep -q 'libEGL_mesa.so.0' && \
	    ls /usr/lib/*/dri/swrast_dri.so >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages for off-screen rendering: $(SYSTEM_PACKAGES)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; }; \
	else \
	    echo "WARNING: Mesa's EGL is missing, so thumbnails cannot be rendered. Install it with:"; \
	    echo "    sudo apt-get install -y $(SYSTEM_PACKAGES)"; \
	fi
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages for the browser tests: $(BROWSER_PACKAGES)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(BROWSER_PACKAGES) >/dev/null || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(BROWSER_PACKAGES) >/dev/null; }; \
	else \
	    echo "NOTE: chromium is missing, so the browser tests will skip. Install it with:"; \
	    echo "    sudo apt-get install -y $(BROWSER_PACKAGES)"; \
	fi

# libfuse3 and fusermount3 for the slow-share tests and benchmark, PostgreSQL (its initdb, under
# /usr/lib/postgresql/<version>/bin on Debian) and redis-server for the distributed test;
# without them those tests skip.
test-deps:
	@if ldconfig -p 2>/dev/null | grep -q 'libfuse3.so.3' && command -v fusermount3 >/dev/null && \
	    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v redis-server >/dev/null; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages for the test share and the distributed test: $(TEST_PACKAGES)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(TEST_PACKAGES) >/dev/null || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(TEST_PACKAGES) >/dev/null; }; \
	else \
	    echo "NOTE: FUSE 3, PostgreSQL or Redis is missing, so the slow-share or distributed tests skip."; \
	    echo "Install them with:  sudo apt-get install -y $(TEST_PACKAGES)"; \
	fi

dev: install
	$(BIN)/dam dev --host $(HOST) --port $(PORT)

# The library browser alone (make dev starts it too).
serve: install
	$(BIN)/dam serve

# Every test on the default DuckDB file, then the catalogue's contract tests again with the
# catalogue in PostgreSQL (a server the session starts; they skip, saying why, without one).
# TEST_WORKERS test processes (pytest-xdist), each taking whole test files: much of the suite
# waits on Dagster's daemon, sensors and servers, so two processes on two CPUs take half the
# time (7.5 min against 15 min here). TEST_WORKERS=0 runs them in this one process.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
test: install test-deps lint
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)
	$(BIN)/python -m pytest $(XDIST) -m catalogue_contract --catalogue=postgres $(PYTEST_ARGS)

# ruff (configured in pyproject.toml): lint and the format check, on the whole tree; and no
# merge conflict markers left in any tracked file (ruff sees only the Python ones).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@if git rev-parse --git-dir >/dev/null 2>&1 && \
	    git grep -nE '^(<<<<<<< |>>>>>>> )' -- . ':!*.png' ':!*.jpg'; then \
	    echo "merge conflict markers left in the files above"; exit 1; fi

# A small library of real meshes, made with trimesh, under the data folder.
sample: install
	$(BIN)/dam sample

bench-dedup: install
	$(BIN)/python bench/dedup_bench.py

bench-scale: install
	$(BIN)/python bench/scale_bench.py $(BENCH_ARGS)

bench-render: install
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(BIN)/python bench/render_bench.py

# The library browser at a million catalogue rows (docs/BENCHMARKS.md).
bench-browse: install
	$(BIN)/python bench/browse_bench.py

# The screenshots of docs/ (a real chromium on the sample library).
screenshots: install
	$(BIN)/python docs/screenshots.py

# Fault injection (not part of `make test`: ~25 min): kills, concurrent runs, a full disk (a
# tmpfs, as root), bad inputs; every answer checked by brute force. BENCH_ARGS="--seed N" etc.
bench-faults: install
	$(BIN)/python bench/fault_injection.py $(BENCH_ARGS)

# Change detection behind the test share: sensor ticks, a new file, a changed file, the
# complete walk (BENCH_ARGS="--library DIR --latency-ms 1").
bench-sensor: install test-deps
	$(BIN)/python bench/sensor_bench.py $(BENCH_ARGS)

# The celery executor against the in-process one: real PostgreSQL, Redis, two workers
# (docs/BENCHMARKS.md, "Several machines").
bench-cluster: install test-deps
	$(BIN)/python bench/cluster_bench.py $(BENCH_ARGS)

# dedup on a library behind the test share (FUSE, 1 ms per request, 110 MB/s) against jdupes.
bench-share: install test-deps
	$(BIN)/python bench/share_bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
