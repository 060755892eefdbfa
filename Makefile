# The two commands of a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format bench proto clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/mitrailleuse demo

test: install lint browser
	$(PY) -m pytest

# the web page's tests drive the OS's Chromium through its chromedriver (neither comes from
# PyPI, and Chromium cannot be downloaded here): installed with apt-get when run as root on a
# Debian-like system, else the browser tests are skipped and say why
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver (apt-get)"; \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends chromium chromium-driver \
			fonts-liberation >/dev/null; \
	else echo "note: no chromium and chromedriver here: the browser tests will be skipped"; fi

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	$(PY) benchmarks/run.py

# the gRPC stubs under mitrailleuse/v1/, committed; regenerate after editing the .proto
proto: install
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. \
		proto/mitrailleuse/v1/mitrailleuse.proto

clean:
	-$(VENV)/bin/mitrailleuse broker stop
	rm -rf $(VENV) tasks/.mitrailleuse .mitrailleuse .pytest_cache .ruff_cache
